//! Any config file text: read or refused with a message, never a panic.
#![no_main]

use dropgate::config::{Config, SecretSource};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::from_toml(text, SecretSource::Environment);
    }
});
