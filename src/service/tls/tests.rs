//! The wrapper driven on plain buffers against a rustls client, no socket.

use super::*;
use crate::service::{ack, greet, Harness};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use std::io::{Read, Write};

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

/// A session wrapped like [`session`], with its listener's handshake counters.
fn counted<S: Service>(
    svc: S,
    server: Arc<ServerConfig>,
) -> (Harness<TlsSession<S::Session>>, Arc<TlsStats>) {
    let tls = Tls::new(svc, server, Duration::from_secs(10));
    let h = Harness::new(tls.session(&ConnInfo::test(1)));
    (h, tls.stats())
}

fn client(config: &Arc<ClientConfig>) -> ClientConnection {
    ClientConnection::new(config.clone(), ServerName::try_from("localhost").unwrap()).unwrap()
}

fn failures(stats: &TlsStats) -> [u64; 4] {
    Failure::ALL.map(|f| stats.failures(f))
}

#[test]
fn a_completed_handshake_is_counted_by_version_and_kind() {
    let (server, client_config) = configs();
    let (mut h, stats) = counted(ack::Ack, server);
    let mut c = client(&client_config);
    pump(&mut h, &mut c);
    c.writer().write_all(b"one").unwrap();
    assert_eq!(pump(&mut h, &mut c), ack::REPLY);
    assert_eq!(stats.handshakes(1, 0), 1, "one full TLS 1.3 handshake");
    let all: u64 = (0..2)
        .flat_map(|v| (0..2).map(move |k| (v, k)))
        .map(|(v, k)| stats.handshakes(v, k))
        .sum();
    assert_eq!(all, 1, "counted once, not per record");
    assert_eq!(failures(&stats), [0; 4]);
    c.send_close_notify();
    pump(&mut h, &mut c);
    assert_eq!(failures(&stats), [0; 4], "a close after it is no failure");
}

#[test]
fn an_idle_connection_holds_no_buffer_after_its_replies() {
    let (server, client_config) = configs();
    let mut h = session(ack::Ack, server);
    let mut c = client(&client_config);
    pump(&mut h, &mut c);
    for _ in 0..3 {
        c.writer().write_all(b"one").unwrap();
        assert_eq!(pump(&mut h, &mut c), ack::REPLY);
        let s = h.session();
        let held = [&s.cipher_in, &s.plain_in, &s.plain_out].map(|b| b.capacity());
        assert_eq!(held, [0; 3], "the reply's room is freed once it is sent");
    }
}

#[test]
fn handshake_failures_are_counted_once_by_reason() {
    let (server, client_config) = configs();
    // Plaintext on the TLS port, then more of it and the client's EOF.
    let (mut h, stats) = counted(ack::Ack, server.clone());
    h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    h.feed(b"more");
    h.eof();
    assert_eq!(failures(&stats), [0, 1, 0, 0], "not_tls, once");
    // Silent past the handshake timeout.
    let (mut h, stats) = counted(ack::Ack, server.clone());
    let deadline = h.session().deadline().expect("a handshake deadline");
    h.advance_to(deadline);
    assert!(h.is_closing());
    assert_eq!(failures(&stats), [1, 0, 0, 0], "timeout");
    // A ClientHello, then the client goes away.
    let (mut h, stats) = counted(ack::Ack, server.clone());
    let mut c = client(&client_config);
    let mut hello = Vec::new();
    c.write_tls(&mut hello).unwrap();
    h.feed(&hello);
    h.eof();
    assert_eq!(failures(&stats), [0, 0, 0, 1], "eof mid-handshake");
    // A TLS record that is no handshake message: a protocol error.
    let (mut h, stats) = counted(ack::Ack, server);
    h.feed(&[0x16, 0x03, 0x01, 0x00, 0x04, 0xff, 0xff, 0xff, 0xff]);
    assert!(h.is_closing());
    assert_eq!(failures(&stats), [0, 0, 1, 0], "protocol");
    assert_eq!(stats.handshakes(1, 0) + stats.handshakes(0, 0), 0);
}

/// Consumes nothing: its input waits in the wrapper's plaintext buffer.
struct Hoard;
impl Session for Hoard {
    type Event = ();
    fn read(&mut self, _input: &[u8], _cx: &mut Cx<'_, ()>) -> usize {
        0
    }
}
struct Hoarder;
impl Service for Hoarder {
    type Session = Hoard;
    fn name(&self) -> &str {
        "hoard"
    }
    fn session(&self, _conn: &ConnInfo) -> Hoard {
        Hoard
    }
}

#[test]
fn input_held_in_the_wrapper_past_the_budget_is_counted_over_budget() {
    let (server, client_config) = configs();
    let (h, _) = counted(Hoarder, server);
    let budget = Arc::new(crate::base::Budget::new(0));
    let mut h = h.with_budget(budget.clone());
    let mut c = client(&client_config);
    pump(&mut h, &mut c);
    assert!(h.session().is_handshake_done());
    c.writer().write_all(&[b'x'; 20 * 1024]).unwrap();
    pump(&mut h, &mut c);
    assert!(h.is_closing(), "past the budget the client is told busy");
    let n = h
        .stats()
        .over_budget
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(n, 1, "counted in over_budget");
    assert_eq!(h.closed_by(), Some("over_budget"));
    assert_eq!(budget.used(), 0);
}

#[test]
fn greeting_written_before_the_handshake_arrives_encrypted_after_it() {
    let (server, client) = configs();
    let mut h = session(greet::Greet, server);
    assert!(
        h.take_output().is_empty(),
        "nothing is sent before a ClientHello"
    );
    let mut c = ClientConnection::new(client, ServerName::try_from("localhost").unwrap()).unwrap();
    assert_eq!(pump(&mut h, &mut c), greet::GREETING);
    c.writer().write_all(b"hi").unwrap();
    assert_eq!(pump(&mut h, &mut c), greet::GREETING);
}

#[test]
fn ack_replies_come_back_through_the_wrapper_and_close_notify_ends_it() {
    let (server, client) = configs();
    let mut h = session(ack::Ack, server);
    let mut c = ClientConnection::new(client, ServerName::try_from("localhost").unwrap()).unwrap();
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
    let mut c = ClientConnection::new(client, ServerName::try_from("localhost").unwrap()).unwrap();
    assert_eq!(pump(&mut h, &mut c), b"ERR server busy\n");
    assert!(h.is_closing());
}
