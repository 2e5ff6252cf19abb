//! An RTMP publisher's AMF0 data messages, read for cue points
//! (`onCuePoint`): any bytes give a cue or nothing, never a panic.
#![no_main]

use cascade_live::rtmp_cues::cue_of;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut id = 0x8000_0000;
    let _ = cue_of(data, &mut id);
});
