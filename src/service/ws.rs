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
//! The handshake itself is read by the HTTP engine (`service::http`, which depends on
//! this module and never the other way round): the standalone `ws` service on port
//! 8765 is that engine with a route table where every path is an upgrade, and the
//! `http` service upgrades `GET /ws`. After the `101`, a [`WsConn`]
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
use tungstenite::protocol::frame::coding::{CloseCode, Data as OpData, OpCode};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};

pub use tungstenite::{Bytes, Message, Utf8Bytes};

use super::{log_received, Cx, Goodbye};

/// The seed's reply prefix.
pub const PREFIX: &str = "Server received: ";

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

    /// Whether answers are still owed to messages already received (a chat member
    /// waiting for its own messages to come back): a shutdown's close waits for them.
    fn owes_answers(&self) -> bool {
        false
    }
}

/// The seed's handler: `Server received: <message>`, or the message itself with `echo`.
#[derive(Debug, Clone, Default)]
pub struct Echo {
    /// Answer with exactly the message.
    pub exact: bool,
}

impl Echo {
    /// Sends the seed's reply to a text or binary message; `false` for control frames,
    /// which get none. For apps that echo on one path and do something else on another.
    pub fn answer<E>(&self, msg: Message, ws: &mut WsCx<'_, '_, '_, E>) -> bool {
        let prefix = if self.exact { "" } else { PREFIX };
        match msg {
            Message::Text(t) => {
                log_received(t.as_bytes());
                ws.send_text(&[prefix, t.as_str()]);
            }
            Message::Binary(b) => {
                log_received(&b);
                ws.send_binary(&[prefix.as_bytes(), &b[..]]);
            }
            _ => return false,
        }
        true
    }
}

impl Handler for Echo {
    type Event = ();

    fn message(&mut self, msg: Message, ws: &mut WsCx<'_, '_, '_, ()>) {
        if self.answer(msg, ws) {
            ws.cx().answered(super::Answer::Message);
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
        match &msg {
            Message::Text(t) => return self.data(OpData::Text, &[t.as_bytes()]),
            Message::Binary(b) => return self.data(OpData::Binary, &[&b[..]]),
            _ => {}
        }
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

    /// Sends one text message whose payload is `parts` one after the other (a prefix
    /// and a body, say), without joining them first. After a close it is dropped.
    pub fn send_text(&mut self, parts: &[&str]) {
        self.data(OpData::Text, parts);
    }

    /// Sends one binary message whose payload is `parts` one after the other. After a
    /// close it is dropped.
    pub fn send_binary(&mut self, parts: &[&[u8]]) {
        self.data(OpData::Binary, parts);
    }

    /// Frames a data message straight into the session's output: one final,
    /// unmasked frame (what a server sends, RFC 6455 §5.1), its header formatted by
    /// tungstenite's [`FrameHeader`]. Going through [`WebSocketContext::write`]
    /// instead would build a `Message` (an allocation when the payload is made of
    /// parts), copy it into tungstenite's frame buffer, and copy it again into the
    /// output: about 500 instructions on a 16-byte echo (BENCHMARKS.md). No
    /// extension that rewrites frames is ever negotiated here, and the context's
    /// output buffer is empty between calls (its write buffer size is 0), so this
    /// frame follows everything sent before it; a pong the context owes goes out on
    /// its next read, which control frames may overtake.
    fn data<P: AsRef<[u8]>>(&mut self, op: OpData, parts: &[P]) {
        if !self.ws.can_write() {
            tracing::debug!("websocket send after close: dropped");
            return;
        }
        let len: usize = parts.iter().map(|p| p.as_ref().len()).sum();
        let header = FrameHeader {
            opcode: OpCode::Data(op),
            ..FrameHeader::default()
        };
        let out = self.cx.out();
        out.reserve(header.len(len as u64) + len);
        // Writing into a Vec cannot fail.
        let _ = header.format(len as u64, out);
        for p in parts {
            out.extend_from_slice(p.as_ref());
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
    /// When to check the client's silence next: a ping interval after it was last
    /// heard, or later. Moved only when it comes (to a ping interval after `heard`),
    /// not on every message: a message then leaves the connection's timer as armed,
    /// where moving it cost a timer reset per message (BENCHMARKS.md).
    silence_check: Instant,
    /// When our unanswered ping went out.
    pinged: Option<Instant>,
    /// Input taken by the engine since the last whole message: the message being
    /// assembled (within a read chunk), charged to the server's buffer budget.
    unfinished: usize,
    held: crate::base::Held,
    /// A shutdown's close held back until the handler owes no answer.
    farewell: bool,
}

impl<H: Handler> WsConn<H> {
    /// An engine for a connection whose handshake just completed.
    pub fn new(handler: H, opts: Arc<WsOptions>, now: Instant) -> Self {
        let max = Some(opts.max_message);
        let config = WebSocketConfig::default()
            // Small buffers: an idle connection holds little; large messages grow them.
            // tungstenite zero-fills up to this many bytes of its input buffer before
            // every read from the stream, twice per message here (the bytes, then the
            // end of them): at 4 KiB that fill was 43% of a 16-byte echo's instructions
            // and 18% of a 64 KiB one's (BENCHMARKS.md, "WebSocket: the read buffer").
            .read_buffer_size(512)
            .write_buffer_size(0)
            .max_message_size(max)
            .max_frame_size(max);
        let silence_check = now + opts.ping_interval;
        WsConn {
            ws: WebSocketContext::new(Role::Server, Some(config)),
            handler,
            opts,
            heard: now,
            silence_check,
            pinged: None,
            unfinished: 0,
            held: crate::base::Held::new(),
            farewell: false,
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
            if self.pinged.take().is_some() {
                self.silence_check = self.heard + self.opts.ping_interval;
            }
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
                // Sent after the shutdown began: not taken in; the close that follows
                // the answers owed says why.
                Ok(Message::Text(_) | Message::Binary(_)) if self.farewell => {}
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
        self.farewell_if_done(cx);
    }

    /// Says the shutdown's close held back, once the handler owes no answer.
    fn farewell_if_done(&mut self, cx: &mut Cx<'_, H::Event>) {
        if self.farewell && !self.handler.owes_answers() {
            self.farewell = false;
            if !cx.is_closing() {
                self.goodbye(Goodbye::Shutdown, cx);
            }
        }
    }

    /// When the ping timer or the handler's timer next fires.
    pub fn deadline(&self) -> Option<Instant> {
        if !self.ws.can_write() {
            return None; // closing: the model's goodbye grace bounds the wait
        }
        let ping = match self.pinged {
            Some(t) => t + self.opts.ping_timeout,
            None => self.silence_check,
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
            self.farewell_if_done(cx);
        }
        let silent_from = self.heard + self.opts.ping_interval;
        match self.pinged {
            // The server stopped reading (the client leaves our frames unread): its
            // answer may be waiting in the socket. The wait starts again; a client
            // that never reads is ended by the write timeout.
            Some(t) if now >= t + self.opts.ping_timeout && cx.is_reading_paused() => {
                self.pinged = Some(now);
            }
            Some(t) if now >= t + self.opts.ping_timeout => {
                tracing::info!("websocket client stopped answering pings");
                start_close(&mut self.ws, cx, CloseCode::Away, "ping timeout");
                cx.close();
            }
            // Heard since this check was set: the next one is an interval after.
            None if now >= self.silence_check && now < silent_from => {
                self.silence_check = silent_from;
            }
            None if now >= self.silence_check => {
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
        if why == Goodbye::Shutdown && self.handler.owes_answers() {
            // The answers owed to messages received come first (bounded by the same
            // grace).
            self.farewell = true;
            return;
        }
        let (code, reason) = match why {
            Goodbye::Busy => (CloseCode::Again, "server busy"),
            Goodbye::Idle => (CloseCode::Away, "idle timeout"),
            Goodbye::Shutdown => (CloseCode::Away, "server shutting down"),
            Goodbye::SlowConsumer => (CloseCode::Policy, "slow consumer"),
            Goodbye::TooManyFromAddress => {
                (CloseCode::Again, "too many connections from your address")
            }
        };
        start_close(&mut self.ws, cx, code, reason);
        if why != Goodbye::Shutdown {
            cx.close();
        }
    }
}
