//! The apps that combine the HTTP engine with the WebSocket one: the seed's Flask app
//! (`GET /` says hello, `GET /ws` is the echo WebSocket) and the standalone `ws`
//! service (every path upgrades to the echo).

use std::sync::{Arc, LazyLock};

use super::{App, HttpOptions, HttpSession, Prebuilt, Reply, Request, Response, Route};
use crate::base::Live;
use crate::service::ws::Echo;
use crate::service::{ConnInfo, Cx, Service};

/// The seed's body.
pub const HELLO: &str = "Hello from Multi-threaded Flask Server!";

/// The seed's answer to `GET /`, encoded once.
pub fn hello() -> &'static Prebuilt {
    static HELLO_200: LazyLock<Prebuilt> =
        LazyLock::new(|| Prebuilt::new(Response::text(200, HELLO)));
    &HELLO_200
}

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
            Reply::Prebuilt(hello())
        }
    }
}

/// The HTTP service: [`Hello`] on the HTTP engine.
#[derive(Clone, Default)]
pub struct Http {
    app: Arc<Hello>,
    /// Read once per connection: a config reload changes them for the next ones.
    opts: Live<HttpOptions>,
}

impl Http {
    /// A service with these options (a value, or a [`Live`] handle a reload swaps;
    /// `echo` is taken once, here).
    pub fn new(opts: impl Into<Live<HttpOptions>>) -> Self {
        let opts = opts.into();
        Http {
            app: Arc::new(Hello {
                echo: opts.load().ws.echo,
            }),
            opts,
        }
    }
}

impl Service for Http {
    type Session = HttpSession<Hello>;
    fn name(&self) -> &str {
        "http"
    }
    fn session(&self, _conn: &ConnInfo) -> HttpSession<Hello> {
        HttpSession::new(self.app.clone(), self.opts.get())
    }
}

/// The standalone WebSocket service: every path upgrades to the echo handler.
#[derive(Debug, Clone, Default)]
pub struct Ws {
    app: Arc<WsApp>,
    /// Read once per connection: a config reload changes them for the next ones.
    opts: Live<HttpOptions>,
}

impl Ws {
    /// A service with these options (a value, or a [`Live`] handle a reload swaps;
    /// `echo` is taken once, here).
    pub fn new(opts: impl Into<Live<HttpOptions>>) -> Self {
        let opts = opts.into();
        Ws {
            app: Arc::new(WsApp {
                echo: opts.load().ws.echo,
            }),
            opts,
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
        HttpSession::new(self.app.clone(), self.opts.get())
    }
}
