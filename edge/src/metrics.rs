//! The edge's own metrics, beside the listener's request metrics: one
//! struct, registered once at start, cloned into the parts that count.

use cascade_serve::Metrics;
use cascade_token::Rejection;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};

/// Every counter the edge keeps.
pub(crate) struct EdgeMetrics {
    pub(crate) token_rejections: IntCounterVec,
    pub(crate) token_accepted: IntCounterVec,
    pub(crate) geo_lookups: IntCounterVec,
    pub(crate) geo_blocked: IntCounterVec,
    pub(crate) geo_reloads: IntCounterVec,
    pub(crate) shield_events: IntCounterVec,
    pub(crate) cmcd_prefetch: IntCounterVec,
    pub(crate) tls_reloads: IntCounterVec,
    /// Time to answer, by route (`manifest`, `segment`, `api`, `page`,
    /// `fleet`, `refused`): where the edge's time goes.
    pub(crate) route_seconds: HistogramVec,
    /// Reactions counted, refused (by reason), and batches the origin
    /// never took.
    pub(crate) reactions_accepted: prometheus::IntCounter,
    pub(crate) reactions_refused: IntCounterVec,
    pub(crate) reaction_batches_dropped: prometheus::IntCounter,
    pub(crate) ad_events: IntCounterVec,
    /// License and key requests, by result; protected titles' key fetches.
    pub(crate) licenses: IntCounterVec,
}

impl EdgeMetrics {
    /// Creates the counters and registers them with `metrics`.
    pub(crate) fn register(metrics: &Metrics) -> anyhow::Result<EdgeMetrics> {
        let counter = |name: &str, help: &str, label: &str| -> anyhow::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
            metrics.registry().register(Box::new(c.clone()))?;
            Ok(c)
        };
        let token_rejections = counter(
            "edge_token_rejections_total",
            "Requests refused for their token, by reason",
            "reason",
        )?;
        // Every reason shows, at zero, before the first refusal.
        for r in Rejection::ALL {
            token_rejections.with_label_values(&[r.code()]);
        }
        let geo_blocked = IntCounterVec::new(
            Opts::new(
                "edge_geo_blocked_total",
                "Requests refused for the viewer's country, by country and rule",
            ),
            &["country", "rule"],
        )?;
        metrics.registry().register(Box::new(geo_blocked.clone()))?;
        let shield_events = IntCounterVec::new(
            Opts::new(
                "edge_shield_health_events_total",
                "Shields marked up or down by health checks, or ejected after a failed request",
            ),
            &["shield", "state"],
        )?;
        metrics
            .registry()
            .register(Box::new(shield_events.clone()))?;
        let route_seconds = HistogramVec::new(
            HistogramOpts::new(
                "edge_route_seconds",
                "Time from request to the end of the answer, by route",
            )
            .buckets(vec![0.0005, 0.001, 0.005, 0.025, 0.1, 0.5, 2.0, 10.0]),
            &["route"],
        )?;
        metrics
            .registry()
            .register(Box::new(route_seconds.clone()))?;
        let plain = |name: &str, help: &str| -> anyhow::Result<prometheus::IntCounter> {
            let c = prometheus::IntCounter::new(name, help)?;
            metrics.registry().register(Box::new(c.clone()))?;
            Ok(c)
        };
        Ok(EdgeMetrics {
            reactions_accepted: plain(
                "edge_reactions_accepted_total",
                "Reactions counted at this edge",
            )?,
            reactions_refused: counter(
                "edge_reactions_refused_total",
                "Reactions refused, by reason",
                "reason",
            )?,
            ad_events: counter(
                "edge_ad_events_total",
                "Ad insertion at this edge: personalised playlists, session plans fetched or failed, ad segment reports sent or dropped",
                "event",
            )?,
            licenses: counter(
                "edge_licenses_total",
                "License and key requests (granted, or why refused) and protected titles' key fetches",
                "result",
            )?,
            reaction_batches_dropped: plain(
                "edge_reaction_batches_dropped_total",
                "Reaction batches the origin never took (unreachable, or refused)",
            )?,
            route_seconds,
            token_rejections,
            token_accepted: counter(
                "edge_token_accepted_total",
                "Requests whose token verified, by the key that matched",
                "kid",
            )?,
            geo_lookups: counter(
                "edge_geo_lookups_total",
                "Country lookups, by result",
                "result",
            )?,
            geo_blocked,
            geo_reloads: counter(
                "edge_geo_reloads_total",
                "Geo database reloads, by result",
                "result",
            )?,
            shield_events,
            cmcd_prefetch: counter(
                "edge_cmcd_prefetch_total",
                "Next segments named by CMCD nor, by what the edge did",
                "result",
            )?,
            tls_reloads: counter(
                "edge_tls_reloads_total",
                "Certificate reloads after the files changed, by result",
                "result",
            )?,
        })
    }
}
