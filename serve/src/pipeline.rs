//! The request pipeline: one trait with a method per phase, each with a
//! default body, and a per-request context that carries what earlier phases
//! learned. A role implements the phases it needs; the listeners drive every
//! role the same way through [`Handler`], whatever the protocol.
//!
//! ```text
//! new_ctx → route → authorize → admit → cache_key → lookup ─ hit ─┐
//!             │         │          │         │          └ miss → produce
//!             └─────────┴──────────┴─────────┴─ Answer ───────────┤
//!                                                                 ▼
//!                                              response_filter → (written) → log
//! ```
//!
//! A phase that returns [`Step::Answer`] ends the request early (a refusal,
//! a preflight, a redirect); the answer still goes through
//! `response_filter` and `log`, so CORS, `Cache-Status` and the access log
//! are never forgotten on an early return. `log` runs once the response has
//! been written, with what was actually sent.

use std::sync::Arc;
use std::time::Duration;

use crate::{Request, Response};

/// What a phase decided.
#[derive(Debug)]
pub enum Step {
    /// Go on to the next phase.
    Continue,
    /// Answer with this now; the remaining phases up to `response_filter`
    /// are skipped.
    Answer(Response),
}

/// What the listener did with a response, for the `log` phase.
#[derive(Debug, Clone, Copy)]
pub struct Delivered {
    /// The status sent.
    pub status: http::StatusCode,
    /// Body bytes that went out.
    pub bytes: usize,
    /// Whether the whole response went out.
    pub complete: bool,
    /// Time from the request's arrival to the end of the answer.
    pub elapsed: Duration,
}

/// The phases of one role's request path. Only `produce` has no default.
#[async_trait::async_trait]
pub trait Pipeline: Send + Sync + 'static {
    /// What the phases learn about one request.
    type Ctx: Send + Sync + 'static;

    /// A context for a new request.
    fn new_ctx(&self, req: &Request) -> Self::Ctx;

    /// Decides what the request is (media, API, fleet call, page…).
    fn route(&self, _req: &Request, _ctx: &mut Self::Ctx) -> Step {
        Step::Continue
    }

    /// Checks who is asking: tokens, credentials.
    async fn authorize(&self, _req: &Request, _ctx: &mut Self::Ctx) -> Step {
        Step::Continue
    }

    /// Decides whether to serve this viewer now: geo-fencing, overload.
    async fn admit(&self, _req: &Request, _ctx: &mut Self::Ctx) -> Step {
        Step::Continue
    }

    /// Computes the cache key (and what it depends on) into the context.
    async fn cache_key(&self, _req: &Request, _ctx: &mut Self::Ctx) -> Step {
        Step::Continue
    }

    /// A fresh cached answer, if there is one.
    async fn lookup(&self, _req: &Request, _ctx: &mut Self::Ctx) -> Option<Response> {
        None
    }

    /// Makes the answer on a miss: upstream fetch, packaging, storing.
    async fn produce(&self, req: &Request, ctx: &mut Self::Ctx) -> Response;

    /// Adjusts every answer, early ones included: child-URL tokens, CORS,
    /// ranges, security headers.
    fn response_filter(&self, _req: &Request, _ctx: &mut Self::Ctx, resp: Response) -> Response {
        resp
    }

    /// Runs once the answer has been written.
    fn log(&self, _req: &Request, _ctx: &Self::Ctx, _delivered: &Delivered) {}
}

/// Runs the phases from `route` to `response_filter`.
pub async fn run<P: Pipeline + ?Sized>(p: &P, req: &Request, ctx: &mut P::Ctx) -> Response {
    let resp = match phases(p, req, ctx).await {
        Step::Answer(r) => r,
        Step::Continue => match p.lookup(req, ctx).await {
            Some(hit) => hit,
            None => p.produce(req, ctx).await,
        },
    };
    p.response_filter(req, ctx, resp)
}

/// The phases before the cache, stopping at the first answer.
async fn phases<P: Pipeline + ?Sized>(p: &P, req: &Request, ctx: &mut P::Ctx) -> Step {
    if let answer @ Step::Answer(_) = p.route(req, ctx) {
        return answer;
    }
    if let answer @ Step::Answer(_) = p.authorize(req, ctx).await {
        return answer;
    }
    if let answer @ Step::Answer(_) = p.admit(req, ctx).await {
        return answer;
    }
    p.cache_key(req, ctx).await
}

/// The role's `log` phase for one request, with its context inside.
pub type PhaseLog = Box<dyn FnOnce(&Delivered) + Send>;

/// A response and the `log` phase to run once it is written.
pub struct Exchange {
    /// The answer.
    pub response: Response,
    /// Called by the listener with what it sent.
    pub log: Option<PhaseLog>,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("response", &self.response)
            .finish_non_exhaustive()
    }
}

impl From<Response> for Exchange {
    /// An answer with no `log` phase (health, metrics, refusals before the pipeline).
    fn from(response: Response) -> Exchange {
        Exchange {
            response,
            log: None,
        }
    }
}

/// What a listener drives: a pipeline with its context type erased.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    async fn handle(self: Arc<Self>, req: Request) -> Exchange;
}

#[async_trait::async_trait]
impl<P: Pipeline> Handler for P {
    async fn handle(self: Arc<Self>, req: Request) -> Exchange {
        let mut ctx = self.new_ctx(&req);
        let response = run(&*self, &req, &mut ctx).await;
        let log = Box::new(move |d: &Delivered| self.log(&req, &ctx, d));
        Exchange {
            response,
            log: Some(log),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, Method, StatusCode, Uri};
    use std::sync::Mutex;

    /// Records the phases it ran; refuses `/deny` in authorize and hits
    /// `/cached` in lookup.
    struct Recorder;

    #[derive(Default)]
    struct Trace(Vec<&'static str>);

    #[async_trait::async_trait]
    impl Pipeline for Recorder {
        type Ctx = Mutex<Trace>;
        fn new_ctx(&self, _req: &Request) -> Self::Ctx {
            Mutex::new(Trace::default())
        }
        fn route(&self, _req: &Request, ctx: &mut Self::Ctx) -> Step {
            ctx.get_mut().map(|t| t.0.push("route")).ok();
            Step::Continue
        }
        async fn authorize(&self, req: &Request, ctx: &mut Self::Ctx) -> Step {
            ctx.get_mut().map(|t| t.0.push("authorize")).ok();
            if req.uri.path() == "/deny" {
                return Step::Answer(Response::error(StatusCode::FORBIDDEN, "no", "no"));
            }
            Step::Continue
        }
        async fn admit(&self, _req: &Request, ctx: &mut Self::Ctx) -> Step {
            ctx.get_mut().map(|t| t.0.push("admit")).ok();
            Step::Continue
        }
        async fn cache_key(&self, _req: &Request, ctx: &mut Self::Ctx) -> Step {
            ctx.get_mut().map(|t| t.0.push("cache_key")).ok();
            Step::Continue
        }
        async fn lookup(&self, req: &Request, ctx: &mut Self::Ctx) -> Option<Response> {
            ctx.get_mut().map(|t| t.0.push("lookup")).ok();
            (req.uri.path() == "/cached")
                .then(|| Response::new(StatusCode::OK, "text/plain", "hit"))
        }
        async fn produce(&self, _req: &Request, ctx: &mut Self::Ctx) -> Response {
            ctx.get_mut().map(|t| t.0.push("produce")).ok();
            Response::new(StatusCode::OK, "text/plain", "made")
        }
        fn response_filter(&self, _req: &Request, ctx: &mut Self::Ctx, resp: Response) -> Response {
            ctx.get_mut().map(|t| t.0.push("response_filter")).ok();
            resp.header("x-filtered", "1")
        }
    }

    fn request(path: &'static str) -> Request {
        Request {
            method: Method::GET,
            uri: Uri::from_static(path),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            client: None,
            request_id: "t".into(),
            protocol: "http/1.1",
            secure: false,
        }
    }

    async fn trace(path: &'static str) -> (Response, Vec<&'static str>) {
        let req = request(path);
        let mut ctx = Recorder.new_ctx(&req);
        let r = run(&Recorder, &req, &mut ctx).await;
        let t = ctx.into_inner().map(|t| t.0).unwrap_or_default();
        (r, t)
    }

    #[tokio::test]
    async fn a_miss_runs_every_phase_in_order() {
        let (r, t) = trace("/x").await;
        assert_eq!(&r.body[..], b"made");
        assert_eq!(
            t,
            [
                "route",
                "authorize",
                "admit",
                "cache_key",
                "lookup",
                "produce",
                "response_filter"
            ]
        );
        assert_eq!(r.headers["x-filtered"], "1");
    }

    #[tokio::test]
    async fn a_hit_skips_produce() {
        let (r, t) = trace("/cached").await;
        assert_eq!(&r.body[..], b"hit");
        assert!(!t.contains(&"produce"));
        assert_eq!(t.last(), Some(&"response_filter"));
    }

    #[tokio::test]
    async fn an_early_answer_skips_to_the_response_filter() {
        let (r, t) = trace("/deny").await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert_eq!(t, ["route", "authorize", "response_filter"]);
        assert_eq!(
            r.headers["x-filtered"], "1",
            "early answers are filtered too"
        );
    }
}
