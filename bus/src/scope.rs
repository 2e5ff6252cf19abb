//! What real-time events are about, and the subjects they travel on: a
//! *scope* (a live channel or an on-demand asset, named as in media paths),
//! flash targets, and the fixed set of reactions. Origins and edges both
//! use these, so that both name subjects the same way.

use crate::subject::is_valid_token;

/// The reactions viewers may send, by name (the page draws the emoji).
pub const REACTIONS: [&str; 6] = ["clap", "fire", "laugh", "wow", "sad", "heart"];

/// The index of a reaction name, if it is one.
pub fn reaction_index(name: &str) -> Option<usize> {
    REACTIONS.iter().position(|r| *r == name)
}

/// Every stored flash, whatever its target.
pub const FLASH_FILTER: &str = "cascade.rt.flash.>";

/// What a viewer watches: a live channel or an on-demand asset.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// `/live/{name}/…`
    Live(String),
    /// `/vod/{asset}/…`
    Vod(String),
}

impl Scope {
    /// From a kind (`live`, `vod`) and an id, if both are acceptable.
    pub fn new(kind: &str, id: &str) -> Option<Scope> {
        if !is_valid_token(id) {
            return None;
        }
        match kind {
            "live" => Some(Scope::Live(id.to_string())),
            "vod" => Some(Scope::Vod(id.to_string())),
            _ => None,
        }
    }

    /// From its key, `live/{name}` or `vod/{asset}`.
    pub fn parse(key: &str) -> Option<Scope> {
        let (kind, id) = key.split_once('/')?;
        Scope::new(kind, id)
    }

    /// `live` or `vod`.
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Live(_) => "live",
            Scope::Vod(_) => "vod",
        }
    }

    /// The channel name or asset id.
    pub fn id(&self) -> &str {
        match self {
            Scope::Live(id) | Scope::Vod(id) => id,
        }
    }

    /// `live/{name}` or `vod/{asset}`: how it is stored and sent.
    pub fn key(&self) -> String {
        format!("{}/{}", self.kind(), self.id())
    }

    /// Where its media is: a playback token for this path lets a viewer in.
    pub fn media_path(&self) -> String {
        format!("/{}/{}/", self.kind(), self.id())
    }

    /// The subject of its stored events (comments, retractions, polls).
    pub fn stored_subject(&self) -> String {
        format!("cascade.rt.{}.{}", self.kind(), self.id())
    }

    /// The subject of its notices (reaction swarms, poll results).
    pub fn notice_subject(&self) -> String {
        format!("cascade.now.{}.{}", self.kind(), self.id())
    }
}

/// Whom a flash is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlashTarget {
    /// Everyone.
    All,
    /// Viewers in one country (ISO 3166-1 alpha-2, upper case).
    Region(String),
    /// Viewers of one live channel.
    Channel(String),
}

impl FlashTarget {
    /// From its key: `all`, `region/{CC}` or `live/{channel}`.
    pub fn parse(key: &str) -> Option<FlashTarget> {
        if key == "all" {
            return Some(FlashTarget::All);
        }
        match key.split_once('/')? {
            ("region", cc) if cc.len() == 2 && cc.bytes().all(|b| b.is_ascii_uppercase()) => {
                Some(FlashTarget::Region(cc.to_string()))
            }
            ("live", name) if is_valid_token(name) => Some(FlashTarget::Channel(name.to_string())),
            _ => None,
        }
    }

    /// `all`, `region/{CC}` or `live/{channel}`.
    pub fn key(&self) -> String {
        match self {
            FlashTarget::All => "all".into(),
            FlashTarget::Region(cc) => format!("region/{cc}"),
            FlashTarget::Channel(name) => format!("live/{name}"),
        }
    }

    /// The subject flashes for it are stored on.
    pub fn subject(&self) -> String {
        match self {
            FlashTarget::All => "cascade.rt.flash.all".into(),
            FlashTarget::Region(cc) => format!("cascade.rt.flash.region.{cc}"),
            FlashTarget::Channel(name) => format!("cascade.rt.flash.live.{name}"),
        }
    }

    /// Whether a viewer in `country` watching `scope` is meant.
    pub fn reaches(&self, country: Option<&str>, scope: &Scope) -> bool {
        match self {
            FlashTarget::All => true,
            FlashTarget::Region(cc) => country == Some(cc.as_str()),
            FlashTarget::Channel(name) => *scope == Scope::Live(name.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::is_valid_subject;

    #[test]
    fn scopes_and_targets_round_trip_and_make_valid_subjects() {
        for key in ["live/final", "vod/abc-123"] {
            let s = Scope::parse(key).unwrap();
            assert_eq!(s.key(), key);
            assert!(is_valid_subject(&s.stored_subject(), false));
            assert!(is_valid_subject(&s.notice_subject(), false));
        }
        assert_eq!(Scope::parse("live/a.b"), None);
        assert_eq!(Scope::parse("radio/x"), None);
        assert_eq!(Scope::parse("live/"), None);
        for key in ["all", "region/IN", "live/final"] {
            let t = FlashTarget::parse(key).unwrap();
            assert_eq!(t.key(), key);
            assert!(crate::subject_matches(FLASH_FILTER, &t.subject()));
        }
        assert_eq!(FlashTarget::parse("region/in"), None);
        assert_eq!(FlashTarget::parse("region/IND"), None);
        let final_ = Scope::Live("final".into());
        assert!(FlashTarget::Region("IN".into()).reaches(Some("IN"), &final_));
        assert!(!FlashTarget::Region("IN".into()).reaches(Some("GB"), &final_));
        assert!(!FlashTarget::Region("IN".into()).reaches(None, &final_));
        assert!(FlashTarget::Channel("final".into()).reaches(None, &final_));
        assert!(!FlashTarget::Channel("other".into()).reaches(None, &final_));
    }
}
