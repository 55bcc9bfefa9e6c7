//! The http and ws rows of the conformance matrix: every model, real sockets, a raw
//! HTTP client and tungstenite's WebSocket client; shedding at `--max-conns` (503,
//! close 1013) with the admitted client unaffected; graceful shutdown giving WebSocket
//! clients close 1001 and finishing the HTTP response in flight.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use multiclient::model::{Limits, Model, Server};
use multiclient::service::http::Ws;
use multiclient::service::http::{Http, HttpOptions, HELLO};
use multiclient::service::ws::WsOptions;
use multiclient::service::Service;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// A safety net only: a test that waits this long has already failed.
const TIMEOUT: Duration = Duration::from_secs(10);

struct Running {
    server: Option<Server>,
    addr: SocketAddr,
}

impl Running {
    /// Starts the drain and waits for it; returns the connections cut off.
    fn stop(mut self) -> usize {
        let server = self.server.take().expect("running");
        server.drain().start();
        server.wait()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.drain().start();
            server.wait();
        }
    }
}

fn start<S: Service>(model: Model, limits: Limits, service: S) -> Running {
    let mut server = Server::new(model, limits).expect("server");
    let addr = server.listen("127.0.0.1:0", service).expect("listen").addr;
    Running {
        server: Some(server),
        addr,
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads one response: (status, head text, body). HEAD responses have no body.
fn read_response(s: &mut TcpStream, head_only: bool) -> (u16, String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("reading a response head");
        assert_eq!(
            n,
            1,
            "EOF inside a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let status: u16 = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0; if head_only { 0 } else { len }];
    s.read_exact(&mut body).expect("reading a body");
    (status, head, body)
}

fn assert_eof(s: &mut TcpStream) {
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("reading to EOF");
    assert!(rest.is_empty(), "unexpected bytes before EOF: {rest:?}");
}

fn http_conversation(model: Model) {
    let srv = start(model, Limits::default(), Http::new(HttpOptions::default()));
    let mut c = connect(srv.addr);
    // Keep-alive: two requests on one connection.
    for _ in 0..2 {
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let (status, head, body) = read_response(&mut c, false);
        assert_eq!(status, 200);
        assert!(head.contains("Content-Length: 39\r\n"));
        assert!(head.contains("Date: "));
        assert_eq!(body, HELLO.as_bytes());
    }
    // Pipelined, with a body to skip, answered in order.
    c.write_all(
        b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /nope HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_response(&mut c, true).0, 200);
    let (status, head, _) = read_response(&mut c, false);
    assert_eq!(status, 405);
    assert!(head.contains("Allow: GET, HEAD\r\n"));
    assert_eq!(read_response(&mut c, false).0, 404);
    let (status, head, body) = read_response(&mut c, false);
    assert_eq!((status, body.as_slice()), (200, HELLO.as_bytes()));
    assert!(head.contains("Connection: close\r\n"));
    assert_eof(&mut c);
    // A shadowed client would stay open (and the server linger on it) until the end.
    drop(c);
    // Bad input is answered and closed; the server keeps serving.
    let mut c = connect(srv.addr);
    c.write_all(b"GET / HTTP/9.9\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut c, false).0, 505);
    assert_eof(&mut c);
    drop(c);
    let mut c = connect(srv.addr);
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut c, false).0, 200);
    drop(c);
    assert_eq!(srv.stop(), 0);
}

fn ws_client(addr: SocketAddr, path: &str) -> WebSocket<TcpStream> {
    let (ws, resp) = tungstenite::client(format!("ws://{addr}{path}"), connect(addr))
        .expect("websocket handshake");
    assert_eq!(resp.status(), 101);
    ws
}

/// Reads the next data message, skipping control frames.
fn next_message(ws: &mut WebSocket<TcpStream>) -> Message {
    loop {
        match ws.read().expect("reading a message") {
            Message::Ping(_) | Message::Pong(_) => continue,
            m => return m,
        }
    }
}

/// Reads until the server's close frame; returns its code.
fn close_code(ws: &mut WebSocket<TcpStream>) -> u16 {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return u16::from(f.code),
            Ok(Message::Close(None)) => panic!("close frame without a code"),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

/// After a close frame: tungstenite answers it; the server then closes TCP.
fn finish_close(ws: &mut WebSocket<TcpStream>) {
    loop {
        match ws.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => return,
            Err(tungstenite::Error::AlreadyClosed) => return,
            Err(e) => panic!("unclean close: {e}"),
        }
    }
}

fn ws_exchange(ws: &mut WebSocket<TcpStream>) {
    ws.send(Message::text("hi")).unwrap();
    assert_eq!(next_message(ws), Message::text("Server received: hi"));
    ws.send(Message::binary(vec![0u8, 1, 255])).unwrap();
    assert_eq!(
        next_message(ws),
        Message::binary(b"Server received: \x00\x01\xff".to_vec())
    );
    let big = "x".repeat(300_000);
    ws.send(Message::text(big.clone())).unwrap();
    assert_eq!(
        next_message(ws),
        Message::text(format!("Server received: {big}"))
    );
    ws.send(Message::Ping(b"p".to_vec().into())).unwrap();
    match ws.read().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"p"),
        m => panic!("expected a pong, got {m:?}"),
    }
}

fn ws_conversation(model: Model) {
    let opts = HttpOptions {
        ws: std::sync::Arc::new(WsOptions {
            max_message: 400_000,
            ..WsOptions::default()
        }),
        ..HttpOptions::default()
    };
    let srv = start(model, Limits::default(), Ws::new(opts.clone()));
    let mut ws = ws_client(srv.addr, "/");
    ws_exchange(&mut ws);
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: CloseCode::Library(4000),
        reason: "done".into(),
    }))
    .unwrap();
    assert_eq!(close_code(&mut ws), 4000, "the peer's code is echoed");
    finish_close(&mut ws);
    drop(ws);
    // Over the limit: 1009, and the next client is served.
    let mut ws = ws_client(srv.addr, "/");
    ws.send(Message::binary(vec![0u8; 400_001])).unwrap();
    assert_eq!(close_code(&mut ws), 1009);
    finish_close(&mut ws);
    drop(ws);
    let mut ws = ws_client(srv.addr, "/any/path");
    ws.send(Message::text("again")).unwrap();
    assert_eq!(
        next_message(&mut ws),
        Message::text("Server received: again")
    );
    ws.close(None).unwrap();
    finish_close(&mut ws);
    drop(ws);
    assert_eq!(srv.stop(), 0);
    // The same engine behind the http service's /ws.
    let srv = start(model, Limits::default(), Http::new(opts));
    let mut ws = ws_client(srv.addr, "/ws");
    ws_exchange(&mut ws);
    ws.close(None).unwrap();
    finish_close(&mut ws);
    drop(ws);
    assert_eq!(srv.stop(), 0);
}

fn slowloris_gets_408(model: Model) {
    let opts = HttpOptions {
        header_timeout: Duration::from_millis(300),
        ..HttpOptions::default()
    };
    let srv = start(model, Limits::default(), Http::new(opts));
    let mut c = connect(srv.addr);
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let (status, head, _) = read_response(&mut c, false);
    assert_eq!(status, 408);
    assert!(head.contains("Connection: close\r\n"));
    assert_eof(&mut c);
    drop(c);
    let mut c = connect(srv.addr);
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut c, false).0, 200);
}

/// A client pipelines far more replies than the server holds unsent and reads none
/// for five header timeouts: the server stops reading meanwhile, the request cut at
/// the end of what it had read waits in the socket, and once the client reads every
/// request is answered, in order, with no 408 among them. (Before, that request's
/// timer ran while the server was not reading: a 408, and the rest unanswered.)
fn a_client_that_pauses_reading_gets_every_answer(model: Model) {
    let timeout = Duration::from_millis(200);
    let opts = HttpOptions {
        header_timeout: timeout,
        ..HttpOptions::default()
    };
    // Replies held unsent before the server stops reading: 64 KiB instead of 1 MiB,
    // and a client receive buffer of a few KiB, so that 12 MB of replies surely fill
    // what the sockets hold (the async model's took over 3 MB here).
    let limits = Limits {
        max_output: 64 << 10,
        ..Limits::default()
    };
    let srv = start(model, limits, Http::new(opts));
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&srv.addr.into()).unwrap();
    let mut c: TcpStream = sock.into();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    // The reply's length, from one exchange (the date's length never changes).
    let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    c.write_all(req).unwrap();
    let (_, head, body) = read_response(&mut c, false);
    let reply_len = head.len() + body.len();
    let n = 80_000;
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&req.repeat(n)));
    std::thread::sleep(5 * timeout);
    let mut got = vec![0; n * reply_len];
    c.read_exact(&mut got).expect("every reply");
    writer.join().unwrap().expect("every request sent");
    let statuses: Vec<&[u8]> = got.chunks(reply_len).map(|r| &r[9..12]).collect();
    assert!(
        statuses.iter().all(|s| *s == b"200"),
        "{} replies of {n} not 200",
        statuses.iter().filter(|s| **s != b"200").count()
    );
    // Still open and serving.
    c.write_all(req).unwrap();
    assert_eq!(read_response(&mut c, false).0, 200);
}

/// A body trickling in at a byte per 20 ms is cut off at `--body-timeout` with a 408,
/// while (on the models that serve clients at once) another client is served.
fn slow_body_gets_408_and_others_are_served(model: Model, concurrent: bool) {
    let opts = HttpOptions {
        body_timeout: Duration::from_millis(400),
        ..HttpOptions::default()
    };
    let srv = start(model, Limits::default(), Http::new(opts));
    let mut slow = connect(srv.addr);
    slow.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        .unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickle = {
        let mut w = slow.try_clone().unwrap();
        let done = done.clone();
        // Bounded: 500 bytes at most, 10 s, the safety net.
        std::thread::spawn(move || {
            for _ in 0..500 {
                if done.load(std::sync::atomic::Ordering::Relaxed) || w.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    if concurrent {
        let mut c = connect(srv.addr);
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut c, false).0, 200);
    }
    let (status, head, _) = read_response(&mut slow, false);
    assert_eq!(status, 408);
    assert!(head.contains("Connection: close\r\n"));
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    trickle.join().unwrap();
    assert_eof(&mut slow);
}

/// RFC 9112 details over a socket: leading empty lines ignored, an absolute-form
/// target served like its path, a refused request that waits for `100 Continue` told
/// its final status instead, and an HTTP/1.1 request without `Host` refused.
fn rfc_9112_details(model: Model) {
    let srv = start(model, Limits::default(), Http::new(HttpOptions::default()));
    let mut c = connect(srv.addr);
    c.write_all(b"\r\n\r\nGET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (status, _, body) = read_response(&mut c, false);
    assert_eq!((status, body.as_slice()), (200, HELLO.as_bytes()));
    c.write_all(
        b"POST /nope HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .unwrap();
    let (status, head, _) = read_response(&mut c, false);
    assert_eq!(status, 404, "{head}");
    assert!(head.contains("Connection: close\r\n"));
    assert_eof(&mut c);
    drop(c);
    let mut c = connect(srv.addr);
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut c, false).0, 400);
    assert_eof(&mut c);
}

fn one_conn() -> Limits {
    Limits {
        max_conns: 1,
        ..Limits::default()
    }
}

fn http_sheds_with_503(model: Model) {
    let srv = start(model, one_conn(), Http::new(HttpOptions::default()));
    let mut a = connect(srv.addr);
    a.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut a, false).0, 200);
    let mut b = connect(srv.addr);
    b.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (status, head, _) = read_response(&mut b, false);
    assert_eq!(status, 503);
    assert!(head.contains("Retry-After: 1\r\n"));
    assert_eof(&mut b);
    // The admitted client is unaffected.
    a.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut a, false).0, 200);
}

fn ws_sheds_with_1013(model: Model) {
    let srv = start(model, one_conn(), Ws::new(HttpOptions::default()));
    let mut a = ws_client(srv.addr, "/");
    a.send(Message::text("first")).unwrap();
    assert_eq!(
        next_message(&mut a),
        Message::text("Server received: first")
    );
    let mut b = ws_client(srv.addr, "/");
    assert_eq!(close_code(&mut b), 1013);
    a.send(Message::text("still here")).unwrap();
    assert_eq!(
        next_message(&mut a),
        Message::text("Server received: still here")
    );
}

fn shutdown_closes_ws_1001(model: Model, clients: usize) {
    let srv = start(model, Limits::default(), Ws::new(HttpOptions::default()));
    let mut wss: Vec<_> = (0..clients).map(|_| ws_client(srv.addr, "/")).collect();
    for ws in &mut wss {
        ws.send(Message::text("x")).unwrap();
        assert_eq!(next_message(ws), Message::text("Server received: x"));
    }
    let stopper = std::thread::spawn(move || srv.stop());
    for ws in &mut wss {
        assert_eq!(close_code(ws), 1001);
        finish_close(ws);
    }
    assert_eq!(
        stopper.join().unwrap(),
        0,
        "every connection closed in time"
    );
}

fn shutdown_finishes_http_in_flight(model: Model) {
    let srv = start(model, Limits::default(), Http::new(HttpOptions::default()));
    let mut c = connect(srv.addr);
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut c, false).0, 200);
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
        .unwrap();
    let drain = srv.server.as_ref().unwrap().drain();
    let stopper = std::thread::spawn(move || srv.stop());
    drain.start();
    // Whether the drain reaches the connection before or after the rest of the body,
    // the request in flight is answered in full, then the connection closes (the
    // `Connection: close` on it is checked deterministically in the unit tests).
    c.write_all(b"cd").unwrap();
    let (status, _, body) = read_response(&mut c, false);
    assert_eq!((status, body.as_slice()), (200, HELLO.as_bytes()));
    assert_eof(&mut c);
    drop(c);
    assert_eq!(stopper.join().unwrap(), 0);
}

/// Keep-alive clients each sending request after request in a tight loop while the
/// server binary gets SIGTERM: a request the server read is answered (the last with
/// `Connection: close`), so no client sees the connection close under a request it
/// sent; the process exits 0.
fn keep_alive_loops_at_sigterm_end_with_an_answer(model: &str, clients: usize) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let mut srv = common::spawn_serve(&[
        "--service",
        "http",
        "--addr",
        "127.0.0.1:0",
        "--model",
        model,
    ]);
    let addr = srv.addr;
    let warm = Arc::new(AtomicUsize::new(0));
    let (warm_tx, warm_rx) = std::sync::mpsc::channel();
    let loops: Vec<_> = (0..clients)
        .map(|_| {
            let warm = warm.clone();
            let warm_tx = warm_tx.clone();
            std::thread::spawn(move || {
                let mut c = connect(addr);
                // Bounded by count; the safety-net read timeout bounds the time.
                for n in 1..=1_000_000u32 {
                    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
                    let mut first = [0u8; 1];
                    match c.read(&mut first) {
                        Ok(0) => return Err(format!("EOF under request {n}")),
                        Ok(_) => {}
                        Err(e) => return Err(format!("{e} under request {n}")),
                    }
                    let (status, head, body) = read_response_after(&mut c, first[0]);
                    assert_eq!((status, body.as_slice()), (200, HELLO.as_bytes()));
                    if n == 20 && warm.fetch_add(1, Ordering::SeqCst) + 1 == clients {
                        warm_tx.send(()).unwrap();
                    }
                    if head.contains("Connection: close\r\n") {
                        assert_eof(&mut c);
                        return Ok(n);
                    }
                }
                Err("never told to close".to_string())
            })
        })
        .collect();
    warm_rx.recv_timeout(TIMEOUT).expect("every client served");
    srv.signal(rustix::process::Signal::TERM);
    let ends: Vec<_> = loops.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(ends.iter().all(Result::is_ok), "{model}: {ends:?}");
    assert_eq!(srv.wait().code(), Some(0), "exit status");
}

/// [`read_response`] when its first byte was already read.
fn read_response_after(s: &mut TcpStream, first: u8) -> (u16, String, Vec<u8>) {
    let mut chained = std::io::Cursor::new([first]).chain(s.try_clone().unwrap());
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        chained
            .read_exact(&mut byte)
            .expect("reading a response head");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let status: u16 = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    chained.read_exact(&mut body).expect("reading a body");
    (status, head, body)
}

#[test]
fn keep_alive_loops_at_sigterm_end_with_an_answer_under_every_model() {
    for (model, clients) in [("single", 1), ("threads", 8), ("pool", 8), ("async", 8)] {
        keep_alive_loops_at_sigterm_end_with_an_answer(model, clients);
    }
}

macro_rules! matrix {
    ($($name:ident: $model:expr, $concurrent:expr;)*) => {
        mod http_under { use super::*; $(#[test] fn $name() { http_conversation($model) })* }
        mod ws_under { use super::*; $(#[test] fn $name() { ws_conversation($model) })* }
        mod slowloris_under { use super::*; $(#[test] fn $name() { slowloris_gets_408($model) })* }
        mod paused_reader_under { use super::*; $(#[test] fn $name() {
            a_client_that_pauses_reading_gets_every_answer($model)
        })* }
        mod ws_shutdown_under { use super::*; $(#[test] fn $name() {
            shutdown_closes_ws_1001($model, if $concurrent { 3 } else { 1 })
        })* }
        mod rfc_9112_under { use super::*; $(#[test] fn $name() { rfc_9112_details($model) })* }
        mod slow_body_under { use super::*; $(#[test] fn $name() {
            slow_body_gets_408_and_others_are_served($model, $concurrent)
        })* }
        mod http_shutdown_under { use super::*; $(#[test] fn $name() { shutdown_finishes_http_in_flight($model) })* }
    };
}

matrix! {
    single: Model::Single, false;
    threads: Model::Threads, true;
    pool: Model::Pool { workers: 10 }, true;
    async_multi: Model::Async { workers: 2 }, true;
    async_one_thread: Model::Async { workers: 1 }, true;
}

/// Shedding needs a second client served at the same time as the first, which the
/// `single` model never does (it serves one client at a time and queues the rest).
macro_rules! shedding {
    ($($name:ident: $model:expr;)*) => {
        mod http_shed_under { use super::*; $(#[test] fn $name() { http_sheds_with_503($model) })* }
        mod ws_shed_under { use super::*; $(#[test] fn $name() { ws_sheds_with_1013($model) })* }
    };
}

shedding! {
    threads: Model::Threads;
    pool: Model::Pool { workers: 10 };
    async_multi: Model::Async { workers: 2 };
    async_one_thread: Model::Async { workers: 1 };
}
