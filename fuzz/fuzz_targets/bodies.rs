//! Request bodies of the batch and events endpoints: any bytes are either
//! parsed or refused with a message, never a panic.
#![no_main]

use connstatus::events;
use connstatus::http::batch::requested_ids;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else { return };
    if let Ok(ids) = requested_ids(&value, 1000) {
        assert!(ids.len() <= 1000 && ids.iter().all(|&id| id > 0));
    }
    if let Ok(notices) = events::parse(&value, 1000) {
        assert!(notices.len() <= 1000);
    }
});
