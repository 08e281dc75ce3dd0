//! Bearer tokens: verification never panics on any input, and nothing but a
//! token signed with the configured key is accepted.
#![no_main]

use std::sync::OnceLock;

use connstatus::auth::Verifier;
use connstatus::config::Settings;
use libfuzzer_sys::fuzz_target;

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let settings = Settings::from_figment(Settings::figment("config", "fuzz")).expect("settings");
        Verifier::from_settings(&settings.jwt).expect("verifier")
    })
}

fuzz_target!(|text: &str| {
    // Random input cannot carry a valid HMAC over itself.
    assert!(verifier().verify(text).is_err());
    let _ = verifier().authenticate(Some(text.as_bytes()));
});
