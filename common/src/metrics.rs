//! Prometheus metrics and structured logs.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use std::sync::atomic::{AtomicU64, Ordering};

/// The metrics of one role. Each role has its own registry, so that roles
/// sharing a process (`cascade dev`) still report apart.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    bytes: IntCounterVec,
    duration: HistogramVec,
    connections: IntGauge,
    /// Body bytes sent so far, all outcomes: what a load governor samples
    /// (cheaper than gathering the registry).
    egress: AtomicU64,
}

/// Counts one open client connection while held.
#[derive(Debug)]
pub struct ConnectionGuard(IntGauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// Creates the listener metrics for `role` (`edge`, `shield`, …).
    pub fn new(role: &str) -> Metrics {
        let registry = Registry::new_custom(Some("cascade".into()), None).unwrap_or_default();
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Requests answered").const_label("role", role),
            &["status", "cache", "protocol"],
        )
        .expect("static metric definition");
        let bytes = IntCounterVec::new(
            Opts::new("response_body_bytes_total", "Response body bytes sent")
                .const_label("role", role),
            &["cache"],
        )
        .expect("static metric definition");
        let duration = HistogramVec::new(
            HistogramOpts::new("request_duration_seconds", "Time to answer a request")
                .const_label("role", role)
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            &["cache"],
        )
        .expect("static metric definition");
        let connections = IntGauge::with_opts(
            Opts::new(
                "connections_open",
                "Client connections open now (TCP and QUIC)",
            )
            .const_label("role", role),
        )
        .expect("static metric definition");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(bytes.clone()),
            Box::new(duration.clone()),
            Box::new(connections.clone()),
        ] {
            let _ = registry.register(c);
        }
        Metrics {
            registry,
            requests,
            bytes,
            duration,
            connections,
            egress: AtomicU64::new(0),
        }
    }

    /// Counts a client connection as open until the guard drops.
    pub fn connection(&self) -> ConnectionGuard {
        self.connections.inc();
        ConnectionGuard(self.connections.clone())
    }

    /// Client connections open now.
    pub fn connections_open(&self) -> u64 {
        self.connections.get().max(0) as u64
    }

    /// Response body bytes sent so far.
    pub fn egress_bytes(&self) -> u64 {
        self.egress.load(Ordering::Relaxed)
    }

    /// The registry, for role-specific metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts one answered request: status, cache outcome, protocol,
    /// bytes and time.
    pub fn observe(
        &self,
        status: u16,
        cache: &str,
        protocol: &str,
        bytes: usize,
        elapsed: Duration,
    ) {
        let owned;
        let status = match status {
            200 => "200",
            206 => "206",
            304 => "304",
            404 => "404",
            s => {
                owned = s.to_string();
                owned.as_str()
            }
        };
        self.requests
            .with_label_values(&[status, cache, protocol])
            .inc();
        self.bytes.with_label_values(&[cache]).inc_by(bytes as u64);
        self.egress.fetch_add(bytes as u64, Ordering::Relaxed);
        self.duration
            .with_label_values(&[cache])
            .observe(elapsed.as_secs_f64());
    }

    /// Requests answered with this cache outcome (`hit`, `miss`, …), all statuses.
    pub fn requests_with_cache(&self, cache: &str) -> u64 {
        let mut total = 0;
        for mf in self.registry.gather() {
            if !mf.name().ends_with("requests_total") {
                continue;
            }
            for m in mf.get_metric() {
                if m.get_label()
                    .iter()
                    .any(|l| l.name() == "cache" && l.value() == cache)
                {
                    total += m.get_counter().get_value() as u64;
                }
            }
        }
        total
    }

    /// Requests answered, all outcomes.
    pub fn requests_total(&self) -> u64 {
        self.registry
            .gather()
            .iter()
            .filter(|mf| mf.name().ends_with("requests_total"))
            .flat_map(|mf| {
                mf.get_metric()
                    .iter()
                    .map(|m| m.get_counter().get_value() as u64)
                    .collect::<Vec<_>>()
            })
            .sum()
    }

    /// Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Keeps the log writer thread; dropping it writes out what is queued.
/// Hold it for the life of the process.
#[must_use = "logs queued when the guard drops are written then; hold it until exit"]
pub struct LogGuard(#[allow(dead_code)] Option<tracing_appender::non_blocking::WorkerGuard>);

impl std::fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogGuard")
    }
}

/// Log lines queued for the writer thread; past this a logging request
/// waits, as it would on a blocking write (lines are never dropped).
const LOG_QUEUE_LINES: usize = 64 * 1024;

/// Sets up `tracing`: JSON lines by default, plain text when `text` is set.
/// `RUST_LOG` filters as usual (default `info`).
///
/// Lines are formatted where they are logged and written to stdout by a
/// thread of their own through a buffer it flushes whenever the queue runs
/// dry: under load, one system call carries many lines (an access log
/// line per request would otherwise cost a `write` each), and when quiet
/// each line goes out at once.
pub fn init_logging(text: bool) -> LogGuard {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("cascade-log")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stdout(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let installed = if text {
        builder.try_init()
    } else {
        builder.json().flatten_event(true).try_init()
    };
    LogGuard(installed.is_ok().then_some(guard))
}
