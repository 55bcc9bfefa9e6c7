//! The switch to a WebSocket (RFC 6455 §4.2.2): the handshake checked, the `101`
//! written, and the WebSocket engine of [`crate::service::ws`] started on the same
//! connection.

use std::io::Write as _;

use super::HttpOptions;
use crate::service::ws::{Handler, WsConn};
use crate::service::Cx;

pub(super) use crate::service::ws::accept;

/// Writes the `101` for an accepted handshake (`key` is the `Sec-WebSocket-Accept`
/// value) and opens the WebSocket connection that runs `handler` from now on.
pub(super) fn switch<H: Handler>(
    key: String,
    handler: H,
    opts: &HttpOptions,
    cx: &mut Cx<'_, H::Event>,
) -> Box<WsConn<H>> {
    let _ = write!(
        cx.out(),
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {key}\r\n\r\n"
    );
    let mut conn = Box::new(WsConn::new(handler, opts.ws.clone(), cx.now()));
    conn.open(cx);
    conn
}
