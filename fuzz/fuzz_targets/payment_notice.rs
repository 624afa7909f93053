//! Any payment notice body and any operator's drop JSON: parsed or refused,
//! never a panic.
#![no_main]

use dropgate::config::drop_from_json;
use dropgate::payment::parse_notice;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_notice(data);
    let _ = drop_from_json(data);
});
