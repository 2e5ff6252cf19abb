//! The viewer services (accounts, catalog, billing, playback, history) over
//! real HTTP, each test run once on SQLite and once on PostgreSQL.
//!
//! PostgreSQL is the one at 127.0.0.1:5432 (database `test`), or
//! `CASCADE_TEST_POSTGRES_URL`. Each test makes its own schema and drops it;
//! schemas a crashed run left behind are dropped after an hour. When
//! PostgreSQL is unreachable the PostgreSQL tests fail and say so.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cascade_common::config::TokenKeyConfig;
use cascade_origin::OriginConfig;
use serde_json::{json, Value};
use sqlx::any::AnyPoolOptions;

const JWT_SECRET: &str = "test secret: at least thirty-two characters long";
const WEBHOOK_SECRET: &str = "whsec_test_secret";
const ADMIN: &str = "admin-secret";
const PASSWORD: &str = "correct horse 42";

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A database of its own for one test.
struct TestDb {
    url: String,
    schema: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

fn postgres_base() -> String {
    std::env::var("CASCADE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

impl TestDb {
    async fn new(backend: Backend) -> TestDb {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().unwrap();
        match backend {
            Backend::Sqlite => TestDb {
                url: format!("sqlite://{}/test.db", dir.path().display()),
                schema: None,
                _dir: dir,
            },
            Backend::Postgres => {
                let base = postgres_base();
                let admin = AnyPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect(&base)
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "PostgreSQL is unreachable at {base} ({e}); the PostgreSQL tests need it \
                             (make test expects it at 127.0.0.1:5432, database test, trust auth), \
                             or set CASCADE_TEST_POSTGRES_URL"
                        )
                    });
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                // Leftovers of runs that crashed before dropping theirs.
                let stale: Vec<String> = sqlx::query_scalar::<_, String>(
                    "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'cascade_t_%'",
                )
                .fetch_all(&admin)
                .await
                .unwrap();
                for s in stale {
                    let born = s
                        .split('_')
                        .nth(2)
                        .and_then(|t| t.parse::<u64>().ok())
                        .unwrap_or(0);
                    if born + 3600 < now {
                        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {s} CASCADE"))
                            .execute(&admin)
                            .await;
                    }
                }
                let schema = format!("cascade_t_{now}_{}", uuid_hex());
                sqlx::query(&format!("CREATE SCHEMA {schema}"))
                    .execute(&admin)
                    .await
                    .unwrap();
                admin.close().await;
                let sep = if base.contains('?') { '&' } else { '?' };
                TestDb {
                    url: format!("{base}{sep}options[search_path]={schema}"),
                    schema: Some((base, schema)),
                    _dir: dir,
                }
            }
        }
    }

    async fn drop(self) {
        if let Some((base, schema)) = &self.schema {
            let admin = AnyPoolOptions::new()
                .max_connections(1)
                .connect(base)
                .await
                .unwrap();
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&admin)
                .await
                .unwrap();
            admin.close().await;
        }
    }
}

fn uuid_hex() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{:016x}{:08x}{:04x}",
        nanos as u64,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running origin on a test database.
struct Site {
    url: String,
    origin: Option<cascade_origin::Origin>,
    cfg: OriginConfig,
    db: TestDb,
    http: reqwest::Client,
}

fn config(db: &TestDb) -> OriginConfig {
    OriginConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: db._dir.path().display().to_string(),
        database_url: db.url.clone(),
        token_keys: vec![TokenKeyConfig {
            kid: "test".into(),
            key: "00112233445566778899aabbccddeeff".into(),
            algorithm: "sha256".into(),
            salt: String::new(),
            escape_early: false,
        }],
        jwt_secret: JWT_SECRET.into(),
        billing_webhook_secret: WEBHOOK_SECRET.into(),
        admin_token: ADMIN.into(),
        history_flush_ms: 50,
        login_attempts_per_minute: 1000,
        ..Default::default()
    }
}

impl Site {
    async fn start(backend: Backend, tweak: impl FnOnce(&mut OriginConfig)) -> Site {
        let db = TestDb::new(backend).await;
        let mut cfg = config(&db);
        tweak(&mut cfg);
        let origin = cascade_origin::start(&cfg).await.unwrap();
        Site {
            url: format!("http://{}", origin.addr),
            origin: Some(origin),
            cfg,
            db,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    /// Stops the origin (flushing its heartbeats) and starts another on the
    /// same database.
    async fn restart(&mut self) {
        if let Some(o) = self.origin.take() {
            o.shutdown().await;
        }
        let origin = cascade_origin::start(&self.cfg).await.unwrap();
        self.url = format!("http://{}", origin.addr);
        self.origin = Some(origin);
    }

    async fn stop(mut self) {
        if let Some(o) = self.origin.take() {
            o.shutdown().await;
        }
        self.db.drop().await;
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.url));
        if let Some(b) = bearer {
            r = r.bearer_auth(b);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, bearer: Option<&str>, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, bearer, Some(body))
            .await
    }

    async fn get(&self, path: &str, bearer: Option<&str>) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, bearer, None).await
    }

    /// Signs up and follows the mailed link; answers the session.
    async fn signup(&self, email: &str) -> Value {
        let (s, v) = self
            .post(
                "/api/v1/auth/signup",
                None,
                json!({ "email": email, "password": PASSWORD, "name": "Asha" }),
            )
            .await;
        assert_eq!(s, 202, "{v}");
        let code = self.last_code(email);
        let (s, v) = self
            .post("/api/v1/auth/verify", None, json!({ "code": code }))
            .await;
        assert_eq!(s, 201, "{v}");
        v
    }

    /// The mails in the outbox to an address, oldest first.
    fn mails_to(&self, email: &str) -> Vec<Mail> {
        let to = email.to_lowercase();
        outbox_mails(&self.cfg.mail_outbox())
            .into_iter()
            .filter(|m| m.header("to") == Some(to.as_str()))
            .collect()
    }

    /// The code of the newest sign-up link mailed to an address.
    fn last_code(&self, email: &str) -> String {
        let mails = self.mails_to(email);
        let last = mails.last().unwrap_or_else(|| panic!("no mail to {email}"));
        last.code()
            .unwrap_or_else(|| panic!("no code in the mail to {email}:\n{}", last.body))
    }

    /// Runs SQL with one text parameter that answers one integer.
    async fn count(&self, sql: &str, arg: &str) -> i64 {
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&self.db.url)
            .await
            .unwrap();
        let n: i64 = sqlx::query_scalar(sql)
            .bind(arg)
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        n
    }

    /// A ready asset (as a finished transcode leaves it) with a catalog
    /// title made through the admin API; answers the title.
    async fn title(&self, asset: &str, edit: Value) -> Value {
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&self.db.url)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO assets (id, title, status, duration, created_at, updated_at)
             VALUES ($1, $2, 'ready', 600.0, $3, $3)",
        )
        .bind(asset)
        .bind(asset)
        .bind(now() as i64)
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
        let mut body = json!({ "kind": "movie", "name": asset, "asset_id": asset });
        for (k, v) in edit.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (s, v) = self.post("/api/v1/admin/titles", Some(ADMIN), body).await;
        assert_eq!(s, 201, "{v}");
        v
    }

    /// Runs SQL with one text parameter on the origin's database, as another
    /// origin of the fleet (or an operator) would.
    async fn exec(&self, sql: &str, arg: &str) {
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&self.db.url)
            .await
            .unwrap();
        sqlx::query(sql).bind(arg).execute(&pool).await.unwrap();
        pool.close().await;
    }

    async fn playback(&self, asset: &str, access: &str, device: &str) -> (u16, Value) {
        self.post(
            &format!("/api/v1/playback/{asset}"),
            Some(access),
            json!({ "device_id": device }),
        )
        .await
    }

    async fn webhook(&self, event: &Value, t: u64, secret: &str) -> (u16, Value) {
        let body = serde_json::to_vec(event).unwrap();
        let sig = cascade_origin::sign_webhook(&body, secret.as_bytes(), t);
        let r = self
            .http
            .post(format!("{}/api/v1/billing/webhook", self.url))
            .header("stripe-signature", sig)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(session: &Value) -> String {
    session["access_token"].as_str().unwrap().to_string()
}

/// A mail of the outbox: its file, headers (names lower-cased, folded
/// lines joined) and body.
struct Mail {
    file: std::path::PathBuf,
    headers: Vec<(String, String)>,
    body: String,
}

impl Mail {
    fn parse(file: std::path::PathBuf) -> Mail {
        let raw = std::fs::read_to_string(&file).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                headers.last_mut().unwrap().1.push_str(line);
            } else {
                let (k, v) = line.split_once(':').unwrap();
                headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        Mail {
            file,
            headers,
            body: body.replace("\r\n", "\n"),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The code of the sign-up link (`…/#verify=CODE`), if the mail has one.
    fn code(&self) -> Option<String> {
        let at = self.body.find("#verify=")? + "#verify=".len();
        let code: String = self.body[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        Some(code).filter(|c| !c.is_empty())
    }
}

/// Every mail of an outbox, oldest first (the names sort by time).
fn outbox_mails(dir: &std::path::Path) -> Vec<Mail> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    files.sort();
    files.into_iter().map(Mail::parse).collect()
}

fn subscription_event(id: &str, kind: &str, user: &str, status: &str, created: u64) -> Value {
    json!({
        "id": id, "type": kind, "created": created,
        "data": { "object": {
            "id": format!("sub_{user}"), "object": "subscription", "status": status,
            "metadata": { "user_id": user, "plan": "premium" },
            "items": { "data": [ { "current_period_end": now() + 30 * 86400,
                                    "price": { "lookup_key": "premium" } } ] }
        } }
    })
}

/// Runs each test once per database.
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Postgres).await
                }
            )*
        }
    };
}

on_both_databases!(
    signup_answers_alike_and_mails_the_owner,
    signup_links_work_once_until_they_expire,
    accounts_sessions_and_refresh_rotation,
    wrong_passwords_lock_the_account_and_addresses_are_throttled,
    a_guesser_locks_out_only_their_own_address,
    profiles_have_their_own_history,
    webhook_signatures_replays_and_entitlements,
    the_stream_limit_refuses_one_device_too_many,
    availability_windows_and_series,
    search_ranks_and_paginates,
    heartbeats_are_batched_and_resume_survives_a_restart,
    live_channels_and_their_stream_keys,
);

/// A sign-up's status, the headers a client could tell apart, and body bytes.
async fn raw_signup(site: &Site, email: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let r = site
        .http
        .post(format!("{}/api/v1/auth/signup", site.url))
        .json(&json!({ "email": email, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "date" | "x-request-id"))
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    (status, headers, r.bytes().await.unwrap().to_vec())
}

async fn signup_answers_alike_and_mails_the_owner(backend: Backend) {
    use std::os::unix::fs::PermissionsExt;
    let site = Site::start(backend, |_| {}).await;
    site.signup("owner@example.com").await;
    let known = raw_signup(&site, "Owner@Example.com").await;
    let fresh = raw_signup(&site, "fresh@example.com").await;
    assert_eq!(known.0, 202, "{}", String::from_utf8_lossy(&known.2));
    assert_eq!(
        known, fresh,
        "sign-up tells whether an email has an account"
    );
    let v: Value = serde_json::from_slice(&fresh.2).unwrap();
    assert_eq!(v["status"], "check_email", "{v}");

    // The owner is told they have an account, and gets no code.
    let owner = site.mails_to("owner@example.com");
    assert_eq!(owner.len(), 2, "the first sign-up's link, then the notice");
    let notice = &owner[1];
    assert!(
        notice.body.contains("already have an account"),
        "{}",
        notice.body
    );
    assert!(
        notice.code().is_none() && !notice.body.contains("verify"),
        "{}",
        notice.body
    );
    assert_eq!(
        notice.header("from"),
        Some("Cascade <no-reply@cascade.invalid>")
    );
    assert!(notice.header("message-id").is_some() && notice.header("date").is_some());
    // The new address gets a link to the page with a code of 256 bits.
    let mail = site.mails_to("fresh@example.com");
    assert_eq!(mail.len(), 1);
    let code = mail[0].code().unwrap();
    assert_eq!(code.len(), 43, "{code}");
    assert!(
        mail[0]
            .body
            .contains(&format!("http://127.0.0.1:8080/#verify={code}\n")),
        "{}",
        mail[0].body
    );
    assert_eq!(
        site.count(
            "SELECT COUNT(*) FROM pending_signups WHERE email = $1",
            "owner@example.com"
        )
        .await,
        0,
        "no pending sign-up for an address with an account"
    );

    // The outbox is the owner's alone, and holds only whole messages.
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let outbox = site.cfg.mail_outbox();
    assert_eq!(
        outbox,
        std::path::Path::new(&site.cfg.data_dir).join("mail")
    );
    assert_eq!(mode(&outbox), 0o700);
    let all = outbox_mails(&outbox);
    assert_eq!(all.len(), 3);
    for m in &all {
        assert_eq!(mode(&m.file), 0o600, "{}", m.file.display());
    }
    assert_eq!(
        std::fs::read_dir(&outbox).unwrap().count(),
        3,
        "no temporary files"
    );

    // Validation still answers before anything is sent.
    for (body, code) in [
        (
            json!({ "email": "nope", "password": PASSWORD }),
            "bad_email",
        ),
        (
            json!({ "email": "owner@example.com", "password": "short" }),
            "weak_password",
        ),
        (
            json!({ "email": "new@example.com", "password": "short" }),
            "weak_password",
        ),
    ] {
        let (st, v) = site.post("/api/v1/auth/signup", None, body).await;
        assert_eq!((st, v["error"].as_str()), (400, Some(code)));
    }
    assert_eq!(outbox_mails(&outbox).len(), 3);
    site.stop().await;
}

async fn signup_links_work_once_until_they_expire(backend: Backend) {
    let site = Site::start(backend, |_| {}).await;
    let verify = |code: String| site.post("/api/v1/auth/verify", None, json!({ "code": code }));
    let signup = |email: &'static str| {
        site.post(
            "/api/v1/auth/signup",
            None,
            json!({ "email": email, "password": PASSWORD, "name": "Ravi" }),
        )
    };
    let bad = |(st, v): (u16, Value)| {
        assert_eq!((st, v["error"].as_str()), (400, Some("bad_code")), "{v}");
        assert_eq!(
            v["message"],
            "the link is invalid or has expired; sign up again"
        );
    };

    // Not yet an account: no login.
    assert_eq!(signup("new@example.com").await.0, 202);
    let (st, _) = site
        .post(
            "/api/v1/auth/login",
            None,
            json!({ "email": "new@example.com", "password": PASSWORD }),
        )
        .await;
    assert_eq!(st, 401);
    // The code makes the account, logged in, once.
    let code = site.last_code("new@example.com");
    let (st, s) = verify(code.clone()).await;
    assert_eq!(st, 201, "{s}");
    assert_eq!(s["user"]["email"], "new@example.com");
    assert_eq!(s["user"]["plan"], "free");
    assert_eq!(s["user"]["max_streams"], 1);
    assert_eq!(s["user"]["profiles"][0]["name"], "Ravi");
    let (st, me) = site.get("/api/v1/me", Some(&token(&s))).await;
    assert_eq!((st, me["email"].as_str()), (200, Some("new@example.com")));
    bad(verify(code).await);
    // The password chosen at sign-up logs in.
    let (st, login) = site
        .post(
            "/api/v1/auth/login",
            None,
            json!({ "email": "new@example.com", "password": PASSWORD }),
        )
        .await;
    assert_eq!(st, 200, "{login}");
    assert_eq!(login["user"]["id"], s["user"]["id"]);

    // Wrong, empty and oversized codes.
    for code in ["A".repeat(43), String::new(), "x".repeat(300)] {
        bad(verify(code).await);
    }

    // A second sign-up for a pending address replaces the first.
    assert_eq!(signup("twice@example.com").await.0, 202);
    let first = site.last_code("twice@example.com");
    assert_eq!(signup("twice@example.com").await.0, 202);
    let second = site.last_code("twice@example.com");
    assert_ne!(first, second);
    bad(verify(first).await);
    assert_eq!(verify(second).await.0, 201);

    // An expired code is refused, and expired sign-ups are swept.
    assert_eq!(signup("late@example.com").await.0, 202);
    let late = site.last_code("late@example.com");
    assert_eq!(signup("stale@example.com").await.0, 202);
    for email in ["late@example.com", "stale@example.com"] {
        site.exec(
            "UPDATE pending_signups SET expires_at = created_at - 1 WHERE email = $1",
            email,
        )
        .await;
    }
    bad(verify(late).await);
    assert_eq!(
        site.count(
            "SELECT COUNT(*) FROM pending_signups WHERE email = $1",
            "stale@example.com"
        )
        .await,
        0,
        "an expired sign-up is swept"
    );

    // An address that got an account meanwhile: the code is refused.
    assert_eq!(signup("race@example.com").await.0, 202);
    let race = site.last_code("race@example.com");
    site.exec(
        "INSERT INTO users (id, email, password_hash, created_at) VALUES ('other-origin', $1, 'x', 0)",
        "race@example.com",
    )
    .await;
    bad(verify(race).await);

    let m = site.metrics().await;
    assert!(
        m.contains("origin_auth_events_total{event=\"signup\"} 2"),
        "{m}"
    );
    site.stop().await;
}

async fn accounts_sessions_and_refresh_rotation(backend: Backend) {
    let site = Site::start(backend, |_| {}).await;
    let s = site.signup("Viewer@Example.com").await;
    assert_eq!(s["user"]["email"], "viewer@example.com");
    assert_eq!(s["user"]["plan"], "free");
    assert_eq!(s["user"]["profiles"][0]["name"], "Asha");
    // The same address again, any case: the answer tells nothing.
    let (st, v) = site
        .post(
            "/api/v1/auth/signup",
            None,
            json!({ "email": "VIEWER@example.com", "password": PASSWORD }),
        )
        .await;
    assert_eq!((st, v["status"].as_str()), (202, Some("check_email")));
    for (body, code) in [
        (
            json!({ "email": "nope", "password": PASSWORD }),
            "bad_email",
        ),
        (
            json!({ "email": "a@b.example", "password": "short" }),
            "weak_password",
        ),
    ] {
        let (st, v) = site.post("/api/v1/auth/signup", None, body).await;
        assert_eq!((st, v["error"].as_str()), (400, Some(code)));
    }
    let (st, v) = site
        .post("/api/v1/auth/signup", None, json!({ "email": 5 }))
        .await;
    assert_eq!((st, v["error"].as_str()), (400, Some("bad_json")));

    // Wrong password, unknown account: the same answer.
    let wrong = site
        .post(
            "/api/v1/auth/login",
            None,
            json!({ "email": "viewer@example.com", "password": "wrong password" }),
        )
        .await;
    let unknown = site
        .post(
            "/api/v1/auth/login",
            None,
            json!({ "email": "nobody@example.com", "password": PASSWORD }),
        )
        .await;
    assert_eq!(wrong.0, 401);
    assert_eq!(wrong, unknown);

    let (st, login) = site
        .post(
            "/api/v1/auth/login",
            None,
            json!({ "email": "viewer@example.com", "password": PASSWORD }),
        )
        .await;
    assert_eq!(st, 200, "{login}");
    let (st, me) = site.get("/api/v1/me", Some(&token(&login))).await;
    assert_eq!(
        (st, me["email"].as_str()),
        (200, Some("viewer@example.com"))
    );
    assert_eq!(me["max_streams"], 1);
    assert_eq!(site.get("/api/v1/me", None).await.0, 401);
    assert_eq!(site.get("/api/v1/me", Some("not.a.jwt")).await.0, 401);

    // An expired access token says so, so the client refreshes.
    let user = login["user"]["id"].as_str().unwrap();
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": user, "typ": "access", "iat": now() - 7200, "exp": now() - 3600 }),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let (st, v) = site.get("/api/v1/me", Some(&expired)).await;
    assert_eq!((st, v["error"].as_str()), (401, Some("token_expired")));
    // The same claims under another key are forged.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": user, "typ": "access", "iat": now(), "exp": now() + 600 }),
        &jsonwebtoken::EncodingKey::from_secret(b"another secret entirely, 32 chars+"),
    )
    .unwrap();
    let (st, v) = site.get("/api/v1/me", Some(&forged)).await;
    assert_eq!((st, v["error"].as_str()), (401, Some("unauthorized")));

    // Refresh rotates: the new token works once, the old one is dead, and
    // presenting the old one again revokes the whole login.
    let r1 = login["refresh_token"].as_str().unwrap().to_string();
    let (st, s2) = site
        .post("/api/v1/auth/refresh", None, json!({ "refresh_token": r1 }))
        .await;
    assert_eq!(st, 200, "{s2}");
    let r2 = s2["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(r1, r2);
    let (st, v) = site
        .post("/api/v1/auth/refresh", None, json!({ "refresh_token": r1 }))
        .await;
    assert_eq!((st, v["error"].as_str()), (401, Some("refresh_reused")));
    let (st, v) = site
        .post("/api/v1/auth/refresh", None, json!({ "refresh_token": r2 }))
        .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (401, Some("invalid_refresh")),
        "the reuse revoked the rotated token too"
    );

    // Two requests racing with one refresh token: at most one wins, and
    // the loser counts as reuse, which revokes the winner's token too.
    let (st, fresh) = site
        .post(
            "/api/v1/auth/login",
            None,
            json!({ "email": "viewer@example.com", "password": PASSWORD }),
        )
        .await;
    assert_eq!(st, 200);
    let rt = fresh["refresh_token"].as_str().unwrap();
    let race = futures::future::join_all(
        (0..2).map(|_| site.post("/api/v1/auth/refresh", None, json!({ "refresh_token": rt }))),
    )
    .await;
    let won: Vec<_> = race.iter().filter(|(s, _)| *s == 200).collect();
    assert_eq!(won.len(), 1, "{race:?}");
    let (st, _) = site
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({ "refresh_token": won[0].1["refresh_token"] }),
        )
        .await;
    assert_eq!(st, 401, "the race revoked the winner's token too");

    // Logout revokes; the sign-up session is a separate login and survives.
    let r_signup = s["refresh_token"].as_str().unwrap();
    let (st, s3) = site
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({ "refresh_token": r_signup }),
        )
        .await;
    assert_eq!(st, 200);
    let r3 = s3["refresh_token"].as_str().unwrap();
    let (st, _) = site
        .post("/api/v1/auth/logout", None, json!({ "refresh_token": r3 }))
        .await;
    assert_eq!(st, 204);
    let (st, v) = site
        .post("/api/v1/auth/refresh", None, json!({ "refresh_token": r3 }))
        .await;
    assert_eq!((st, v["error"].as_str()), (401, Some("invalid_refresh")));
    let (st, _) = site
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({ "refresh_token": "garbage" }),
        )
        .await;
    assert_eq!(st, 401);
    let m = site.metrics().await;
    assert!(
        m.contains("origin_auth_events_total{event=\"refresh_reused\"} 2"),
        "{m}"
    );
    site.stop().await;
}

async fn wrong_passwords_lock_the_account_and_addresses_are_throttled(backend: Backend) {
    let site = Site::start(backend, |c| {
        c.login_max_failures = 3;
        c.login_attempts_per_minute = 30;
    })
    .await;
    site.signup("lock@example.com").await;
    let attempt = |password: &'static str| {
        site.post(
            "/api/v1/auth/login",
            None,
            json!({ "email": "lock@example.com", "password": password }),
        )
    };
    for _ in 0..3 {
        assert_eq!(attempt("wrong password").await.0, 401);
    }
    // Locked: even the right password is refused, with a time to wait.
    let r = site
        .http
        .post(format!("{}/api/v1/auth/login", site.url))
        .json(&json!({ "email": "lock@example.com", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((800..=900).contains(&wait), "{wait}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "account_locked");
    // Parallel guesses do not get past the limit: of ten at once, at most
    // three are checked (401), the rest are refused as locked (429).
    site.signup("parallel@example.com").await;
    let guesses = (0..10).map(|_| {
        site.post(
            "/api/v1/auth/login",
            None,
            json!({ "email": "parallel@example.com", "password": "wrong password" }),
        )
    });
    let answers = futures::future::join_all(guesses).await;
    let checked = answers.iter().filter(|(s, _)| *s == 401).count();
    assert!(checked <= 3, "{checked} guesses checked: {answers:?}");
    assert!(answers.iter().all(|(s, _)| *s == 401 || *s == 429));
    // Another account is not affected.
    site.signup("other@example.com").await;
    let (st, _) = site
        .post(
            "/api/v1/auth/login",
            None,
            json!({ "email": "other@example.com", "password": PASSWORD }),
        )
        .await;
    assert_eq!(st, 200);
    // The address has now made 18 attempts (sign-ups included); past 30 in
    // a minute it is throttled whatever the account.
    let mut last = 0;
    for _ in 0..13 {
        last = site
            .post(
                "/api/v1/auth/login",
                None,
                json!({ "email": "other@example.com", "password": PASSWORD }),
            )
            .await
            .0;
    }
    assert_eq!(last, 429);
    let (_, v) = site
        .post(
            "/api/v1/auth/login",
            None,
            json!({ "email": "other@example.com", "password": PASSWORD }),
        )
        .await;
    assert_eq!(v["error"], "rate_limited");
    site.stop().await;
}

async fn a_guesser_locks_out_only_their_own_address(backend: Backend) {
    let site = Site::start(backend, |c| c.login_max_failures = 3).await;
    site.signup("victim@example.com").await;
    // The origin believes the edge (here: the test, on loopback) about the
    // viewer's address.
    let login = |from: &'static str, password: &'static str| {
        site.http
            .post(format!("{}/api/v1/auth/login", site.url))
            .header("x-forwarded-for", from)
            .json(&json!({ "email": "victim@example.com", "password": password }))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(
            login("203.0.113.9", "wrong password")
                .await
                .unwrap()
                .status(),
            401
        );
    }
    let r = login("203.0.113.9", PASSWORD).await.unwrap();
    assert_eq!(r.status(), 429, "the guesser's address is locked out");
    // The owner, elsewhere, logs in as usual, and a success clears nothing
    // for the guesser.
    let r = login("198.51.100.7", PASSWORD).await.unwrap();
    assert_eq!(r.status(), 200, "the owner is not locked out");
    let r = login("203.0.113.9", PASSWORD).await.unwrap();
    assert_eq!(r.status(), 429);
    // Another address of the guesser's /64 (IPv6) counts as the same.
    for _ in 0..3 {
        login("2001:db8:1:2::1", "wrong password").await.unwrap();
    }
    let r = login("2001:db8:1:2::ffff", PASSWORD).await.unwrap();
    assert_eq!(r.status(), 429);
    site.stop().await;
}

async fn profiles_have_their_own_history(backend: Backend) {
    // Flushes only on shutdown here, so that the last batch holds a row
    // that fails and one that must not be lost with it.
    let mut site = Site::start(backend, |c| c.history_flush_ms = 20_000).await;
    site.title("film1", json!({})).await;
    let s = site.signup("family@example.com").await;
    let t = token(&s);
    let first = s["user"]["profiles"][0]["id"].as_str().unwrap().to_string();
    let mut ids = vec![first.clone()];
    for name in ["Kids", "Grandpa", "Guest", "Spare"] {
        let (st, p) = site
            .post("/api/v1/profiles", Some(&t), json!({ "name": name }))
            .await;
        assert_eq!(st, 201, "{p}");
        ids.push(p["id"].as_str().unwrap().to_string());
    }
    let (st, v) = site
        .post("/api/v1/profiles", Some(&t), json!({ "name": "Sixth" }))
        .await;
    assert_eq!((st, v["error"].as_str()), (409, Some("too_many_profiles")));
    let (st, v) = site
        .post("/api/v1/profiles", Some(&t), json!({ "name": "\u{7}" }))
        .await;
    assert_eq!((st, v["error"].as_str()), (400, Some("bad_name")));
    // Someone else cannot see or use them.
    let other = token(&site.signup("stranger@example.com").await);
    let (st, _) = site
        .get(&format!("/api/v1/history?profile={first}"), Some(&other))
        .await;
    assert_eq!(st, 404);

    // Asha watches to 100 s; the kids' profile has nothing to resume.
    let (st, p) = site
        .post(
            "/api/v1/playback/film1",
            Some(&t),
            json!({ "profile_id": first, "device_id": "tv" }),
        )
        .await;
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["resume_position"], 0.0);
    beat(&site, &p, 100.0).await;
    let (st, kids) = site
        .post(
            "/api/v1/playback/film1",
            Some(&t),
            json!({ "profile_id": ids[1], "device_id": "tv" }),
        )
        .await;
    assert_eq!(st, 200, "{kids}");
    assert_eq!(kids["resume_position"], 0.0);
    let (_, h) = site
        .get(&format!("/api/v1/history?profile={first}"), Some(&t))
        .await;
    assert_eq!(h["items"][0]["asset"], "film1");
    assert_eq!(h["items"][0]["position"], 100.0);
    let (_, h) = site
        .get(&format!("/api/v1/history?profile={}", ids[1]), Some(&t))
        .await;
    assert_eq!(h["items"].as_array().unwrap().len(), 0);
    // Another origin deletes the kids' profile while this one holds a
    // heartbeat for it: the flush loses that row only, not Asha's.
    site.exec("DELETE FROM profiles WHERE id = $1", &ids[1])
        .await;
    beat(&site, &kids, 50.0).await;
    // (Asha starts again on the tv, which ends the kids' stream there.)
    let (st, p2) = site
        .post(
            "/api/v1/playback/film1",
            Some(&t),
            json!({ "profile_id": first, "device_id": "tv" }),
        )
        .await;
    assert_eq!(st, 200, "{p2}");
    beat(&site, &p2, 200.0).await;
    site.restart().await;
    let (_, h) = site
        .get(&format!("/api/v1/history?profile={first}"), Some(&t))
        .await;
    assert_eq!(h["items"][0]["position"], 200.0, "{h}");
    // Deleting a profile; the last one stays.
    let (st, _) = site
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/profiles/{}", ids[4]),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(st, 204);
    let (_, list) = site.get("/api/v1/profiles", Some(&t)).await;
    assert_eq!(list["profiles"].as_array().unwrap().len(), 3);
    site.stop().await;
}

/// A heartbeat that must be accepted.
async fn beat(site: &Site, playback: &Value, position: f64) {
    let (st, v) = heartbeat(
        site,
        playback,
        playback["stream"]["heartbeat_token"].as_str(),
        json!({ "position": position, "duration": 600.0 }),
    )
    .await;
    assert_eq!(st, 204, "{v}");
}

/// A heartbeat for the stream of a playback answer, with any credential
/// and body: the answer.
async fn heartbeat(
    site: &Site,
    playback: &Value,
    bearer: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let id = playback["stream"]["id"].as_str().unwrap();
    site.post(&format!("/api/v1/streams/{id}/heartbeat"), bearer, body)
        .await
}

async fn webhook_signatures_replays_and_entitlements(backend: Backend) {
    let site = Site::start(backend, |_| {}).await;
    site.title(
        "premium1",
        json!({ "premium": true, "name": "Premium film" }),
    )
    .await;
    let s = site.signup("payer@example.com").await;
    let t = token(&s);
    let user = s["user"]["id"].as_str().unwrap().to_string();
    let (st, v) = site.playback("premium1", &t, "phone").await;
    assert_eq!((st, v["error"].as_str()), (403, Some("premium_required")));
    assert_eq!(v["plan"], "free");

    let created = now();
    let activate = subscription_event(
        "evt_1",
        "customer.subscription.created",
        &user,
        "active",
        created,
    );
    // A bad signature, a signature under another secret, an old timestamp.
    let body = serde_json::to_vec(&activate).unwrap();
    let r = site
        .http
        .post(format!("{}/api/v1/billing/webhook", site.url))
        .header(
            "stripe-signature",
            format!("t={},v1={}", now(), "ab".repeat(32)),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "bad_signature");
    let (st, v) = site.webhook(&activate, now(), "whsec_wrong").await;
    assert_eq!((st, v["error"].as_str()), (400, Some("bad_signature")));
    let (st, v) = site.webhook(&activate, now() - 301, WEBHOOK_SECRET).await;
    assert_eq!((st, v["error"].as_str()), (400, Some("stale_signature")));
    assert_eq!(site.playback("premium1", &t, "phone").await.0, 403);

    // The real one.
    let (st, v) = site.webhook(&activate, now(), WEBHOOK_SECRET).await;
    assert_eq!((st, v["applied"].as_bool()), (200, Some(true)), "{v}");
    let (st, p) = site.playback("premium1", &t, "phone").await;
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["ads"], false);
    let (_, me) = site.get("/api/v1/me", Some(&t)).await;
    assert_eq!(me["plan"], "premium");
    assert_eq!(me["max_streams"], 4);

    // Cancelled.
    let cancel = subscription_event(
        "evt_2",
        "customer.subscription.deleted",
        &user,
        "canceled",
        created + 10,
    );
    let (st, _) = site.webhook(&cancel, now(), WEBHOOK_SECRET).await;
    assert_eq!(st, 200);
    assert_eq!(site.playback("premium1", &t, "phone").await.0, 403);
    // Replaying the activation (same event id) changes nothing.
    let (st, v) = site.webhook(&activate, now(), WEBHOOK_SECRET).await;
    assert_eq!((st, v["duplicate"].as_bool()), (200, Some(true)));
    assert_eq!(site.playback("premium1", &t, "phone").await.0, 403);
    // An older event arriving late (a new id, an earlier time) is recorded
    // but does not undo the cancellation.
    let late = subscription_event(
        "evt_0",
        "customer.subscription.updated",
        &user,
        "active",
        created - 100,
    );
    let (st, v) = site.webhook(&late, now(), WEBHOOK_SECRET).await;
    assert_eq!((st, v["applied"].as_bool()), (200, Some(false)), "{v}");
    assert_eq!(site.playback("premium1", &t, "phone").await.0, 403);
    // A renewal: subscribed again, then an invoice extends the period.
    let again = subscription_event(
        "evt_3",
        "customer.subscription.updated",
        &user,
        "active",
        created + 20,
    );
    assert_eq!(site.webhook(&again, now(), WEBHOOK_SECRET).await.0, 200);
    let invoice = json!({
        "id": "evt_4", "type": "invoice.paid", "created": created + 30,
        "data": { "object": { "subscription": format!("sub_{user}"),
            "lines": { "data": [ { "period": { "end": now() + 60 * 86400 } } ] } } }
    });
    let (st, v) = site.webhook(&invoice, now(), WEBHOOK_SECRET).await;
    assert_eq!((st, v["applied"].as_bool()), (200, Some(true)), "{v}");
    let (_, me) = site.get("/api/v1/me", Some(&t)).await;
    assert!(me["subscription"]["current_period_end"].as_u64().unwrap() > now() + 59 * 86400);
    assert_eq!(site.playback("premium1", &t, "phone").await.0, 200);
    // A subscription for no known user is refused, and not recorded, so a
    // retry after the account exists works.
    let orphan = subscription_event(
        "evt_5",
        "customer.subscription.created",
        "nobody",
        "active",
        created,
    );
    assert_eq!(site.webhook(&orphan, now(), WEBHOOK_SECRET).await.0, 422);
    assert_eq!(site.webhook(&orphan, now(), WEBHOOK_SECRET).await.0, 422);
    let m = site.metrics().await;
    assert!(
        m.contains("origin_billing_webhooks_total{outcome=\"duplicate\"} 1"),
        "{m}"
    );
    site.stop().await;
}

async fn the_stream_limit_refuses_one_device_too_many(backend: Backend) {
    let site = Site::start(backend, |c| {
        c.heartbeat_interval_secs = 1;
        c.stream_slot_secs = 3;
    })
    .await;
    site.title("film1", json!({})).await;
    let t = token(&site.signup("one@example.com").await);
    let (st, tv) = site.playback("film1", &t, "tv").await;
    assert_eq!(st, 200, "{tv}");
    assert_eq!(tv["stream"]["heartbeat_interval_secs"], 1);
    // The free plan has one stream: the phone is refused, and told why.
    let (st, v) = site.playback("film1", &t, "phone").await;
    assert_eq!(
        (st, v["error"].as_str()),
        (429, Some("too_many_streams")),
        "{v}"
    );
    assert_eq!(v["limit"], 1);
    assert_eq!(v["active"][0]["device"], "tv");
    // The same device starting again replaces its own stream.
    let (st, tv) = site.playback("film1", &t, "tv").await;
    assert_eq!(st, 200);
    // Stopping frees the slot at once.
    let stream = &tv["stream"];
    let (st, _) = site
        .post(
            &format!("/api/v1/streams/{}/stop", stream["id"].as_str().unwrap()),
            stream["heartbeat_token"].as_str(),
            json!({ "position": 12.0 }),
        )
        .await;
    assert_eq!(st, 204);
    let (st, phone) = site.playback("film1", &t, "phone").await;
    assert_eq!(st, 200, "{phone}");
    // The stopped stream's player is told to stop if it beats again.
    let (st, v) = heartbeat(
        &site,
        &tv,
        stream["heartbeat_token"].as_str(),
        json!({ "position": 13.0 }),
    )
    .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (410, Some("stream_ended")),
        "{v}"
    );
    // A heartbeat token is good for its own stream only.
    let (st, _) = heartbeat(
        &site,
        &phone,
        tv["stream"]["heartbeat_token"].as_str(),
        json!({ "position": 1.0 }),
    )
    .await;
    assert_eq!(st, 401);
    let (st, _) = heartbeat(&site, &phone, Some(&t), json!({ "position": 1.0 })).await;
    assert_eq!(st, 401, "an access token is not a heartbeat token");
    // While the phone's heartbeats come, the laptop stays refused; when
    // they stop, the slot frees itself within stream_slot_secs.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        beat(&site, &phone, 5.0).await;
        assert_eq!(site.playback("film1", &t, "laptop").await.0, 429);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (st, _) = site.playback("film1", &t, "laptop").await;
        if st == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the silent stream's slot never freed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The phone wakes up: its stream was taken over, and it is told so.
    let (st, v) = heartbeat(
        &site,
        &phone,
        phone["stream"]["heartbeat_token"].as_str(),
        json!({ "position": 6.0 }),
    )
    .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (410, Some("stream_ended")),
        "{v}"
    );
    site.stop().await;
}

async fn availability_windows_and_series(backend: Backend) {
    let site = Site::start(backend, |_| {}).await;
    let soon = now() + 86400;
    site.title(
        "later1",
        json!({ "name": "Coming soon", "available_from": soon }),
    )
    .await;
    site.title(
        "gone1",
        json!({ "name": "Gone", "available_until": now() - 10 }),
    )
    .await;
    let ep1 = site.title("ep1", json!({ "name": "Pilot" })).await;
    let t = token(&site.signup("window@example.com").await);
    let (st, v) = site.playback("later1", &t, "tv").await;
    assert_eq!((st, v["error"].as_str()), (403, Some("not_available")));
    assert_eq!(v["available_from"], soon);
    let (st, v) = site.playback("gone1", &t, "tv").await;
    assert_eq!((st, v["error"].as_str()), (403, Some("not_available")));
    // Expired titles leave the catalog; upcoming ones show their date.
    let (_, page) = site.get("/api/v1/titles", None).await;
    let names: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"Coming soon") && !names.contains(&"Gone"),
        "{names:?}"
    );

    // A series, a season, and the episode moved under it: the series'
    // window and premium flag pass down to the episode.
    let (st, series) = site
        .post(
            "/api/v1/admin/titles",
            Some(ADMIN),
            json!({ "kind": "series", "name": "Cricket Stories", "genres": ["Sport"] }),
        )
        .await;
    assert_eq!(st, 201, "{series}");
    let (st, season) = site
        .post(
            "/api/v1/admin/titles",
            Some(ADMIN),
            json!({ "kind": "season", "name": "Season 1", "number": 1, "parent_id": series["id"] }),
        )
        .await;
    assert_eq!(st, 201, "{season}");
    let (st, v) = site
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/admin/titles/{}", ep1["id"].as_str().unwrap()),
            Some(ADMIN),
            Some(json!({ "kind": "episode", "number": 1, "parent_id": season["id"] })),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    // Shape errors and the admin credential.
    let (st, _) = site
        .post(
            "/api/v1/admin/titles",
            Some(ADMIN),
            json!({ "kind": "episode", "name": "Orphan" }),
        )
        .await;
    assert_eq!(st, 400);
    let (st, _) = site
        .post(
            "/api/v1/admin/titles",
            Some("wrong"),
            json!({ "kind": "movie", "name": "X" }),
        )
        .await;
    assert_eq!(st, 401);
    let (_, full) = site
        .get(
            &format!("/api/v1/titles/{}", series["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(full["seasons"][0]["episodes"][0]["asset"], "ep1", "{full}");
    assert_eq!(site.playback("ep1", &t, "tv").await.0, 200);
    let (st, _) = site
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/admin/titles/{}", series["id"].as_str().unwrap()),
            Some(ADMIN),
            Some(json!({ "available_until": now() - 1 })),
        )
        .await;
    assert_eq!(st, 200);
    let (st, v) = site.playback("ep1", &t, "tv").await;
    assert_eq!(
        (st, v["error"].as_str()),
        (403, Some("not_available")),
        "{v}"
    );

    // Artwork goes through the object store and comes back byte for byte;
    // what is not an image is refused.
    let series_id = series["id"].as_str().unwrap();
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR-not-really-but-the-magic-is-right".to_vec();
    let put = |body: Vec<u8>| {
        site.http
            .put(format!(
                "{}/api/v1/admin/titles/{series_id}/artwork",
                site.url
            ))
            .bearer_auth(ADMIN)
            .body(body)
            .send()
    };
    let r = put(b"<svg onload=alert(1)>".to_vec()).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = put(png.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let url = v["artwork"].as_str().unwrap().to_string();
    let r = site
        .http
        .get(format!("{}{url}", site.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.bytes().await.unwrap().to_vec(), png);

    // Deleting the series deletes its episodes' titles; their assets stay,
    // but no longer play (no way around premium and windows).
    let (st, _) = site
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/admin/titles/{series_id}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(st, 204);
    let (st, v) = site.playback("ep1", &t, "tv").await;
    assert_eq!((st, v["error"].as_str()), (404, Some("not_found")), "{v}");
    site.stop().await;
}

async fn search_ranks_and_paginates(backend: Backend) {
    let site = Site::start(backend, |_| {}).await;
    // Five titles mention cricket: in the name, the cast, the synopsis.
    site.title(
        "s1",
        json!({ "name": "Monsoon Wedding", "synopsis": "A family gathers; an uncle watches cricket." }),
    )
    .await;
    site.title(
        "s2",
        json!({ "name": "Cricket Final 2026", "genres": ["Sport"] }),
    )
    .await;
    site.title(
        "s3",
        json!({ "name": "The Bowler", "cast": [{ "name": "Jiminy Cricket", "role": "Coach" }] }),
    )
    .await;
    site.title("s4", json!({ "name": "Street Cricket" })).await;
    site.title(
        "s5",
        json!({ "name": "Rain Delay", "synopsis": "Cricketers wait out the rain." }),
    )
    .await;
    let s6 = site.title("s6", json!({ "name": "Unrelated Drama" })).await;

    let (st, all) = site.get("/api/v1/titles?q=cricket&per_page=10", None).await;
    assert_eq!(st, 200, "{all}");
    let ids: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["asset"].as_str().unwrap())
        .collect();
    assert_eq!(all["total"], 5, "{ids:?}");
    // The last word is a prefix, so "Cricketers" matches too. Names rank
    // above the cast, the cast above the synopsis.
    let rank = |id: &str| ids.iter().position(|x| *x == id).unwrap();
    assert!(
        rank("s2") < rank("s3") && rank("s4") < rank("s3"),
        "{ids:?}"
    );
    assert!(
        rank("s3") < rank("s1") && rank("s3") < rank("s5"),
        "{ids:?}"
    );
    assert!(!ids.contains(&"s6"));
    // Pages of two: three pages, no title twice, the same order.
    let mut paged = Vec::new();
    for page in 1..=3 {
        let (_, p) = site
            .get(
                &format!("/api/v1/titles?q=cricket&per_page=2&page={page}"),
                None,
            )
            .await;
        assert_eq!(p["total"], 5);
        for i in p["items"].as_array().unwrap() {
            paged.push(i["asset"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(paged, ids);
    // Two words must both match; punctuation is not syntax.
    let (_, p) = site.get("/api/v1/titles?q=street%20cric", None).await;
    assert_eq!(p["total"], 1);
    assert_eq!(p["items"][0]["asset"], "s4");
    let (st, p) = site.get("/api/v1/titles?q=%22%29%28*%3A", None).await;
    assert_eq!(
        (st, p["total"].as_i64()),
        (200, Some(6)),
        "no words: the plain list"
    );
    let (st, _) = site.get("/api/v1/titles?per_page=1000", None).await;
    assert_eq!(st, 400);
    // Genre filter, and the genre rail on the browse page.
    let (_, p) = site.get("/api/v1/titles?genre=sport", None).await;
    assert_eq!(p["total"], 1);
    let (_, b) = site.get("/api/v1/browse", None).await;
    let rails: Vec<&str> = b["rails"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(rails, ["new", "genre:sport"]);
    // Renaming updates the index.
    let (st, _) = site
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/admin/titles/{}", s6["id"].as_str().unwrap()),
            Some(ADMIN),
            Some(json!({ "name": "Cricket Drama" })),
        )
        .await;
    assert_eq!(st, 200);
    let (_, p) = site.get("/api/v1/titles?q=cricket", None).await;
    assert_eq!(p["total"], 6);
    site.stop().await;
}

async fn heartbeats_are_batched_and_resume_survives_a_restart(backend: Backend) {
    let mut site = Site::start(backend, |c| c.history_flush_ms = 200).await;
    site.title("film1", json!({ "name": "Long film" })).await;
    site.title("film2", json!({ "name": "Other film" })).await;
    let s = site.signup("resume@example.com").await;
    let t = token(&s);
    let profile = s["user"]["profiles"][0]["id"].as_str().unwrap().to_string();
    let (st, p) = site.playback("film1", &t, "tv").await;
    assert_eq!(st, 200);
    // Many heartbeats; positions go up. The history keeps one row.
    for i in 1..=50 {
        beat(&site, &p, f64::from(i) * 2.0).await;
    }
    let (st, v) = heartbeat(
        &site,
        &p,
        p["stream"]["heartbeat_token"].as_str(),
        json!({ "position": -1.0 }),
    )
    .await;
    assert_eq!((st, v["error"].as_str()), (400, Some("bad_position")));
    // Read-your-writes on this origin, flushed or not.
    let (_, again) = site.playback("film1", &t, "tv").await;
    assert_eq!(again["resume_position"], 100.0);
    let (_, b) = site
        .get(&format!("/api/v1/browse?profile={profile}"), Some(&t))
        .await;
    assert_eq!(b["rails"][0]["id"], "continue", "{b}");
    assert_eq!(b["rails"][0]["items"][0]["asset"], "film1");
    assert_eq!(b["rails"][0]["items"][0]["position"], 100.0);
    // Fewer rows written than heartbeats taken.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = site.metrics().await;
        let value = |name: &str| -> f64 {
            m.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap_or(0.0)
        };
        let accepted = value("cascade_origin_heartbeats_total{result=\"accepted\"}");
        let flushed = value("cascade_origin_heartbeats_total{result=\"flushed\"}");
        assert_eq!(accepted, 50.0);
        if flushed >= 1.0 {
            assert!(flushed < 10.0, "{flushed} rows for 50 heartbeats");
            break;
        }
        assert!(Instant::now() < deadline, "no flush:\n{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A restart (which flushes) keeps the position; a finished title does
    // not resume.
    beat(&site, &again, 321.0).await;
    site.restart().await;
    let (st, p) = site.playback("film1", &t, "tv").await;
    assert_eq!(
        (st, p["resume_position"].as_f64()),
        (200, Some(321.0)),
        "{p}"
    );
    beat(&site, &p, 598.0).await;
    let (_, p) = site.playback("film1", &t, "tv").await;
    assert_eq!(p["resume_position"], 0.0);
    let (_, b) = site
        .get(&format!("/api/v1/browse?profile={profile}"), Some(&t))
        .await;
    assert_ne!(
        b["rails"][0]["id"], "continue",
        "a finished title leaves the rail"
    );
    site.stop().await;
}

#[tokio::test]
async fn the_openapi_document_describes_every_viewer_route() {
    let doc: Value = serde_json::from_str(&cascade_origin::openapi_json()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for (path, method) in [
        ("/api/v1/auth/signup", "post"),
        ("/api/v1/auth/verify", "post"),
        ("/api/v1/auth/login", "post"),
        ("/api/v1/auth/refresh", "post"),
        ("/api/v1/auth/logout", "post"),
        ("/api/v1/me", "get"),
        ("/api/v1/profiles", "get"),
        ("/api/v1/profiles", "post"),
        ("/api/v1/profiles/{id}", "delete"),
        ("/api/v1/titles", "get"),
        ("/api/v1/titles/{id}", "get"),
        ("/api/v1/titles/{id}/artwork", "get"),
        ("/api/v1/browse", "get"),
        ("/api/v1/plans", "get"),
        ("/api/v1/billing/webhook", "post"),
        ("/api/v1/playback/{asset}", "post"),
        ("/api/v1/streams/{id}/heartbeat", "post"),
        ("/api/v1/streams/{id}/stop", "post"),
        ("/api/v1/history", "get"),
        ("/api/v1/admin/titles", "post"),
        ("/api/v1/admin/titles/{id}", "patch"),
        ("/api/v1/admin/titles/{id}/artwork", "put"),
    ] {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not in the document");
        assert!(
            op["responses"].is_object(),
            "{method} {path} has no responses"
        );
    }
    let signup = &doc["paths"]["/api/v1/auth/signup"]["post"]["responses"];
    assert!(signup["202"].is_object() && signup["400"].is_object());
    assert!(
        signup["201"].is_null() && signup["409"].is_null(),
        "sign-up makes no account and tells of none: {signup}"
    );
    let verify = &doc["paths"]["/api/v1/auth/verify"]["post"]["responses"];
    assert!(
        verify["201"].is_object() && verify["400"].is_object(),
        "{verify}"
    );
    let playback = &doc["paths"]["/api/v1/playback/{asset}"]["post"]["responses"];
    for status in ["200", "401", "403", "429", "451"] {
        assert!(playback[status].is_object(), "playback answers {status}");
    }
    assert!(doc["components"]["schemas"]["PlaybackAnswer"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn the_page_has_security_headers_and_every_error_is_json() {
    let site = Site::start(Backend::Sqlite, |_| {}).await;
    // The database (it holds the token secret) and its directory are the
    // owner's alone.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let data = std::path::Path::new(&site.cfg.data_dir);
        assert_eq!(mode(data), 0o700);
        let db = site.cfg.database_url();
        if let Some(path) = db.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap();
            assert_eq!(mode(std::path::Path::new(path)), 0o600, "{path}");
        }
    }
    let page = site
        .http
        .get(format!("{}/", site.url))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let h = page.headers().clone();
    let csp = h["content-security-policy"].to_str().unwrap();
    for part in [
        "default-src 'self'",
        "'sha256-",
        "frame-ancestors 'none'",
        "object-src 'none'",
    ] {
        assert!(csp.contains(part), "{part} in {csp}");
    }
    assert!(!csp.contains("script-src 'self' 'unsafe-inline'"), "{csp}");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["x-frame-options"], "DENY");
    // The hash is that of the page's inline script, as a browser computes it.
    let body = page.text().await.unwrap();
    let script = body
        .split("<script>")
        .nth(1)
        .unwrap()
        .split("</script>")
        .next()
        .unwrap();
    use base64::Engine;
    let digest = ring::digest::digest(&ring::digest::SHA256, script.as_bytes());
    let hash = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    assert!(csp.contains(&format!("'sha256-{hash}'")), "{csp}");

    // A JSON body over the limit is 413, not 400.
    let big = json!({ "email": "a@example.com", "password": "x".repeat(300 * 1024) });
    let (status, v) = site.post("/api/v1/auth/signup", None, big).await;
    assert_eq!(status, 413, "{v}");
    assert_eq!(v["error"], "body_too_large");
    // The framework's own refusals are JSON too.
    let (status, v) = site
        .call(reqwest::Method::DELETE, "/api/v1/auth/signup", None, None)
        .await;
    assert_eq!(status, 405);
    assert_eq!(v["error"], "method_not_allowed", "{v}");
    let (status, v) = site.get("/api/v1/titles?page=many", None).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    site.stop().await;
}

async fn live_channels_and_their_stream_keys(backend: Backend) {
    let site = Site::start(backend, |_| {}).await;
    let body = json!({ "name": "final", "title": "The Final", "premium": true,
                       "allow_countries": ["in", "NP"], "dvr_minutes": 60 });

    // Operators only.
    let (st, v) = site
        .post("/api/v1/admin/channels", None, body.clone())
        .await;
    assert_eq!((st, v["error"].as_str()), (401, Some("unauthorized")));
    let (st, _) = site.get("/api/v1/admin/channels", Some("wrong")).await;
    assert_eq!(st, 401);

    // Made: the key once, with the publish and playback URLs.
    let (st, made) = site
        .post("/api/v1/admin/channels", Some(ADMIN), body.clone())
        .await;
    assert_eq!(st, 201, "{made}");
    let key = made["stream_key"].as_str().unwrap().to_string();
    assert!(key.starts_with("final.") && key.len() > 40, "{key}");
    assert_eq!(
        made["publish"]["rtmp"].as_str().unwrap(),
        format!("rtmp://127.0.0.1:1935/live/{key}")
    );
    assert_eq!(
        made["publish"]["srt"].as_str().unwrap(),
        format!("srt://127.0.0.1:8890?streamid=publish:{key}")
    );
    // Playback URLs name the channel (what edges and tokens use).
    let ch = &made["channel"];
    assert!(ch["playback"]["hls"]
        .as_str()
        .unwrap()
        .ends_with("/live/final/master.m3u8"));
    assert!(ch["playback"]["dash"]
        .as_str()
        .unwrap()
        .ends_with("/live/final/manifest.mpd"));
    assert_eq!(ch["allow_countries"], json!(["IN", "NP"]));
    assert_eq!(
        (ch["premium"].as_bool(), ch["dvr_minutes"].as_i64()),
        (Some(true), Some(60))
    );
    assert_eq!(ch["state"], "idle");

    // Names are unique; bad input is refused with its reason.
    let (st, v) = site.post("/api/v1/admin/channels", Some(ADMIN), body).await;
    assert_eq!((st, v["error"].as_str()), (409, Some("name_taken")));
    for (bad, code) in [
        (json!({ "name": "Final!" }), "bad_name"),
        (
            json!({ "name": "x", "allow_countries": ["India"] }),
            "bad_country",
        ),
        (json!({ "name": "y", "dvr_minutes": 100000 }), "bad_dvr"),
        (
            json!({ "name": "z", "starts_at": 10, "ends_at": 5 }),
            "bad_schedule",
        ),
    ] {
        let (st, v) = site.post("/api/v1/admin/channels", Some(ADMIN), bad).await;
        assert_eq!((st, v["error"].as_str()), (400, Some(code)), "{v}");
    }

    // Listing and status never show a key or its digest.
    let (st, list) = site.get("/api/v1/admin/channels", Some(ADMIN)).await;
    assert_eq!(st, 200);
    assert_eq!(list["channels"].as_array().unwrap().len(), 1);
    let (st, status) = site.get("/api/v1/admin/channels/final", Some(ADMIN)).await;
    assert_eq!(st, 200);
    let secret = key.split_once('.').unwrap().1;
    for v in [&list, &status] {
        let text = v.to_string();
        assert!(
            !text.contains(secret) && !text.contains("key_digest"),
            "{text}"
        );
    }
    assert_eq!(status["key_version"], 1);

    // Rotation: a new key, a new version.
    let (st, rotated) = site
        .post(
            "/api/v1/admin/channels/final/rotate-key",
            Some(ADMIN),
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "{rotated}");
    let key2 = rotated["stream_key"].as_str().unwrap();
    assert_ne!(key2, key);
    assert_eq!(rotated["channel"]["key_version"], 2);

    // Stop; unknown channels are 404s.
    let (st, stopped) = site
        .post("/api/v1/admin/channels/final/stop", Some(ADMIN), json!({}))
        .await;
    assert_eq!((st, stopped["state"].as_str()), (200, Some("stopped")));
    let (st, _) = site.get("/api/v1/admin/channels/nope", Some(ADMIN)).await;
    assert_eq!(st, 404);
    let (st, _) = site
        .post(
            "/api/v1/admin/channels/NOPE/rotate-key",
            Some(ADMIN),
            json!({}),
        )
        .await;
    assert_eq!(st, 404);
}
