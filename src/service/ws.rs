//! `ws` (seed 003, the `websockets` echo server): RFC 6455 after an HTTP upgrade.
//!
//! Every message is answered `Server received: <message>`, text as text and binary as
//! binary; with `--echo` the message itself comes back (what conformance suites such
//! as Autobahn expect). The framing, masking, fragmentation, UTF-8 validation across
//! fragments, control-frame rules and the close handshake are tungstenite's
//! [`WebSocketContext`], driven sans-IO: it reads from the bytes the model handed us
//! and writes into the session's output buffer, so the same engine runs under every
//! model and under the test harness.
//!
//! The handshake itself is read by the HTTP engine ([`super::http`]): the standalone
//! `ws` service on port 8765 is that engine with a route table where every path is an
//! upgrade, and the `http` service upgrades `GET /ws`. After the `101`, a [`WsConn`]
//! runs a [`Handler`]: the echo handler here, a JSON chat handler later, each with its
//! own mailbox events.
//!
//! Close codes: 1000/peer's code echoed on a normal close, 1001 on shutdown and on a
//! client that stops answering pings, 1002 protocol errors, 1007 invalid UTF-8, 1008
//! slow consumer, 1009 message over `--max-message`, 1011 internal error, 1013 server
//! busy (sent right after a completed handshake, so browser code can read why).

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tungstenite::error::{CapacityError, Error as WsError};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};

pub use tungstenite::{Bytes, Message, Utf8Bytes};

use super::http::{self, Method, Reply, Request, Response, Route};
use super::{log_received, ConnInfo, Cx, Goodbye, Service};

/// The seed's reply prefix.
pub const PREFIX: &str = "Server received: ";

/// The only protocol version there is (RFC 6455 §4.1).
const VERSION: &str = "13";

/// WebSocket settings, shared by every connection of a listener.
#[derive(Debug, Clone)]
pub struct WsOptions {
    /// Answer with exactly the message instead of `Server received: <message>`.
    pub echo: bool,
    /// Largest message (and frame) accepted; beyond it the connection is closed 1009.
    pub max_message: usize,
    /// A client silent this long is pinged.
    pub ping_interval: Duration,
    /// A pinged client that sends nothing for this long is closed 1001.
    pub ping_timeout: Duration,
}

impl Default for WsOptions {
    fn default() -> Self {
        WsOptions {
            echo: false,
            max_message: 1 << 20,
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(30),
        }
    }
}

/// What a WebSocket application does with messages: the echo service here, the chat
/// later. Every method gets a [`WsCx`] to send messages, close, or reach the session's
/// [`Cx`] (its mailbox, its clock).
pub trait Handler: Send + 'static {
    /// What other connections push into this session's mailbox.
    type Event: Send + 'static;

    /// The handshake completed.
    fn open(&mut self, ws: &mut WsCx<'_, '_, '_, Self::Event>) {
        let _ = ws;
    }

    /// A complete text or binary message arrived (control frames are handled by the
    /// engine: pings are answered, closes echoed).
    fn message(&mut self, msg: Message, ws: &mut WsCx<'_, '_, '_, Self::Event>);

    /// A mailbox event arrived.
    fn event(&mut self, event: Self::Event, ws: &mut WsCx<'_, '_, '_, Self::Event>) {
        let _ = (event, ws);
    }

    /// When the handler next wants [`Handler::timeout`] called (an answer it gives up
    /// waiting for, say); the engine's ping timer runs beside it.
    fn deadline(&self) -> Option<Instant> {
        None
    }

    /// The deadline returned by [`Handler::deadline`] has passed.
    fn timeout(&mut self, ws: &mut WsCx<'_, '_, '_, Self::Event>) {
        let _ = ws;
    }
}

/// The seed's handler: `Server received: <message>`, or the message itself with `echo`.
#[derive(Debug, Clone, Default)]
pub struct Echo {
    /// Answer with exactly the message.
    pub exact: bool,
}

impl Echo {
    /// The seed's reply to a text or binary message (`None` for control frames); for
    /// apps that echo on one path and do something else on another.
    pub fn reply(&self, msg: Message) -> Option<Message> {
        Some(match msg {
            Message::Text(t) => {
                log_received(t.as_bytes());
                if self.exact {
                    Message::Text(t)
                } else {
                    let mut s = String::with_capacity(PREFIX.len() + t.len());
                    s.push_str(PREFIX);
                    s.push_str(&t);
                    Message::text(s)
                }
            }
            Message::Binary(b) => {
                log_received(&b);
                if self.exact {
                    Message::Binary(b)
                } else {
                    let mut v = Vec::with_capacity(PREFIX.len() + b.len());
                    v.extend_from_slice(PREFIX.as_bytes());
                    v.extend_from_slice(&b);
                    Message::binary(v)
                }
            }
            _ => return None,
        })
    }
}

impl Handler for Echo {
    type Event = ();

    fn message(&mut self, msg: Message, ws: &mut WsCx<'_, '_, '_, ()>) {
        if let Some(reply) = self.reply(msg) {
            ws.send(reply);
        }
    }
}

/// The bytes tungstenite sees as its stream: the input handed to the session, then
/// `WouldBlock`; writes go straight into the session's output buffer.
struct Pipe<'i, 'o> {
    input: &'i [u8],
    out: &'o mut Vec<u8>,
}

impl io::Read for Pipe<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl io::Write for Pipe<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A handler's view of its connection: send, close, and the session's [`Cx`].
pub struct WsCx<'w, 'c, 'x, E> {
    ws: &'w mut WebSocketContext,
    cx: &'c mut Cx<'x, E>,
}

impl<'x, E> WsCx<'_, '_, 'x, E> {
    /// Sends a message. After a close it is dropped: the peer will not read it.
    pub fn send(&mut self, msg: Message) {
        let mut pipe = Pipe {
            input: &[],
            out: self.cx.out(),
        };
        let r = self
            .ws
            .write(&mut pipe, msg)
            .and_then(|_| self.ws.flush(&mut pipe));
        if let Err(e) = r {
            tracing::debug!("websocket send after close: {e}");
        }
    }

    /// Starts the close handshake with `code`.
    pub fn close(&mut self, code: CloseCode, reason: &'static str) {
        start_close(self.ws, self.cx, code, reason);
    }

    /// The session's context (mailbox, clock, connection info).
    pub fn cx(&mut self) -> &mut Cx<'x, E> {
        self.cx
    }
}

fn start_close<E>(
    ws: &mut WebSocketContext,
    cx: &mut Cx<'_, E>,
    code: CloseCode,
    reason: &'static str,
) {
    let mut pipe = Pipe {
        input: &[],
        out: cx.out(),
    };
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    match ws.close(&mut pipe, Some(frame)) {
        Ok(()) => {}
        Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => cx.close(),
        Err(e) => {
            tracing::debug!("websocket close: {e}");
            cx.close();
        }
    }
}

/// One upgraded connection: tungstenite's engine, a handler and the ping timer.
pub struct WsConn<H: Handler> {
    ws: WebSocketContext,
    handler: H,
    opts: Arc<WsOptions>,
    /// When the client last sent anything.
    heard: Instant,
    /// When our unanswered ping went out.
    pinged: Option<Instant>,
    /// Input taken by the engine since the last whole message: the message being
    /// assembled (within a read chunk), charged to the server's buffer budget.
    unfinished: usize,
    held: crate::base::Held,
}

impl<H: Handler> WsConn<H> {
    /// An engine for a connection whose handshake just completed.
    pub fn new(handler: H, opts: Arc<WsOptions>, now: Instant) -> Self {
        let max = Some(opts.max_message);
        let config = WebSocketConfig::default()
            // Small buffers: an idle connection holds little; large messages grow them.
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_message_size(max)
            .max_frame_size(max);
        WsConn {
            ws: WebSocketContext::new(Role::Server, Some(config)),
            handler,
            opts,
            heard: now,
            pinged: None,
            unfinished: 0,
            held: crate::base::Held::new(),
        }
    }

    /// The handler, for tests and for applications that inspect it.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// Runs the handler's `open`.
    pub fn open(&mut self, cx: &mut Cx<'_, H::Event>) {
        let mut wcx = WsCx {
            ws: &mut self.ws,
            cx,
        };
        self.handler.open(&mut wcx);
    }

    /// Feeds frames; always consumes everything (partial frames and fragments are
    /// kept by the engine, bounded by `max_message`).
    pub fn read(&mut self, input: &[u8], cx: &mut Cx<'_, H::Event>) -> usize {
        if !input.is_empty() {
            self.heard = cx.now();
            self.pinged = None;
        }
        let mut rest = input;
        while !cx.is_closing() {
            let mut pipe = Pipe {
                input: rest,
                out: cx.out(),
            };
            let r = self.ws.read(&mut pipe);
            self.unfinished += rest.len() - pipe.input.len();
            rest = pipe.input;
            if matches!(
                r,
                Ok(Message::Text(_) | Message::Binary(_) | Message::Close(_))
            ) {
                self.unfinished = 0;
            }
            match r {
                Ok(msg @ (Message::Text(_) | Message::Binary(_))) => {
                    let mut wcx = WsCx {
                        ws: &mut self.ws,
                        cx,
                    };
                    self.handler.message(msg, &mut wcx);
                }
                Ok(Message::Close(_)) => {
                    // Our echo of the peer's close (or the end of our own handshake)
                    // is written by the flush; then the server closes TCP first.
                    let mut pipe = Pipe {
                        input: &[],
                        out: cx.out(),
                    };
                    let _ = self.ws.flush(&mut pipe);
                    cx.close();
                }
                Ok(_) => {} // pings are answered by the engine; pongs only show life
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => cx.close(),
                Err(e) => self.fail(e, cx),
            }
        }
        if !cx.hold(&mut self.held, self.unfinished) {
            tracing::warn!("websocket message over the server's buffer budget; closing 1013");
            start_close(&mut self.ws, cx, CloseCode::Again, "server busy");
            cx.close();
            self.unfinished = 0;
            cx.hold(&mut self.held, 0);
        }
        input.len()
    }

    /// Fails the connection (RFC 6455 §7.1.7): the close code for `e`, then close.
    fn fail(&mut self, e: WsError, cx: &mut Cx<'_, H::Event>) {
        let (code, reason) = match &e {
            WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
                (CloseCode::Size, "message too big")
            }
            WsError::Capacity(_) => (CloseCode::Size, "too big"),
            WsError::Utf8(_) => (CloseCode::Invalid, "invalid UTF-8"),
            WsError::Protocol(_) => (CloseCode::Protocol, "protocol error"),
            _ => (CloseCode::Error, "internal error"),
        };
        tracing::info!("websocket closed {}: {e}", u16::from(code));
        start_close(&mut self.ws, cx, code, reason);
        cx.close();
    }

    /// Delivers a mailbox event to the handler.
    pub fn event(&mut self, ev: H::Event, cx: &mut Cx<'_, H::Event>) {
        let mut wcx = WsCx {
            ws: &mut self.ws,
            cx,
        };
        self.handler.event(ev, &mut wcx);
    }

    /// When the ping timer or the handler's timer next fires.
    pub fn deadline(&self) -> Option<Instant> {
        if !self.ws.can_write() {
            return None; // closing: the model's goodbye grace bounds the wait
        }
        let ping = match self.pinged {
            Some(t) => t + self.opts.ping_timeout,
            None => self.heard + self.opts.ping_interval,
        };
        Some(self.handler.deadline().map_or(ping, |d| d.min(ping)))
    }

    /// Runs the handler's timer if it is due; pings a silent client; closes 1001 one
    /// that did not answer.
    pub fn timeout(&mut self, cx: &mut Cx<'_, H::Event>) {
        let now = cx.now();
        if self.handler.deadline().is_some_and(|d| now >= d) {
            let mut wcx = WsCx {
                ws: &mut self.ws,
                cx,
            };
            self.handler.timeout(&mut wcx);
        }
        match self.pinged {
            Some(t) if now >= t + self.opts.ping_timeout => {
                tracing::info!("websocket client stopped answering pings");
                start_close(&mut self.ws, cx, CloseCode::Away, "ping timeout");
                cx.close();
            }
            None if now >= self.heard + self.opts.ping_interval => {
                self.pinged = Some(now);
                let mut pipe = Pipe {
                    input: &[],
                    out: cx.out(),
                };
                let r = self
                    .ws
                    .write(&mut pipe, Message::Ping(Bytes::new()))
                    .and_then(|_| self.ws.flush(&mut pipe));
                if r.is_err() {
                    cx.close();
                }
            }
            _ => {}
        }
    }

    /// The model ends the connection: the close code for `why`. Shutdown waits for
    /// the client's close reply (bounded by the model's grace); the others close TCP
    /// once the frame is sent.
    pub fn goodbye(&mut self, why: Goodbye, cx: &mut Cx<'_, H::Event>) {
        let (code, reason) = match why {
            Goodbye::Busy => (CloseCode::Again, "server busy"),
            Goodbye::Idle => (CloseCode::Away, "idle timeout"),
            Goodbye::Shutdown => (CloseCode::Away, "server shutting down"),
            Goodbye::SlowConsumer => (CloseCode::Policy, "slow consumer"),
        };
        start_close(&mut self.ws, cx, code, reason);
        if why != Goodbye::Shutdown {
            cx.close();
        }
    }
}

/// Checks an upgrade request (RFC 6455 §4.2.1) and writes the `101`, or says which
/// error response the client gets: 400 for a malformed request, 426 with
/// `Sec-WebSocket-Version: 13` for a missing upgrade or another version.
pub fn accept(req: &Request<'_>) -> Result<String, Response> {
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

/// The standalone WebSocket service: every path upgrades to the echo handler.
#[derive(Debug, Clone, Default)]
pub struct Ws {
    app: Arc<WsApp>,
    opts: Arc<http::HttpOptions>,
}

impl Ws {
    /// A service with these options.
    pub fn new(opts: http::HttpOptions) -> Self {
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

const UPGRADE_ONLY: &[Route] = &[Route::get("*")];

impl http::App for WsApp {
    type Ws = Echo;

    fn routes(&self) -> &[Route] {
        UPGRADE_ONLY
    }

    fn handle(&self, _req: &Request<'_>, _cx: &mut Cx<'_, ()>) -> Reply<Echo> {
        Reply::Upgrade(Echo { exact: self.echo })
    }
}

impl Service for Ws {
    type Session = http::HttpSession<WsApp>;

    fn name(&self) -> &str {
        "ws"
    }

    fn session(&self, _conn: &ConnInfo) -> Self::Session {
        http::HttpSession::new(self.app.clone(), self.opts.clone())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::service::{Harness, Service};

    /// The RFC 6455 §1.3 sample key and its accept value.
    pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    pub fn upgrade_request(path: &str) -> String {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    }

    /// A client frame, masked as RFC 6455 requires (or not, to test the refusal).
    pub fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let m = if masked { 0x80 } else { 0 };
        let mut v = vec![first];
        match payload.len() {
            n if n < 126 => v.push(m | n as u8),
            n if n < 65536 => {
                v.push(m | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(m | 127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            v.extend_from_slice(&mask);
            v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        } else {
            v.extend_from_slice(payload);
        }
        v
    }

    pub const TEXT: u8 = 0x81;
    pub const BINARY: u8 = 0x82;
    pub const CLOSE: u8 = 0x88;
    pub const PING: u8 = 0x89;
    pub const PONG: u8 = 0x8a;

    /// Server frames (unmasked) as (first byte, payload).
    pub fn frames(mut out: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut v = Vec::new();
        while out.len() >= 2 {
            assert_eq!(out[1] & 0x80, 0, "server frames are not masked");
            let (len, hdr) = match out[1] & 0x7f {
                126 => (u16::from_be_bytes([out[2], out[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(out[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            v.push((out[0], out[hdr..hdr + len].to_vec()));
            out = &out[hdr + len..];
        }
        assert!(out.is_empty(), "trailing partial frame");
        v
    }

    fn close_code(f: &(u8, Vec<u8>)) -> u16 {
        assert_eq!(f.0, CLOSE, "expected a close frame, got {f:?}");
        u16::from_be_bytes([f.1[0], f.1[1]])
    }

    fn service(echo: bool, max_message: usize) -> Ws {
        Ws::new(http::HttpOptions {
            ws: Arc::new(WsOptions {
                echo,
                max_message,
                ..WsOptions::default()
            }),
            ..http::HttpOptions::default()
        })
    }

    /// A session past its handshake, with the 101 checked and taken.
    fn open(echo: bool, max_message: usize) -> Harness<<Ws as Service>::Session> {
        let mut h = Harness::new(service(echo, max_message).session(&ConnInfo::test(1)));
        h.feed(upgrade_request("/").as_bytes());
        let out = String::from_utf8(h.take_output()).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{out}"
        );
        assert!(
            out.contains(&format!("Sec-WebSocket-Accept: {ACCEPT}\r\n")),
            "{out}"
        );
        assert!(out.ends_with("\r\n\r\n"));
        h
    }

    fn handshake_status(req: &str) -> String {
        let mut h = Harness::new(service(false, 1 << 20).session(&ConnInfo::test(1)));
        h.feed(req.as_bytes());
        assert!(h.is_closing(), "a refused handshake closes");
        String::from_utf8(h.take_output()).unwrap()
    }

    #[test]
    fn handshake_answers_101_with_the_accept_key() {
        open(false, 1 << 20);
    }

    #[test]
    fn handshake_without_upgrade_is_426_with_version() {
        let out = handshake_status("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 426 "), "{out}");
        assert!(out.contains("Sec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn handshake_with_other_version_is_426() {
        let req = upgrade_request("/").replace("Version: 13", "Version: 8");
        let out = handshake_status(&req);
        assert!(out.starts_with("HTTP/1.1 426 "), "{out}");
        assert!(out.contains("Sec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn malformed_handshakes_are_400() {
        for req in [
            upgrade_request("/").replace(KEY, "c2hvcnQ="),
            upgrade_request("/").replace("Connection: Upgrade", "Connection: keep-alive"),
            upgrade_request("/").replace("Sec-WebSocket-Version: 13\r\n", ""),
            upgrade_request("/").replace("HTTP/1.1", "HTTP/1.0"),
            upgrade_request("/").replace("Host: x\r\n", ""),
        ] {
            let out = handshake_status(&req);
            assert!(out.starts_with("HTTP/1.1 400 "), "{req:?} -> {out}");
        }
    }

    #[test]
    fn text_and_binary_get_the_seed_reply_in_kind() {
        let mut h = open(false, 1 << 20);
        h.feed(&frame(TEXT, b"hi", true));
        h.feed(&frame(BINARY, &[0, 1, 0xff], true));
        let f = frames(&h.take_output());
        assert_eq!(f[0], (TEXT, b"Server received: hi".to_vec()));
        assert_eq!(f[1], (BINARY, b"Server received: \x00\x01\xff".to_vec()));
        assert!(!h.is_closing());
    }

    #[test]
    fn echo_mode_answers_exactly_the_message() {
        let mut h = open(true, 1 << 20);
        h.feed(&frame(TEXT, "héllo".as_bytes(), true));
        assert_eq!(
            frames(&h.take_output()),
            [(TEXT, "héllo".as_bytes().to_vec())]
        );
    }

    #[test]
    fn ping_gets_pong_with_its_payload() {
        let mut h = open(false, 1 << 20);
        h.feed(&frame(PING, b"abc", true));
        assert_eq!(frames(&h.take_output()), [(PONG, b"abc".to_vec())]);
    }

    #[test]
    fn close_echoes_the_peer_code_then_closes() {
        let mut h = open(false, 1 << 20);
        let mut payload = 4000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        h.feed(&frame(CLOSE, &payload, true));
        let f = frames(&h.take_output());
        assert_eq!(close_code(&f[0]), 4000);
        assert!(h.is_closing());
    }

    #[test]
    fn fragments_with_a_ping_between_make_one_message() {
        let mut h = open(false, 1 << 20);
        h.feed(&frame(0x01, b"frag", true)); // text, not final
        h.feed(&frame(PING, b"p", true));
        h.feed(&frame(0x00, b"men", true)); // continuation, not final
        h.feed(&frame(0x80, b"ted", true)); // continuation, final
        let f = frames(&h.take_output());
        assert_eq!(
            f,
            [
                (PONG, b"p".to_vec()),
                (TEXT, b"Server received: fragmented".to_vec())
            ]
        );
    }

    #[test]
    fn invalid_utf8_across_fragments_is_1007() {
        let mut h = open(false, 1 << 20);
        // "κ" is CE BA; a lone CE followed by an ASCII byte is invalid.
        h.feed(&frame(0x01, b"ok \xce", true));
        h.feed(&frame(0x80, b"(", true));
        let f = frames(&h.take_output());
        assert_eq!(close_code(f.last().unwrap()), 1007);
        assert!(h.is_closing());
    }

    #[test]
    fn valid_utf8_split_across_fragments_is_accepted() {
        let mut h = open(true, 1 << 20);
        h.feed(&frame(0x01, b"\xce", true));
        h.feed(&frame(0x80, b"\xba", true));
        assert_eq!(frames(&h.take_output()), [(TEXT, "κ".as_bytes().to_vec())]);
    }

    #[test]
    fn message_over_the_limit_is_1009() {
        let mut h = open(false, 100);
        h.feed(&frame(TEXT, &[b'a'; 101], true));
        assert_eq!(close_code(&frames(&h.take_output())[0]), 1009);
        assert!(h.is_closing());
        // Fragments adding up past the limit too.
        let mut h = open(false, 100);
        h.feed(&frame(0x02, &[1; 60], true));
        h.feed(&frame(0x80, &[1; 60], true));
        assert_eq!(close_code(&frames(&h.take_output())[0]), 1009);
    }

    #[test]
    fn protocol_errors_are_1002() {
        for bad in [
            frame(TEXT, b"unmasked", false),
            frame(0x83, b"reserved opcode", true),
            frame(0xc1, b"rsv1 set", true),
            frame(0x80, b"continuation first", true),
            frame(0x09, b"fragmented ping", true),
            frame(PING, &[0; 126], true),
        ] {
            let mut h = open(false, 1 << 20);
            h.feed(&bad);
            let f = frames(&h.take_output());
            assert_eq!(close_code(&f[0]), 1002, "{bad:02x?}");
            assert!(h.is_closing());
        }
    }

    #[test]
    fn busy_finishes_the_handshake_then_closes_1013() {
        let mut h = Harness::new(service(false, 1 << 20).session(&ConnInfo::test(1)));
        h.goodbye(Goodbye::Busy);
        assert!(!h.is_closing(), "waits for the handshake");
        h.feed(upgrade_request("/").as_bytes());
        let out = h.take_output();
        let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(out.starts_with(b"HTTP/1.1 101 "));
        assert_eq!(close_code(&frames(&out[end..])[0]), 1013);
        assert!(h.is_closing());
    }

    #[test]
    fn shutdown_is_1001_and_waits_for_the_reply() {
        let mut h = open(false, 1 << 20);
        h.goodbye(Goodbye::Shutdown);
        assert_eq!(close_code(&frames(&h.take_output())[0]), 1001);
        assert!(!h.is_closing(), "the close handshake is finished first");
        h.feed(&frame(CLOSE, &1001u16.to_be_bytes(), true));
        assert!(h.is_closing());
    }

    #[test]
    fn slow_consumer_is_1008_and_idle_1001() {
        let mut h = open(false, 1 << 20);
        h.goodbye(Goodbye::SlowConsumer);
        assert_eq!(close_code(&frames(&h.take_output())[0]), 1008);
        assert!(h.is_closing());
        let mut h = open(false, 1 << 20);
        h.goodbye(Goodbye::Idle);
        assert_eq!(close_code(&frames(&h.take_output())[0]), 1001);
        assert!(h.is_closing());
    }

    #[test]
    fn silent_clients_are_pinged_then_closed() {
        let opts = WsOptions::default();
        let mut h = open(false, 1 << 20);
        let t0 = h.now;
        h.advance_to(t0 + opts.ping_interval - Duration::from_millis(1));
        assert!(h.take_output().is_empty());
        h.advance_to(t0 + opts.ping_interval);
        assert_eq!(frames(&h.take_output()), [(PING, vec![])]);
        // A pong (any frame) keeps it open and restarts the clock.
        let t1 = t0 + opts.ping_interval + Duration::from_secs(1);
        h.now = t1;
        h.feed(&frame(PONG, b"", true));
        h.advance_to(t1 + opts.ping_interval);
        assert_eq!(frames(&h.take_output()), [(PING, vec![])]);
        assert!(!h.is_closing());
        h.advance_to(t1 + opts.ping_interval + opts.ping_timeout);
        assert_eq!(close_code(&frames(&h.take_output())[0]), 1001);
        assert!(h.is_closing());
    }

    /// A handler woken by its mailbox, as the chat's will be: events pushed by
    /// another connection arrive as text frames.
    struct Notified {
        registry: Arc<std::sync::Mutex<Option<crate::base::mailbox::Sender<String>>>>,
    }

    impl Handler for Notified {
        type Event = String;
        fn open(&mut self, ws: &mut WsCx<'_, '_, '_, String>) {
            let tx = ws.cx().mailbox().expect("mailbox");
            *self.registry.lock().unwrap() = Some(tx);
        }
        fn message(&mut self, _msg: Message, _ws: &mut WsCx<'_, '_, '_, String>) {}
        fn event(&mut self, ev: String, ws: &mut WsCx<'_, '_, '_, String>) {
            ws.send(Message::text(ev));
        }
    }

    struct NotifyApp(Arc<std::sync::Mutex<Option<crate::base::mailbox::Sender<String>>>>);

    impl http::App for NotifyApp {
        type Ws = Notified;
        fn routes(&self) -> &[Route] {
            UPGRADE_ONLY
        }
        fn handle(&self, _req: &Request<'_>, _cx: &mut Cx<'_, String>) -> Reply<Notified> {
            Reply::Upgrade(Notified {
                registry: self.0.clone(),
            })
        }
    }

    #[test]
    fn mailbox_events_reach_an_upgraded_session() {
        let registry = Arc::new(std::sync::Mutex::new(None));
        let app = Arc::new(NotifyApp(registry.clone()));
        let mut h = Harness::new(http::HttpSession::new(app, Arc::default()));
        h.feed(upgrade_request("/chat/ws").as_bytes());
        assert!(h.take_output().starts_with(b"HTTP/1.1 101 "));
        let tx = registry.lock().unwrap().take().expect("registered on open");
        tx.send("from elsewhere".to_string(), 14).unwrap();
        h.deliver();
        assert_eq!(
            frames(&h.take_output()),
            [(TEXT, b"from elsewhere".to_vec())]
        );
    }

    fn run_split(bytes: &[u8], cuts: &[usize]) -> (Vec<u8>, bool) {
        let mut h = Harness::new(service(false, 1000).session(&ConnInfo::test(1)));
        let mut last = 0;
        for &c in cuts {
            h.feed(&bytes[last..c]);
            last = c;
        }
        h.feed(&bytes[last..]);
        (h.take_output(), h.is_closing())
    }

    fn conversation() -> Vec<u8> {
        let mut b = upgrade_request("/").into_bytes();
        b.extend(frame(TEXT, b"one", true));
        b.extend(frame(0x02, b"two-", true));
        b.extend(frame(PING, b"x", true));
        b.extend(frame(0x80, b"parts", true));
        b.extend(frame(TEXT, &[b'z'; 300], true));
        b.extend(frame(CLOSE, &1000u16.to_be_bytes(), true));
        b
    }

    proptest::proptest! {
        #[test]
        fn any_split_gives_the_same_replies(mut cuts in proptest::collection::vec(0usize..10_000, 0..12)) {
            let bytes = conversation();
            let whole = run_split(&bytes, &[]);
            cuts.iter_mut().for_each(|c| *c %= bytes.len() + 1);
            cuts.sort_unstable();
            proptest::prop_assert_eq!(run_split(&bytes, &cuts), whole);
        }

        #[test]
        fn any_bytes_after_the_handshake_never_panic(junk in proptest::collection::vec(proptest::num::u8::ANY, 0..2000)) {
            let mut h = open(false, 1000);
            h.feed(&junk);
            let out = h.take_output();
            // Whatever came back is well-formed frames.
            frames(&out);
        }
    }
}
