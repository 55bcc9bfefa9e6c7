//! `bench chat` against real servers on port 0: every message delivered exactly once
//! to every member of its room by our chat service, and a lossy or duplicating server
//! caught, delivery by delivery.

#![cfg(feature = "bench")]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use multiclient::bench::chat::{run_chat, ChatConfig, ChatReport};
use multiclient::model::{Limits, Model, Server};
use multiclient::serve::{ServiceName, ServiceOptions};

fn bounded(addr: SocketAddr, members: usize, rooms: usize) -> ChatConfig {
    let mut cfg = ChatConfig::new(addr, members, rooms);
    cfg.rate = 400.0;
    cfg.duration = Duration::from_millis(800);
    cfg.setup_timeout = Duration::from_secs(30);
    cfg.drain_timeout = Duration::from_secs(10);
    cfg.threads = 2;
    cfg
}

#[test]
fn our_chat_delivers_every_message_to_every_member() {
    let mut server = Server::new(Model::Async { workers: 2 }, Limits::default()).unwrap();
    let addr = ServiceName::Chat
        .listen(
            &mut server,
            "127.0.0.1:0".parse().unwrap(),
            &ServiceOptions::default(),
        )
        .unwrap()
        .addr;
    let mut cfg = bounded(addr, 30, 3);
    cfg.senders = 6;
    let r = run_chat(&cfg).unwrap();
    assert_eq!(r.errors.total(), 0, "{r:#?}");
    assert_eq!(r.slow_consumer_drops, 0, "{r:#?}");
    // 400 msg/s for 0.8 s: about 320 messages, each to the 10 members of its room.
    assert!(r.sent >= 300, "{r:#?}");
    assert_eq!(r.expected_deliveries, r.sent * 10);
    assert_eq!(r.deliveries, r.expected_deliveries, "{r:#?}");
    assert_eq!(r.latency.count, r.deliveries);
    // Every message's last delivery is known, and the slowest is the run's slowest
    // delivery (the histogram rounds it up by at most a thousandth).
    let last = r.last_delivery.expect("tracked");
    assert_eq!(last.messages, r.sent, "{r:#?}");
    assert!(last.p50_us <= last.max_us && last.max_us <= r.latency.max_us);
    assert!(
        r.latency.max_us - last.max_us <= r.latency.max_us / 1000,
        "{r:#?}"
    );
    server.drain().start();
    server.wait();
}

/// What the tiny test server does wrong, to one member only.
#[derive(Clone, Copy)]
enum Fault {
    /// Never sends it sender 0's message 2.
    Drop,
    /// Sends it sender 0's message 2 twice.
    Duplicate,
}

/// A one-thread-per-client chat server of the protocol's minimum (WELCOME, JOIN, SAY
/// to every member, rooms ignored since the test uses one), faulty toward the first
/// member that joins. Its threads end with the test process.
fn faulty_server(fault: Fault) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let members: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let ids = Arc::new(Mutex::new(0u64));
    std::thread::spawn(move || {
        for (n, s) in listener.incoming().enumerate() {
            let Ok(mut s) = s else { continue };
            let members = members.clone();
            let ids = ids.clone();
            std::thread::spawn(move || {
                let nick = format!("g{n}");
                let _ = s.write_all(format!("WELCOME {nick}\n").as_bytes());
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
                    let l = line.trim_end().to_string();
                    line.clear();
                    if let Some(room) = l.strip_prefix("JOIN ") {
                        let mut m = members.lock().unwrap();
                        let _ = s.write_all(format!("OK JOIN {room}\n").as_bytes());
                        m.push(s.try_clone().unwrap());
                    } else if let Some(rest) = l.strip_prefix("SAY ") {
                        let (room, text) = rest.split_once(' ').unwrap();
                        let mut id = ids.lock().unwrap();
                        *id += 1;
                        let msg = format!("MSG {room} {id} {nick} {text}\n");
                        let faulty = text.starts_with("m 0 2 ");
                        let mut m = members.lock().unwrap();
                        for (k, w) in m.iter_mut().enumerate() {
                            let times = match (k, faulty, fault) {
                                (0, true, Fault::Drop) => 0,
                                (0, true, Fault::Duplicate) => 2,
                                _ => 1,
                            };
                            for _ in 0..times {
                                let _ = w.write_all(msg.as_bytes());
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

fn run_faulty(fault: Fault) -> ChatReport {
    let addr = faulty_server(fault);
    let mut cfg = bounded(addr, 5, 1);
    cfg.rate = 50.0;
    cfg.duration = Duration::from_millis(400);
    run_chat(&cfg).unwrap()
}

#[test]
fn a_missing_delivery_is_an_error() {
    let r = run_faulty(Fault::Drop);
    assert!(r.sent > 3, "{r:#?}");
    assert_eq!(r.errors.missing, 1, "{r:#?}");
    assert_eq!(r.errors.total(), 1, "{r:#?}");
    assert_eq!(r.deliveries, r.expected_deliveries - 1, "{r:#?}");
}

#[test]
fn a_duplicate_delivery_is_an_error() {
    let r = run_faulty(Fault::Duplicate);
    assert!(r.sent > 3, "{r:#?}");
    assert_eq!(r.errors.duplicate_or_reordered, 1, "{r:#?}");
    assert_eq!(r.errors.total(), 1, "{r:#?}");
    assert_eq!(r.deliveries, r.expected_deliveries, "{r:#?}");
}
