//! The payment webhook's signature header parser never panics, and a header
//! it signed itself always verifies.
#![no_main]

use cascade_webhook::{sign, verify_signature};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (header, payload) = data.split_at(data.len() / 2);
    let header = String::from_utf8_lossy(header);
    let _ = verify_signature(&header, payload, b"whsec_fuzz", 1_700_000_000, 300);
    let own = sign(payload, b"whsec_fuzz", 1_700_000_000);
    assert!(verify_signature(&own, payload, b"whsec_fuzz", 1_700_000_100, 300).is_ok());
});
