//! VAST documents: inline ads and wrappers, their linear creatives, media
//! files and tracking, as the ad server sent them (checked, limited).

use crate::tree::{self, Node};
use crate::AdError;

/// Most ads kept from one document (an ad pod).
const MAX_ADS: usize = 50;
/// Most creatives, media files, tracking events and URLs of one kind kept
/// per ad.
const MAX_PER_AD: usize = 20;
/// Longest URL kept.
const MAX_URL: usize = 4096;
/// Longest creative accepted (an hour: longer is a mistake).
const MAX_DURATION_MS: u64 = 3_600_000;

/// A VAST document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vast {
    /// `2.0`, `3.0`, `4.2`, …
    pub version: String,
    /// The ads, pods in `sequence` order, then stand-alone ads.
    pub ads: Vec<Ad>,
    /// Error URLs of the document (a "no ad" answer carries them).
    pub errors: Vec<String>,
}

/// One ad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ad {
    pub id: String,
    /// Its place in a pod, if it is in one.
    pub sequence: Option<u32>,
    pub body: AdBody,
}

/// An ad is inline (media here) or a wrapper (media elsewhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdBody {
    InLine(InLine),
    Wrapper(Wrapper),
}

/// An ad with its media.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InLine {
    pub ad_system: String,
    pub title: String,
    pub impressions: Vec<String>,
    pub errors: Vec<String>,
    /// Linear creatives with a duration (others are not stitched).
    pub linears: Vec<Linear>,
}

/// An ad whose VAST is at another URL; its impressions, errors and
/// tracking add to the ad's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wrapper {
    pub ad_tag_uri: String,
    pub impressions: Vec<String>,
    pub errors: Vec<String>,
    pub tracking: Vec<Tracking>,
}

/// A linear creative: a video played in the break.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Linear {
    pub id: String,
    pub duration_ms: u64,
    pub media_files: Vec<MediaFile>,
    pub tracking: Vec<Tracking>,
    pub click_through: Option<String>,
}

/// One rendition of a creative.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaFile {
    pub url: String,
    /// `video/mp4`, …
    pub mime: String,
    /// `progressive` or `streaming`.
    pub delivery: String,
    pub width: u32,
    pub height: u32,
    pub bitrate_kbps: Option<u32>,
    pub codec: Option<String>,
}

/// A tracking URL and the event it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracking {
    pub event: TrackingEvent,
    pub url: String,
}

/// The events server-side tracking fires.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TrackingEvent {
    Start,
    FirstQuartile,
    Midpoint,
    ThirdQuartile,
    Complete,
    /// Another event (`pause`, `mute`, …), kept by name.
    Other(String),
}

impl TrackingEvent {
    fn parse(name: &str) -> TrackingEvent {
        match name {
            "start" => TrackingEvent::Start,
            "firstQuartile" => TrackingEvent::FirstQuartile,
            "midpoint" => TrackingEvent::Midpoint,
            "thirdQuartile" => TrackingEvent::ThirdQuartile,
            "complete" => TrackingEvent::Complete,
            other => TrackingEvent::Other(other.to_string()),
        }
    }
}

/// Parses a VAST document.
pub fn parse_vast(doc: &[u8]) -> Result<Vast, AdError> {
    from_node(&tree::parse(doc)?)
}

/// A VAST document from its element (also inside a VMAP).
pub(crate) fn from_node(root: &Node) -> Result<Vast, AdError> {
    if root.name != "VAST" {
        return Err(AdError::Schema(format!(
            "the root is <{}>, not <VAST>",
            root.name
        )));
    }
    let version = root
        .attr("version")
        .map(str::trim)
        .ok_or_else(|| AdError::Schema("<VAST> has no version".into()))?
        .to_string();
    if !["2", "3", "4"].iter().any(|v| version.starts_with(v)) {
        return Err(AdError::Version(version));
    }
    let mut ads: Vec<Ad> = root.all("Ad").take(MAX_ADS).filter_map(ad).collect();
    // Pods first, in their order; the stable sort keeps the rest as sent.
    ads.sort_by_key(|a| a.sequence.map_or((1, 0), |s| (0, s)));
    Ok(Vast {
        version,
        ads,
        errors: urls(root, "Error"),
    })
}

fn ad(n: &Node) -> Option<Ad> {
    let id = n.attr("id").unwrap_or("").to_string();
    let sequence = n.attr("sequence").and_then(|s| s.trim().parse().ok());
    let body = if let Some(i) = n.child("InLine") {
        AdBody::InLine(InLine {
            ad_system: i.text_of("AdSystem").unwrap_or_default(),
            title: i.text_of("AdTitle").unwrap_or_default(),
            impressions: urls(i, "Impression"),
            errors: urls(i, "Error"),
            linears: i
                .child("Creatives")
                .map(|c| {
                    c.all("Creative")
                        .filter_map(linear)
                        .take(MAX_PER_AD)
                        .collect()
                })
                .unwrap_or_default(),
        })
    } else if let Some(w) = n.child("Wrapper") {
        AdBody::Wrapper(Wrapper {
            ad_tag_uri: w.text_of("VASTAdTagURI").filter(|u| is_url(u))?,
            impressions: urls(w, "Impression"),
            errors: urls(w, "Error"),
            tracking: w
                .child("Creatives")
                .map(|c| {
                    c.all("Creative")
                        .filter_map(|cr| cr.child("Linear"))
                        .flat_map(tracking)
                        .take(MAX_PER_AD * 4)
                        .collect()
                })
                .unwrap_or_default(),
        })
    } else {
        return None;
    };
    Some(Ad { id, sequence, body })
}

fn linear(creative: &Node) -> Option<Linear> {
    let l = creative.child("Linear")?;
    let duration_ms = l.text_of("Duration").and_then(|d| duration(&d))?;
    let media_files = l
        .child("MediaFiles")
        .map(|m| {
            m.all("MediaFile")
                .filter_map(|f| {
                    let url = f.text.trim();
                    is_url(url).then(|| MediaFile {
                        url: url.to_string(),
                        mime: f.attr("type").unwrap_or("").to_string(),
                        delivery: f.attr("delivery").unwrap_or("").to_string(),
                        width: f
                            .attr("width")
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0),
                        height: f
                            .attr("height")
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0),
                        bitrate_kbps: f.attr("bitrate").and_then(|v| v.trim().parse().ok()),
                        codec: f.attr("codec").map(str::to_string),
                    })
                })
                .take(MAX_PER_AD)
                .collect()
        })
        .unwrap_or_default();
    Some(Linear {
        id: creative.attr("id").unwrap_or("").to_string(),
        duration_ms,
        media_files,
        tracking: tracking(l).take(MAX_PER_AD * 4).collect(),
        click_through: l
            .child("VideoClicks")
            .and_then(|v| v.text_of("ClickThrough"))
            .filter(|u| is_url(u)),
    })
}

fn tracking(linear: &Node) -> impl Iterator<Item = Tracking> + '_ {
    linear
        .child("TrackingEvents")
        .into_iter()
        .flat_map(|t| t.all("Tracking"))
        .filter_map(|t| {
            let url = t.text.trim();
            let event = t.attr("event")?;
            is_url(url).then(|| Tracking {
                event: TrackingEvent::parse(event),
                url: url.to_string(),
            })
        })
}

/// The URLs of the children named `name` (impressions, errors).
fn urls(n: &Node, name: &str) -> Vec<String> {
    n.all(name)
        .map(|c| c.text.trim())
        .filter(|u| is_url(u))
        .take(MAX_PER_AD)
        .map(str::to_string)
        .collect()
}

fn is_url(u: &str) -> bool {
    u.len() <= MAX_URL && (u.starts_with("http://") || u.starts_with("https://"))
}

/// `HH:MM:SS` or `HH:MM:SS.mmm` in milliseconds.
pub(crate) fn duration(s: &str) -> Option<u64> {
    let mut parts = s.trim().split(':');
    let h: u64 = parts.next()?.parse().ok()?;
    let m: u64 = parts.next()?.parse().ok()?;
    let sec = parts.next()?;
    if parts.next().is_some() || m >= 60 {
        return None;
    }
    let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let s: u64 = whole.parse().ok()?;
    if s >= 60 || frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ms: u64 = format!("{frac:0<3}").parse().ok()?;
    let total = ((h * 60 + m) * 60 + s) * 1000 + ms;
    (total > 0 && total <= MAX_DURATION_MS).then_some(total)
}

/// The media file to condition: MP4 first, then the highest bit rate at or
/// under `max_kbps` (or the lowest, if none is); `None` when there is no
/// MP4 or WebM file at all (VAST error 403).
pub fn pick_media_file(files: &[MediaFile], max_kbps: u32) -> Option<&MediaFile> {
    let usable = |f: &&MediaFile| matches!(f.mime.as_str(), "video/mp4" | "video/webm" | "");
    let mp4: Vec<&MediaFile> = files.iter().filter(|f| f.mime == "video/mp4").collect();
    let pool: Vec<&MediaFile> = if mp4.is_empty() {
        files.iter().filter(usable).collect()
    } else {
        mp4
    };
    let under = pool
        .iter()
        .filter(|f| f.bitrate_kbps.is_some_and(|b| b <= max_kbps))
        .max_by_key(|f| f.bitrate_kbps);
    under
        .or_else(|| {
            pool.iter()
                .min_by_key(|f| f.bitrate_kbps.unwrap_or(u32::MAX))
        })
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INLINE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<VAST version="4.2">
  <Ad id="stand-alone"><InLine><AdSystem>Other</AdSystem><AdTitle>Later</AdTitle>
    <Creatives><Creative id="c9"><Linear><Duration>00:00:05</Duration>
      <MediaFiles><MediaFile delivery="progressive" type="video/mp4" width="640" height="360" bitrate="800">https://cdn.example/c9.mp4</MediaFile></MediaFiles>
    </Linear></Creative></Creatives></InLine></Ad>
  <Ad id="pod-2" sequence="2"><InLine><AdSystem>Cascade</AdSystem><AdTitle>Second</AdTitle>
    <Impression><![CDATA[https://track.example/imp?ad=2&cb=[CACHEBUSTING]]]></Impression>
    <Creatives><Creative id="c2"><Linear><Duration>00:00:10.500</Duration>
      <MediaFiles><MediaFile delivery="progressive" type="video/mp4" width="1280" height="720" bitrate="2000">https://cdn.example/c2.mp4</MediaFile></MediaFiles>
    </Linear></Creative></Creatives></InLine></Ad>
  <Ad id="pod-1" sequence="1"><InLine><AdSystem>Cascade</AdSystem><AdTitle>First</AdTitle>
    <Error>https://track.example/err?code=[ERRORCODE]</Error>
    <Impression>https://track.example/imp?ad=1</Impression>
    <Creatives>
      <Creative id="companion"><CompanionAds/></Creative>
      <Creative id="c1" sequence="1"><Linear>
        <Duration>00:00:15.000</Duration>
        <TrackingEvents>
          <Tracking event="start">https://track.example/start</Tracking>
          <Tracking event="firstQuartile">https://track.example/q1</Tracking>
          <Tracking event="midpoint">https://track.example/mid</Tracking>
          <Tracking event="thirdQuartile">https://track.example/q3</Tracking>
          <Tracking event="complete">https://track.example/done</Tracking>
          <Tracking event="pause">https://track.example/pause</Tracking>
          <Tracking event="start">javascript:alert(1)</Tracking>
        </TrackingEvents>
        <VideoClicks><ClickThrough>https://brand.example/</ClickThrough></VideoClicks>
        <MediaFiles>
          <MediaFile delivery="progressive" type="video/mp4" width="1920" height="1080" bitrate="6000" codec="avc1.640028">https://cdn.example/c1-1080.mp4</MediaFile>
          <MediaFile delivery="progressive" type="video/mp4" width="1280" height="720" bitrate="3000">https://cdn.example/c1-720.mp4</MediaFile>
          <MediaFile delivery="progressive" type="video/webm" width="1280" height="720" bitrate="2500">https://cdn.example/c1-720.webm</MediaFile>
          <MediaFile delivery="streaming" type="application/x-mpegURL">https://cdn.example/c1.m3u8</MediaFile>
        </MediaFiles>
      </Linear></Creative>
    </Creatives>
  </InLine></Ad>
</VAST>"#;

    #[test]
    fn inline_ads_pods_creatives_media_and_tracking() {
        let v = parse_vast(INLINE.as_bytes()).unwrap();
        assert_eq!(v.version, "4.2");
        let ids: Vec<&str> = v.ads.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(
            ids,
            ["pod-1", "pod-2", "stand-alone"],
            "pods in order, then the rest"
        );
        let AdBody::InLine(first) = &v.ads[0].body else {
            panic!("inline")
        };
        assert_eq!(first.title, "First");
        assert_eq!(first.errors, ["https://track.example/err?code=[ERRORCODE]"]);
        assert_eq!(first.linears.len(), 1, "the companion is not linear");
        let l = &first.linears[0];
        assert_eq!(l.duration_ms, 15_000);
        assert_eq!(l.media_files.len(), 4);
        let events: Vec<&TrackingEvent> = l.tracking.iter().map(|t| &t.event).collect();
        assert_eq!(events.len(), 6, "the javascript: URL is dropped");
        assert_eq!(events[4], &TrackingEvent::Complete);
        assert_eq!(l.click_through.as_deref(), Some("https://brand.example/"));
        let AdBody::InLine(second) = &v.ads[1].body else {
            panic!("inline")
        };
        assert_eq!(second.linears[0].duration_ms, 10_500);
        assert_eq!(
            second.impressions,
            ["https://track.example/imp?ad=2&cb=[CACHEBUSTING]"]
        );
        // The media file to condition: MP4 at or under the cap.
        assert_eq!(
            pick_media_file(&l.media_files, 4000).unwrap().url,
            "https://cdn.example/c1-720.mp4"
        );
        assert_eq!(
            pick_media_file(&l.media_files, 9000).unwrap().url,
            "https://cdn.example/c1-1080.mp4"
        );
        assert_eq!(
            pick_media_file(&l.media_files, 100).unwrap().url,
            "https://cdn.example/c1-720.mp4"
        );
        let only_hls = [l.media_files[3].clone()];
        assert_eq!(
            pick_media_file(&only_hls, 4000),
            None,
            "no file we can condition (403)"
        );
    }

    #[test]
    fn wrappers_point_on_and_carry_their_tracking() {
        let doc = r#"<VAST version="3.0"><Ad id="w"><Wrapper><AdSystem>Net</AdSystem>
            <VASTAdTagURI><![CDATA[https://ads.example/next?x=1]]></VASTAdTagURI>
            <Impression>https://net.example/imp</Impression><Error>https://net.example/err?e=[ERRORCODE]</Error>
            <Creatives><Creative><Linear><TrackingEvents><Tracking event="complete">https://net.example/done</Tracking></TrackingEvents></Linear></Creative></Creatives>
            </Wrapper></Ad></VAST>"#;
        let v = parse_vast(doc.as_bytes()).unwrap();
        let AdBody::Wrapper(w) = &v.ads[0].body else {
            panic!("wrapper")
        };
        assert_eq!(w.ad_tag_uri, "https://ads.example/next?x=1");
        assert_eq!(w.impressions, ["https://net.example/imp"]);
        assert_eq!(w.tracking[0].event, TrackingEvent::Complete);
        // A wrapper without a usable URL is no ad.
        let v = parse_vast(b"<VAST version=\"3.0\"><Ad><Wrapper><VASTAdTagURI>ftp://x</VASTAdTagURI></Wrapper></Ad></VAST>").unwrap();
        assert!(v.ads.is_empty());
    }

    #[test]
    fn no_ad_missing_creatives_and_bad_documents() {
        // "No ad" is a VAST with only an error URL.
        let v = parse_vast(b"<VAST version=\"4.0\"><Error>https://x.example/noad</Error></VAST>")
            .unwrap();
        assert!(v.ads.is_empty());
        assert_eq!(v.errors, ["https://x.example/noad"]);
        // An inline ad whose creative has no duration has nothing to stitch.
        let v = parse_vast(b"<VAST version=\"2.0\"><Ad><InLine><Creatives><Creative><Linear><MediaFiles><MediaFile type=\"video/mp4\">https://x/a.mp4</MediaFile></MediaFiles></Linear></Creative></Creatives></InLine></Ad></VAST>").unwrap();
        let AdBody::InLine(i) = &v.ads[0].body else {
            panic!("inline")
        };
        assert!(i.linears.is_empty());
        assert_eq!(
            parse_vast(b"<VAST version=\"1.0\"></VAST>")
                .unwrap_err()
                .code(),
            102
        );
        assert_eq!(parse_vast(b"<VAST></VAST>").unwrap_err().code(), 101);
        assert_eq!(parse_vast(b"<VMAP/>").unwrap_err().code(), 101);
        assert_eq!(
            parse_vast(b"<VAST version=\"4.0\"><Ad>")
                .unwrap_err()
                .code(),
            100
        );
        assert_eq!(parse_vast(b"not xml at all <<<").unwrap_err().code(), 100);
    }

    #[test]
    fn durations_are_checked() {
        assert_eq!(duration("00:00:15"), Some(15_000));
        assert_eq!(duration("00:01:02.5"), Some(62_500));
        assert_eq!(duration(" 00:00:00.040 "), Some(40));
        for bad in [
            "",
            "15",
            "00:60:00",
            "00:00:61",
            "00:00:00",
            "01:00:00.1234",
            "a:b:c",
            "02:00:00",
        ] {
            assert_eq!(duration(bad), None, "{bad}");
        }
    }
}
