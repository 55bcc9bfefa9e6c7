//! TLS on every service under every model, over real sockets, with certificates made
//! in the test and a rustls client: the round trips of each service, a plaintext
//! client on a TLS port, the handshake timeout, a refused client told why, session
//! resumption, one service plain and encrypted in one process, and a certificate
//! swapped on SIGHUP.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::lines::Lines;
use common::{Running, TIMEOUT};
use multiclient::model::{Limits, Model, Server};
use multiclient::serve::tls::{CertStore, TlsFiles, TlsListen};
use multiclient::serve::{ServiceName, ServiceOptions};
use multiclient::service::{ack, greet, hello};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A certificate for `localhost` and 127.0.0.1, written as PEM files.
struct Pki {
    dir: PathBuf,
    files: TlsFiles,
    cert: CertificateDer<'static>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        let cert = write_pair(&files);
        Pki { dir, files, cert }
    }

    fn store(&self) -> Arc<CertStore> {
        CertStore::load(self.files.clone()).unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes a fresh self-signed pair to `files`; returns the certificate.
fn write_pair(files: &TlsFiles) -> CertificateDer<'static> {
    let key =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(&files.cert, key.cert.pem()).unwrap();
    std::fs::write(&files.key, key.signing_key.serialize_pem()).unwrap();
    key.cert.der().clone()
}

fn client_config(trust: &CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(trust.clone()).unwrap();
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

fn tls_connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> Tls {
    let sock = common::connect(addr);
    let conn =
        ClientConnection::new(config.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    StreamOwned::new(conn, sock)
}

/// Completes the handshake (the first read or write would too).
fn handshake(s: &mut Tls) -> std::io::Result<()> {
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(())
}

fn read_n(s: &mut Tls, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("reading {n} bytes: {e}"));
    buf
}

/// Reads until the server's close_notify (an EOF without one is an error).
fn read_to_end(s: &mut Tls) -> Vec<u8> {
    let mut v = Vec::new();
    s.read_to_end(&mut v).expect("a close_notify, then EOF");
    v
}

fn round_trip(s: &mut Tls, msg: &[u8], reply: &[u8]) {
    s.write_all(msg).unwrap();
    assert_eq!(read_n(s, reply.len()), reply);
}

fn listen(model: Model, limits: Limits, name: ServiceName, tls: &TlsListen) -> Running {
    let mut server = Server::new(model, limits).unwrap();
    let listening = name
        .listen_on(
            &mut server,
            "127.0.0.1:0".parse().unwrap(),
            &ServiceOptions::default(),
            Some(tls),
        )
        .unwrap();
    Running {
        server: Some(server),
        listening,
    }
}

fn tls_listen(pki: &Pki, handshake_timeout: Duration) -> TlsListen {
    TlsListen {
        store: pki.store(),
        handshake_timeout,
    }
}

fn start(model: Model, name: ServiceName) -> (Pki, Running, Arc<ClientConfig>) {
    let pki = Pki::new(&format!("{name}-{}", model.name()));
    let srv = listen(
        model,
        Limits::default(),
        name,
        &tls_listen(&pki, Duration::from_secs(10)),
    );
    let client = client_config(&pki.cert);
    (pki, srv, client)
}

fn ack_over_tls(model: Model) {
    let (_pki, srv, client) = start(model, ServiceName::Ack);
    let mut c = tls_connect(srv.addr(), &client);
    round_trip(&mut c, b"Hello, server", ack::REPLY);
    round_trip(&mut c, "héllo wörld".as_bytes(), ack::REPLY);
    c.conn.send_close_notify();
    c.flush().unwrap();
    assert_eq!(read_to_end(&mut c), b"", "closed with a close_notify");
}

fn greet_over_tls(model: Model) {
    let (_pki, srv, client) = start(model, ServiceName::Greet);
    let mut c = tls_connect(srv.addr(), &client);
    assert_eq!(read_n(&mut c, greet::GREETING.len()), greet::GREETING);
    for _ in 0..3 {
        round_trip(&mut c, greet::CLIENT_REPLY, greet::GREETING);
    }
}

fn hello_over_tls(model: Model) {
    let (_pki, srv, client) = start(model, ServiceName::Hello);
    for i in 0..3 {
        let mut c = tls_connect(srv.addr(), &client);
        c.write_all(format!("Hello from client {i}").as_bytes())
            .unwrap();
        assert_eq!(read_to_end(&mut c), hello::REPLY);
    }
}

/// Reads one HTTP response with a Content-Length body; returns head and body.
fn http_response(r: &mut BufReader<Tls>) -> (String, String) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "response cut: {head}");
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    (head, String::from_utf8(body).unwrap())
}

fn http_over_tls(model: Model) {
    let (_pki, srv, client) = start(model, ServiceName::Http);
    let mut c = tls_connect(srv.addr(), &client);
    handshake(&mut c).unwrap();
    assert_eq!(c.conn.alpn_protocol(), Some(&b"http/1.1"[..]), "ALPN");
    let mut c = BufReader::new(c);
    // Two pipelined requests on one kept-alive connection, then an error status.
    c.get_mut()
        .write_all(
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\nGET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        )
        .unwrap();
    for _ in 0..2 {
        let (head, body) = http_response(&mut c);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, "Hello from Multi-threaded Flask Server!");
    }
    c.get_mut()
        .write_all(b"GET /nowhere HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let (head, _) = http_response(&mut c);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    if model != Model::Single {
        // The chat's page over https.
        c.get_mut()
            .write_all(b"GET /chat HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let (head, body) = http_response(&mut c);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(body.to_ascii_lowercase().contains("<html"), "{body}");
    }
}

fn ws_text(ws: &mut tungstenite::WebSocket<Tls>) -> String {
    loop {
        match ws.read().unwrap() {
            tungstenite::Message::Text(t) => return t.to_string(),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn wss(addr: SocketAddr, client: &Arc<ClientConfig>, path: &str) -> tungstenite::WebSocket<Tls> {
    let c = tls_connect(addr, client);
    let url = format!("wss://localhost:{}{path}", addr.port());
    let (ws, resp) = tungstenite::client(url.as_str(), c).unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

fn ws_over_tls(model: Model) {
    let (_pki, srv, client) = start(model, ServiceName::Ws);
    let mut ws = wss(srv.addr(), &client, "/");
    ws.send(tungstenite::Message::text("hi")).unwrap();
    assert_eq!(ws_text(&mut ws), "Server received: hi");
    ws.close(None).unwrap();
    // The close handshake completes over TLS.
    loop {
        match ws.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("{e}"),
        }
    }
}

fn chat_page_websocket_over_tls(model: Model) {
    let (_pki, srv, client) = start(model, ServiceName::Http);
    let mut ws = wss(srv.addr(), &client, "/chat/ws");
    assert!(ws_text(&mut ws).contains(r#""type":"welcome""#));
    ws.send(tungstenite::Message::text(
        r#"{"type":"nick","nick":"ann"}"#,
    ))
    .unwrap();
    let ok: serde_json::Value = serde_json::from_str(&ws_text(&mut ws)).unwrap();
    assert_eq!(
        ok,
        serde_json::json!({"type": "ok", "cmd": "nick", "nick": "ann"})
    );
}

fn line(r: &mut BufReader<Tls>) -> String {
    let mut s = String::new();
    assert!(r.read_line(&mut s).unwrap() > 0, "connection closed");
    s.trim_end_matches('\n').to_string()
}

fn chat_over_tls(model: Model) {
    let (_pki, srv, client) = start(model, ServiceName::Chat);
    let mut r = BufReader::new(tls_connect(srv.addr(), &client));
    assert!(line(&mut r).starts_with("WELCOME guest-"));
    r.get_mut()
        .write_all(b"NICK ann\nJOIN lobby\nSAY lobby hi\n")
        .unwrap();
    assert_eq!(line(&mut r), "OK NICK ann");
    assert_eq!(line(&mut r), "OK JOIN lobby");
    let msg = line(&mut r);
    assert!(
        msg.starts_with("MSG lobby ") && msg.ends_with(" ann hi"),
        "{msg}"
    );
}

macro_rules! matrix {
    ($($name:ident: $model:expr;)*) => {
        mod ack_over_tls_under { use super::*; $(#[test] fn $name() { ack_over_tls($model) })* }
        mod greet_over_tls_under { use super::*; $(#[test] fn $name() { greet_over_tls($model) })* }
        mod hello_over_tls_under { use super::*; $(#[test] fn $name() { hello_over_tls($model) })* }
        mod https_under { use super::*; $(#[test] fn $name() { http_over_tls($model) })* }
        mod wss_under { use super::*; $(#[test] fn $name() { ws_over_tls($model) })* }
    };
}

matrix! {
    single: Model::Single;
    threads: Model::Threads;
    pool: Model::Pool { workers: 4 };
    async_multi: Model::Async { workers: 2 };
}

macro_rules! chat_matrix {
    ($($name:ident: $model:expr;)*) => {
        mod chat_over_tls_under { use super::*; $(#[test] fn $name() { chat_over_tls($model) })* }
        mod chat_page_wss_under { use super::*; $(#[test] fn $name() { chat_page_websocket_over_tls($model) })* }
    };
}

chat_matrix! {
    threads: Model::Threads;
    pool: Model::Pool { workers: 4 };
    async_multi: Model::Async { workers: 2 };
}

#[test]
fn plaintext_client_on_a_tls_port_gets_an_alert_and_a_close() {
    for model in common::MODELS {
        let (_pki, srv, _) = start(model, ServiceName::Http);
        let mut c = common::connect(srv.addr());
        c.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let got = common::read_to_end(&mut c);
        assert_eq!(
            got.first(),
            Some(&0x15),
            "{model:?}: an alert record: {got:?}"
        );
        assert!(
            got.len() <= 7 + 32,
            "{model:?}: one alert and nothing else: {got:?}"
        );
    }
}

#[test]
fn silent_or_dribbling_client_is_dropped_after_the_handshake_timeout() {
    let timeout = Duration::from_millis(300);
    for model in common::MODELS {
        let pki = Pki::new(&format!("silent-{}", model.name()));
        let srv = listen(
            model,
            Limits::default(),
            ServiceName::Ack,
            &tls_listen(&pki, timeout),
        );
        // Silent: connects and sends nothing.
        let t0 = Instant::now();
        let mut c = common::connect(srv.addr());
        let mut buf = Vec::new();
        let r = c.read_to_end(&mut buf);
        assert!(r.is_ok() || r.unwrap_err().kind() == std::io::ErrorKind::ConnectionReset);
        let took = t0.elapsed();
        assert!(took >= timeout && took < TIMEOUT, "{model:?}: {took:?}");
        // Dribbling: the first bytes of a ClientHello record, then nothing.
        let t0 = Instant::now();
        let mut c = common::connect(srv.addr());
        c.write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01]).unwrap();
        let r = c.read_to_end(&mut buf);
        assert!(r.is_ok() || r.unwrap_err().kind() == std::io::ErrorKind::ConnectionReset);
        let took = t0.elapsed();
        assert!(took >= timeout && took < TIMEOUT, "{model:?}: {took:?}");
        // A real client is served by the same listener afterwards.
        let mut c = tls_connect(srv.addr(), &client_config(&pki.cert));
        round_trip(&mut c, b"still there?", ack::REPLY);
    }
}

#[test]
fn refused_client_is_told_busy_over_tls_and_others_unaffected() {
    let pki = Pki::new("busy");
    let limits = Limits {
        max_conns: 1,
        ..Limits::default()
    };
    let srv = listen(
        Model::Async { workers: 2 },
        limits,
        ServiceName::Ack,
        &tls_listen(&pki, Duration::from_secs(10)),
    );
    let client = client_config(&pki.cert);
    let mut first = tls_connect(srv.addr(), &client);
    round_trip(&mut first, b"one", ack::REPLY);
    let mut second = tls_connect(srv.addr(), &client);
    assert_eq!(read_to_end(&mut second), b"ERR server busy\n");
    round_trip(&mut first, b"two", ack::REPLY);
}

#[test]
fn second_handshake_resumes_the_session() {
    let (_pki, srv, client) = start(Model::Async { workers: 2 }, ServiceName::Ack);
    for kind in [rustls::HandshakeKind::Full, rustls::HandshakeKind::Resumed] {
        let mut c = tls_connect(srv.addr(), &client);
        // The TLS 1.3 ticket arrives after the handshake: a round trip reads it.
        round_trip(&mut c, b"x", ack::REPLY);
        assert_eq!(c.conn.handshake_kind(), Some(kind));
    }
}

#[test]
fn same_service_plain_and_over_tls_in_one_process() {
    let pki = Pki::new("both");
    let opts = multiclient::serve::ServeOptions {
        services: vec![(ServiceName::Ack, "127.0.0.1:0".parse().unwrap())],
        model: Model::Threads,
        limits: Limits::default(),
        service: ServiceOptions::default(),
        tls_services: vec![(ServiceName::Ack, "127.0.0.1:0".parse().unwrap())],
        tls: Some(pki.files.clone()),
        proxy_services: Vec::new(),
        tls_handshake_timeout: Duration::from_secs(10),
        admin: multiclient::serve::AdminAddr::Off,
    };
    let (server, listening, store) = multiclient::serve::start_tls(&opts).unwrap();
    assert!(store.is_some());
    let _running = Running {
        server: Some(server),
        listening: listening[0].clone(),
    };
    let mut plain = common::connect(listening[0].addr);
    common::round_trip(&mut plain, b"plain", ack::REPLY);
    let mut tls = tls_connect(listening[1].addr, &client_config(&pki.cert));
    round_trip(&mut tls, b"secret", ack::REPLY);
}

#[test]
fn sighup_swaps_the_certificate_for_new_handshakes_and_established_ones_carry_on() {
    let pki = Pki::new("sighup");
    let mut srv = common::spawn_serve(&[
        "--model",
        "threads",
        "--service",
        "ack=127.0.0.1:0,tls",
        "--tls-cert",
        pki.files.cert.to_str().unwrap(),
        "--tls-key",
        pki.files.key.to_str().unwrap(),
    ]);
    let old_cert = pki.cert.clone();
    let old = client_config(&old_cert);
    let mut established = tls_connect(srv.addr, &old);
    round_trip(&mut established, b"before", ack::REPLY);

    let new_cert = write_pair(&pki.files);
    srv.signal(rustix::process::Signal::HUP);
    srv.expect_log("TLS certificate reloaded");
    let mut fresh = tls_connect(srv.addr, &client_config(&new_cert));
    round_trip(&mut fresh, b"new", ack::REPLY);
    // A fresh client (no session to resume) that trusts only the old certificate.
    let mut stale = tls_connect(srv.addr, &client_config(&old_cert));
    assert!(
        handshake(&mut stale).is_err(),
        "the old certificate is gone"
    );
    round_trip(&mut established, b"after", ack::REPLY);

    // A file that does not parse: logged, and the certificate in use kept.
    std::fs::write(&pki.files.cert, "garbage").unwrap();
    srv.signal(rustix::process::Signal::HUP);
    srv.expect_log("not reloaded");
    let mut again = tls_connect(srv.addr, &client_config(&new_cert));
    round_trip(&mut again, b"kept", ack::REPLY);

    srv.signal(rustix::process::Signal::TERM);
    assert!(srv.wait().success());
}

#[test]
fn connect_tls_talks_to_a_tls_listener_and_refuses_an_untrusted_one() {
    let (pki, srv, _) = start(Model::Threads, ServiceName::Ack);
    let run = |ca: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_multiclient"))
            .args(["connect", "ack", "--tls", "--ca"])
            .arg(ca)
            .args(["--addr", &srv.addr().to_string(), "--send", "hi"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let ok = run(&pki.files.cert);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "ACK!\n");
    let other = Pki::new("connect-other");
    let refused = run(&other.files.cert);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("TLS handshake"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[test]
fn shutdown_says_goodbye_in_the_protocol_then_close_notify() {
    for model in common::MODELS {
        let (_pki, srv, client) = start(model, ServiceName::Ack);
        let mut c = tls_connect(srv.addr(), &client);
        round_trip(&mut c, b"hi", ack::REPLY);
        let stopping = std::thread::spawn(move || srv.stop());
        assert_eq!(
            read_to_end(&mut c),
            b"ERR server shutting down\n",
            "{model:?}: the goodbye, then a close_notify"
        );
        drop(c);
        assert_eq!(stopping.join().unwrap(), 0, "{model:?}: nothing cut off");
    }
}

/// Reads lines until one equals `want`.
fn read_until_line(r: &mut BufReader<Tls>, want: &str) {
    loop {
        let got = line(r);
        if got == want {
            return;
        }
        assert!(got.starts_with("HELD"), "waiting for {want:?}: {got:?}");
    }
}

fn unfinished_input_over_tls_is_charged_to_the_budget(model: Model) {
    // One 64 KiB step: the first unfinished 40 KiB line takes it all, as in plaintext
    // (tests/hardening.rs): encrypted, the line waits in the TLS wrapper's buffer
    // rather than the engine's, and is charged all the same.
    let pki = Pki::new(&format!("budget-{}", model.name()));
    let limits = Limits {
        max_buffered: 64 * 1024,
        ..Limits::default()
    };
    let config = pki.store().server_config(false).unwrap();
    let lines = multiclient::service::tls::Tls::new(Lines, config, Duration::from_secs(10));
    let srv = common::start(model, limits, lines);
    let budget = srv.server.as_ref().unwrap().budget();
    let client = client_config(&pki.cert);
    let mut a = BufReader::new(tls_connect(srv.addr(), &client));
    a.get_mut().write_all(&[b'a'; 40 * 1024]).unwrap();
    read_until_line(&mut a, "HELD 40960");
    assert_eq!(
        budget.used(),
        64 * 1024,
        "{model:?}: the held line is charged"
    );
    let mut b = tls_connect(srv.addr(), &client);
    b.write_all(&[b'b'; 40 * 1024]).unwrap();
    let got = read_to_end(&mut b);
    assert!(
        got.ends_with(b"ERR server busy\n"),
        "{model:?}: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(budget.used() <= budget.limit(), "{model:?}");
    let over = &srv.listening.stats.over_budget;
    assert_eq!(
        over.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "{model:?}: the refused one is counted over_budget"
    );
    // The first holder is unaffected and finishes its line; the budget is free again.
    a.get_mut().write_all(b"\n").unwrap();
    read_until_line(&mut a, "LINE 40960");
    assert_eq!(budget.used(), 0, "{model:?}: a consumed line is given back");
    let mut c = BufReader::new(tls_connect(srv.addr(), &client));
    c.get_mut().write_all(&[b'c'; 40 * 1024]).unwrap();
    c.get_mut().write_all(b"\n").unwrap();
    read_until_line(&mut c, "LINE 40960");
}

#[test]
fn unfinished_input_over_tls_is_charged_to_the_budget_and_refused_busy_past_it() {
    for model in common::CONCURRENT {
        unfinished_input_over_tls_is_charged_to_the_budget(model);
    }
}
