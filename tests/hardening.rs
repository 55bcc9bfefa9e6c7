//! Hardening under every model: load shedding, idle timeout, resets mid-message,
//! graceful shutdown of the real binary, and accept errors under a descriptor limit.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::lines::Lines;
use common::*;
use multiclient::model::{Limits, Model};
use multiclient::service::ack::Ack;
use multiclient::service::greet::{Greet, CLIENT_REPLY, GREETING};
use multiclient::service::hello::{self, Hello};

fn busy_client_is_told_and_others_unaffected(model: Model) {
    let limits = Limits {
        max_conns: 10,
        ..Limits::default()
    };
    let srv = start(model, limits, Ack);
    let mut clients: Vec<_> = (0..10).map(|_| connect(srv.addr())).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        round_trip(c, format!("client {i}").as_bytes(), b"ACK!");
    }
    let mut eleventh = connect(srv.addr());
    assert_eq!(read_to_end(&mut eleventh), b"ERR server busy\n");
    for c in clients.iter_mut() {
        round_trip(c, b"still here", b"ACK!");
    }
    assert_eq!(srv.listening.stats.refused.load(Ordering::Relaxed), 1);
    // A freed slot is given to the next client.
    drop(clients.pop());
    let mut next = loop {
        let mut c = connect(srv.addr());
        c.write_all(b"next").unwrap();
        let mut buf = [0u8; 4];
        match c.read_exact(&mut buf) {
            Ok(()) if &buf == b"ACK!" => break c,
            // The slot is released just after the close is seen: a refusal until then.
            _ => continue,
        }
    };
    round_trip(&mut next, b"served", b"ACK!");
}

#[test]
fn busy_client_is_told_and_others_unaffected_threads() {
    busy_client_is_told_and_others_unaffected(Model::Threads);
}

#[test]
fn busy_client_is_told_and_others_unaffected_pool() {
    busy_client_is_told_and_others_unaffected(Model::Pool { workers: 10 });
}

#[test]
fn busy_client_is_told_and_others_unaffected_pool_queue() {
    // Two workers and room for ten: eight wait in the queue, the eleventh is refused.
    let limits = Limits {
        max_conns: 10,
        ..Limits::default()
    };
    let srv = start(Model::Pool { workers: 2 }, limits, Ack);
    let mut clients: Vec<_> = (0..10).map(|_| connect(srv.addr())).collect();
    round_trip(&mut clients[0], b"a", b"ACK!");
    round_trip(&mut clients[1], b"b", b"ACK!");
    // Every queued client is accepted (admitted) before the eleventh arrives.
    while srv.listening.stats.accepted.load(Ordering::Relaxed) < 10 {
        std::thread::yield_now();
    }
    let mut eleventh = connect(srv.addr());
    assert_eq!(read_to_end(&mut eleventh), b"ERR server busy\n");
}

#[test]
fn busy_client_is_told_and_others_unaffected_async() {
    busy_client_is_told_and_others_unaffected(Model::Async { workers: 2 });
}

/// A refused greet client hears only why: the greeting would promise a conversation
/// the server is not going to have.
fn refused_greet_client_gets_busy_and_no_greeting(model: Model) {
    let limits = Limits {
        max_conns: 1,
        ..Limits::default()
    };
    let srv = start(model, limits, Greet);
    let mut first = connect(srv.addr());
    assert_eq!(read_n(&mut first, GREETING.len()), GREETING);
    let mut second = connect(srv.addr());
    assert_eq!(read_to_end(&mut second), b"ERR server busy\n");
    round_trip(&mut first, CLIENT_REPLY, GREETING);
}

#[test]
fn refused_greet_client_gets_busy_and_no_greeting_under_every_concurrent_model() {
    for model in CONCURRENT {
        refused_greet_client_gets_busy_and_no_greeting(model);
    }
}

fn idle_client_is_told_and_closed(model: Model) {
    let limits = Limits {
        idle_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let srv = start(model, limits, Ack);
    let mut c = connect(srv.addr());
    round_trip(&mut c, b"then silence", b"ACK!");
    assert_eq!(read_to_end(&mut c), b"ERR idle timeout\n");
    assert_eq!(srv.listening.stats.idle_timeouts.load(Ordering::Relaxed), 1);
}

#[test]
fn idle_client_is_told_and_closed_under_every_model() {
    for model in MODELS {
        idle_client_is_told_and_closed(model);
    }
}

fn reset_mid_message_does_not_affect_others(model: Model) {
    let srv = start(model, Limits::default(), Hello);
    // Under `single` the reset client must be done before the next is served.
    for _ in 0..5 {
        let c = connect(srv.addr());
        let sock = socket2::SockRef::from(&c);
        sock.set_linger(Some(Duration::ZERO)).unwrap();
        drop(c); // RST without sending anything
    }
    let mut half = connect(srv.addr());
    half.write_all(&[0xe2, 0x82]).unwrap(); // a UTF-8 sequence cut in the middle
    assert_eq!(read_to_end(&mut half), hello::REPLY);
    let mut c = connect(srv.addr());
    c.write_all(b"after the resets").unwrap();
    assert_eq!(read_to_end(&mut c), hello::REPLY);
}

#[test]
fn reset_mid_message_does_not_affect_others_under_every_model() {
    for model in MODELS {
        reset_mid_message_does_not_affect_others(model);
    }
}

fn graceful_shutdown_answers_every_message_and_exits_0(model: &str) {
    let mut srv = spawn_serve(&[
        "--service",
        "ack",
        "--addr",
        "127.0.0.1:0",
        "--model",
        model,
    ]);
    // Clients being served, and (single, pool) clients still waiting for a turn.
    let (served, waiting) = match model {
        "single" => (1, 2),
        "pool" => (10, 5),
        _ => (20, 0),
    };
    let mut clients: Vec<_> = (0..served).map(|_| connect(srv.addr)).collect();
    for c in clients.iter_mut() {
        round_trip(c, b"before", b"ACK!");
    }
    clients.extend((0..waiting).map(|_| connect(srv.addr)));
    // Each client sends one more message and the signal follows at once: the
    // server must answer it (it was sent before the shutdown) and then say goodbye.
    for c in clients.iter_mut() {
        c.write_all(b"last words").unwrap();
    }
    srv.signal(rustix::process::Signal::TERM);
    for c in clients.iter_mut() {
        assert_eq!(read_to_end(c), b"ACK!ERR server shutting down\n");
    }
    let status = srv.wait();
    assert_eq!(status.code(), Some(0), "exit status");
    assert!(
        std::net::TcpStream::connect(srv.addr).is_err(),
        "still accepting after shutdown"
    );
}

#[test]
fn graceful_shutdown_single() {
    graceful_shutdown_answers_every_message_and_exits_0("single");
}

#[test]
fn graceful_shutdown_threads() {
    graceful_shutdown_answers_every_message_and_exits_0("threads");
}

#[test]
fn graceful_shutdown_pool() {
    graceful_shutdown_answers_every_message_and_exits_0("pool");
}

#[test]
fn graceful_shutdown_async() {
    graceful_shutdown_answers_every_message_and_exits_0("async");
}

/// More clients than `single` serves at once and than the pool has workers, each with
/// one message sent and unanswered (most still in the listen backlog or the pool's
/// queue) when SIGTERM comes: every one reads its `ACK!` then the goodbye, and the
/// process exits 0 within the shutdown timeout with no connection cut off.
fn every_waiting_client_is_answered_then_told_within_the_timeout(model: &str) {
    const CLIENTS: usize = 60;
    let mut srv = spawn_serve(&[
        "--service",
        "ack",
        "--addr",
        "127.0.0.1:0",
        "--model",
        model,
        "--shutdown-timeout",
        "5s",
    ]);
    let mut clients: Vec<_> = (0..CLIENTS).map(|_| connect(srv.addr)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(format!("message {i}").as_bytes()).unwrap();
    }
    let signalled = std::time::Instant::now();
    srv.signal(rustix::process::Signal::TERM);
    // Every client stays connected until all have their answers: none of them may
    // hold up the others.
    for (i, c) in clients.iter_mut().enumerate() {
        let got = read_to_end(c);
        assert_eq!(
            String::from_utf8_lossy(&got),
            "ACK!ERR server shutting down\n",
            "client {i} of {CLIENTS}"
        );
    }
    drop(clients);
    srv.expect_log("All connections closed");
    let status = srv.wait();
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "exit status");
    assert!(took < Duration::from_secs(5), "exit {took:?} after SIGTERM");
}

#[test]
fn every_waiting_client_is_answered_then_told_single() {
    every_waiting_client_is_answered_then_told_within_the_timeout("single");
}

#[test]
fn every_waiting_client_is_answered_then_told_threads() {
    every_waiting_client_is_answered_then_told_within_the_timeout("threads");
}

#[test]
fn every_waiting_client_is_answered_then_told_pool() {
    every_waiting_client_is_answered_then_told_within_the_timeout("pool");
}

#[test]
fn every_waiting_client_is_answered_then_told_async() {
    every_waiting_client_is_answered_then_told_within_the_timeout("async");
}

#[test]
fn second_signal_exits_at_once() {
    // A client that never reads keeps the drain from finishing within its timeout.
    let mut srv = spawn_serve(&[
        "--service",
        "greet",
        "--addr",
        "127.0.0.1:0",
        "--shutdown-timeout",
        "60s",
    ]);
    let c = connect(srv.addr);
    socket2::SockRef::from(&c)
        .set_recv_buffer_size(4096)
        .unwrap();
    let mut w = c.try_clone().unwrap();
    // Fill the server's output towards this client: every chunk gets a greeting.
    let chunk = vec![b'x'; 1024];
    let mut sent = 0;
    w.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while sent < 64 << 20 {
        match w.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    srv.signal(rustix::process::Signal::TERM);
    srv.expect_log("shutting down gracefully");
    srv.signal(rustix::process::Signal::INT);
    let status = srv.wait();
    assert_eq!(status.code(), Some(multiclient::serve::EXIT_INTERRUPTED));
}

#[test]
fn accept_errors_back_off_and_the_server_recovers() {
    // Run the server with so few descriptors that accept fails with EMFILE.
    let mut child = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -n 16 && exec {} serve --service ack --addr 127.0.0.1:0 --model async --workers 1",
            env!("CARGO_BIN_EXE_multiclient")
        ))
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let addr: std::net::SocketAddr = loop {
        let line = rx.recv_timeout(TIMEOUT).expect("Listening line");
        if let Some(rest) = line.split("Listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(connect(addr));
    }
    loop {
        let line = rx.recv_timeout(TIMEOUT).expect("an accept error is logged");
        if line.contains("accept failed") && line.contains("backing off") {
            break;
        }
    }
    drop(clients);
    // Descriptors are free again: a new client is served.
    let mut served = false;
    for _ in 0..200 {
        let mut c = connect(addr);
        c.write_all(b"hello").unwrap();
        let mut buf = [0u8; 4];
        if c.read_exact(&mut buf).is_ok() && &buf == b"ACK!" {
            served = true;
            break;
        }
    }
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = child.wait().unwrap();
    assert!(
        served,
        "server did not recover after the descriptor shortage"
    );
    assert_eq!(status.code(), Some(0));
}

#[test]
fn half_closed_client_still_gets_every_answer() {
    for model in MODELS {
        let srv = start(model, Limits::default(), Ack);
        let mut c = connect(srv.addr());
        c.write_all(b"one message then EOF").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_end(&mut c), b"ACK!", "{model:?}");
    }
}

/// Panics on the byte `!`: a stand-in for a bug in a protocol.
struct Fragile;
struct FragileSession;

impl multiclient::service::Service for Fragile {
    type Session = FragileSession;
    fn name(&self) -> &str {
        "fragile"
    }
    fn session(&self, _conn: &multiclient::service::ConnInfo) -> FragileSession {
        FragileSession
    }
}

impl multiclient::service::Session for FragileSession {
    type Event = ();
    fn read(&mut self, input: &[u8], cx: &mut multiclient::service::Cx<'_, ()>) -> usize {
        assert!(!input.contains(&b'!'), "fragile session meets '!'");
        cx.send(b"ok");
        input.len()
    }
}

#[test]
fn a_panicking_session_ends_only_its_own_connection() {
    for model in MODELS {
        let limits = Limits {
            max_conns: 2,
            ..Limits::default()
        };
        let srv = start(model, limits, Fragile);
        for _ in 0..3 {
            let mut c = connect(srv.addr());
            c.write_all(b"boom!").unwrap();
            assert_eq!(read_to_end(&mut c), b"", "{model:?}");
        }
        // Every slot comes back (just after each socket closes), or none would be left
        // for the next client.
        let deadline = std::time::Instant::now() + TIMEOUT;
        while srv.listening.stats.active.load(Ordering::Relaxed) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{model:?}: slots leaked"
            );
            std::thread::yield_now();
        }
        let mut c = connect(srv.addr());
        round_trip(&mut c, b"fine", b"ok");
    }
}

/// A server whose stderr reader has gone (`serve ... 2>&1 | head -1`) keeps serving and
/// still shuts down on SIGTERM with status 0: a log line that cannot be written is
/// dropped, it does not panic the thread that logs it.
#[test]
fn closed_stderr_neither_panics_nor_blocks_shutdown() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_multiclient"))
        .args(["serve", "--service", "ack", "--addr", "127.0.0.1:0"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn multiclient");
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let addr: std::net::SocketAddr = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "no Listening line"
        );
        if let Some(rest) = line.split("Listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    drop(stderr); // The reader goes away: every later log line fails to write.
    for _ in 0..3 {
        let mut c = connect(addr);
        round_trip(&mut c, b"hi", b"ACK!");
    }
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("no exit within {TIMEOUT:?} of SIGTERM with stderr closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}

/// Reads lines until one equals `want`.
fn read_until_line(c: &mut std::net::TcpStream, want: &str) {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        c.read_exact(&mut b)
            .unwrap_or_else(|e| panic!("waiting for {want:?}: {e}"));
        if b[0] == b'\n' {
            if line == want.as_bytes() {
                return;
            }
            line.clear();
        } else {
            line.push(b[0]);
        }
    }
}

fn unfinished_input_past_the_budget_is_refused_busy(model: Model) {
    // One 64 KiB step: the first unfinished 40 KiB line takes it all.
    let limits = Limits {
        max_buffered: 64 * 1024,
        ..Limits::default()
    };
    let srv = start(model, limits, Lines);
    let mut a = connect(srv.addr());
    a.write_all(&[b'a'; 40 * 1024]).unwrap();
    read_until_line(&mut a, "HELD 40960");
    let mut b = connect(srv.addr());
    b.write_all(&[b'b'; 40 * 1024]).unwrap();
    let got = read_to_end(&mut b);
    assert!(
        got.ends_with(b"ERR server busy\n"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(srv.listening.stats.over_budget.load(Ordering::Relaxed), 1);
    // The first holder is unaffected and finishes its line; the budget is free again.
    a.write_all(b"\n").unwrap();
    read_until_line(&mut a, "LINE 40960");
    let mut c = connect(srv.addr());
    c.write_all(&[b'c'; 40 * 1024]).unwrap();
    c.write_all(b"\n").unwrap();
    read_until_line(&mut c, "LINE 40960");
}

#[test]
fn unfinished_input_past_the_budget_is_refused_busy_under_every_concurrent_model() {
    for model in CONCURRENT {
        unfinished_input_past_the_budget_is_refused_busy(model);
    }
}

/// A client-to-server WebSocket frame, masked with a zero key (the payload as is).
fn ws_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    match payload.len() {
        n if n < 126 => v.push(0x80 | n as u8),
        n if n <= 0xffff => {
            v.push(0x80 | 126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            v.push(0x80 | 127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    v.extend_from_slice(&[0; 4]);
    v.extend_from_slice(payload);
    v
}

fn ws_message_past_the_budget_is_closed_1013(model: Model) {
    use multiclient::service::http::HttpOptions;
    use multiclient::service::http::Ws;
    use tungstenite::Message;
    // Three 64 KiB steps: one unfinished 100 KiB message takes two.
    let limits = Limits {
        max_buffered: 3 * 64 * 1024,
        ..Limits::default()
    };
    let srv = start(model, limits, Ws::new(HttpOptions::default()));
    let client = |addr| {
        let (ws, resp) = tungstenite::client(format!("ws://{addr}/"), connect(addr))
            .expect("websocket handshake");
        assert_eq!(resp.status(), 101);
        ws
    };
    let fragment = vec![b'x'; 100 * 1024];
    // A first fragment, then a ping: its pong says the fragment is held.
    let mut a = client(srv.addr());
    a.get_mut().write_all(&ws_frame(0x02, &fragment)).unwrap();
    a.get_mut().write_all(&ws_frame(0x89, b"a")).unwrap();
    match a.read().expect("pong") {
        Message::Pong(_) => {}
        m => panic!("unexpected {m:?}"),
    }
    let mut b = client(srv.addr());
    b.get_mut().write_all(&ws_frame(0x02, &fragment)).unwrap();
    b.get_mut().write_all(&ws_frame(0x89, b"b")).unwrap();
    let code = loop {
        match b.read() {
            Ok(Message::Close(Some(f))) => break u16::from(f.code),
            Ok(Message::Pong(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(code, 1013);
    // The first holder finishes its message and is answered.
    a.get_mut().write_all(&ws_frame(0x80, b"end")).unwrap();
    match a.read().expect("the reply") {
        Message::Binary(b) => {
            assert_eq!(b.len(), "Server received: ".len() + fragment.len() + 3)
        }
        m => panic!("unexpected {m:?}"),
    }
}

#[test]
fn ws_message_past_the_budget_is_closed_1013_under_every_concurrent_model() {
    for model in CONCURRENT {
        ws_message_past_the_budget_is_closed_1013(model);
    }
}
