//! Viewer API load: stream heartbeats and playback starts against an origin
//! on SQLite and on PostgreSQL, each other's peer, in the same run on the
//! same machine.
//!
//! ```sh
//! make bench-viewer
//! cargo run --release -p cascade-benches --bin viewer_load -- --db both --json
//! cargo run --release -p cascade-benches --bin viewer_load -- --db sqlite --viewers 200 --duration 3
//! ```
//!
//! For each database an origin runs in this process on an ephemeral port
//! (SQLite: a file in a temp dir; PostgreSQL: a schema of its own, dropped at
//! the end). One ready title is made with a raw INSERT and the admin API;
//! `--viewers` viewers sign up (free plan: one stream each), each finishing
//! with the code of the link the origin wrote to its mail outbox, and each
//! starts one stream with a device id of its own. Then two phases of `--duration`
//! seconds, `--concurrency` client tasks each, over keep-alive HTTP/1.1:
//!
//! 1. Heartbeats: each task owns every `concurrency`-th viewer and sends
//!    heartbeats round-robin over its viewers' streams, each viewer's
//!    positions going up (one task per viewer, so they arrive in order).
//!    The origin's metrics before and after say how many flushes and rows
//!    the batched writes cost. After the playback phase the origin is shut
//!    down (which flushes) and a direct SQL query checks that
//!    `watch_history` holds, per viewer, the last position the origin
//!    accepted for it.
//! 2. Playback: each request a random viewer starting playback again on its
//!    own device (which replaces its own stream).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use cascade_origin::OriginConfig;
use cascade_serve::config::TokenKeyConfig;
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Url;
use serde_json::{json, Value};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

const JWT_SECRET: &str = "bench secret: at least thirty-two characters long";
const ADMIN: &str = "bench-admin-credential-0123";
const PASSWORD: &str = "correct horse 42";
/// The one title every viewer watches.
const ASSET: &str = "benchfilm";
/// Least share of viewers whose history row must hold their last position.
const HISTORY_GOAL_PCT: f64 = 99.0;

/// The command line.
#[derive(Parser, Debug)]
#[command(
    name = "viewer_load",
    about = "Viewer API load on SQLite and PostgreSQL: heartbeats/s, flushes and rows written, playback requests/s"
)]
struct Args {
    /// The database(s) to run the origin on; both runs are each other's peer.
    #[arg(long, value_enum, default_value = "both")]
    db: DbChoice,
    /// PostgreSQL server; the benchmark makes a schema of its own there and drops it.
    #[arg(
        long,
        env = "CASCADE_TEST_POSTGRES_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    postgres_url: String,
    /// Viewers, each signed up once with one stream.
    #[arg(long, default_value_t = 2000)]
    viewers: usize,
    /// Concurrent client tasks in each phase.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds of each phase.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// The origin's history_flush_ms: milliseconds between watch-history flushes.
    #[arg(long, default_value_t = 1000)]
    flush_ms: u64,
    /// Sign-ups in flight at once (each is an argon2id hash).
    #[arg(long, default_value_t = 8)]
    signup_concurrency: usize,
    /// The origin's database_max_connections.
    #[arg(long, default_value_t = 16)]
    db_connections: u32,
    /// Also print one `RESULT {json}` line per database.
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum DbChoice {
    Sqlite,
    Postgres,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let _logs = std::env::var_os("RUST_LOG")
        .is_some()
        .then(|| cascade_serve::init_logging(true));
    match run(&args).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}

/// Runs every database asked for; `Ok(true)` when each kept its history.
async fn run(args: &Args) -> anyhow::Result<bool> {
    if args.viewers == 0
        || args.concurrency == 0
        || args.duration == 0
        || args.signup_concurrency == 0
    {
        bail!("--viewers, --concurrency, --duration and --signup-concurrency must be at least 1");
    }
    if !(10..=60_000).contains(&args.flush_ms) {
        bail!("--flush-ms must be 10 to 60000 (the origin's history_flush_ms)");
    }
    if !(1..=1000).contains(&args.db_connections) {
        bail!("--db-connections must be 1 to 1000");
    }
    if std::env::var_os("DATABASE_URL").is_some_and(|v| !v.is_empty()) {
        bail!("DATABASE_URL is set: the origin would use it instead of the benchmark's databases; unset it");
    }
    sqlx::any::install_default_drivers();
    let backends: &[Backend] = match args.db {
        DbChoice::Sqlite => &[Backend::Sqlite],
        DbChoice::Postgres => &[Backend::Postgres],
        DbChoice::Both => &[Backend::Sqlite, Backend::Postgres],
    };
    // Before the long SQLite run: is PostgreSQL there at all?
    if backends.contains(&Backend::Postgres) {
        pg_admin(&args.postgres_url).await?.close().await;
    }
    if args.concurrency > args.viewers {
        eprintln!(
            "note: {} heartbeat tasks for {} viewers: {} of the tasks have no stream to beat",
            args.concurrency,
            args.viewers,
            args.concurrency - args.viewers
        );
    }
    let mut reports = Vec::new();
    for &backend in backends {
        eprintln!("== {} ==", backend.label());
        reports.push(run_backend(backend, args).await?);
    }

    print_table(args, &reports);
    if args.json {
        for r in &reports {
            println!("RESULT {}", r.json(args));
        }
    }
    let mut kept = true;
    for r in &reports {
        if r.history_ok_pct() < HISTORY_GOAL_PCT {
            eprintln!(
                "history check FAILED on {}: {} of {} viewers' rows hold the last position sent ({:.1}%, goal {HISTORY_GOAL_PCT}%)",
                r.backend.label(),
                r.rows_ok,
                args.viewers,
                r.history_ok_pct()
            );
            kept = false;
        }
    }
    Ok(kept)
}

// ---- databases --------------------------------------------------------------------

/// The database of one run.
struct BenchDb {
    url: String,
    /// PostgreSQL: the server's URL and the schema to drop.
    schema: Option<(String, String)>,
    dir: tempfile::TempDir,
}

impl BenchDb {
    async fn create(backend: Backend, args: &Args) -> anyhow::Result<BenchDb> {
        let dir = tempfile::tempdir().context("temp dir")?;
        match backend {
            Backend::Sqlite => Ok(BenchDb {
                url: format!("sqlite://{}/bench.db", dir.path().display()),
                schema: None,
                dir,
            }),
            Backend::Postgres => {
                let base = &args.postgres_url;
                let admin = pg_admin(base).await?;
                let now = cascade_serve::unix_now();
                drop_stale_schemas(&admin, now).await;
                let schema = format!(
                    "cascade_bench_{now}_{:08x}",
                    XorShift::seeded(now).next_u64() as u32
                );
                sqlx::query(&format!("CREATE SCHEMA {schema}"))
                    .execute(&admin)
                    .await
                    .with_context(|| format!("creating schema {schema}"))?;
                admin.close().await;
                let sep = if base.contains('?') { '&' } else { '?' };
                Ok(BenchDb {
                    url: format!("{base}{sep}options[search_path]={schema}"),
                    schema: Some((base.clone(), schema)),
                    dir,
                })
            }
        }
    }

    /// Drops the PostgreSQL schema; the temp dir goes with `self`.
    async fn remove(self) -> anyhow::Result<()> {
        if let Some((base, schema)) = &self.schema {
            let admin = pg_admin(base).await?;
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&admin)
                .await
                .with_context(|| format!("dropping schema {schema}"))?;
            admin.close().await;
        }
        Ok(())
    }
}

/// One connection to the PostgreSQL server, or a clear refusal.
async fn pg_admin(base: &str) -> anyhow::Result<AnyPool> {
    AnyPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(base)
        .await
        .with_context(|| {
            format!(
                "PostgreSQL is unreachable at {} (--db postgres and --db both need it; make test \
                 expects it at 127.0.0.1:5432, database test, trust auth): start it, pass \
                 --postgres-url or CASCADE_TEST_POSTGRES_URL, or run with --db sqlite",
                redact(base)
            )
        })
}

/// Schemas of runs that died before dropping theirs, over an hour old.
async fn drop_stale_schemas(admin: &AnyPool, now: u64) {
    let Ok(names) = sqlx::query_scalar::<_, String>(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'cascade_bench_%'",
    )
    .fetch_all(admin)
    .await
    else {
        return;
    };
    for s in names {
        let born = s.split('_').nth(2).and_then(|t| t.parse::<u64>().ok());
        if born.is_some_and(|b| b + 3600 < now) {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {s} CASCADE"))
                .execute(admin)
                .await;
        }
    }
}

/// A database URL without its password.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

// ---- one database -----------------------------------------------------------------

/// What one database's run measured.
struct Report {
    backend: Backend,
    load: Load,
    /// watch_history rows of the title after the origin stopped.
    rows_found: usize,
    /// Of those, rows holding the last position the origin accepted for the viewer.
    rows_ok: usize,
    viewers: usize,
}

async fn run_backend(backend: Backend, args: &Args) -> anyhow::Result<Report> {
    let db = BenchDb::create(backend, args).await?;
    let out = run_on(backend, &db, args).await;
    if let Err(e) = db.remove().await {
        eprintln!("warning: {e:#}");
    }
    out
}

async fn run_on(backend: Backend, db: &BenchDb, args: &Args) -> anyhow::Result<Report> {
    let cfg = OriginConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: db.dir.path().display().to_string(),
        database_url: db.url.clone(),
        database_max_connections: args.db_connections,
        token_keys: vec![TokenKeyConfig {
            kid: "bench".into(),
            key: "00112233445566778899aabbccddeeff".into(),
            algorithm: "sha256".into(),
            salt: String::new(),
            escape_early: false,
        }],
        jwt_secret: JWT_SECRET.into(),
        admin_token: ADMIN.into(),
        history_flush_ms: args.flush_ms,
        // Every sign-up comes from 127.0.0.1.
        login_attempts_per_minute: 1_000_000,
        // Sign-ups take a while; no access token may expire during the run.
        access_token_ttl_secs: 86_400,
        ..OriginConfig::default()
    };
    let origin = cascade_origin::start(&cfg)
        .await
        .with_context(|| format!("starting an origin on {}", backend.label()))?;
    let base = format!("http://{}", origin.addr);
    let load = run_load(&base, &cfg.mail_outbox(), db, args).await;
    // Stopping flushes the heartbeats still buffered.
    origin.shutdown().await;
    let load = load?;
    let (rows_found, rows_ok) = check_history(db, &load.expected).await?;
    eprintln!(
        "  watch_history: {rows_found} rows, {rows_ok} hold the viewer's last position (of {})",
        args.viewers
    );
    Ok(Report {
        backend,
        load,
        rows_found,
        rows_ok,
        viewers: args.viewers,
    })
}

/// The two phases' results.
struct Load {
    beats: Tally,
    beat_secs: f64,
    /// Origin counters over the heartbeat phase.
    counted: Counters,
    /// profile → last position the origin accepted (204) for it.
    expected: HashMap<String, f64>,
    plays: Tally,
    play_secs: f64,
}

/// A viewer's account and its stream.
struct Viewer {
    account: Account,
    beat_url: Url,
    beat_auth: HeaderValue,
}

struct Account {
    profile: String,
    /// `Bearer {access token}`.
    auth: HeaderValue,
    /// `{"device_id": …}`, the viewer's own device.
    playback_body: Bytes,
}

async fn run_load(
    base: &str,
    outbox: &std::path::Path,
    db: &BenchDb,
    args: &Args,
) -> anyhow::Result<Load> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(args.concurrency.max(args.signup_concurrency))
        .timeout(Duration::from_secs(60))
        .build()
        .context("HTTP client")?;
    make_title(&client, base, db).await?;

    eprintln!(
        "  signing up {} viewers, {} at a time…",
        args.viewers, args.signup_concurrency
    );
    let started = Instant::now();
    let mut signed = 0usize;
    futures::stream::iter(0..args.viewers)
        .map(|i| {
            let client = client.clone();
            let base = base.to_string();
            async move { sign_up(&client, &base, i).await }
        })
        .buffered(args.signup_concurrency)
        .inspect_ok(|_| {
            signed += 1;
            if signed.is_multiple_of(500) {
                eprintln!("    {signed} signed up");
            }
        })
        .try_collect::<()>()
        .await?;
    // Every sign-up wrote its mail before it was answered.
    let mut codes = signup_codes(outbox)?;
    let accounts: Vec<Account> = futures::stream::iter(0..args.viewers)
        .map(|i| {
            let client = client.clone();
            let base = base.to_string();
            let code = codes.remove(&email(i));
            async move {
                let code = code.with_context(|| format!("no sign-up mail to viewer {i}"))?;
                verify(&client, &base, i, &code).await
            }
        })
        .buffered(args.signup_concurrency)
        .try_collect()
        .await?;
    eprintln!(
        "  {} sign-ups (with their mailed codes) in {:.1} s",
        accounts.len(),
        started.elapsed().as_secs_f64()
    );

    let playback_url =
        Url::parse(&format!("{base}/api/v1/playback/{ASSET}")).context("playback URL")?;
    let viewers: Vec<Viewer> = futures::stream::iter(accounts.into_iter().enumerate())
        .map(|(i, a)| {
            let client = client.clone();
            let url = playback_url.clone();
            let base = base.to_string();
            async move { start_stream(&client, url, &base, a, i).await }
        })
        .buffered(args.concurrency)
        .try_collect()
        .await?;
    let viewers = Arc::new(viewers);

    // Phase 1: heartbeats.
    eprintln!(
        "  heartbeats: {} tasks for {} s…",
        args.concurrency, args.duration
    );
    let before = counters(&client, base).await?;
    let started = Instant::now();
    let until = started + Duration::from_secs(args.duration);
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|t| {
            let mine: Vec<usize> = (t..viewers.len()).step_by(args.concurrency).collect();
            tokio::spawn(beat_task(client.clone(), viewers.clone(), mine, until))
        })
        .collect();
    let mut beats = Tally::default();
    let mut expected = HashMap::with_capacity(viewers.len());
    for t in tasks {
        let out = t.await.context("a heartbeat task failed")?;
        beats.merge(out.tally);
        for (i, position) in out.last {
            expected.insert(viewers[i].account.profile.clone(), position);
        }
    }
    let beat_secs = started.elapsed().as_secs_f64();
    let after = counters(&client, base).await?;
    beats.lat_us.sort_unstable();

    // Phase 2: playback starts.
    eprintln!(
        "  playback: {} tasks for {} s…",
        args.concurrency, args.duration
    );
    let started = Instant::now();
    let until = started + Duration::from_secs(args.duration);
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|t| {
            tokio::spawn(play_task(
                client.clone(),
                playback_url.clone(),
                viewers.clone(),
                until,
                t as u64,
            ))
        })
        .collect();
    let mut plays = Tally::default();
    for t in tasks {
        plays.merge(t.await.context("a playback task failed")?);
    }
    let play_secs = started.elapsed().as_secs_f64();
    plays.lat_us.sort_unstable();

    Ok(Load {
        beats,
        beat_secs,
        counted: after.since(before),
        expected,
        plays,
        play_secs,
    })
}

/// A ready asset (raw INSERT, as a finished transcode leaves it) and its
/// catalog title (admin API).
async fn make_title(client: &reqwest::Client, base: &str, db: &BenchDb) -> anyhow::Result<()> {
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&db.url)
        .await
        .context("connecting to the benchmark's database")?;
    sqlx::query(
        "INSERT INTO assets (id, title, status, duration, created_at, updated_at)
         VALUES ($1, $2, 'ready', 600.0, $3, $3)",
    )
    .bind(ASSET)
    .bind("Bench film")
    .bind(cascade_serve::unix_now() as i64)
    .execute(&pool)
    .await
    .context("inserting the ready asset")?;
    pool.close().await;
    let (status, v) = call_json(
        client
            .post(format!("{base}/api/v1/admin/titles"))
            .bearer_auth(ADMIN)
            .json(&json!({ "kind": "movie", "name": "Bench film", "asset_id": ASSET })),
    )
    .await
    .context("creating the title")?;
    if status != 201 {
        bail!("creating the title: {status}: {v}");
    }
    Ok(())
}

/// Viewer `i`'s email.
fn email(i: usize) -> String {
    format!("viewer{i}@example.com")
}

/// Asks to sign viewer `i` up; the origin mails the code to its outbox.
async fn sign_up(client: &reqwest::Client, base: &str, i: usize) -> anyhow::Result<()> {
    let (status, v) = call_json(
        client
            .post(format!("{base}/api/v1/auth/signup"))
            .json(&json!({
                "email": email(i),
                "password": PASSWORD,
                "name": "Viewer",
            })),
    )
    .await
    .with_context(|| format!("signing up viewer {i}"))?;
    if status != 202 {
        bail!("sign-up of viewer {i} refused: {status}: {v}");
    }
    Ok(())
}

/// Email → the code of the newest sign-up link mailed to it, read from
/// the `.eml` files of the origin's outbox.
fn signup_codes(outbox: &std::path::Path) -> anyhow::Result<HashMap<String, String>> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(outbox)
        .with_context(|| format!("reading the mail outbox {}", outbox.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    // Names start with the time they were written: the newest wins.
    files.sort();
    let mut codes = HashMap::new();
    for f in files {
        let mail =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        let Some((head, body)) = mail.split_once("\r\n\r\n") else {
            continue;
        };
        let to = head
            .split("\r\n")
            .find_map(|l| l.strip_prefix("To: "))
            .map(str::to_string);
        let code = body.find("#verify=").map(|at| {
            body[at + "#verify=".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect::<String>()
        });
        if let (Some(to), Some(code)) = (to, code) {
            codes.insert(to, code);
        }
    }
    Ok(codes)
}

/// Finishes viewer `i`'s sign-up with its code: the account, logged in.
async fn verify(
    client: &reqwest::Client,
    base: &str,
    i: usize,
    code: &str,
) -> anyhow::Result<Account> {
    let (status, v) = call_json(
        client
            .post(format!("{base}/api/v1/auth/verify"))
            .json(&json!({ "code": code })),
    )
    .await
    .with_context(|| format!("verifying viewer {i}"))?;
    if status != 201 {
        bail!("verifying viewer {i} refused: {status}: {v}");
    }
    let access = v["access_token"]
        .as_str()
        .with_context(|| format!("verify answer without access_token: {v}"))?;
    let profile = v["user"]["profiles"][0]["id"]
        .as_str()
        .with_context(|| format!("verify answer without a profile: {v}"))?
        .to_string();
    Ok(Account {
        profile,
        auth: bearer(access)?,
        playback_body: Bytes::from(json!({ "device_id": format!("bench-{i}") }).to_string()),
    })
}

async fn start_stream(
    client: &reqwest::Client,
    playback_url: Url,
    base: &str,
    account: Account,
    i: usize,
) -> anyhow::Result<Viewer> {
    let (status, v) = call_json(
        client
            .post(playback_url)
            .header(AUTHORIZATION, account.auth.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(account.playback_body.clone()),
    )
    .await
    .with_context(|| format!("starting viewer {i}'s stream"))?;
    if status != 200 {
        bail!("playback for viewer {i} refused: {status}: {v}");
    }
    let stream = &v["stream"];
    let (Some(id), Some(token)) = (stream["id"].as_str(), stream["heartbeat_token"].as_str())
    else {
        bail!("playback answer without a stream id and heartbeat token: {v}");
    };
    Ok(Viewer {
        beat_url: Url::parse(&format!("{base}/api/v1/streams/{id}/heartbeat"))
            .context("heartbeat URL")?,
        beat_auth: bearer(token)?,
        account,
    })
}

fn bearer(token: &str) -> anyhow::Result<HeaderValue> {
    HeaderValue::from_str(&format!("Bearer {token}")).context("a token that is not a header value")
}

/// Status and body (JSON, or the text as a JSON string) of a setup call.
async fn call_json(req: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
    let r = req.send().await?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, v))
}

// ---- load tasks -------------------------------------------------------------------

/// One task's (or, merged, a phase's) answers.
#[derive(Default)]
struct Tally {
    /// Answers with the expected status.
    ok: u64,
    /// Latency of every answered request, microseconds.
    lat_us: Vec<u32>,
    /// Other answers by status; `transport` for requests without an answer.
    errors: BTreeMap<String, u64>,
    first_error: Option<String>,
}

impl Tally {
    fn for_task() -> Tally {
        Tally {
            lat_us: Vec::with_capacity(1 << 14),
            ..Tally::default()
        }
    }

    /// Counts one request; true when it got `expect`.
    fn record(
        &mut self,
        started: Instant,
        got: Result<(u16, Bytes), reqwest::Error>,
        expect: u16,
    ) -> bool {
        match got {
            Ok((status, body)) => {
                self.lat_us
                    .push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
                if status == expect {
                    self.ok += 1;
                    return true;
                }
                *self.errors.entry(status.to_string()).or_default() += 1;
                if self.first_error.is_none() {
                    let shown = &body[..body.len().min(200)];
                    self.first_error =
                        Some(format!("{status}: {}", String::from_utf8_lossy(shown)));
                }
                false
            }
            Err(e) => {
                *self.errors.entry("transport".into()).or_default() += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(e.without_url().to_string());
                }
                false
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.lat_us.extend(other.lat_us);
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Of the sorted latencies, in milliseconds.
    fn percentile_ms(&self, q: f64) -> f64 {
        let v = &self.lat_us;
        if v.is_empty() {
            return 0.0;
        }
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        f64::from(v[i]) / 1000.0
    }
}

/// Sends the request and reads the whole answer, so the connection goes
/// back to the pool.
async fn send(req: reqwest::RequestBuilder) -> Result<(u16, Bytes), reqwest::Error> {
    let r = req.send().await?;
    let status = r.status().as_u16();
    Ok((status, r.bytes().await?))
}

struct BeatOut {
    tally: Tally,
    /// (viewer, last position accepted).
    last: Vec<(usize, f64)>,
}

/// Heartbeats round-robin over this task's viewers until `until`; each
/// viewer's position goes up by one second a beat.
async fn beat_task(
    client: reqwest::Client,
    viewers: Arc<Vec<Viewer>>,
    mine: Vec<usize>,
    until: Instant,
) -> BeatOut {
    let mut tally = Tally::for_task();
    let mut sent = vec![0u32; mine.len()];
    let mut accepted: Vec<Option<f64>> = vec![None; mine.len()];
    let mut k = 0usize;
    while !mine.is_empty() && Instant::now() < until {
        let j = k % mine.len();
        k += 1;
        let v = &viewers[mine[j]];
        sent[j] += 1;
        let position = f64::from(sent[j]);
        let started = Instant::now();
        let got = send(
            client
                .post(v.beat_url.clone())
                .header(AUTHORIZATION, v.beat_auth.clone())
                .header(CONTENT_TYPE, "application/json")
                .body(format!("{{\"position\":{position}}}")),
        )
        .await;
        if tally.record(started, got, 204) {
            accepted[j] = Some(position);
        }
    }
    let last = mine
        .into_iter()
        .zip(accepted)
        .filter_map(|(i, p)| Some((i, p?)))
        .collect();
    BeatOut { tally, last }
}

/// Playback starts of random viewers on their own devices until `until`.
async fn play_task(
    client: reqwest::Client,
    url: Url,
    viewers: Arc<Vec<Viewer>>,
    until: Instant,
    salt: u64,
) -> Tally {
    let mut tally = Tally::for_task();
    let mut rng = XorShift::seeded(salt);
    while Instant::now() < until {
        let v = &viewers[rng.below(viewers.len() as u64) as usize];
        let started = Instant::now();
        let got = send(
            client
                .post(url.clone())
                .header(AUTHORIZATION, v.account.auth.clone())
                .header(CONTENT_TYPE, "application/json")
                .body(v.account.playback_body.clone()),
        )
        .await;
        tally.record(started, got, 200);
    }
    tally
}

/// xorshift64*, seeded from the clock: enough to pick viewers.
struct XorShift(u64);

impl XorShift {
    fn seeded(salt: u64) -> XorShift {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let s = nanos
            ^ salt.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ u64::from(std::process::id()).rotate_left(32);
        XorShift(if s == 0 { 1 } else { s })
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, n), n ≥ 1.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

// ---- the origin's counters and the history check ------------------------------------

/// The origin's heartbeat counters.
#[derive(Clone, Copy)]
struct Counters {
    /// Rows written by flushes (`heartbeats_total{result="flushed"}`).
    flushed: f64,
    /// Rows whose flush failed.
    flush_failed: f64,
    /// Heartbeats refused because the buffer was full.
    busy: f64,
    /// Flushes (`history_flush_rows_count`).
    flushes: f64,
}

impl Counters {
    fn since(self, before: Counters) -> Counters {
        Counters {
            flushed: self.flushed - before.flushed,
            flush_failed: self.flush_failed - before.flush_failed,
            busy: self.busy - before.busy,
            flushes: self.flushes - before.flushes,
        }
    }
}

async fn counters(client: &reqwest::Client, base: &str) -> anyhow::Result<Counters> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .context("GET /metrics")?
        .error_for_status()
        .context("GET /metrics")?
        .text()
        .await
        .context("GET /metrics")?;
    Ok(Counters {
        flushed: sample(&text, "cascade_origin_heartbeats_total{result=\"flushed\"}"),
        flush_failed: sample(
            &text,
            "cascade_origin_heartbeats_total{result=\"flush_failed\"}",
        ),
        busy: sample(&text, "cascade_origin_heartbeats_total{result=\"busy\"}"),
        flushes: sample(&text, "cascade_origin_history_flush_rows_count"),
    })
}

/// The value of one series in Prometheus text; 0 when absent (a labelled
/// counter appears at its first increment).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(name, _)| *name == series)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0)
}

/// After the origin stopped: the title's watch_history rows, and how many
/// hold the last position the origin accepted for their viewer.
async fn check_history(
    db: &BenchDb,
    expected: &HashMap<String, f64>,
) -> anyhow::Result<(usize, usize)> {
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&db.url)
        .await
        .context("connecting to check watch_history")?;
    let rows = sqlx::query("SELECT profile_id, position FROM watch_history WHERE asset_id = $1")
        .bind(ASSET)
        .fetch_all(&pool)
        .await
        .context("reading watch_history")?;
    pool.close().await;
    let mut ok = 0;
    for r in &rows {
        let profile: String = r
            .try_get("profile_id")
            .context("watch_history.profile_id")?;
        let position: f64 = r.try_get("position").context("watch_history.position")?;
        if expected.get(&profile) == Some(&position) {
            ok += 1;
        }
    }
    Ok((rows.len(), ok))
}

// ---- output ----------------------------------------------------------------------

impl Report {
    fn heartbeats_per_sec(&self) -> f64 {
        self.load.beats.ok as f64 / self.load.beat_secs
    }

    fn flushes_per_sec(&self) -> f64 {
        self.load.counted.flushes / self.load.beat_secs
    }

    fn rows_per_sec(&self) -> f64 {
        self.load.counted.flushed / self.load.beat_secs
    }

    fn history_ok_pct(&self) -> f64 {
        self.rows_ok as f64 * 100.0 / self.viewers as f64
    }

    fn playback_rps(&self) -> f64 {
        self.load.plays.ok as f64 / self.load.play_secs
    }

    fn json(&self, args: &Args) -> Value {
        let (b, p) = (&self.load.beats, &self.load.plays);
        json!({
            "db": self.backend.name(),
            "viewers": self.viewers,
            "concurrency": args.concurrency,
            "duration_secs": args.duration,
            "flush_ms": args.flush_ms,
            "heartbeats_per_sec": self.heartbeats_per_sec(),
            "heartbeat_p50_ms": b.percentile_ms(0.50),
            "heartbeat_p99_ms": b.percentile_ms(0.99),
            "flushes_per_sec": self.flushes_per_sec(),
            "rows_per_sec": self.rows_per_sec(),
            "history_rows": self.rows_found,
            "history_rows_ok_pct": self.history_ok_pct(),
            "playback_rps": self.playback_rps(),
            "playback_p50_ms": p.percentile_ms(0.50),
            "playback_p99_ms": p.percentile_ms(0.99),
            "playback_p999_ms": p.percentile_ms(0.999),
            "errors": {
                "heartbeat": b.errors,
                "playback": p.errors,
                "flush_failed_rows": self.load.counted.flush_failed,
            },
        })
    }
}

fn errors_text(t: &Tally) -> String {
    if t.errors.is_empty() {
        return "none".into();
    }
    t.errors
        .iter()
        .map(|(k, n)| format!("{k}×{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One cell per database.
fn cells(reports: &[Report], f: impl Fn(&Report) -> String) -> Vec<String> {
    reports.iter().map(f).collect()
}

fn print_table(args: &Args, reports: &[Report]) {
    let row = |label: &str, values: Vec<String>| {
        let mut line = format!("  {label:<34}");
        for c in values {
            line.push_str(&format!("{c:>16}"));
        }
        println!("{line}");
    };
    println!();
    println!(
        "viewer API: {} viewers (free plan, one stream each), {} clients, {} s a phase, \
         history flush every {} ms, {} database connections",
        args.viewers, args.concurrency, args.duration, args.flush_ms, args.db_connections
    );
    row("", cells(reports, |r| r.backend.label().to_string()));
    println!("  heartbeats");
    row(
        "  accepted/s (204s / wall time)",
        cells(reports, |r| format!("{:.0}", r.heartbeats_per_sec())),
    );
    row(
        "  p50 ms",
        cells(reports, |r| {
            format!("{:.2}", r.load.beats.percentile_ms(0.50))
        }),
    );
    row(
        "  p99 ms",
        cells(reports, |r| {
            format!("{:.2}", r.load.beats.percentile_ms(0.99))
        }),
    );
    row("  errors", cells(reports, |r| errors_text(&r.load.beats)));
    row(
        "  flushes/s",
        cells(reports, |r| format!("{:.2}", r.flushes_per_sec())),
    );
    row(
        "  rows written/s",
        cells(reports, |r| format!("{:.0}", r.rows_per_sec())),
    );
    row(
        "  heartbeats per row written",
        cells(reports, |r| {
            format!(
                "{:.1}",
                r.load.beats.ok as f64 / r.load.counted.flushed.max(1.0)
            )
        }),
    );
    row(
        "  rows failed to flush / busy",
        cells(reports, |r| {
            format!(
                "{:.0} / {:.0}",
                r.load.counted.flush_failed, r.load.counted.busy
            )
        }),
    );
    row(
        "  history rows with last position",
        cells(reports, |r| {
            format!("{}/{} {:.1}%", r.rows_ok, r.viewers, r.history_ok_pct())
        }),
    );
    println!("  playback starts");
    row(
        "  requests/s (200s / wall time)",
        cells(reports, |r| format!("{:.0}", r.playback_rps())),
    );
    row(
        "  p50 ms",
        cells(reports, |r| {
            format!("{:.2}", r.load.plays.percentile_ms(0.50))
        }),
    );
    row(
        "  p99 ms",
        cells(reports, |r| {
            format!("{:.2}", r.load.plays.percentile_ms(0.99))
        }),
    );
    row(
        "  p999 ms",
        cells(reports, |r| {
            format!("{:.2}", r.load.plays.percentile_ms(0.999))
        }),
    );
    row("  errors", cells(reports, |r| errors_text(&r.load.plays)));
    for r in reports {
        for (phase, t) in [("heartbeat", &r.load.beats), ("playback", &r.load.plays)] {
            if let Some(e) = &t.first_error {
                println!(
                    "  {} {phase}: {} errors, the first: {e}",
                    r.backend.label(),
                    t.error_count()
                );
            }
        }
    }
    let find = |b: Backend| reports.iter().find(|r| r.backend == b);
    if let (Some(s), Some(p)) = (find(Backend::Sqlite), find(Backend::Postgres)) {
        let ratio = |pg: f64, lite: f64| {
            if lite > 0.0 {
                format!("{:.2}x", pg / lite)
            } else {
                "n/a".into()
            }
        };
        println!(
            "PostgreSQL / SQLite: heartbeats/s {}, rows written/s {}, heartbeat p99 {}, \
             playback requests/s {}, playback p99 {}",
            ratio(p.heartbeats_per_sec(), s.heartbeats_per_sec()),
            ratio(p.rows_per_sec(), s.rows_per_sec()),
            ratio(
                p.load.beats.percentile_ms(0.99),
                s.load.beats.percentile_ms(0.99)
            ),
            ratio(p.playback_rps(), s.playback_rps()),
            ratio(
                p.load.plays.percentile_ms(0.99),
                s.load.plays.percentile_ms(0.99)
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_redaction() {
        let text = "# HELP x\n\
                    cascade_origin_heartbeats_total{result=\"accepted\"} 50\n\
                    cascade_origin_heartbeats_total{result=\"flushed\"} 7\n\
                    cascade_origin_history_flush_rows_count 3\n";
        assert_eq!(
            sample(text, "cascade_origin_heartbeats_total{result=\"flushed\"}"),
            7.0
        );
        assert_eq!(sample(text, "cascade_origin_history_flush_rows_count"), 3.0);
        assert_eq!(
            sample(text, "cascade_origin_heartbeats_total{result=\"busy\"}"),
            0.0
        );
        assert_eq!(
            redact("postgres://u:secret@db:5432/test?x=1"),
            "postgres://u:***@db:5432/test?x=1"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1:5432/test"),
            "postgres://postgres@127.0.0.1:5432/test"
        );
    }

    #[test]
    fn percentiles_and_draws() {
        let t = Tally {
            lat_us: (1..=1000).collect(),
            ..Tally::default()
        };
        assert_eq!(t.percentile_ms(0.5), 0.5);
        assert_eq!(t.percentile_ms(0.99), 0.99);
        assert_eq!(t.percentile_ms(0.999), 0.999);
        let mut rng = XorShift::seeded(3);
        assert!((0..10_000).all(|_| rng.below(7) < 7));
    }
}
