//! The admin listener (`serve --admin ADDR`, default `127.0.0.1:9180`): Prometheus
//! metrics, health and readiness for a load balancer or an orchestrator, the figures
//! as JSON, and a live dashboard page.
//!
//! It is its own small server (the `threads` model, at most [`MAX_CONNS`] clients) on
//! the crate's HTTP engine, apart from the services: its clients never count against
//! a service's `--max-conns` nor appear in its figures, and it keeps answering while
//! the services drain, so `/readyz` can say so.
//!
//! | path | answer |
//! |---|---|
//! | `/metrics` | Prometheus text exposition ([`super::metrics`]) |
//! | `/healthz` | `200 ok` while the process runs |
//! | `/readyz` | `200 ready`, or `503` while draining or while the chat's Redis is down |
//! | `/stats` | the same figures as `/metrics`, as JSON |
//! | `/dashboard` | a page drawing `/stats` every second (no external resource: a strict CSP allows only this listener) |

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::model::{Limits, Model, Server};
use crate::service::http::{App, HttpOptions, HttpSession, Reply, Request, Response, Route};
use crate::service::ws::Echo;
use crate::service::{ConnInfo, Cx, Service};

use super::metrics::{Snapshot, Sources};

/// The default address: loopback only, since the figures are for the operator.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9180";

/// Clients served at once: a scraper or two and a few dashboards.
pub const MAX_CONNS: usize = 32;

const DASHBOARD_HTML: &str = include_str!("dashboard.html");
const DASHBOARD_JS: &str = include_str!("dashboard.js");
const DASHBOARD_CSS: &str = include_str!("dashboard.css");

/// The dashboard's Content-Security-Policy: its script, style and data come from this
/// listener only, and nothing else runs.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self'; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

const ROUTES: &[Route] = &[
    Route::get("/"),
    Route::get("/metrics"),
    Route::get("/healthz"),
    Route::get("/readyz"),
    Route::get("/stats"),
    Route::get("/dashboard"),
    Route::get("/dashboard.js"),
    Route::get("/dashboard.css"),
    Route::get("/favicon.ico"),
];

/// The admin endpoints over the server's figures.
pub struct AdminApp {
    sources: Sources,
}

impl App for AdminApp {
    type Ws = Echo;

    fn routes(&self) -> &[Route] {
        ROUTES
    }

    fn handle(&self, req: &Request<'_>, _cx: &mut Cx<'_, ()>) -> Reply<Echo> {
        let fresh = |r: Response| r.header("Cache-Control", "no-store");
        Reply::Respond(match req.path {
            "/metrics" => fresh(typed(
                Response::text(200, Snapshot::collect(&self.sources).prometheus()),
                "text/plain; version=0.0.4; charset=utf-8",
            )),
            "/healthz" => fresh(Response::text(200, "ok\n")),
            "/readyz" => {
                let s = Snapshot::collect(&self.sources);
                match (s.ready, s.draining) {
                    (true, _) => fresh(Response::text(200, "ready\n")),
                    (false, true) => fresh(Response::text(503, "draining\n")),
                    (false, false) => fresh(Response::text(503, "redis unavailable\n")),
                }
            }
            "/stats" => {
                let s = Snapshot::collect(&self.sources);
                let json = serde_json::to_string(&s).unwrap_or_else(|e| {
                    // Plain structs of numbers and strings: cannot fail, but say so if it does.
                    format!("{{\"error\":\"{e}\"}}")
                });
                fresh(typed(Response::text(200, json), "application/json"))
            }
            "/dashboard" => page(typed(
                Response::text(200, DASHBOARD_HTML),
                "text/html; charset=utf-8",
            )),
            "/dashboard.js" => page(typed(
                Response::text(200, DASHBOARD_JS),
                "text/javascript; charset=utf-8",
            )),
            "/dashboard.css" => page(typed(
                Response::text(200, DASHBOARD_CSS),
                "text/css; charset=utf-8",
            )),
            // Browsers ask for it; "none" is an answer, a 404 would be logged as an error.
            "/favicon.ico" => Response::text(204, ""),
            _ => Response::text(
                200,
                "multiclient admin: /metrics /healthz /readyz /stats /dashboard\n",
            ),
        })
    }
}

fn typed(mut r: Response, content_type: &'static str) -> Response {
    r.content_type = content_type;
    r
}

fn page(r: Response) -> Response {
    r.header("Content-Security-Policy", CSP)
        .header("X-Content-Type-Options", "nosniff")
        .header("Cache-Control", "no-cache")
}

/// The admin HTTP service.
pub struct Admin {
    app: Arc<AdminApp>,
    opts: Arc<HttpOptions>,
}

impl Admin {
    /// The service over `sources`.
    pub fn new(sources: Sources) -> Admin {
        Admin {
            app: Arc::new(AdminApp { sources }),
            opts: Arc::new(HttpOptions {
                header_timeout: Duration::from_secs(5),
                max_body: 0,
                ..HttpOptions::default()
            }),
        }
    }
}

impl Service for Admin {
    type Session = HttpSession<AdminApp>;
    fn name(&self) -> &str {
        "admin"
    }
    fn session(&self, _conn: &ConnInfo) -> HttpSession<AdminApp> {
        HttpSession::new(self.app.clone(), self.opts.clone())
    }
}

/// A running admin listener; it serves until the process exits.
pub struct AdminListener {
    /// The bound address (with the real port when 0 was asked).
    pub addr: SocketAddr,
    _server: Server,
}

/// Binds `addr` and serves the admin endpoints over `sources` on a thread per client.
pub fn start(addr: SocketAddr, sources: Sources) -> std::io::Result<AdminListener> {
    let limits = Limits {
        max_conns: MAX_CONNS,
        idle_timeout: Duration::from_secs(60),
        write_timeout: Duration::from_secs(10),
        ..Limits::default()
    };
    let mut server = Server::new(Model::Threads, limits)?;
    let l = server.listen(addr, Admin::new(sources))?;
    Ok(AdminListener {
        addr: l.addr,
        _server: server,
    })
}
