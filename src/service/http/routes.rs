//! What an application plugs into the engine: a route table, from which the session
//! answers 404 and 405 itself, and a handler that answers a request or upgrades it to
//! a WebSocket.

use super::{Method, Prebuilt, Request, Response};
use crate::service::ws::Handler;
use crate::service::Cx;

/// One entry of an app's route table: a path and the methods it answers. A `*`
/// segment matches any one segment (`/rooms/*/messages`); the path `*` matches all.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// The path pattern.
    pub path: &'static str,
    /// The methods answered there (HEAD is implied by GET).
    pub methods: &'static [Method],
}

impl Route {
    /// A route answering GET (and so HEAD) at `path`.
    pub const fn get(path: &'static str) -> Route {
        Route {
            path,
            methods: &[Method::Get],
        }
    }

    /// A route answering POST at `path`.
    pub const fn post(path: &'static str) -> Route {
        Route {
            path,
            methods: &[Method::Post],
        }
    }

    /// Whether `path` matches this route's pattern.
    pub fn matches(&self, path: &str) -> bool {
        // A path equal to the pattern matches it segment by segment too; this answers
        // the usual request without splitting either.
        if self.path == "*" || self.path == path {
            return true;
        }
        let mut want = self.path.split('/');
        let mut got = path.split('/');
        loop {
            match (want.next(), got.next()) {
                (None, None) => return true,
                (Some(w), Some(g)) if w == g || (w == "*" && !g.is_empty()) => {}
                _ => return false,
            }
        }
    }

    pub(super) fn allows(&self, m: Method) -> bool {
        self.methods.contains(&m) || (m == Method::Head && self.methods.contains(&Method::Get))
    }

    pub(super) fn allow_header(&self) -> String {
        let mut s = String::new();
        for m in self.methods {
            if !s.is_empty() {
                s.push_str(", ");
            }
            s.push_str(m.as_str());
            if *m == Method::Get && !self.methods.contains(&Method::Head) {
                s.push_str(", HEAD");
            }
        }
        s
    }
}

/// What a handler does with a request.
pub enum Reply<H> {
    /// Answer it.
    Respond(Response),
    /// Answer it with a response encoded once (the same bytes for every request but
    /// the `Date`).
    Prebuilt(&'static Prebuilt),
    /// Upgrade to a WebSocket run by this handler (the handshake is checked first).
    Upgrade(H),
}

/// An HTTP application: a route table and a handler. The session answers 404 and 405
/// from the table, so `handle` only sees requests to a route with an allowed method.
pub trait App: Send + Sync + 'static {
    /// The WebSocket handler of upgraded connections (its `Event` is the session's).
    type Ws: Handler;

    /// The routes, first match wins.
    fn routes(&self) -> &[Route];

    /// Answers a routed request.
    fn handle(
        &self,
        req: &Request<'_>,
        cx: &mut Cx<'_, <Self::Ws as Handler>::Event>,
    ) -> Reply<Self::Ws>;

    /// Looks at a routed request's head before its body is read, when the client
    /// waits for `100 Continue` (RFC 9110 §10.1.1): a response returned here is sent
    /// instead (a 401, say), the body is never read and the connection closes. The
    /// default lets every body come.
    fn precheck(&self, req: &Request<'_>) -> Option<Response> {
        let _ = req;
        None
    }
}
