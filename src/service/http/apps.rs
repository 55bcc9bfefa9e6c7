//! The seed's Flask app on the HTTP engine: `GET /` says hello, `GET /ws` is the echo
//! WebSocket.

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
