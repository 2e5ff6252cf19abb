//! SCTE-35 splice sections (from an ingest's TS or RTMP cue points:
//! untrusted) never panic the parser, and every section it reads encodes
//! to bytes it reads back the same.
#![no_main]

use cascade_ads::scte35::SpliceInfo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = SpliceInfo::parse(data) {
        let again = SpliceInfo::parse(&s.encode());
        // Only what is modelled survives; a section whose command is not
        // modelled is written without its body and need not match.
        if matches!(
            s.command,
            cascade_ads::scte35::SpliceCommand::Insert(_)
                | cascade_ads::scte35::SpliceCommand::TimeSignal(_)
                | cascade_ads::scte35::SpliceCommand::Null
        ) {
            let again = again.expect("an encoded section reads back");
            assert_eq!(again.command, s.command);
        }
    }
});
