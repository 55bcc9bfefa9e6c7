//! Sessions woken by something other than their own socket, under every model: a
//! message pushed into the mailbox by another connection, and the session's own timer.
//! This is the shape chat needs: a thread blocked on a silent client must still wake.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use multiclient::base::mailbox::Sender;
use multiclient::model::Limits;
use multiclient::service::{ConnInfo, Cx, Service, Session};

/// Each member's id and mailbox.
type Members = Arc<Mutex<Vec<(u64, Sender<Bytes>)>>>;

/// Every line a member sends is pushed to every other member's mailbox.
#[derive(Default)]
struct Relay {
    members: Members,
}

struct RelaySession {
    id: u64,
    members: Members,
}

impl Service for Relay {
    type Session = RelaySession;
    fn name(&self) -> &str {
        "relay"
    }
    fn session(&self, conn: &ConnInfo) -> RelaySession {
        RelaySession {
            id: conn.id,
            members: self.members.clone(),
        }
    }
}

impl Session for RelaySession {
    type Event = Bytes;

    fn open(&mut self, cx: &mut Cx<'_, Bytes>) {
        let tx = cx.mailbox().expect("mailbox");
        self.members.lock().unwrap().push((self.id, tx));
        cx.send(b"joined\n");
    }

    fn read(&mut self, input: &[u8], cx: &mut Cx<'_, Bytes>) -> usize {
        let Some(end) = input.iter().rposition(|&b| b == b'\n') else {
            return 0;
        };
        let msg = Bytes::copy_from_slice(&input[..=end]);
        for (id, tx) in self.members.lock().unwrap().iter() {
            if *id != self.id {
                let _ = tx.send(msg.clone(), msg.len());
            }
        }
        cx.send(b"sent\n");
        end + 1
    }

    fn event(&mut self, event: Bytes, cx: &mut Cx<'_, Bytes>) {
        cx.send(&event);
    }
}

#[test]
fn a_silent_member_is_woken_by_another_connection_under_every_concurrent_model() {
    for model in CONCURRENT {
        let srv = start(model, Limits::default(), Relay::default());
        let mut quiet = connect(srv.addr());
        assert_eq!(read_n(&mut quiet, 7), b"joined\n");
        let mut talker = connect(srv.addr());
        assert_eq!(read_n(&mut talker, 7), b"joined\n");
        // `quiet` sends nothing: under threads and pool its thread sleeps in poll(2).
        for i in 0..3 {
            let line = format!("message {i}\n");
            talker.write_all(line.as_bytes()).unwrap();
            assert_eq!(read_n(&mut talker, 5), b"sent\n");
            assert_eq!(read_n(&mut quiet, line.len()), line.as_bytes(), "{model:?}");
        }
    }
}

#[test]
fn a_member_that_never_reads_is_ended_as_a_slow_consumer() {
    for model in CONCURRENT {
        let limits = Limits {
            max_queue: 64 * 1024,
            max_output: 64 * 1024,
            ..Limits::default()
        };
        let srv = start(model, limits, Relay::default());
        let deaf = connect(srv.addr());
        socket2::SockRef::from(&deaf)
            .set_recv_buffer_size(4096)
            .unwrap();
        let mut talker = connect(srv.addr());
        assert_eq!(read_n(&mut talker, 7), b"joined\n");
        let line = vec![b'x'; 16 * 1024 - 1]
            .into_iter()
            .chain([b'\n'])
            .collect::<Vec<_>>();
        // Up to 64 MiB: far more than the kernel's socket buffers (4 MiB at most here),
        // the output limit and the mailbox together.
        for _ in 0..4096 {
            talker.write_all(&line).unwrap();
            assert_eq!(read_n(&mut talker, 5), b"sent\n");
            if srv
                .listening
                .stats
                .slow_consumers
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
            {
                break;
            }
        }
        assert_eq!(
            srv.listening
                .stats
                .slow_consumers
                .load(std::sync::atomic::Ordering::Relaxed),
            1,
            "{model:?}"
        );
        // The talker is unaffected.
        talker.write_all(b"still here\n").unwrap();
        assert_eq!(read_n(&mut talker, 5), b"sent\n");
    }
}

/// Writes `tick` each time its deadline passes, three times.
struct Ticker;
struct TickerSession {
    next: Option<Instant>,
    left: u32,
}

impl Service for Ticker {
    type Session = TickerSession;
    fn name(&self) -> &str {
        "ticker"
    }
    fn session(&self, _conn: &ConnInfo) -> TickerSession {
        TickerSession {
            next: None,
            left: 3,
        }
    }
}

impl Session for TickerSession {
    type Event = ();
    fn open(&mut self, cx: &mut Cx<'_, ()>) {
        self.next = Some(cx.now() + Duration::from_millis(20));
    }
    fn read(&mut self, input: &[u8], _cx: &mut Cx<'_, ()>) -> usize {
        input.len()
    }
    fn deadline(&self) -> Option<Instant> {
        self.next
    }
    fn timeout(&mut self, cx: &mut Cx<'_, ()>) {
        cx.send(b"tick\n");
        self.left -= 1;
        self.next = if self.left > 0 {
            Some(cx.now() + Duration::from_millis(20))
        } else {
            None
        };
        if self.left == 0 {
            cx.close();
        }
    }
}

#[test]
fn a_session_timer_fires_under_every_model() {
    for model in MODELS {
        let srv = start(model, Limits::default(), Ticker);
        let mut c = connect(srv.addr());
        assert_eq!(read_to_end(&mut c), b"tick\ntick\ntick\n", "{model:?}");
    }
}

/// Events pushed to a member in quick succession are coalesced into few writes when
/// `coalesce` is set, and written one by one when it is zero, under every model.
#[test]
fn events_in_quick_succession_share_writes() {
    const EVENTS: usize = 20;
    for model in CONCURRENT {
        let mut writes = Vec::new();
        for window in [Duration::from_millis(200), Duration::ZERO] {
            let relay = Relay::default();
            let members = relay.members.clone();
            let limits = Limits {
                coalesce: window,
                ..Limits::default()
            };
            let srv = start(model, limits, relay);
            let stats = srv.listening.stats.clone();
            let mut member = connect(srv.addr());
            assert_eq!(read_n(&mut member, 7), b"joined\n");
            let tx = members.lock().unwrap()[0].1.clone();
            let line = Bytes::from_static(b"event\n");
            for _ in 0..EVENTS {
                tx.send(line.clone(), line.len()).unwrap();
                // Paced so that each event finds the previous one written unless it
                // was held: the load pattern under test, not a synchronisation.
                std::thread::sleep(Duration::from_millis(2));
            }
            assert_eq!(
                read_n(&mut member, EVENTS * line.len()),
                line.repeat(EVENTS)
            );
            drop(member);
            srv.stop();
            writes.push(stats.writes.load(std::sync::atomic::Ordering::Relaxed));
        }
        let (held, unheld) = (writes[0], writes[1]);
        // joined, the first event at once, the rest together after the window.
        assert!(held <= 4, "{model:?}: {held} writes with coalescing");
        assert!(
            unheld >= EVENTS as u64 / 2,
            "{model:?}: {unheld} writes without"
        );
    }
}
