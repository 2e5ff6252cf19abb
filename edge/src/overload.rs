//! Load shedding, the pure part: capacity, measured load, and the shedding
//! level they lead to, with hysteresis. No clock and no sockets: samples
//! and `now` come in, a level goes out; the edge's governor
//! (`governor.rs`) measures and applies it.
//!
//! The order, as load nears capacity, is what a viewer would choose:
//! first what is not video (CMCD prefetch, pre-warm), then the rate of
//! interactive fan-out, then what new sessions are offered (the top rungs),
//! then whether new sessions start here at all. Segment requests of
//! sessions already playing are never shed.

use std::time::Duration;

/// How far shedding has gone, in order. Each level includes the ones below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Level {
    /// Everything served.
    Normal = 0,
    /// CMCD prefetches and pre-warm fetches refused.
    NoPrefetch = 1,
    /// Reaction aggregates sent to viewers less often (comments still go out).
    SlowFanout = 2,
    /// New sessions get manifests without the top rungs.
    CapNew = 3,
    /// New sessions refused (503 with `Retry-After`).
    RefuseNew = 4,
}

impl Level {
    /// Every level, lowest first.
    pub(crate) const ALL: [Level; 5] = [
        Level::Normal,
        Level::NoPrefetch,
        Level::SlowFanout,
        Level::CapNew,
        Level::RefuseNew,
    ];

    /// The name in logs and metrics.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Level::Normal => "normal",
            Level::NoPrefetch => "no_prefetch",
            Level::SlowFanout => "slow_fanout",
            Level::CapNew => "cap_new",
            Level::RefuseNew => "refuse_new",
        }
    }

    pub(crate) fn from_u8(n: u8) -> Level {
        Level::ALL
            .get(usize::from(n))
            .copied()
            .unwrap_or(Level::RefuseNew)
    }
}

/// What an edge may carry; a zero is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Capacity {
    /// Egress, bits per second.
    pub(crate) egress_bps: u64,
    /// Client connections open at once.
    pub(crate) connections: u64,
    /// CPU, as a share of all cores (0 to 1).
    pub(crate) cpu: f64,
}

/// What an edge carries now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Load {
    /// Egress, bits per second.
    pub(crate) egress_bps: u64,
    /// Client connections open.
    pub(crate) connections: u64,
    /// CPU in use, as a share of all cores.
    pub(crate) cpu: f64,
}

impl Capacity {
    /// Whether any limit is configured.
    pub(crate) fn is_limited(&self) -> bool {
        self.egress_bps > 0 || self.connections > 0 || self.cpu > 0.0
    }

    /// The highest share of any configured limit that `load` uses (1.0:
    /// full); 0 when nothing is limited.
    pub(crate) fn utilisation(&self, load: &Load) -> f64 {
        let share = |used: f64, cap: f64| if cap > 0.0 { used / cap } else { 0.0 };
        share(load.egress_bps as f64, self.egress_bps as f64)
            .max(share(load.connections as f64, self.connections as f64))
            .max(share(load.cpu, self.cpu))
    }
}

/// Where each level starts, as a share of capacity, and how shedding lets go.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Policy {
    /// Utilisation at which levels 1 to 4 start, rising.
    pub(crate) enter: [f64; 4],
    /// A level is released once utilisation is this far below where it started.
    pub(crate) hysteresis: f64,
    /// Least time a level is held before stepping down (never before going up).
    pub(crate) hold: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            enter: [0.7, 0.8, 0.9, 1.0],
            hysteresis: 0.1,
            hold: Duration::from_secs(5),
        }
    }
}

/// The shedding state machine: rises at once to the level the load calls
/// for; falls one level at a time, once utilisation is below the level's
/// start less the hysteresis and the level has been held long enough, so
/// a load hovering at a threshold does not flap.
#[derive(Debug)]
pub(crate) struct Shedder {
    policy: Policy,
    level: Level,
    /// When the level last changed (the governor's clock, any origin).
    since: Duration,
}

impl Shedder {
    pub(crate) fn new(policy: Policy) -> Shedder {
        Shedder {
            policy,
            level: Level::Normal,
            since: Duration::ZERO,
        }
    }

    #[cfg(test)]
    pub(crate) fn level(&self) -> Level {
        self.level
    }

    /// Takes one utilisation sample at `now`; returns the new level if it
    /// changed.
    pub(crate) fn sample(&mut self, utilisation: f64, now: Duration) -> Option<Level> {
        let called_for = self
            .policy
            .enter
            .iter()
            .zip(&Level::ALL[1..])
            .filter(|(at, _)| utilisation >= **at)
            .map(|(_, l)| *l)
            .next_back()
            .unwrap_or(Level::Normal);
        let next = if called_for > self.level {
            called_for
        } else if self.level > Level::Normal
            && now.saturating_sub(self.since) >= self.policy.hold
            && utilisation < self.enter_of(self.level) - self.policy.hysteresis
        {
            Level::from_u8(self.level as u8 - 1)
        } else {
            return None;
        };
        self.level = next;
        self.since = now;
        Some(next)
    }

    fn enter_of(&self, level: Level) -> f64 {
        match level {
            Level::Normal => 0.0,
            l => self.policy.enter[l as usize - 1],
        }
    }
}

/// The maximum bit rate a player should pick under load, in kbit/s (CMSD
/// `mb`): an even share of what is left of the egress capacity among the
/// sessions playing, never below `floor_kbps`. `None` when egress is not
/// limited or nothing is playing.
pub(crate) fn fair_share_kbps(cap: &Capacity, sessions: u64, floor_kbps: u64) -> Option<u64> {
    if cap.egress_bps == 0 || sessions == 0 {
        return None;
    }
    // Leave a tenth for manifests, audio and headroom.
    let share = cap.egress_bps / 10 * 9 / sessions / 1000;
    Some(share.max(floor_kbps))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn utilisation_is_the_fullest_limit() {
        let cap = Capacity {
            egress_bps: 1000,
            connections: 10,
            cpu: 0.5,
        };
        let load = Load {
            egress_bps: 500,
            connections: 8,
            cpu: 0.25,
        };
        assert!((cap.utilisation(&load) - 0.8).abs() < 1e-9);
        assert_eq!(Capacity::default().utilisation(&load), 0.0);
        assert!(!Capacity::default().is_limited());
    }

    #[test]
    fn shedding_rises_at_once_and_falls_one_step_at_a_time() {
        let mut s = Shedder::new(Policy::default());
        assert_eq!(s.sample(0.5, secs(0)), None);
        assert_eq!(s.sample(0.75, secs(1)), Some(Level::NoPrefetch));
        // Straight to the top at twice the capacity.
        assert_eq!(s.sample(2.0, secs(2)), Some(Level::RefuseNew));
        // Load gone, but held for `hold`.
        assert_eq!(s.sample(0.1, secs(3)), None);
        assert_eq!(s.sample(0.1, secs(7)), Some(Level::CapNew));
        assert_eq!(s.sample(0.1, secs(8)), None, "each step is held too");
        assert_eq!(s.sample(0.1, secs(12)), Some(Level::SlowFanout));
        assert_eq!(s.sample(0.1, secs(17)), Some(Level::NoPrefetch));
        assert_eq!(s.sample(0.1, secs(22)), Some(Level::Normal));
        assert_eq!(s.sample(0.1, secs(40)), None);
    }

    #[test]
    fn a_load_at_a_threshold_does_not_flap() {
        let mut s = Shedder::new(Policy::default());
        assert_eq!(s.sample(0.91, secs(0)), Some(Level::CapNew));
        // Just under where capping starts, but within the hysteresis.
        for t in 1..60 {
            let u = if t % 2 == 0 { 0.89 } else { 0.91 };
            assert_eq!(s.sample(u, secs(t)), None, "at {t} s");
        }
        assert_eq!(s.level(), Level::CapNew);
        assert_eq!(s.sample(0.79, secs(61)), Some(Level::SlowFanout));
    }

    #[test]
    fn a_fair_share_divides_the_egress_left() {
        let cap = Capacity {
            egress_bps: 100_000_000,
            ..Capacity::default()
        };
        assert_eq!(fair_share_kbps(&cap, 30, 200), Some(3000));
        assert_eq!(fair_share_kbps(&cap, 10_000, 200), Some(200));
        assert_eq!(fair_share_kbps(&cap, 0, 200), None);
        assert_eq!(fair_share_kbps(&Capacity::default(), 5, 200), None);
    }
}
