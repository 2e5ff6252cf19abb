//! What an encoder (or anyone) sends to the ingest ports: the FLV tag and
//! transport stream readers never panic, and the RTMP handshake and session
//! the ingest drives take any bytes without panicking (they may refuse
//! them).
#![no_main]

use cascade_live::{flv, ts};
use libfuzzer_sys::fuzz_target;
use rml_rtmp::handshake::{Handshake, PeerType};

fuzz_target!(|data: &[u8]| {
    let _ = flv::video(data);
    let _ = flv::audio(data);
    let mut reader = ts::Reader::default();
    for chunk in data.chunks(100) {
        if reader.push(chunk, &mut |_| {}).is_err() {
            break;
        }
    }
    // The handshake takes any bytes without panicking. The session after
    // it is not fuzzed here: rml_rtmp 0.8 panics on some AMF0 commands,
    // which the listener catches (`rtmp::session_input`, with a unit test
    // on the input this target found), but libFuzzer aborts on any panic.
    let mut handshake = Handshake::new(PeerType::Server);
    // A valid-looking start (version 3 and a 1536-byte C1), then the input.
    let mut start = vec![3u8];
    start.extend(std::iter::repeat(0u8).take(1536));
    let _ = handshake.process_bytes(&start);
    let _ = handshake.process_bytes(&[&[0u8; 1536][..], data].concat());
});
