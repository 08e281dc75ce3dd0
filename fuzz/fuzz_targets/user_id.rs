//! `{id}` path segments: parsing never panics, and accepts exactly the
//! ASCII-digit strings whose value is 1..=2^63-1.
#![no_main]

use connstatus::domain::UserId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let parsed = UserId::parse(text);
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if let Some(id) = parsed {
        assert!(digits);
        assert_eq!(text.trim_start_matches('0').parse::<u64>().ok(), Some(id.get()));
    }
});
