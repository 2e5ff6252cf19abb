//! VMAP (IAB VMAP 1.0): where a title's ad breaks are, and where each
//! break's ads come from (an ad tag URL, or VAST inside the VMAP).

use crate::tree::{self, Node};
use crate::vast::{self, Vast};
use crate::AdError;

/// Most breaks kept from one schedule.
const MAX_BREAKS: usize = 100;

/// An ad schedule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vmap {
    /// The linear breaks, in document order.
    pub breaks: Vec<AdBreak>,
}

/// One break.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdBreak {
    pub id: String,
    pub offset: Offset,
    pub source: BreakSource,
}

/// When a break is: a pre-roll, a post-roll, a time into the title, or a
/// share of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offset {
    Start,
    End,
    /// Milliseconds into the title.
    At(u64),
    /// Per cent of the title's length (0 to 100).
    Percent(u8),
}

impl Offset {
    /// The break's time in a title `duration_ms` long.
    pub fn at(self, duration_ms: u64) -> u64 {
        match self {
            Offset::Start => 0,
            Offset::End => duration_ms,
            Offset::At(ms) => ms.min(duration_ms),
            Offset::Percent(p) => duration_ms * u64::from(p) / 100,
        }
    }
}

/// Where a break's ads come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakSource {
    /// An ad tag URL to ask (macros in it are expanded by the caller).
    Tag(String),
    /// VAST carried in the VMAP.
    Inline(Vast),
}

/// Parses a VMAP document. Breaks that are not linear, have an offset we
/// cannot read, or no usable source are left out.
pub fn parse_vmap(doc: &[u8]) -> Result<Vmap, AdError> {
    let root = tree::parse(doc)?;
    if root.name != "VMAP" {
        return Err(AdError::Schema(format!(
            "the root is <{}>, not <VMAP>",
            root.name
        )));
    }
    let breaks = root
        .all("AdBreak")
        .take(MAX_BREAKS)
        .filter_map(ad_break)
        .collect();
    Ok(Vmap { breaks })
}

fn ad_break(n: &Node) -> Option<AdBreak> {
    if n.attr("breakType")
        .is_some_and(|t| !t.split(',').any(|k| k.trim() == "linear"))
    {
        return None;
    }
    let offset = offset(n.attr("timeOffset")?)?;
    let source = n.child("AdSource")?;
    let source = if let Some(tag) = source
        .child("AdTagURI")
        .map(|t| t.text.trim())
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
    {
        BreakSource::Tag(tag.to_string())
    } else {
        let vast = source.child("VASTAdData")?.child("VAST")?;
        BreakSource::Inline(vast::from_node(vast).ok()?)
    };
    Some(AdBreak {
        id: n.attr("breakId").unwrap_or("").to_string(),
        offset,
        source,
    })
}

fn offset(s: &str) -> Option<Offset> {
    let s = s.trim();
    match s {
        "start" => Some(Offset::Start),
        "end" => Some(Offset::End),
        _ => {
            if let Some(p) = s.strip_suffix('%') {
                let p: f64 = p.trim().parse().ok()?;
                return (0.0..=100.0)
                    .contains(&p)
                    .then(|| Offset::Percent(p.round() as u8));
            }
            // `HH:MM:SS(.mmm)`; zero is a pre-roll.
            let ms = if s.trim_start_matches(['0', ':', '.']).is_empty() {
                0
            } else {
                vast::duration(s)?
            };
            Some(if ms == 0 {
                Offset::Start
            } else {
                Offset::At(ms)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VMAP: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<vmap:VMAP xmlns:vmap="http://www.iab.net/videosuite/vmap" version="1.0">
  <vmap:AdBreak timeOffset="start" breakType="linear" breakId="preroll">
    <vmap:AdSource id="pre" allowMultipleAds="false" followRedirects="true">
      <vmap:AdTagURI templateType="vast3"><![CDATA[https://ads.example/vast?pos=pre&cb=[CACHEBUSTING]]]></vmap:AdTagURI>
    </vmap:AdSource>
  </vmap:AdBreak>
  <vmap:AdBreak timeOffset="00:10:00.000" breakType="linear" breakId="mid-1">
    <vmap:AdSource id="mid"><vmap:VASTAdData>
      <VAST version="3.0"><Ad id="m"><InLine><AdSystem>S</AdSystem><AdTitle>Mid</AdTitle>
        <Creatives><Creative><Linear><Duration>00:00:20</Duration><MediaFiles>
          <MediaFile type="video/mp4" delivery="progressive" width="640" height="360">https://cdn.example/mid.mp4</MediaFile>
        </MediaFiles></Linear></Creative></Creatives></InLine></Ad></VAST>
    </vmap:VASTAdData></vmap:AdSource>
  </vmap:AdBreak>
  <vmap:AdBreak timeOffset="50%" breakType="linear" breakId="half">
    <vmap:AdSource><vmap:AdTagURI>https://ads.example/vast?pos=half</vmap:AdTagURI></vmap:AdSource>
  </vmap:AdBreak>
  <vmap:AdBreak timeOffset="00:20:00" breakType="nonlinear" breakId="overlay">
    <vmap:AdSource><vmap:AdTagURI>https://ads.example/overlay</vmap:AdTagURI></vmap:AdSource>
  </vmap:AdBreak>
  <vmap:AdBreak timeOffset="sometime" breakType="linear"><vmap:AdSource><vmap:AdTagURI>https://x/</vmap:AdTagURI></vmap:AdSource></vmap:AdBreak>
  <vmap:AdBreak timeOffset="end" breakType="linear" breakId="postroll">
    <vmap:AdSource><vmap:AdTagURI>https://ads.example/vast?pos=post</vmap:AdTagURI></vmap:AdSource>
  </vmap:AdBreak>
</vmap:VMAP>"#;

    #[test]
    fn pre_mid_and_post_rolls_from_tags_and_inline_vast() {
        let v = parse_vmap(VMAP.as_bytes()).unwrap();
        let ids: Vec<&str> = v.breaks.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(
            ids,
            ["preroll", "mid-1", "half", "postroll"],
            "non-linear and unreadable breaks left out"
        );
        assert_eq!(v.breaks[0].offset, Offset::Start);
        assert_eq!(
            v.breaks[0].source,
            BreakSource::Tag("https://ads.example/vast?pos=pre&cb=[CACHEBUSTING]".into())
        );
        assert_eq!(v.breaks[1].offset, Offset::At(600_000));
        let BreakSource::Inline(vast) = &v.breaks[1].source else {
            panic!("inline VAST")
        };
        assert_eq!(vast.ads[0].id, "m");
        assert_eq!(v.breaks[2].offset.at(1_800_000), 900_000);
        assert_eq!(v.breaks[3].offset, Offset::End);
        assert_eq!(v.breaks[3].offset.at(1_800_000), 1_800_000);
    }

    #[test]
    fn a_vmap_must_be_one() {
        assert_eq!(
            parse_vmap(b"<VAST version=\"4.0\"/>").unwrap_err().code(),
            101
        );
        assert_eq!(
            parse_vmap(b"<vmap:VMAP><vmap:AdBreak>").unwrap_err().code(),
            100
        );
        assert!(parse_vmap(b"<vmap:VMAP version=\"1.0\"/>")
            .unwrap()
            .breaks
            .is_empty());
        assert_eq!(offset("00:00:00"), Some(Offset::Start));
        assert_eq!(offset("101%"), None);
    }
}
