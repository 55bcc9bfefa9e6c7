//! The per-address limit and the PROXY header over real sockets: the connection past
//! `--max-conns-per-ip` told why in its protocol (line, HTTP 503, WebSocket close 1013)
//! under every concurrent model while other addresses are served; a PROXY header
//! (v1, v2, before TLS) making its address the client the limit counts; no header
//! within the header timeout closing the connection; and the binary logging the
//! header's address.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Running, CONCURRENT, MODELS, TIMEOUT};
use multiclient::base::per_ip::PerIp;
use multiclient::model::{Limits, Model, Server};
use multiclient::serve::{Front, ServiceName, ServiceOptions};
use multiclient::service::gate::Gate;
use multiclient::service::{ack, greet, Service};

const TOO_MANY: &[u8] = b"ERR too many connections from your address\n";

fn start_gated<S: Service>(
    model: Model,
    service: S,
    proxy: Option<Duration>,
    limit: usize,
) -> (Running, Arc<PerIp>, Arc<std::sync::atomic::AtomicU64>) {
    let table = PerIp::new(limit);
    let gate = Gate::new(service, proxy, Some(table.clone()));
    let refused = gate.refused();
    (
        common::start(model, Limits::default(), gate),
        table,
        refused,
    )
}

/// A client connecting from `from` (any address of 127.0.0.0/8).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    s.bind(&local.into()).unwrap();
    s.connect(&to.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

/// Waits (bounded) until the table counts `n` connections from `ip`: a connection's
/// place is given back when the server has seen it close.
fn wait_open(table: &PerIp, ip: &str, n: usize) {
    let ip: IpAddr = ip.parse().unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while table.open(ip) != n {
        assert!(
            Instant::now() < deadline,
            "{ip} still has {} open",
            table.open(ip)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn v1_header(client: &str) -> Vec<u8> {
    let a: SocketAddr = client.parse().unwrap();
    format!("PROXY TCP4 {} 127.0.0.1 {} 9999\r\n", a.ip(), a.port()).into_bytes()
}

fn v2_header(client: &str) -> Vec<u8> {
    let a: SocketAddr = client.parse().unwrap();
    let IpAddr::V4(ip) = a.ip() else {
        panic!("IPv4 only here")
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&ip.octets());
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&a.port().to_be_bytes());
    h.extend_from_slice(&9999u16.to_be_bytes());
    h
}

#[test]
fn the_connection_past_the_per_ip_limit_is_told_why_and_other_addresses_are_served() {
    for model in CONCURRENT {
        let (server, table, refused) = start_gated(model, greet::Greet, None, 2);
        let mut first = connect_from("127.0.0.1", server.addr());
        let mut second = connect_from("127.0.0.1", server.addr());
        assert_eq!(
            common::read_n(&mut first, greet::GREETING.len()),
            greet::GREETING
        );
        assert_eq!(
            common::read_n(&mut second, greet::GREETING.len()),
            greet::GREETING
        );
        let mut third = connect_from("127.0.0.1", server.addr());
        assert_eq!(common::read_to_end(&mut third), TOO_MANY, "{model:?}");
        let mut other = connect_from("127.0.0.2", server.addr());
        assert_eq!(
            common::read_n(&mut other, greet::GREETING.len()),
            greet::GREETING,
            "{model:?}: another address is unaffected"
        );
        assert_eq!(refused.load(Ordering::Relaxed), 1, "{model:?}");
        drop(first);
        wait_open(&table, "127.0.0.1", 1);
        let mut again = connect_from("127.0.0.1", server.addr());
        assert_eq!(
            common::read_n(&mut again, greet::GREETING.len()),
            greet::GREETING,
            "{model:?}: the place of a connection that ended is free"
        );
        drop((second, other, again));
        wait_open(&table, "127.0.0.1", 0);
        wait_open(&table, "127.0.0.2", 0);
        assert_eq!(table.addresses(), 0, "{model:?}: no address kept at zero");
    }
}

#[test]
fn http_past_the_limit_gets_503_and_websocket_gets_close_1013() {
    let opts = ServiceOptions::default();
    for model in CONCURRENT {
        let (http, table, _) = start_gated(
            model,
            multiclient::service::http::Http::new(opts.http.clone()),
            None,
            1,
        );
        // The held connection is opened (its place taken) before the next one comes:
        // under threads and pool the two open on threads of their own.
        let _held = connect_from("127.0.0.1", http.addr());
        wait_open(&table, "127.0.0.1", 1);
        let mut c = connect_from("127.0.0.1", http.addr());
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let out = String::from_utf8(common::read_to_end(&mut c)).unwrap();
        assert!(out.starts_with("HTTP/1.1 503 "), "{model:?}: {out}");
        assert!(
            out.ends_with("too many connections from your address\n"),
            "{out}"
        );

        let (ws, table, _) = start_gated(
            model,
            multiclient::service::http::Ws::new(opts.http.clone()),
            None,
            1,
        );
        let _held = connect_from("127.0.0.1", ws.addr());
        wait_open(&table, "127.0.0.1", 1);
        let mut c = connect_from("127.0.0.1", ws.addr());
        c.write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
        let out = common::read_to_end(&mut c);
        let end = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a handshake")
            + 4;
        assert!(out.starts_with(b"HTTP/1.1 101 "), "{model:?}");
        let frame = &out[end..];
        assert_eq!(frame[0], 0x88, "{model:?}: a close frame");
        assert_eq!(u16::from_be_bytes([frame[2], frame[3]]), 1013, "{model:?}");
        assert!(String::from_utf8_lossy(&frame[4..]).contains("too many connections"));
    }
}

#[test]
fn the_limit_counts_the_address_in_the_proxy_header_v1_and_v2() {
    for model in CONCURRENT {
        let (server, table, refused) =
            start_gated(model, greet::Greet, Some(Duration::from_secs(10)), 1);
        let mut a = common::connect(server.addr());
        a.write_all(&v1_header("198.51.100.22:35646")).unwrap();
        assert_eq!(
            common::read_n(&mut a, greet::GREETING.len()),
            greet::GREETING
        );
        // The same client through the proxy again, in version 2: refused.
        let mut again = common::connect(server.addr());
        again.write_all(&v2_header("198.51.100.22:35647")).unwrap();
        assert_eq!(common::read_to_end(&mut again), TOO_MANY, "{model:?}");
        // Another client through the same proxy: served.
        let mut b = common::connect(server.addr());
        b.write_all(&v2_header("198.51.100.23:40000")).unwrap();
        assert_eq!(
            common::read_n(&mut b, greet::GREETING.len()),
            greet::GREETING
        );
        assert_eq!(
            table.open("127.0.0.1".parse().unwrap()),
            0,
            "the proxy is not counted"
        );
        assert_eq!(table.open("198.51.100.22".parse().unwrap()), 1);
        assert_eq!(refused.load(Ordering::Relaxed), 1);
    }
}

#[test]
fn a_header_and_the_clients_bytes_in_one_write_are_both_served_under_every_model() {
    for model in MODELS {
        let (server, _, _) = start_gated(model, ack::Ack, Some(Duration::from_secs(10)), 10);
        let mut c = common::connect(server.addr());
        let mut bytes = v1_header("203.0.113.5:1234");
        bytes.extend_from_slice(b"hello");
        c.write_all(&bytes).unwrap();
        assert_eq!(
            common::read_n(&mut c, ack::REPLY.len()),
            ack::REPLY,
            "{model:?}"
        );
        common::round_trip(&mut c, b"again", ack::REPLY);
    }
}

#[test]
fn no_header_within_the_header_timeout_is_closed_under_every_model() {
    let timeout = Duration::from_millis(300);
    for model in MODELS {
        let (server, _, _) = start_gated(model, greet::Greet, Some(timeout), 10);
        let started = Instant::now();
        let mut silent = common::connect(server.addr());
        assert_eq!(
            common::read_to_end(&mut silent),
            b"",
            "{model:?}: closed, nothing said"
        );
        assert!(
            started.elapsed() >= timeout,
            "{model:?}: not before the timeout"
        );
        let mut garbage = common::connect(server.addr());
        garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(common::read_to_end(&mut garbage), b"", "{model:?}");
    }
}

#[test]
fn the_header_comes_before_tls_on_a_proxy_tls_listener() {
    use multiclient::serve::tls::{CertStore, TlsListen};
    use rustls::pki_types::ServerName;
    let (dir, files, cert) = common::self_signed_pem("proxy-tls");
    let tls = TlsListen {
        store: CertStore::load(files).unwrap(),
        handshake_timeout: Duration::from_secs(10),
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let front = Front {
        proxy: Some(Duration::from_secs(10)),
        per_ip: Some(PerIp::new(1)),
    };
    let mut server = Server::new(Model::Async { workers: 2 }, Limits::default()).unwrap();
    let listening = ServiceName::Ack
        .listen_behind(
            &mut server,
            "127.0.0.1:0".parse().unwrap(),
            &ServiceOptions::default(),
            Some(&tls),
            &front,
        )
        .unwrap();
    assert_eq!(listening.service, "ack+tls+proxy");
    let running = Running {
        server: Some(server),
        listening: listening.clone(),
    };
    let over_tls = |header: &[u8]| {
        let mut sock = common::connect(running.addr());
        sock.write_all(header).unwrap();
        let conn = rustls::ClientConnection::new(
            client.clone(),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        rustls::StreamOwned::new(conn, sock)
    };
    let mut first = over_tls(&v1_header("198.51.100.22:1000"));
    first.write_all(b"hi").unwrap();
    let mut reply = [0u8; 4];
    first.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, ack::REPLY);
    let mut second = over_tls(&v2_header("198.51.100.22:1001"));
    let mut out = Vec::new();
    second
        .read_to_end(&mut out)
        .expect("told after the handshake, then close_notify");
    assert_eq!(out, TOO_MANY);
    let refused = listening.refused_per_ip.as_ref().expect("a gated listener");
    assert_eq!(refused.load(Ordering::Relaxed), 1);
    drop(running);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn serve_logs_the_address_the_header_carries_and_limits_it() {
    let server = common::spawn_serve(&[
        "--service",
        "greet=127.0.0.1:0,proxy",
        "--max-conns-per-ip",
        "1",
        "--admin",
        "off",
    ]);
    assert!(
        server.listening.contains("greet+proxy"),
        "{}",
        server.listening
    );
    let mut a = common::connect(server.addr);
    a.write_all(&v1_header("198.51.100.22:35646")).unwrap();
    assert_eq!(
        common::read_n(&mut a, greet::GREETING.len()),
        greet::GREETING
    );
    server.expect_log("is client 198.51.100.22:35646");
    let mut again = common::connect(server.addr);
    again.write_all(&v2_header("198.51.100.22:35647")).unwrap();
    assert_eq!(common::read_to_end(&mut again), TOO_MANY);
    let line = server.expect_log("Refusing connection");
    assert!(line.contains("198.51.100.22"), "{line}");
    let mut b = common::connect(server.addr);
    b.write_all(&v1_header("198.51.100.23:35646")).unwrap();
    assert_eq!(
        common::read_n(&mut b, greet::GREETING.len()),
        greet::GREETING
    );
}
