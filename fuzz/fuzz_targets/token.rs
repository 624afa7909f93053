//! Any `Authorization` header value: verification never panics and accepts
//! nothing but a token signed with the secret (none can be made up here).
#![no_main]

use dropgate::auth::TokenVerifier;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static VERIFIER: OnceLock<TokenVerifier> = OnceLock::new();
    let verifier = VERIFIER.get_or_init(|| TokenVerifier::new("fuzz-secret"));
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(verifier.verify(Some(text)).is_err());
        assert!(verifier.verify(Some(&format!("Bearer {text}"))).is_err());
    }
});
