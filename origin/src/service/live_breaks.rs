//! Ad breaks in live channels: SCTE-35 cues arriving with the ingest (a
//! `splice_insert`, or a `time_signal` with a segmentation descriptor that
//! opens or closes a break) and an operator's call
//! (`cascade live break NAME --secs 30`). Either becomes a break in the
//! channel's live manifest from the next segment, which edges signal in
//! HLS (date ranges with SCTE-35, cue tags) and DASH (an SCTE-35 event).

use std::sync::Arc;

use cascade_ads::scte35::{SpliceCommand, SpliceInfo};
use serde::Serialize;
use utoipa::ToSchema;

use crate::service::state::State;
use crate::storage::{Error, Kind, Result};

/// A break without a duration in its cue lasts this long.
const DEFAULT_BREAK_MS: u64 = 30_000;

/// A break as the operator API answers it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Break {
    id: u32,
    /// The segment it starts with.
    start_msn: u64,
    duration_ms: u64,
    /// `scte35` or `operator`.
    source: String,
}

/// What a cue asks for.
#[derive(Debug, PartialEq, Eq)]
enum Cue {
    /// A break starts.
    Out { id: u32, duration_ms: u64 },
    /// The break running ends.
    In,
    /// Nothing for ad insertion (a heartbeat, another command).
    Nothing,
}

/// Reads an SCTE-35 section into what it asks of the channel.
fn read_cue(section: &[u8]) -> std::result::Result<Cue, cascade_ads::scte35::Scte35Error> {
    let info = SpliceInfo::parse(section)?;
    let ms = |ticks: Option<u64>| ticks.map_or(DEFAULT_BREAK_MS, |t| t / 90);
    Ok(match info.command {
        SpliceCommand::Insert(i) if i.cancel => Cue::Nothing,
        SpliceCommand::Insert(i) if i.out_of_network => Cue::Out {
            id: i.event_id,
            duration_ms: ms(i.duration),
        },
        SpliceCommand::Insert(_) => Cue::In,
        SpliceCommand::TimeSignal(_) => {
            let seg = info.segmentations.iter().find(|s| !s.cancel);
            match seg {
                Some(s) if s.starts_break() => Cue::Out {
                    id: s.event_id,
                    duration_ms: ms(s.duration),
                },
                Some(s) if s.ends_break() => Cue::In,
                _ => Cue::Nothing,
            }
        }
        _ => Cue::Nothing,
    })
}

/// An SCTE-35 section from `channel`'s encoder.
pub(crate) fn cue(state: &Arc<State>, channel: &str, section: &[u8]) {
    let cue = match read_cue(section) {
        Ok(c) => c,
        Err(e) => {
            state.ads.live_cues.with_label_values(&["bad"]).inc();
            tracing::info!(channel, error = %e, "an SCTE-35 cue could not be read");
            return;
        }
    };
    let (id, duration, label) = match cue {
        Cue::Out { id, duration_ms } => (Some(id), Some(duration_ms), "break"),
        Cue::In => (None, None, "return"),
        Cue::Nothing => {
            state.ads.live_cues.with_label_values(&["ignored"]).inc();
            return;
        }
    };
    state.ads.live_cues.with_label_values(&[label]).inc();
    let (st, ch) = (state.clone(), channel.to_string());
    tokio::spawn(async move {
        let _ = st.live_media.ad_break(&ch, id, duration, "scte35").await;
    });
}

/// An operator calls a break of `secs` on `channel` now, or (`secs`
/// `None`) ends the one running.
pub(crate) async fn operator_break(
    state: &State,
    channel: &str,
    secs: Option<f64>,
) -> Result<Option<Break>> {
    let duration_ms = match secs {
        Some(s) if s.is_finite() && (1.0..=3600.0).contains(&s) => {
            Some((s * 1000.0).round() as u64)
        }
        Some(_) => {
            return Err(Error::bad_request(
                "bad_duration",
                "duration_secs: 1 to 3600",
            ))
        }
        None => None,
    };
    if crate::repo::channels::by_name(&state.db, channel)
        .await?
        .is_none()
    {
        return Err(Error::not_found("channel"));
    }
    let made = state
        .live_media
        .ad_break(channel, None, duration_ms, "operator")
        .await
        .map_err(|()| {
            Error::new(
                Kind::Conflict,
                "not_live",
                "the channel is not on air: a break needs a live event",
            )
        })?;
    state
        .ads
        .live_cues
        .with_label_values(&[if duration_ms.is_some() {
            "operator_break"
        } else {
            "operator_return"
        }])
        .inc();
    Ok(made.map(|b| Break {
        id: b.id,
        start_msn: b.start_msn,
        duration_ms: b.duration_ms,
        source: b.source,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_ads::scte35::Segmentation;

    #[test]
    fn cues_open_and_close_breaks() {
        let out = SpliceInfo::insert(9, true, Some(900_000), Some(15 * 90_000)).encode();
        assert_eq!(
            read_cue(&out),
            Ok(Cue::Out {
                id: 9,
                duration_ms: 15_000
            })
        );
        let back = SpliceInfo::insert(9, false, None, None).encode();
        assert_eq!(read_cue(&back), Ok(Cue::In));
        let no_duration = SpliceInfo::insert(3, true, None, None).encode();
        assert_eq!(
            read_cue(&no_duration),
            Ok(Cue::Out {
                id: 3,
                duration_ms: DEFAULT_BREAK_MS
            })
        );
        let signal = |type_id| {
            SpliceInfo {
                pts_adjustment: 0,
                command: SpliceCommand::TimeSignal(None),
                segmentations: vec![Segmentation {
                    event_id: 4,
                    cancel: false,
                    type_id,
                    duration: Some(20 * 90_000),
                }],
            }
            .encode()
        };
        assert_eq!(
            read_cue(&signal(0x34)),
            Ok(Cue::Out {
                id: 4,
                duration_ms: 20_000
            })
        );
        assert_eq!(read_cue(&signal(0x35)), Ok(Cue::In));
        assert_eq!(read_cue(&signal(0x10)), Ok(Cue::Nothing));
        let null = SpliceInfo {
            pts_adjustment: 0,
            command: SpliceCommand::Null,
            segmentations: vec![],
        }
        .encode();
        assert_eq!(read_cue(&null), Ok(Cue::Nothing));
        assert!(read_cue(b"garbage").is_err());
    }
}
