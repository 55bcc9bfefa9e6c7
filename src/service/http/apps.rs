//! The apps that combine the HTTP engine with the WebSocket one: the seed's Flask app
//! (`GET /` says hello, `GET /ws` is the echo WebSocket) and the standalone `ws`
//! service (every path upgrades to the echo).

use std::sync::Arc;

use super::{App, HttpOptions, HttpSession, Reply, Request, Response, Route};
use crate::service::ws::Echo;
use crate::service::{ConnInfo, Cx, Service};

/// The seed's body.
pub const HELLO: &str = "Hello from Multi-threaded Flask Server!";

/// The seed's app: `/` says hello, `/ws` is the echo WebSocket.
#[derive(Debug, Clone, Default)]
pub struct Hello {
    /// `--echo`: the WebSocket at `/ws` answers with exactly the message.
    pub echo: bool,
}

const HELLO_ROUTES: &[Route] = &[Route::get("/"), Route::get("/ws")];

impl App for Hello {
    type Ws = Echo;

    fn routes(&self) -> &[Route] {
        HELLO_ROUTES
    }

    fn handle(&self, req: &Request<'_>, _cx: &mut Cx<'_, ()>) -> Reply<Echo> {
        if req.path == "/ws" {
            Reply::Upgrade(Echo { exact: self.echo })
        } else {
            Reply::Respond(Response::text(200, HELLO))
        }
    }
}

/// The HTTP service: [`Hello`] on the HTTP engine.
#[derive(Clone, Default)]
pub struct Http {
    app: Arc<Hello>,
    opts: Arc<HttpOptions>,
}

impl Http {
    /// A service with these options.
    pub fn new(opts: HttpOptions) -> Self {
        Http {
            app: Arc::new(Hello { echo: opts.ws.echo }),
            opts: Arc::new(opts),
        }
    }
}

impl Service for Http {
    type Session = HttpSession<Hello>;
    fn name(&self) -> &str {
        "http"
    }
    fn session(&self, _conn: &ConnInfo) -> HttpSession<Hello> {
        HttpSession::new(self.app.clone(), self.opts.clone())
    }
}

/// The standalone WebSocket service: every path upgrades to the echo handler.
#[derive(Debug, Clone, Default)]
pub struct Ws {
    app: Arc<WsApp>,
    opts: Arc<HttpOptions>,
}

impl Ws {
    /// A service with these options.
    pub fn new(opts: HttpOptions) -> Self {
        Ws {
            app: Arc::new(WsApp { echo: opts.ws.echo }),
            opts: Arc::new(opts),
        }
    }
}

/// The route table of the standalone service: any path, GET, upgrade.
#[derive(Debug, Clone, Default)]
pub struct WsApp {
    echo: bool,
}

pub(super) const UPGRADE_ONLY: &[Route] = &[Route::get("*")];

impl App for WsApp {
    type Ws = Echo;

    fn routes(&self) -> &[Route] {
        UPGRADE_ONLY
    }

    fn handle(&self, _req: &Request<'_>, _cx: &mut Cx<'_, ()>) -> Reply<Echo> {
        Reply::Upgrade(Echo { exact: self.echo })
    }
}

impl Service for Ws {
    type Session = HttpSession<WsApp>;

    fn name(&self) -> &str {
        "ws"
    }

    fn session(&self, _conn: &ConnInfo) -> Self::Session {
        HttpSession::new(self.app.clone(), self.opts.clone())
    }
}
