//! The switch to a WebSocket (RFC 6455 §4.2.2): the handshake checked, the `101`
//! written, and the WebSocket engine of [`crate::service::ws`] started on the same
//! connection.

use std::io::Write as _;

use super::{HttpOptions, Method, Request, Response};
use crate::service::ws::{Handler, WsConn};
use crate::service::Cx;

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

/// The only WebSocket protocol version there is (RFC 6455 §4.1).
const VERSION: &str = "13";

/// Checks an upgrade request (RFC 6455 §4.2.1) and writes the `101`, or says which
/// error response the client gets: 400 for a malformed request, 426 with
/// `Sec-WebSocket-Version: 13` for a missing upgrade or another version.
pub(super) fn accept(req: &Request<'_>) -> Result<String, Response> {
    let bad = |why: &'static str| Err(Response::text(400, why).close());
    let upgrade_required = |why: &'static str| {
        Err(Response::text(426, why)
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", VERSION)
            .close())
    };
    if req.method != Method::Get {
        return bad("WebSocket upgrade needs GET\n");
    }
    if req.version < 1 {
        return bad("WebSocket upgrade needs HTTP/1.1\n");
    }
    if !req.header_has_token("upgrade", "websocket") {
        return upgrade_required("This is a WebSocket endpoint: upgrade needed\n");
    }
    if !req.header_has_token("connection", "upgrade") {
        return bad("missing Connection: Upgrade\n");
    }
    if req.header("host").is_none() {
        return bad("missing Host\n");
    }
    match req.header("sec-websocket-version") {
        None => return bad("missing Sec-WebSocket-Version\n"),
        Some(v) if v.trim_ascii() != VERSION.as_bytes() => {
            return upgrade_required("unsupported WebSocket version\n")
        }
        Some(_) => {}
    }
    let Some(key) = req.header("sec-websocket-key") else {
        return bad("missing Sec-WebSocket-Key\n");
    };
    let key = key.trim_ascii();
    match data_encoding::BASE64.decode(key) {
        Ok(k) if k.len() == 16 => {}
        _ => return bad("bad Sec-WebSocket-Key\n"),
    }
    Ok(tungstenite::handshake::derive_accept_key(key))
}
