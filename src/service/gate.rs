//! The gate a connection passes before its service sees it: who the client is, and
//! whether its address may open one more connection.
//!
//! [`Gate`] wraps any [`Service`] the way [`super::tls::Tls`] does, so no model and no
//! service learns about it. On a listener marked `,proxy` it first reads the PROXY
//! header (v1 or v2, [`super::proxy`]); the address the header carries is the client
//! from then on: the inner session is made with it in its [`ConnInfo`] (so its log
//! lines name it), and it is the address counted. A connection without a valid header
//! within the header timeout is closed and logged; nothing is said to it, as what it
//! speaks is not known yet. The header comes before everything else, TLS included: a
//! `,proxy,tls` listener is a gate around the TLS wrapper.
//!
//! With a per-address limit (`--max-conns-per-ip`), a client whose address has that
//! many connections open already gets [`Goodbye::TooManyFromAddress`] in its own
//! protocol (`ERR too many connections from your address`, HTTP 503, WebSocket close
//! 1013) instead of a conversation; the refusal is logged and counted
//! ([`Gate::refused`]). The count is one [`PerIp`] table per server, shared by every
//! listener and model; a connection holds its [`IpSlot`] for as long as its session
//! lives.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::proxy::{self, Parsed};
use super::{ConnInfo, Cx, Goodbye, Service, Session};
use crate::base::per_ip::{IpSlot, PerIp};

/// How long a refused client has to be told why (a TLS handshake, an HTTP request
/// read to answer 503) before it is simply closed: the engine gives its own busy
/// goodbye the same grace.
pub const REFUSAL_GRACE: Duration = Duration::from_secs(5);

/// What every session of one gated listener shares.
struct Shared<S> {
    service: S,
    /// Read a PROXY header first, within this long of connecting.
    proxy: Option<Duration>,
    per_ip: Option<Arc<PerIp>>,
    refused: Arc<AtomicU64>,
}

/// A service behind the gate: a PROXY header read first (when `proxy` is set) and the
/// per-address limit applied (when a table is given).
pub struct Gate<S: Service> {
    shared: Arc<Shared<S>>,
    name: String,
}

impl<S: Service> Gate<S> {
    /// `inner` behind the gate. With `proxy`, every connection must open with a PROXY
    /// header within that long; with `per_ip`, an address may have at most the table's
    /// limit of connections open (the table is meant to be shared by every listener).
    pub fn new(inner: S, proxy: Option<Duration>, per_ip: Option<Arc<PerIp>>) -> Self {
        let name = match proxy {
            Some(_) => format!("{}+proxy", inner.name()),
            None => inner.name().to_string(),
        };
        Gate {
            shared: Arc::new(Shared {
                service: inner,
                proxy,
                per_ip,
                refused: Arc::new(AtomicU64::new(0)),
            }),
            name,
        }
    }

    /// The count of connections refused for their address, which the metrics read.
    pub fn refused(&self) -> Arc<AtomicU64> {
        self.shared.refused.clone()
    }
}

impl<S: Service> Service for Gate<S> {
    type Session = GateSession<S>;

    fn name(&self) -> &str {
        &self.name
    }

    fn session(&self, conn: &ConnInfo) -> GateSession<S> {
        let state = match self.shared.proxy {
            Some(_) => State::Header,
            None => State::Inner(self.shared.service.session(conn)),
        };
        GateSession {
            direct: self.shared.proxy.is_none(),
            shared: self.shared.clone(),
            client: conn.clone(),
            state,
            slot: None,
            deadline: None,
            deferred: None,
            refused: false,
        }
    }
}

enum State<T> {
    /// Waiting for the PROXY header.
    Header,
    /// The header read (or none expected): the client's own session.
    Inner(T),
    /// No valid header came: closing without a session.
    Failed,
}

/// One connection behind the gate.
pub struct GateSession<S: Service> {
    shared: Arc<Shared<S>>,
    /// No PROXY header to read (the listener is gated for the per-address count
    /// only, as every listener of a server run with `--config` is): once admitted,
    /// input goes straight to the inner session, in a few inlined instructions.
    direct: bool,
    /// The client as the inner session sees it: the socket's peer, or the source the
    /// PROXY header gave.
    client: ConnInfo,
    state: State<S::Session>,
    /// This connection's place in its address's count, given back on drop.
    slot: Option<IpSlot>,
    /// The header's deadline while it is awaited; a refused client's grace after.
    deadline: Option<Instant>,
    /// A refusal the model asked for before the header came: said once it has.
    deferred: Option<Goodbye>,
    /// Refused for its address: only its goodbye is being said.
    refused: bool,
}

impl<S: Service> GateSession<S> {
    /// The client's address as the gate knows it (the PROXY header's, once read).
    pub fn client(&self) -> SocketAddr {
        self.client.peer
    }

    /// Runs `f` on the inner session, if there is one, with a context that names the
    /// client instead of the socket's peer.
    fn with_inner<R>(
        &mut self,
        cx: &mut Cx<'_, <S::Session as Session>::Event>,
        f: impl FnOnce(&mut S::Session, &mut Cx<'_, <S::Session as Session>::Event>) -> R,
    ) -> Option<R> {
        let State::Inner(inner) = &mut self.state else {
            return None;
        };
        // Without a PROXY header the client is the socket's peer, as `cx` says: the
        // inner session gets it as it is (a listener gated only for the per-address
        // count pays a branch per call, not a context built and merged back).
        if self.shared.proxy.is_none() {
            return Some(f(inner, cx));
        }
        // At debug level the inner session's lines carry the client's address under
        // the connection's span, which names the proxy.
        let _client = (self.shared.proxy.is_some()
            && tracing::level_filters::LevelFilter::current() >= tracing::Level::DEBUG)
            .then(|| tracing::debug_span!("client", addr = %self.client.peer).entered());
        let mut icx = Cx::new(
            cx.clock,
            &mut *cx.out,
            &mut *cx.closing,
            &mut *cx.mailbox,
            cx.mailbox_limit,
            cx.wake,
            &self.client,
            cx.input_limit,
            cx.budget,
            cx.paused,
        );
        let r = f(inner, &mut icx);
        let answers = icx.answers();
        let refusals = icx.refusals();
        cx.add_answers(answers);
        cx.add_refusals(refusals);
        Some(r)
    }

    /// Opens the inner session, or refuses it when its address is at the limit.
    fn admit(&mut self, cx: &mut Cx<'_, <S::Session as Session>::Event>) {
        let ip = self.client.peer.ip();
        let over = match self
            .shared
            .per_ip
            .as_ref()
            .map(|t| (t.acquire(ip), t.limit()))
        {
            None => None,
            Some((Ok(slot), _)) => {
                self.slot = Some(slot);
                None
            }
            Some((Err(open), limit)) => Some((open, limit)),
        };
        let Some((open, limit)) = over else {
            self.with_inner(cx, |s, icx| s.open(icx));
            return;
        };
        tracing::info!(
            "Refusing connection {} from {ip}: {open} connections open from that address \
             (--max-conns-per-ip {limit})",
            self.client.id
        );
        self.shared.refused.fetch_add(1, Ordering::Relaxed);
        self.refused = true;
        self.deadline = Some(cx.now() + REFUSAL_GRACE);
        self.with_inner(cx, |s, icx| s.goodbye(Goodbye::TooManyFromAddress, icx));
    }

    /// The header arrived: the client is who it says, and its session starts.
    fn on_header(
        &mut self,
        version: u8,
        source: Option<SocketAddr>,
        cx: &mut Cx<'_, <S::Session as Session>::Event>,
    ) {
        let proxy = self.client.peer;
        match source {
            Some(client) => {
                self.client.peer = client;
                tracing::info!(
                    "PROXY v{version}: connection {} from {proxy} is client {client}",
                    self.client.id
                );
            }
            None => tracing::info!(
                "PROXY v{version}: connection {} from {proxy} names no client (LOCAL or \
                 UNKNOWN); the proxy is the client",
                self.client.id
            ),
        }
        self.deadline = None;
        self.state = State::Inner(self.shared.service.session(&self.client));
        match self.deferred.take() {
            Some(why) => {
                self.with_inner(cx, |s, icx| s.goodbye(why, icx));
            }
            None => self.admit(cx),
        }
    }

    fn fail(&mut self, cx: &mut Cx<'_, <S::Session as Session>::Event>) {
        self.state = State::Failed;
        self.deadline = None;
        cx.close();
    }
}

impl<S: Service> Session for GateSession<S> {
    type Event = <S::Session as Session>::Event;
    const LENDS: bool = <S::Session as Session>::LENDS;

    fn open(&mut self, cx: &mut Cx<'_, Self::Event>) {
        match (&self.state, self.shared.proxy) {
            (State::Header, Some(timeout)) => self.deadline = Some(cx.now() + timeout),
            _ => self.admit(cx),
        }
    }

    #[inline]
    fn read(&mut self, input: &[u8], cx: &mut Cx<'_, Self::Event>) -> usize {
        // The message path of an admitted client with no header: measured, this
        // makes a `--config` server's ACK round trip cost what a flags one does
        // (BENCHMARKS.md), where a call into the whole of `read_gated` cost more.
        if let (State::Inner(inner), true) = (&mut self.state, self.direct) {
            return inner.read(input, cx);
        }
        self.read_gated(input, cx)
    }

    fn eof(&mut self, cx: &mut Cx<'_, Self::Event>) {
        if self.with_inner(cx, |s, icx| s.eof(icx)).is_none() {
            cx.close();
        }
    }

    fn event(&mut self, event: Self::Event, cx: &mut Cx<'_, Self::Event>) {
        self.with_inner(cx, |s, icx| s.event(event, icx));
    }

    #[inline]
    fn deadline(&self) -> Option<Instant> {
        // Asked at every wake-up: an admitted client with no deadline of the gate's
        // own (no header awaited, not refused) has its session's.
        match (&self.state, self.deadline) {
            (State::Inner(s), None) => s.deadline(),
            _ => self.gated_deadline(),
        }
    }

    fn idle_ok(&self) -> bool {
        match &self.state {
            State::Inner(s) => !self.refused && s.idle_ok(),
            _ => false,
        }
    }

    /// The gate adds nothing to an admitted client's bytes: its session decides.
    fn may_lend(&mut self) -> bool {
        match &mut self.state {
            State::Inner(s) => !self.refused && s.may_lend(),
            _ => false,
        }
    }

    fn timeout(&mut self, cx: &mut Cx<'_, Self::Event>) {
        let now = cx.now();
        if self.deadline.is_some_and(|d| now >= d) {
            if matches!(self.state, State::Header) {
                tracing::warn!(
                    "PROXY: no valid header from {} within {:?}; closing",
                    self.client.peer,
                    self.shared.proxy.unwrap_or_default()
                );
            } else {
                tracing::info!(
                    "Refused connection {} from {} not done within {REFUSAL_GRACE:?}; closing",
                    self.client.id,
                    self.client.peer
                );
            }
            self.fail(cx);
            return;
        }
        let due = match &self.state {
            State::Inner(s) => s.deadline().is_some_and(|d| now >= d),
            _ => false,
        };
        if due {
            self.with_inner(cx, |s, icx| s.timeout(icx));
        }
    }

    fn goodbye(&mut self, why: Goodbye, cx: &mut Cx<'_, Self::Event>) {
        match self.state {
            State::Inner(_) => {
                self.with_inner(cx, |s, icx| s.goodbye(why, icx));
            }
            // Refused before its header: told why once the header says who it is
            // (bounded by the header's deadline). Any other goodbye ends it now.
            State::Header if why.is_refusal() => self.deferred = Some(why),
            State::Header | State::Failed => self.fail(cx),
        }
    }
}

impl<S: Service> GateSession<S> {
    /// [`Session::read`] while a header is awaited, or with one read.
    #[inline(never)]
    fn read_gated(
        &mut self,
        input: &[u8],
        cx: &mut Cx<'_, <S::Session as Session>::Event>,
    ) -> usize {
        match self.state {
            State::Inner(_) => {
                return self
                    .with_inner(cx, |s, icx| s.read(input, icx))
                    .unwrap_or(input.len())
            }
            State::Failed => return input.len(),
            State::Header => {}
        }
        match proxy::parse(input) {
            Parsed::Incomplete if input.len() < cx.input_limit => 0,
            Parsed::Incomplete => {
                tracing::warn!(
                    "PROXY: no header in the first {} bytes from {}; closing",
                    input.len(),
                    self.client.peer
                );
                self.fail(cx);
                input.len()
            }
            Parsed::Invalid(why) => {
                tracing::warn!(
                    "PROXY: invalid header from {}: {why}; closing",
                    self.client.peer
                );
                self.fail(cx);
                input.len()
            }
            Parsed::Header {
                len,
                version,
                source,
            } => {
                self.on_header(version, source, cx);
                let rest = &input[len..];
                if rest.is_empty() || cx.is_closing() {
                    return if cx.is_closing() { input.len() } else { len };
                }
                len + self
                    .with_inner(cx, |s, icx| s.read(rest, icx))
                    .unwrap_or(rest.len())
            }
        }
    }

    /// [`Session::deadline`] with the gate's own deadline (a header awaited, a
    /// refusal's grace) or before the inner session exists.
    fn gated_deadline(&self) -> Option<Instant> {
        let inner = match &self.state {
            State::Inner(s) => s.deadline(),
            _ => None,
        };
        match (self.deadline, inner) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[doc(hidden)]
pub mod fuzzing;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::http::{Http, HttpOptions};
    use crate::service::{ack, greet, Harness};

    fn peer(s: &str) -> ConnInfo {
        ConnInfo {
            id: 7,
            peer: s.parse().unwrap(),
        }
    }

    fn gated<S: Service>(gate: &Gate<S>, from: &str) -> Harness<GateSession<S>> {
        Harness::new(gate.session(&peer(from)))
    }

    const HEADER: &[u8] = b"PROXY TCP4 198.51.100.22 127.0.0.1 35646 9999\r\n";

    #[test]
    fn the_client_past_its_address_limit_is_told_in_its_protocol_and_counted() {
        let table = PerIp::new(2);
        let gate = Gate::new(greet::Greet, None, Some(table.clone()));
        let a = gated(&gate, "10.0.0.1:1000");
        let mut b = gated(&gate, "10.0.0.1:1001");
        assert_eq!(b.take_output(), greet::GREETING);
        let mut c = gated(&gate, "10.0.0.1:1002");
        assert_eq!(
            c.take_output(),
            b"ERR too many connections from your address\n",
            "no greeting, only why"
        );
        assert!(c.is_closing());
        assert_eq!(gate.refused().load(Ordering::Relaxed), 1);
        let mut other = gated(&gate, "10.0.0.2:1000");
        assert_eq!(
            other.take_output(),
            greet::GREETING,
            "another address is served"
        );
        drop(a);
        let mut d = gated(&gate, "10.0.0.1:1003");
        assert_eq!(
            d.take_output(),
            greet::GREETING,
            "a connection that ended gave its place back"
        );
        assert_eq!(table.open("10.0.0.1".parse().unwrap()), 2);
    }

    #[test]
    fn answers_behind_the_gate_are_counted_for_the_metrics() {
        let gate = Gate::new(crate::service::ack::Ack, None, Some(PerIp::new(2)));
        let mut h = gated(&gate, "10.0.0.1:1000");
        h.feed(b"one");
        assert_eq!(h.take_output(), b"ACK!");
        let answered = h.stats().meter.latency(crate::base::meter::Answer::Message);
        assert_eq!(
            answered.count(),
            1,
            "the inner session's answer reaches the engine"
        );
    }

    #[test]
    fn an_http_client_past_its_address_limit_gets_a_503_saying_why() {
        let table = PerIp::new(1);
        let gate = Gate::new(Http::new(HttpOptions::default()), None, Some(table));
        let _first = gated(&gate, "10.0.0.1:1000");
        let mut h = gated(&gate, "10.0.0.1:1001");
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let out = String::from_utf8(h.take_output()).unwrap();
        assert!(out.starts_with("HTTP/1.1 503 "), "{out}");
        assert!(out.contains("Retry-After: 1"), "{out}");
        assert!(
            out.ends_with("too many connections from your address\n"),
            "{out}"
        );
    }

    #[test]
    fn a_refused_client_that_says_nothing_is_closed_after_the_grace() {
        let gate = Gate::new(Http::new(HttpOptions::default()), None, Some(PerIp::new(1)));
        let _first = gated(&gate, "10.0.0.1:1000");
        let mut h = gated(&gate, "10.0.0.1:1001");
        assert!(!h.is_closing(), "http reads the request before its 503");
        let grace = h.now + REFUSAL_GRACE;
        h.advance_to(grace - Duration::from_millis(1));
        assert!(!h.is_closing());
        h.advance_to(grace);
        assert!(h.is_closing());
    }

    #[test]
    fn a_proxy_header_makes_its_source_the_client_and_what_follows_is_served() {
        let gate = Gate::new(ack::Ack, Some(Duration::from_secs(10)), None);
        assert_eq!(gate.name(), "ack+proxy");
        let mut h = gated(&gate, "127.0.0.1:5000");
        let mut bytes = HEADER.to_vec();
        bytes.extend_from_slice(b"hello");
        h.feed(&bytes[..10]);
        assert!(h.take_output().is_empty(), "half a header: nothing yet");
        h.feed(&bytes[10..]);
        assert_eq!(
            h.take_output(),
            ack::REPLY,
            "the bytes after the header reach ack"
        );
        assert_eq!(h.session().client(), "198.51.100.22:35646".parse().unwrap());
    }

    #[test]
    fn the_limit_follows_the_address_in_the_header_not_the_proxy() {
        let table = PerIp::new(1);
        let gate = Gate::new(
            greet::Greet,
            Some(Duration::from_secs(10)),
            Some(table.clone()),
        );
        let mut a = gated(&gate, "127.0.0.1:5000");
        a.feed(HEADER);
        assert_eq!(a.take_output(), greet::GREETING);
        // Another client through the same proxy is served...
        let mut b = gated(&gate, "127.0.0.1:5001");
        b.feed(b"PROXY TCP4 198.51.100.23 127.0.0.1 35646 9999\r\n");
        assert_eq!(b.take_output(), greet::GREETING);
        // ...the first client's second connection is not.
        let mut c = gated(&gate, "127.0.0.1:5002");
        c.feed(HEADER);
        assert_eq!(
            c.take_output(),
            b"ERR too many connections from your address\n"
        );
        assert_eq!(
            table.open("127.0.0.1".parse().unwrap()),
            0,
            "the proxy is not counted"
        );
    }

    #[test]
    fn no_header_within_the_timeout_closes_without_a_word() {
        let gate = Gate::new(greet::Greet, Some(Duration::from_secs(3)), None);
        let mut h = gated(&gate, "127.0.0.1:5000");
        assert!(h.take_output().is_empty(), "no greeting before the header");
        let deadline = h.session().deadline().expect("a header deadline");
        h.advance_to(deadline - Duration::from_millis(1));
        assert!(!h.is_closing());
        h.advance_to(deadline);
        assert!(h.is_closing());
        assert!(h.take_output().is_empty());
    }

    #[test]
    fn garbage_instead_of_a_header_closes_at_once() {
        let gate = Gate::new(greet::Greet, Some(Duration::from_secs(3)), None);
        let mut h = gated(&gate, "127.0.0.1:5000");
        h.feed(b"GET / HTTP/1.1\r\n\r\n");
        assert!(h.is_closing());
        assert!(h.take_output().is_empty());
    }

    #[test]
    fn a_busy_refusal_before_the_header_is_said_after_it() {
        let gate = Gate::new(ack::Ack, Some(Duration::from_secs(3)), None);
        let mut h = Harness::new(gate.session(&peer("127.0.0.1:5000")));
        h.goodbye(Goodbye::Busy);
        assert!(!h.is_closing(), "waits for the header");
        h.feed(HEADER);
        assert_eq!(h.take_output(), b"ERR server busy\n");
        assert!(h.is_closing());
    }
}
