//! Reading samples out of CMAF fragments (placeholder).
// TEMP STUBS (lead) — replaced by the helper's module.
#![allow(missing_docs, dead_code, unreachable_pub)]
use crate::Error;
pub struct TrackConfig {
    pub timescale: u32,
    pub media_time: i64,
    pub codec: CodecConfig,
}
pub enum CodecConfig {
    Avc(crate::ts::VideoConfig),
    Aac(crate::ts::AudioConfig),
    Other,
}
pub struct Sample {
    pub dts: u64,
    pub cts_offset: i64,
    pub duration: u32,
    pub offset: usize,
    pub size: usize,
    pub keyframe: bool,
}
pub fn parse_init(_i: &[u8]) -> Result<TrackConfig, Error> {
    Err(Error::Truncated)
}
pub fn parse_fragment(_c: &TrackConfig, _f: &[u8]) -> Result<Vec<Sample>, Error> {
    Err(Error::Truncated)
}
pub fn keyframe_fragment(_c: &TrackConfig, _f: &[u8], _n: u32) -> Result<Vec<u8>, Error> {
    Err(Error::Truncated)
}
