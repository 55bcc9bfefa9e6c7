//! TLS as a session that wraps another session, written once for every service.
//!
//! [`Tls`] wraps any [`Service`]; its [`TlsSession`] drives rustls's unbuffered
//! [`UnbufferedServerConnection`] sans-IO: the ciphertext the model read is appended
//! to the wrapper's own input buffer and decrypted there in place
//! (`process_tls_records`), the plaintext that comes out is handed to the inner
//! session's `read`, and whatever the inner session writes is encrypted straight into
//! the model's output buffer. The inner session gets a [`Cx`] over the wrapper's own
//! plaintext buffer and the model's mailbox, clock and limits, so it cannot tell it is
//! encrypted, and no model learns about TLS.
//!
//! Why the unbuffered API: rustls's buffered `ServerConnection` keeps a 4 KiB read
//! buffer for the life of a connection (it resizes it to 4 KiB at every read and never
//! frees it), which was half of an idle TLS connection's memory (8.39 KiB against 1.10
//! plaintext). Here every buffer is the wrapper's, and each is freed when it empties,
//! so an idle connection holds rustls's keys and state and nothing else.
//!
//! Bounds: the ciphertext held is at most one unfinished record (16 KiB and its
//! header; a handshake message at most 64 KiB, rustls's own limits), the plaintext
//! waiting for the inner session is bounded by the model's input limit, like any
//! session's input, and the inner session's output waits here only until the
//! handshake completes. The wrapper's buffers are charged to the server's
//! `--max-buffered` budget exactly as the engine charges a plaintext connection's
//! pending input: the engine sees the ciphertext consumed at once, so without the
//! charge a client holding an unfinished line would hold it beyond the budget only
//! because it is encrypted. A connection whose buffers would pass the budget is told
//! the server is busy and closed. A client that has not finished its handshake within
//! the handshake timeout is dropped, and one that speaks anything but TLS gets an
//! alert and a close.
//!
//! Each listener's [`TlsStats`] count handshakes completed (by version, full or
//! resumed) and failed (by [`Failure`]), once per connection, for the metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError};
use rustls::ServerConfig;

use std::sync::atomic::{AtomicU64, Ordering};

use rustls::{HandshakeKind, InvalidMessage, ProtocolVersion};

use super::{ConnInfo, Cx, Goodbye, Service, Session};
use crate::base::Held;

/// The protocol versions a handshake is counted under, as the metrics label them.
pub const VERSIONS: [&str; 2] = ["tls1.2", "tls1.3"];
/// The kinds a handshake is counted under: `full` (with or without a
/// HelloRetryRequest) or `resumed` (a session ticket or id).
pub const KINDS: [&str; 2] = ["full", "resumed"];

/// Why a handshake did not complete, as [`TlsStats::failures`] is indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No complete handshake within the handshake timeout (no ClientHello, or one
    /// dribbled), or the connection's idle timeout came first.
    Timeout = 0,
    /// The first bytes were not a TLS record (a plaintext client on a TLS port: an
    /// unknown record type or version).
    NotTls = 1,
    /// A TLS error: a fatal alert from the client, a bad record or message, no
    /// version, suite or group in common.
    Protocol = 2,
    /// The client closed (TCP EOF or close_notify) before the handshake completed.
    Eof = 3,
}

impl Failure {
    /// Every reason, in the order of their index.
    pub const ALL: [Failure; 4] = [
        Failure::Timeout,
        Failure::NotTls,
        Failure::Protocol,
        Failure::Eof,
    ];

    /// The reason's label value.
    pub fn name(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::NotTls => "not_tls",
            Failure::Protocol => "protocol",
            Failure::Eof => "eof",
        }
    }

    /// What a rustls error during the handshake says: bytes that are no TLS record
    /// at all are `not_tls`, anything else `protocol`.
    fn of(e: &rustls::Error) -> Failure {
        match e {
            rustls::Error::InvalidMessage(
                InvalidMessage::InvalidContentType | InvalidMessage::UnknownProtocolVersion,
            ) => Failure::NotTls,
            _ => Failure::Protocol,
        }
    }
}

/// One TLS listener's handshake counters, added to once per connection (when its
/// handshake completes or fails), never per record.
#[derive(Debug, Default)]
pub struct TlsStats {
    /// Handshakes completed, by version ([`VERSIONS`]) then kind ([`KINDS`]).
    handshakes: [[AtomicU64; 2]; 2],
    /// Handshakes failed, indexed like [`Failure::ALL`].
    failures: [AtomicU64; 4],
}

impl TlsStats {
    /// Handshakes completed with protocol version `VERSIONS[v]`, of kind `KINDS[k]`.
    pub fn handshakes(&self, v: usize, k: usize) -> u64 {
        self.handshakes[v][k].load(Ordering::Relaxed)
    }

    /// Handshakes that failed for `why`.
    pub fn failures(&self, why: Failure) -> u64 {
        self.failures[why as usize].load(Ordering::Relaxed)
    }

    fn completed(&self, version: Option<ProtocolVersion>, kind: Option<HandshakeKind>) {
        let v = usize::from(version == Some(ProtocolVersion::TLSv1_3));
        let k = usize::from(kind == Some(HandshakeKind::Resumed));
        self.handshakes[v][k].fetch_add(1, Ordering::Relaxed);
    }

    fn failed(&self, why: Failure) {
        self.failures[why as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// A service spoken over TLS: every session of `S` wrapped in a [`TlsSession`].
pub struct Tls<S: Service> {
    inner: S,
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
    name: String,
    stats: Arc<TlsStats>,
}

impl<S: Service> Tls<S> {
    /// `inner` over TLS with `config` (certificates, versions, ALPN, tickets). A client
    /// whose handshake is not complete `handshake_timeout` after it connected is
    /// dropped.
    pub fn new(inner: S, config: Arc<ServerConfig>, handshake_timeout: Duration) -> Self {
        let name = format!("{}+tls", inner.name());
        Tls {
            inner,
            config,
            handshake_timeout,
            name,
            stats: Arc::default(),
        }
    }

    /// The handshake counters of this listener's connections.
    pub fn stats(&self) -> Arc<TlsStats> {
        self.stats.clone()
    }
}

impl<S: Service> Service for Tls<S> {
    type Session = TlsSession<S::Session>;

    fn name(&self) -> &str {
        &self.name
    }

    fn session(&self, conn: &ConnInfo) -> Self::Session {
        // Making a server connection fails only for a configuration rustls rejects
        // (no protocol version in common with its provider), which the serve layer
        // builds from rustls's own safe defaults; the session then closes at once.
        let tls = match UnbufferedServerConnection::new(self.config.clone()) {
            Ok(c) => Some(Box::new(c)),
            Err(e) => {
                tracing::error!("TLS: cannot start a server connection: {e}");
                None
            }
        };
        TlsSession {
            inner: self.inner.session(conn),
            tls,
            handshake_timeout: self.handshake_timeout,
            handshake_deadline: None,
            cipher_in: Vec::new(),
            plain_in: Vec::new(),
            plain_out: Vec::new(),
            inner_closing: false,
            inner_eof: false,
            peer_closed: false,
            handshake_done: false,
            deferred: None,
            close_sent: false,
            held: Held::new(),
            over_budget: false,
            stats: self.stats.clone(),
        }
    }
}

/// One TLS connection: a rustls server connection and the session it carries.
pub struct TlsSession<S: Session> {
    inner: S,
    /// Boxed: the connection is large and this session lives in every model's
    /// per-connection state. `None` once the connection failed.
    tls: Option<Box<UnbufferedServerConnection>>,
    handshake_timeout: Duration,
    /// Set at `open`, cleared when the handshake completes.
    handshake_deadline: Option<Instant>,
    /// Ciphertext received and not yet processed: an unfinished record.
    cipher_in: Vec<u8>,
    /// Plaintext received and not yet consumed by the inner session.
    plain_in: Vec<u8>,
    /// Plaintext the inner session wrote and that is not encrypted yet (before the
    /// handshake completes).
    plain_out: Vec<u8>,
    inner_closing: bool,
    /// The inner session was told of the client's end (close_notify or TCP EOF).
    inner_eof: bool,
    /// The client sent its close_notify.
    peer_closed: bool,
    handshake_done: bool,
    /// A goodbye asked for during the handshake, said once it completes (a refused
    /// client is told why in its own protocol, which needs the handshake first).
    deferred: Option<Goodbye>,
    close_sent: bool,
    /// What the buffers above hold, charged to the `--max-buffered` budget.
    held: Held,
    /// The buffers once passed the budget: the client was told busy.
    over_budget: bool,
    /// The listener's handshake counters.
    stats: Arc<TlsStats>,
}

/// What one turn of rustls's state machine asked for.
enum Step {
    /// Plaintext arrived: hand it to the inner session, then turn again.
    Plaintext,
    /// Records were written or state changed: turn again.
    Again,
    /// Nothing more to do until more bytes (or output) come.
    Idle,
    /// The connection failed; it is closed.
    Failed,
}

/// Appends what `write` puts in a buffer of the size it asks for to `out`: a first try
/// with `guess` bytes, a second with the size its error names.
fn append<E>(
    out: &mut Vec<u8>,
    guess: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
    required: impl Fn(&E) -> Option<usize>,
) -> Result<(), E> {
    let start = out.len();
    out.resize(start + guess, 0);
    match write(&mut out[start..]) {
        Ok(n) => {
            out.truncate(start + n);
            Ok(())
        }
        Err(e) => match required(&e) {
            Some(size) => {
                out.resize(start + size, 0);
                let r = write(&mut out[start..]);
                out.truncate(start + *r.as_ref().unwrap_or(&0));
                r.map(|_| ())
            }
            None => {
                out.truncate(start);
                Err(e)
            }
        },
    }
}

fn encode_size(e: &EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}

fn encrypt_size(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}

/// Room for `n` bytes of plaintext as records: a header, a content type and a tag
/// for every 16 KiB (TLS 1.2's explicit nonce included).
fn sealed_size(n: usize) -> usize {
    n + n.div_ceil(16 * 1024).max(1) * 40
}

/// The room a reply of the inner session gets in `plain_out` before it writes: an HTTP
/// response head and a short body, a chat line.
const REPLY_ROOM: usize = 512;

/// Frees an emptied buffer: an idle connection should hold no buffer.
fn release(buf: &mut Vec<u8>) {
    if buf.is_empty() && buf.capacity() > 0 {
        *buf = Vec::new();
    }
}

impl<S: Session> TlsSession<S> {
    /// Whether the TLS handshake has completed.
    pub fn is_handshake_done(&self) -> bool {
        self.handshake_done
    }

    /// Runs `f` on the inner session with a context over the wrapper's plaintext
    /// output and the model's mailbox, clock and limits; what it wrote is encrypted by
    /// the next [`TlsSession::drive`].
    fn with_inner<R>(
        &mut self,
        cx: &mut Cx<'_, S::Event>,
        f: impl FnOnce(&mut S, &mut Cx<'_, S::Event>) -> R,
    ) -> R {
        // `plain_out` is freed whenever it empties (an idle connection holds no
        // buffer), so a reply would grow it from nothing, one reallocation per
        // doubling: five for an HTTP response, about 2,000 of an https keep-alive
        // request's 14,000 instructions (callgrind). Room for a typical reply up front
        // makes that one allocation.
        if self.handshake_done && self.plain_out.capacity() == 0 {
            self.plain_out.reserve(REPLY_ROOM);
        }
        let mut icx = Cx::new(
            cx.clock,
            &mut self.plain_out,
            &mut self.inner_closing,
            &mut *cx.mailbox,
            cx.mailbox_limit,
            cx.wake,
            cx.conn,
            cx.input_limit,
            cx.budget,
            cx.paused,
        );
        let r = f(&mut self.inner, &mut icx);
        let answers = icx.answers();
        let refusals = icx.refusals();
        cx.add_answers(answers);
        cx.add_refusals(refusals);
        r
    }

    /// One turn of rustls's state machine over the ciphertext held: records to send
    /// go into the model's output, plaintext into `plain_in`, and once the handshake
    /// is done the inner session's output is encrypted (and a close_notify follows
    /// its close).
    fn step(&mut self, cx: &mut Cx<'_, S::Event>) -> Step {
        let Some(tls) = self.tls.as_mut() else {
            return Step::Failed;
        };
        let status = tls.process_tls_records(&mut self.cipher_in);
        let mut discard = status.discard;
        let mut error = None;
        let step = match status.state {
            Err(e) => {
                error = Some(e);
                Step::Failed
            }
            Ok(ConnectionState::ReadTraffic(mut r)) => {
                while let Some(record) = r.next_record() {
                    match record {
                        Ok(record) => {
                            discard += record.discard;
                            self.plain_in.extend_from_slice(record.payload);
                        }
                        Err(e) => {
                            error = Some(e);
                            break;
                        }
                    }
                }
                if error.is_some() {
                    Step::Failed
                } else {
                    Step::Plaintext
                }
            }
            Ok(ConnectionState::EncodeTlsData(mut e)) => {
                match append(cx.out, 1024, |b| e.encode(b), encode_size) {
                    Ok(()) => Step::Again,
                    Err(_) => Step::Failed,
                }
            }
            Ok(ConnectionState::TransmitTlsData(t)) => {
                // The records are in the model's output: it sends them in order.
                t.done();
                Step::Again
            }
            Ok(ConnectionState::BlockedHandshake) => Step::Idle,
            Ok(ConnectionState::PeerClosed) => {
                self.peer_closed = true;
                Step::Again
            }
            Ok(ConnectionState::Closed) => Step::Idle,
            Ok(ConnectionState::WriteTraffic(mut w)) => {
                self.handshake_done = true;
                let mut ok = true;
                if !self.plain_out.is_empty() && self.deferred.is_none() {
                    let plain = &self.plain_out;
                    ok = append(
                        cx.out,
                        sealed_size(plain.len()),
                        |b| w.encrypt(plain, b),
                        encrypt_size,
                    )
                    .is_ok();
                    self.plain_out.clear();
                }
                if ok && self.inner_closing && !self.close_sent && self.plain_out.is_empty() {
                    ok = append(cx.out, 64, |b| w.queue_close_notify(b), encrypt_size).is_ok();
                    self.close_sent = true;
                }
                if ok {
                    Step::Idle
                } else {
                    Step::Failed
                }
            }
            // Early data is never accepted (the configuration allows none).
            Ok(_) => Step::Failed,
        };
        self.cipher_in.drain(..discard.min(self.cipher_in.len()));
        if let Step::Failed = step {
            let why = error.as_ref().map_or(Failure::Protocol, Failure::of);
            let alert = self.fail(Some(why), cx);
            let peer = cx.conn().peer;
            match (error, alert) {
                (Some(e), true) => tracing::warn!("TLS: {e} from {peer}; alert sent, closing"),
                (Some(e), false) => tracing::warn!("TLS: {e} from {peer}; closing"),
                (None, _) => tracing::warn!("TLS: cannot write records to {peer}; closing"),
            }
        }
        step
    }

    /// Turns rustls's state machine until it waits for the client, handing plaintext
    /// to the inner session as it comes; then frees what emptied and charges what is
    /// held to the budget (a goodbye said for passing it takes one more round).
    fn drive(&mut self, cx: &mut Cx<'_, S::Event>) {
        for _ in 0..2 {
            if !self.turn(cx) {
                return;
            }
            release(&mut self.cipher_in);
            release(&mut self.plain_in);
            release(&mut self.plain_out);
            if !self.charge(cx) {
                return;
            }
        }
    }

    /// [`TlsSession::drive`]'s turns; false when the connection failed.
    fn turn(&mut self, cx: &mut Cx<'_, S::Event>) -> bool {
        // Each step consumes ciphertext, writes records or hands plaintext on; a bound
        // no well-behaved connection reaches keeps a bug from spinning.
        for _ in 0..10_000 {
            let was_done = self.handshake_done;
            let step = self.step(cx);
            if !was_done && self.handshake_done {
                self.on_handshake(cx);
            }
            match step {
                Step::Failed => return false,
                Step::Plaintext => self.deliver(cx),
                Step::Again => {}
                Step::Idle => {
                    if self.peer_closed && !self.inner_eof {
                        self.eof_inner(cx);
                        continue;
                    }
                    if self.inner_closing && !self.close_sent && self.handshake_done {
                        continue;
                    }
                    break;
                }
            }
            if self.tls.is_none() {
                return false;
            }
        }
        if self.close_sent {
            cx.close();
        }
        true
    }

    /// The connection failed (a TLS error, a timeout): send the alert rustls queued,
    /// if any, and close without involving the inner session. A failure before the
    /// handshake completed is counted under `why` (none: not the client's doing, a
    /// shutdown or the budget, counted elsewhere). Returns whether an alert was
    /// written.
    fn fail(&mut self, why: Option<Failure>, cx: &mut Cx<'_, S::Event>) -> bool {
        if let Some(why) = why {
            if self.tls.is_some() && !self.handshake_done {
                self.stats.failed(why);
            }
        }
        let before = cx.out.len();
        if let Some(tls) = self.tls.as_mut() {
            // After an error rustls hands out the alert it queued before anything
            // else; asked for more it would read records again, so only while one waits.
            while tls.wants_write() {
                let status = tls.process_tls_records(&mut self.cipher_in);
                let Ok(ConnectionState::EncodeTlsData(mut e)) = status.state else {
                    break;
                };
                if append(cx.out, 64, |b| e.encode(b), encode_size).is_err() {
                    break;
                }
            }
        }
        self.tls = None;
        self.cipher_in = Vec::new();
        self.plain_in = Vec::new();
        self.plain_out = Vec::new();
        cx.hold(&mut self.held, 0);
        cx.close();
        cx.out.len() > before
    }

    /// The handshake just completed: log it, and say a goodbye that waited for it.
    fn on_handshake(&mut self, cx: &mut Cx<'_, S::Event>) {
        self.handshake_deadline = None;
        if let Some(tls) = self.tls.as_ref() {
            self.stats
                .completed(tls.protocol_version(), tls.handshake_kind());
            tracing::debug!(
                version = ?tls.protocol_version(),
                suite = ?tls.negotiated_cipher_suite().map(|s| s.suite()),
                alpn = ?tls.alpn_protocol().map(String::from_utf8_lossy),
                resumed = ?tls.handshake_kind(),
                "TLS handshake complete with {}",
                cx.conn().peer
            );
        }
        if let Some(why) = self.deferred.take() {
            self.with_inner(cx, |s, icx| s.goodbye(why, icx));
        }
    }

    /// Hands the plaintext received so far to the inner session.
    fn deliver(&mut self, cx: &mut Cx<'_, S::Event>) {
        if self.plain_in.is_empty() || self.inner_closing || self.deferred.is_some() {
            self.plain_in.clear();
            return;
        }
        let input = std::mem::take(&mut self.plain_in);
        let n = self.with_inner(cx, |s, icx| s.read(&input, icx));
        self.plain_in = input;
        self.plain_in.drain(..n.min(self.plain_in.len()));
        if self.inner_closing {
            self.plain_in.clear();
        } else if n == 0 && self.plain_in.len() >= cx.input_limit {
            tracing::warn!(
                "TLS: session consumed none of {} bytes of input; closing",
                self.plain_in.len()
            );
            self.fail(None, cx);
        }
    }

    /// Charges what the wrapper's buffers hold to the server's budget. Past it, the
    /// held input is dropped and the client told the server is busy (in its own
    /// protocol, through the inner session), as the engine does for plaintext input;
    /// a connection past it again after that is closed at once. True when the goodbye
    /// was said and waits to be encrypted.
    fn charge(&mut self, cx: &mut Cx<'_, S::Event>) -> bool {
        if self.tls.is_none() {
            return false;
        }
        let bytes = self.cipher_in.len() + self.plain_in.len() + self.plain_out.len();
        if cx.hold(&mut self.held, bytes) {
            return false;
        }
        tracing::warn!(
            "TLS: {bytes} bytes buffered for {} pass the server's budget; closing",
            cx.conn().peer
        );
        self.plain_in = Vec::new();
        if self.over_budget || !self.handshake_done || self.inner_closing {
            self.fail(None, cx);
            return false;
        }
        self.over_budget = true;
        self.with_inner(cx, |s, icx| s.goodbye(Goodbye::Busy, icx));
        true
    }

    /// Tells the inner session the client's end came (a close_notify, or TCP EOF).
    fn eof_inner(&mut self, cx: &mut Cx<'_, S::Event>) {
        if self.inner_eof {
            return;
        }
        self.inner_eof = true;
        if !self.handshake_done {
            if self.tls.is_some() {
                self.stats.failed(Failure::Eof);
            }
            cx.close();
            return;
        }
        if self.deferred.is_some() {
            cx.close();
            return;
        }
        self.with_inner(cx, |s, icx| s.eof(icx));
    }
}

impl<S: Session> Session for TlsSession<S> {
    type Event = S::Event;

    fn open(&mut self, cx: &mut Cx<'_, S::Event>) {
        self.handshake_deadline = Some(cx.now() + self.handshake_timeout);
        // A greeting written now waits until the handshake completes.
        self.with_inner(cx, |s, icx| s.open(icx));
        if self.charge(cx) {
            self.fail(None, cx);
        }
    }

    fn read(&mut self, input: &[u8], cx: &mut Cx<'_, S::Event>) -> usize {
        if self.tls.is_none() || self.close_sent || cx.is_closing() || self.peer_closed {
            return input.len();
        }
        self.cipher_in.extend_from_slice(input);
        self.drive(cx);
        input.len()
    }

    fn eof(&mut self, cx: &mut Cx<'_, S::Event>) {
        if self.inner_eof {
            return;
        }
        self.eof_inner(cx);
        if self.tls.is_some() && !cx.is_closing() {
            self.drive(cx);
        }
    }

    fn event(&mut self, event: S::Event, cx: &mut Cx<'_, S::Event>) {
        if self.tls.is_some() {
            self.with_inner(cx, |s, icx| s.event(event, icx));
            self.drive(cx);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match (self.handshake_deadline, self.inner.deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn idle_ok(&self) -> bool {
        self.handshake_done && self.inner.idle_ok()
    }

    fn timeout(&mut self, cx: &mut Cx<'_, S::Event>) {
        let now = cx.now();
        if self.handshake_deadline.is_some_and(|d| now >= d) {
            tracing::warn!(
                "TLS: no complete handshake from {} within {:?}; closing",
                cx.conn().peer,
                self.handshake_timeout
            );
            self.fail(Some(Failure::Timeout), cx);
            return;
        }
        if self.inner.deadline().is_some_and(|d| now >= d) {
            self.with_inner(cx, |s, icx| s.timeout(icx));
            self.drive(cx);
        }
    }

    fn goodbye(&mut self, why: Goodbye, cx: &mut Cx<'_, S::Event>) {
        if self.tls.is_none() {
            cx.close();
            return;
        }
        if !self.handshake_done {
            if why.is_refusal() {
                // Finish the handshake (bounded by its timeout) to say why.
                self.deferred = Some(why);
            } else {
                // An idle timeout that came before the handshake's is the client's
                // silence too; a shutdown or a slow consumer is not its handshake's.
                let failure = (why == Goodbye::Idle).then_some(Failure::Timeout);
                self.fail(failure, cx);
            }
            return;
        }
        self.with_inner(cx, |s, icx| s.goodbye(why, icx));
        self.drive(cx);
    }
}

#[cfg(test)]
mod tests;
