//! `http` (seed 003, the threaded Flask app): HTTP/1.1 as a sans-IO state machine on
//! httparse.
//!
//! `GET /` answers `200 text/plain` `Hello from Multi-threaded Flask Server!`, `HEAD /`
//! the same headers, and `GET /ws` upgrades into the WebSocket engine of [`super::ws`]
//! so a page served by us can open a socket to us. Connections persist as HTTP/1.1
//! says (HTTP/1.0 only with `Connection: keep-alive`), pipelined requests are answered
//! in order, and a request body is always consumed (`Content-Length` or chunked) or
//! refused with the connection closed, so the stream never falls out of step.
//!
//! Errors: 400 malformed, 404 unknown path, 405 with `Allow`, 408 when a request head
//! is not complete within `--header-timeout` of its first byte (slowloris) or its body
//! within `--body-timeout` of its head (a slow body, as nginx's `client_body_timeout`
//! and Apache's `mod_reqtimeout` bound it), 413 body over `--max-body`, 431 head over 16 KiB or 64 headers, 505 other HTTP versions,
//! 503 with `Retry-After` for a client refused at `--max-conns` (a refused WebSocket
//! upgrade completes and is closed 1013 instead, which browser code can read).
//!
//! What a path does is the [`App`]'s business: a route table (for 404 and 405) and a
//! handler that answers or upgrades. [`Hello`] is the seed's app; the standalone `ws`
//! service is an app where every path upgrades; the chat adds its routes the same way.
//!
//! The engine is split as hyper's `proto/h1` is: [`head`] reads a request head,
//! [`decode`] a body ([`error`] says why either refuses one), [`encode`] writes a response
//! (with the per-thread [`date`]; a fixed answer, such as the hello, is a [`Prebuilt`]
//! encoded once, with only its date spliced in per request),
//! [`routes`] is what an app plugs in, [`upgrade`] the switch to a WebSocket, [`conn`]
//! the per-connection state machine that drives them, and [`apps`] the seed's app.

use std::sync::Arc;
use std::time::Duration;

use super::ws::WsOptions;

mod apps;
mod conn;
mod date;
mod decode;
mod encode;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod head;
mod routes;
#[cfg(test)]
mod tests;
mod upgrade;
#[cfg(test)]
pub(crate) mod ws_tests;

pub use apps::{hello, Hello, Http, Ws, WsApp, HELLO};
pub use conn::HttpSession;
pub use encode::{reason, Prebuilt, Response};
pub use error::FramingError;
pub use head::{Method, Request};
pub use routes::{App, Reply, Route};

/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header lines in a request.
pub const MAX_HEADERS: usize = 64;

/// HTTP settings, shared by every connection of a listener.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// A request head must be complete this long after its first byte (else 408).
    pub header_timeout: Duration,
    /// A request body must be complete this long after its head (else 408): bytes
    /// that keep trickling in would otherwise hold a connection past the idle timeout.
    pub body_timeout: Duration,
    /// Largest request body accepted (else 413).
    pub max_body: usize,
    /// Settings of upgraded WebSocket connections.
    pub ws: Arc<WsOptions>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_body: 1 << 20,
            ws: Arc::new(WsOptions::default()),
        }
    }
}
