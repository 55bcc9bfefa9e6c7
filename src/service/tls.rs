//! TLS as a session that wraps another session, written once for every service.
//!
//! [`Tls`] wraps any [`Service`]; its [`TlsSession`] drives a
//! [`rustls::ServerConnection`] sans-IO: the ciphertext the model read goes into
//! `read_tls` and `process_new_packets`, the plaintext that comes out is handed to the
//! inner session's `read`, and whatever the inner session writes is encrypted through
//! `writer` and `write_tls` into the model's output buffer. The inner session gets a
//! [`Cx`] over the wrapper's own plaintext buffer and the model's mailbox, clock and
//! limits, so it cannot tell it is encrypted, and no model learns about TLS.
//!
//! Bounds: rustls holds at most one record of ciphertext and 16 KiB of plaintext on
//! the way in (its own limits; the wrapper empties both on every call) and
//! [`TLS_BUFFER_LIMIT`] on the way out; the plaintext waiting for the inner session is
//! bounded by the model's input limit, like any session's input. The wrapper's own
//! plaintext buffers (input the inner session has not consumed, output rustls has not
//! taken yet) are charged to the server's `--max-buffered` budget exactly as the
//! engine charges a plaintext connection's pending input: the engine sees the
//! ciphertext consumed at once, so without the charge a client holding an unfinished
//! line would hold it beyond the budget only because it is encrypted. A connection
//! whose buffers would pass the budget is told the server is busy and closed. A client
//! that has not finished its handshake within the handshake timeout is dropped, and
//! one that speaks anything but TLS gets an alert and a close.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ServerConfig, ServerConnection};

use super::{ConnInfo, Cx, Goodbye, Service, Session};
use crate::base::Held;

/// Bytes of plaintext (before the handshake) and of encrypted records rustls may hold
/// for sending. The wrapper moves records out after every write, so this bounds one
/// write's worth; the model bounds what waits in the socket's output.
pub const TLS_BUFFER_LIMIT: usize = 64 * 1024;

/// A service spoken over TLS: every session of `S` wrapped in a [`TlsSession`].
pub struct Tls<S: Service> {
    inner: S,
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
    name: String,
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
        }
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
        let tls = match ServerConnection::new(self.config.clone()) {
            Ok(mut c) => {
                c.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
                Some(Box::new(c))
            }
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
            plain_in: Vec::new(),
            plain_out: Vec::new(),
            inner_closing: false,
            inner_eof: false,
            deferred: None,
            close_sent: false,
            held: Held::new(),
            over_budget: false,
        }
    }
}

/// One TLS connection: a rustls server connection and the session it carries.
pub struct TlsSession<S: Session> {
    inner: S,
    /// Boxed: the connection is large and this session lives in every model's
    /// per-connection state. `None` once the connection failed.
    tls: Option<Box<ServerConnection>>,
    handshake_timeout: Duration,
    /// Set at `open`, cleared when the handshake completes.
    handshake_deadline: Option<Instant>,
    /// Plaintext received and not yet consumed by the inner session.
    plain_in: Vec<u8>,
    /// Plaintext the inner session wrote and rustls has not taken yet.
    plain_out: Vec<u8>,
    inner_closing: bool,
    /// The inner session was told of the client's end (close_notify or TCP EOF).
    inner_eof: bool,
    /// A goodbye asked for during the handshake, said once it completes (a refused
    /// client is told why in its own protocol, which needs the handshake first).
    deferred: Option<Goodbye>,
    close_sent: bool,
    /// What `plain_in` and `plain_out` hold, charged to the `--max-buffered` budget.
    held: Held,
    /// The buffers once passed the budget: the client was told busy.
    over_budget: bool,
}

impl<S: Session> TlsSession<S> {
    /// Whether the TLS handshake has completed.
    pub fn is_handshake_done(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| !t.is_handshaking())
    }

    /// Runs `f` on the inner session with a context over the wrapper's plaintext
    /// output and the model's mailbox, clock and limits, then encrypts what it wrote.
    fn with_inner<R>(
        &mut self,
        cx: &mut Cx<'_, S::Event>,
        f: impl FnOnce(&mut S, &mut Cx<'_, S::Event>) -> R,
    ) -> R {
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
        );
        let r = f(&mut self.inner, &mut icx);
        let answers = icx.answers();
        cx.add_answers(answers);
        self.flush(cx);
        r
    }

    /// Encrypts the inner session's plaintext into the model's output, and ends the
    /// TLS session (close_notify, then close) once the inner session closed and all
    /// its output is out.
    fn flush(&mut self, cx: &mut Cx<'_, S::Event>) {
        let Some(tls) = self.tls.as_mut() else {
            cx.close();
            return;
        };
        let mut sent = 0;
        while sent < self.plain_out.len() {
            match tls.writer().write(&self.plain_out[sent..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => sent += n,
            }
            write_records(tls, cx.out);
        }
        self.plain_out.drain(..sent);
        release(&mut self.plain_out);
        write_records(tls, cx.out);
        if self.inner_closing
            && !self.close_sent
            && self.plain_out.is_empty()
            && !tls.is_handshaking()
        {
            tls.send_close_notify();
            write_records(tls, cx.out);
            self.close_sent = true;
            cx.close();
        }
    }

    /// The connection failed (a TLS error, a timeout): send what rustls queued (an
    /// alert) and close without involving the inner session.
    fn fail(&mut self, cx: &mut Cx<'_, S::Event>) {
        if let Some(tls) = self.tls.as_mut() {
            write_records(tls, cx.out);
        }
        self.tls = None;
        self.plain_in = Vec::new();
        self.plain_out = Vec::new();
        cx.hold(&mut self.held, 0);
        cx.close();
    }

    /// The handshake just completed: log it, and say a goodbye that waited for it.
    fn on_handshake(&mut self, cx: &mut Cx<'_, S::Event>) {
        self.handshake_deadline = None;
        if let Some(tls) = self.tls.as_ref() {
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
            return;
        }
        let input = std::mem::take(&mut self.plain_in);
        let n = self.with_inner(cx, |s, icx| s.read(&input, icx));
        self.plain_in = input;
        self.plain_in.drain(..n.min(self.plain_in.len()));
        if self.inner_closing {
            self.plain_in = Vec::new();
        } else if n == 0 && self.plain_in.len() >= cx.input_limit {
            tracing::warn!(
                "TLS: session consumed none of {} bytes of input; closing",
                self.plain_in.len()
            );
            self.fail(cx);
        }
        release(&mut self.plain_in);
    }

    /// Charges what the wrapper's plaintext buffers hold to the server's budget. Past
    /// it, the held input is dropped and the client told the server is busy (in its
    /// own protocol, through the inner session), as the engine does for plaintext
    /// input; a connection past it again after that is closed at once. Returns false
    /// when the connection was failed.
    fn charge(&mut self, cx: &mut Cx<'_, S::Event>) -> bool {
        let bytes = self.plain_in.len() + self.plain_out.len();
        if cx.hold(&mut self.held, bytes) {
            return true;
        }
        tracing::warn!(
            "TLS: {bytes} bytes buffered for {} pass the server's budget; closing",
            cx.conn().peer
        );
        self.plain_in = Vec::new();
        if self.over_budget || !self.is_handshake_done() || self.inner_closing {
            cx.hold(&mut self.held, 0);
            self.fail(cx);
            return false;
        }
        self.over_budget = true;
        self.with_inner(cx, |s, icx| s.goodbye(Goodbye::Busy, icx));
        let bytes = self.plain_out.len();
        if !cx.hold(&mut self.held, bytes) {
            cx.hold(&mut self.held, 0);
            self.fail(cx);
            return false;
        }
        true
    }
}

/// Moves every record rustls has ready into `out` (writing to a `Vec` cannot fail).
fn write_records(tls: &mut ServerConnection, out: &mut Vec<u8>) {
    while tls.wants_write() {
        if tls.write_tls(out).is_err() {
            break;
        }
    }
}

/// Frees an emptied buffer: an idle connection should hold no plaintext buffer.
fn release(buf: &mut Vec<u8>) {
    if buf.is_empty() && buf.capacity() > 0 {
        *buf = Vec::new();
    }
}

impl<S: Session> Session for TlsSession<S> {
    type Event = S::Event;

    fn open(&mut self, cx: &mut Cx<'_, S::Event>) {
        self.handshake_deadline = Some(cx.now() + self.handshake_timeout);
        // A greeting written now waits in rustls until the handshake completes.
        self.with_inner(cx, |s, icx| s.open(icx));
        self.charge(cx);
    }

    fn read(&mut self, input: &[u8], cx: &mut Cx<'_, S::Event>) -> usize {
        let mut consumed = 0;
        while consumed < input.len() {
            if cx.is_closing() || self.close_sent {
                return input.len();
            }
            let Some(tls) = self.tls.as_mut() else {
                return input.len();
            };
            let was_handshaking = tls.is_handshaking();
            let mut rest = &input[consumed..];
            match tls.read_tls(&mut rest) {
                Ok(0) => {
                    // After a close_notify nothing more is read; a record header
                    // rustls refused also reads as nothing, and the error says why.
                    match tls.process_new_packets() {
                        Err(e) => {
                            tracing::warn!("TLS: {e} from {}; closing", cx.conn().peer);
                            self.fail(cx);
                        }
                        Ok(_) => self.eof(cx),
                    }
                    return input.len();
                }
                Ok(n) => consumed += n,
                Err(e) => {
                    tracing::warn!("TLS: {e} from {}; closing", cx.conn().peer);
                    self.fail(cx);
                    return input.len();
                }
            }
            let state = match tls.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    tracing::warn!("TLS: {e} from {}; alert sent, closing", cx.conn().peer);
                    self.fail(cx);
                    return input.len();
                }
            };
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                let start = self.plain_in.len();
                self.plain_in.resize(start + n, 0);
                if tls
                    .reader()
                    .read_exact(&mut self.plain_in[start..])
                    .is_err()
                {
                    self.plain_in.truncate(start);
                }
            }
            let peer_closed = state.peer_has_closed();
            write_records(tls, cx.out);
            if was_handshaking && !tls.is_handshaking() {
                self.on_handshake(cx);
            }
            self.deliver(cx);
            if !self.charge(cx) {
                return input.len();
            }
            if peer_closed {
                self.eof(cx);
                return input.len();
            }
        }
        // Plaintext written before the handshake completed, or by a deferred goodbye.
        self.flush(cx);
        self.charge(cx);
        consumed
    }

    fn eof(&mut self, cx: &mut Cx<'_, S::Event>) {
        if self.inner_eof {
            return;
        }
        self.inner_eof = true;
        if !self.is_handshake_done() || self.deferred.is_some() {
            cx.close();
            return;
        }
        self.with_inner(cx, |s, icx| s.eof(icx));
    }

    fn event(&mut self, event: S::Event, cx: &mut Cx<'_, S::Event>) {
        if self.tls.is_some() {
            self.with_inner(cx, |s, icx| s.event(event, icx));
            self.charge(cx);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match (self.handshake_deadline, self.inner.deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn idle_ok(&self) -> bool {
        self.is_handshake_done() && self.inner.idle_ok()
    }

    fn timeout(&mut self, cx: &mut Cx<'_, S::Event>) {
        let now = cx.now();
        if self.handshake_deadline.is_some_and(|d| now >= d) {
            tracing::warn!(
                "TLS: no complete handshake from {} within {:?}; closing",
                cx.conn().peer,
                self.handshake_timeout
            );
            self.fail(cx);
            return;
        }
        if self.inner.deadline().is_some_and(|d| now >= d) {
            self.with_inner(cx, |s, icx| s.timeout(icx));
            self.charge(cx);
        }
    }

    fn goodbye(&mut self, why: Goodbye, cx: &mut Cx<'_, S::Event>) {
        if self.tls.is_none() {
            cx.close();
            return;
        }
        if !self.is_handshake_done() {
            if why.is_refusal() {
                // Finish the handshake (bounded by its timeout) to say why.
                self.deferred = Some(why);
            } else {
                self.fail(cx);
            }
            return;
        }
        self.with_inner(cx, |s, icx| s.goodbye(why, icx));
    }
}

#[cfg(test)]
mod tests {
    //! The wrapper driven on plain buffers against a rustls client, no socket.

    use super::*;
    use crate::service::{ack, greet, Harness};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore};

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = CertificateDer::from(key.cert.der().to_vec());
        let pk = PrivateKeyDer::try_from(key.signing_key.serialize_der()).unwrap();
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], pk)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    fn session<S: Service>(svc: S, server: Arc<ServerConfig>) -> Harness<TlsSession<S::Session>> {
        let tls = Tls::new(svc, server, Duration::from_secs(10));
        Harness::new(tls.session(&ConnInfo::test(1)))
    }

    /// Moves bytes both ways until neither side has anything to say; returns the
    /// plaintext the client received.
    fn pump<S: Session>(h: &mut Harness<TlsSession<S>>, c: &mut ClientConnection) -> Vec<u8> {
        let mut plain = Vec::new();
        for _ in 0..20 {
            let mut to_server = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut to_server).unwrap();
            }
            if !to_server.is_empty() {
                h.feed(&to_server);
            }
            let to_client = h.take_output();
            if to_server.is_empty() && to_client.is_empty() {
                break;
            }
            let mut rd = &to_client[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
                c.process_new_packets().unwrap();
            }
            let _ = c.reader().read_to_end(&mut plain);
        }
        plain
    }

    #[test]
    fn greeting_written_before_the_handshake_arrives_encrypted_after_it() {
        let (server, client) = configs();
        let mut h = session(greet::Greet, server);
        assert!(
            h.take_output().is_empty(),
            "nothing is sent before a ClientHello"
        );
        let mut c =
            ClientConnection::new(client, ServerName::try_from("localhost").unwrap()).unwrap();
        assert_eq!(pump(&mut h, &mut c), greet::GREETING);
        c.writer().write_all(b"hi").unwrap();
        assert_eq!(pump(&mut h, &mut c), greet::GREETING);
    }

    #[test]
    fn ack_replies_come_back_through_the_wrapper_and_close_notify_ends_it() {
        let (server, client) = configs();
        let mut h = session(ack::Ack, server);
        let mut c =
            ClientConnection::new(client, ServerName::try_from("localhost").unwrap()).unwrap();
        pump(&mut h, &mut c);
        c.writer().write_all(b"one").unwrap();
        assert_eq!(pump(&mut h, &mut c), ack::REPLY);
        c.send_close_notify();
        pump(&mut h, &mut c);
        assert!(h.is_closing(), "ack closes on the client's close_notify");
    }

    #[test]
    fn plaintext_client_gets_an_alert_and_a_close() {
        let (server, _) = configs();
        let mut h = session(ack::Ack, server);
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let out = h.take_output();
        assert_eq!(out.first(), Some(&0x15), "a TLS alert record: {out:?}");
        assert!(h.is_closing());
    }

    #[test]
    fn a_client_silent_past_the_handshake_timeout_is_closed() {
        let (server, _) = configs();
        let mut h = session(ack::Ack, server);
        let deadline = h.session().deadline().expect("a handshake deadline");
        h.advance_to(deadline - Duration::from_millis(1));
        assert!(!h.is_closing());
        h.advance_to(deadline);
        assert!(h.is_closing());
    }

    #[test]
    fn refused_client_is_told_busy_after_the_handshake() {
        let (server, client) = configs();
        let mut h = session(ack::Ack, server);
        h.goodbye(Goodbye::Busy);
        assert!(!h.is_closing(), "the handshake comes first");
        let mut c =
            ClientConnection::new(client, ServerName::try_from("localhost").unwrap()).unwrap();
        assert_eq!(pump(&mut h, &mut c), b"ERR server busy\n");
        assert!(h.is_closing());
    }
}
