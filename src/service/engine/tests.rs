//! The engine driven on plain values: no socket, no thread, the time set by hand.

use super::*;
use crate::base::mailbox::Sender;
use crate::base::{Budget, CLOSE_REASONS};
use crate::service::ack::AckSession;
use crate::service::greet::GreetSession;
use crate::service::hello::{self, HelloSession};
use crate::service::line_goodbye;

fn listener(limits: Limits) -> Arc<Alone> {
    Arc::new(Alone(Shared {
        name: "test".into(),
        budget: Arc::new(Budget::new(limits.max_buffered)),
        limits: crate::base::Live::new(limits),
        stats: Arc::new(Stats::default()),
    }))
}

fn engine<S: Session>(session: S, limits: Limits, t0: Instant) -> Conn<S, Alone> {
    let mut c = Conn::new(
        session,
        ConnInfo::test(1),
        listener(limits),
        WakeKind::None,
        t0,
    );
    c.open(&Clock::at(t0), false);
    c
}

/// Everything the engine wants written now, taken as sent.
fn sent<S: Session>(c: &mut Conn<S, Alone>) -> Vec<u8> {
    let mut v = Vec::new();
    while let Some(b) = c.poll_transmit() {
        let b = b.to_vec();
        c.handle_sent(b.len());
        v.extend(b);
    }
    v
}

fn at(t: Instant) -> Clock {
    Clock::at(t)
}

/// What the listener's meter holds: answers timed, bytes in, bytes out.
fn metered<S: Session>(c: &Conn<S, Alone>) -> (u64, u64, u64) {
    let m = &c.listener.stats.meter;
    (
        m.latency(meter::Answer::Message).count(),
        m.bytes_in(),
        m.bytes_out(),
    )
}

#[test]
fn answers_and_their_bytes_reach_the_meter_once_their_replies_are_all_sent() {
    let t0 = Instant::now();
    let mut c = engine(AckSession, Limits::default(), t0);
    c.handle_read(b"hello", &at(t0));
    assert_eq!(metered(&c), (0, 0, 0), "read: reported with its answer");
    assert_eq!(sent(&mut c), b"ACK!");
    assert_eq!(metered(&c), (1, 5, 4));

    // Three chunks, three ACKs; reported only when the last byte of them is out.
    c.handle_read(&[b'x'; 2100], &at(t0));
    assert_eq!(c.poll_transmit(), Some(&b"ACK!ACK!ACK!"[..]));
    c.handle_sent(5);
    assert_eq!(metered(&c), (1, 5, 4));
    assert_eq!(sent(&mut c), b"CK!ACK!");
    assert_eq!(metered(&c), (4, 2105, 16));
}

#[test]
fn bytes_with_no_reply_reach_the_meter_at_the_idle_check_and_at_close() {
    let t0 = Instant::now();
    let limits = Limits {
        idle_timeout: 4 * SEC,
        ..Limits::default()
    };
    let mut c = engine(Eat, limits, t0);
    c.handle_read(b"abc", &at(t0));
    assert_eq!(metered(&c), (0, 0, 0));
    c.tick(&at(t0 + SEC));
    assert_eq!(metered(&c), (0, 3, 0), "the first idle check reports them");
    c.handle_read(b"de", &at(t0 + SEC));
    let stats = c.listener.stats.clone();
    drop(c);
    assert_eq!(stats.meter.bytes_in(), 5, "closing reports the rest");
}

#[test]
fn a_long_upload_with_no_reply_reaches_the_meter_every_report_bytes() {
    let t0 = Instant::now();
    let mut c = engine(Eat, Limits::default(), t0);
    let chunk = vec![b'x'; 1000];
    let reads = REPORT_BYTES / 1000;
    for _ in 0..reads {
        c.handle_read(&chunk, &at(t0));
    }
    assert_eq!(metered(&c).1, 0, "{reads} KB: under the threshold");
    c.handle_read(&chunk, &at(t0));
    assert_eq!(metered(&c).1, (reads + 1) * 1000, "past it: all of them");
    assert_eq!(c.unreported, (0, 0));
}

#[test]
fn a_long_send_to_a_slow_reader_reaches_the_meter_every_report_bytes() {
    let t0 = Instant::now();
    let mut c = engine(Eat, Limits::default(), t0);
    c.out = vec![b'y'; 3 * REPORT_BYTES as usize];
    c.handle_sent(1000);
    assert_eq!(metered(&c).2, 0, "a partial send under the threshold waits");
    c.handle_sent(REPORT_BYTES as usize);
    assert_eq!(metered(&c).2, REPORT_BYTES + 1000);
    c.handle_sent(2 * REPORT_BYTES as usize - 1000);
    assert_eq!(metered(&c).2, 3 * REPORT_BYTES, "all sent: the rest");
}

#[test]
fn more_unsent_answers_than_two_bytes_count_are_all_timed() {
    let t0 = Instant::now();
    let mut c = engine(AckSession, Limits::default(), t0);
    c.read_at = meter::ticks();
    c.count_answers(70_000, meter::Answer::Message);
    c.count_answers(70_000, meter::Answer::Message);
    c.report_now(0, 0, true);
    let h = c.listener.stats.meter.latency(meter::Answer::Message);
    assert_eq!(h.count(), 140_000);
}

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

/// Consumes nothing, ever.
struct Hoard;
impl Session for Hoard {
    type Event = ();
    fn read(&mut self, _input: &[u8], _cx: &mut Cx<'_, ()>) -> usize {
        0
    }
}

/// Consumes everything, answers nothing.
struct Eat;
impl Session for Eat {
    type Event = ();
    fn read(&mut self, input: &[u8], _cx: &mut Cx<'_, ()>) -> usize {
        input.len()
    }
}

/// Writes every event it gets; its sender is taken by the test.
#[derive(Default)]
struct Listen {
    tx: Option<Sender<Vec<u8>>>,
}
impl Session for Listen {
    type Event = Vec<u8>;
    fn open(&mut self, cx: &mut Cx<'_, Vec<u8>>) {
        self.tx = Some(cx.mailbox().unwrap());
    }
    fn read(&mut self, input: &[u8], cx: &mut Cx<'_, Vec<u8>>) -> usize {
        cx.send(b"ok\n");
        input.len()
    }
    fn event(&mut self, ev: Vec<u8>, cx: &mut Cx<'_, Vec<u8>>) {
        cx.send(&ev);
    }
    fn goodbye(&mut self, why: Goodbye, cx: &mut Cx<'_, Vec<u8>>) {
        line_goodbye(why, cx);
    }
}

#[test]
fn a_reply_is_written_and_an_eof_ends_with_a_half_close() {
    let t0 = Instant::now();
    let mut c = engine(AckSession, Limits::default(), t0);
    c.handle_read(b"hi", &at(t0));
    assert_eq!(sent(&mut c), b"ACK!");
    assert!(!c.poll_shutdown_write());
    c.handle_eof(&at(t0));
    assert_eq!(c.phase(), Phase::Closing);
    assert!(c.poll_shutdown_write());
    c.handle_shut_write(&at(t0));
    assert_eq!(c.phase(), Phase::Done, "the client's EOF came already");
    assert_eq!(c.reason, Reason::PeerClosed);
}

#[test]
fn a_session_that_closes_first_lingers_for_the_clients_eof() {
    let t0 = Instant::now();
    let mut c = engine(HelloSession, Limits::default(), t0);
    c.handle_read(b"hi", &at(t0));
    assert_eq!(sent(&mut c), hello::REPLY);
    assert!(c.poll_shutdown_write());
    c.handle_shut_write(&at(t0));
    assert_eq!(c.phase(), Phase::Lingering);
    assert!(
        c.wants_read(),
        "a lingering connection reads to find the EOF"
    );
    assert_eq!(c.next_deadline(), t0 + LINGER);
    c.handle_read(b"late bytes are read and dropped", &at(t0));
    assert!(c.poll_transmit().is_none());
    c.tick(&at(t0 + LINGER - MS));
    assert_eq!(c.phase(), Phase::Lingering);
    c.tick(&at(t0 + LINGER));
    assert_eq!(c.phase(), Phase::Done);

    let mut c = engine(HelloSession, Limits::default(), t0);
    c.handle_read(b"hi", &at(t0));
    sent(&mut c);
    c.handle_shut_write(&at(t0));
    c.handle_eof(&at(t0 + MS));
    assert_eq!(c.phase(), Phase::Done, "the EOF ends the lingering at once");
}

#[test]
fn input_a_session_never_consumes_is_closed_at_the_input_limit() {
    let t0 = Instant::now();
    let limits = Limits {
        max_input: 1024,
        ..Limits::default()
    };
    let mut c = engine(Hoard, limits, t0);
    c.handle_read(&[b'x'; 1000], &at(t0));
    assert_eq!(c.read_room(), 24, "what the limit leaves");
    assert_eq!(c.phase(), Phase::Open);
    c.handle_read(&[b'x'; 24], &at(t0));
    assert_eq!(c.phase(), Phase::Done);
    assert_eq!(c.reason, Reason::InputLimit);
}

#[test]
fn replies_past_max_output_stop_reading_until_sent() {
    let t0 = Instant::now();
    let limits = Limits {
        max_output: 8,
        ..Limits::default()
    };
    let mut c = engine(AckSession, limits, t0);
    c.handle_read(b"a", &at(t0));
    assert!(c.wants_read());
    c.handle_read(b"b", &at(t0));
    assert!(!c.wants_read(), "8 bytes unsent: the client is not reading");
    c.handle_sent(4);
    assert!(c.wants_read());
    assert_eq!(sent(&mut c), b"ACK!");
}

#[test]
fn a_stalled_write_drops_the_client_after_the_write_timeout() {
    let t0 = Instant::now();
    let limits = Limits {
        write_timeout: 3 * SEC,
        ..Limits::default()
    };
    let mut c = engine(AckSession, limits, t0);
    c.handle_read(b"a", &at(t0));
    c.handle_send_blocked(&at(t0 + SEC));
    c.handle_send_blocked(&at(t0 + 2 * SEC));
    assert_eq!(
        c.precise_deadline(),
        Some(t0 + 4 * SEC),
        "from the first stall"
    );
    c.tick(&at(t0 + 4 * SEC - MS));
    assert_eq!(c.phase(), Phase::Open);
    c.tick(&at(t0 + 4 * SEC));
    assert_eq!(c.phase(), Phase::Done);
    assert_eq!(c.reason, Reason::SlowReader);
    assert_eq!(c.listener().stats.slow_readers.load(Ordering::Relaxed), 1);

    // Progress resets the stall.
    let mut c = engine(AckSession, Limits::default(), t0);
    c.handle_read(b"a", &at(t0));
    c.handle_send_blocked(&at(t0));
    c.handle_sent(2);
    assert_eq!(c.precise_deadline(), None);
}

#[test]
fn a_quiet_connection_is_told_after_four_quiet_quarters() {
    let t0 = Instant::now();
    let limits = Limits {
        idle_timeout: 4 * SEC,
        ..Limits::default()
    };
    let mut c = engine(AckSession, limits, t0);
    assert_eq!(c.next_deadline(), t0 + SEC);
    c.handle_read(b"a", &at(t0 + MS));
    sent(&mut c);
    // The first check sees that activity; four quiet ones after it end the client.
    for q in 1..=4 {
        c.tick(&at(t0 + q * SEC));
        assert!(sent(&mut c).is_empty(), "quarter {q}");
    }
    c.tick(&at(t0 + 5 * SEC));
    assert_eq!(sent(&mut c), b"ERR idle timeout\n");
    assert_eq!(c.reason, Reason::Idle);
    assert_eq!(c.listener().stats.idle_timeouts.load(Ordering::Relaxed), 1);
}

#[test]
fn events_written_less_than_the_window_ago_are_held_until_it_ends() {
    let t0 = Instant::now();
    let limits = Limits {
        coalesce: 5 * MS,
        ..Limits::default()
    };
    let mut c = engine(Listen::default(), limits, t0);
    let tx = c.session.tx.clone().unwrap();
    tx.send(b"one\n".to_vec(), 4).unwrap();
    c.on_mail(&at(t0));
    assert_eq!(sent(&mut c), b"one\n", "a lone event goes at once");
    tx.send(b"two\n".to_vec(), 4).unwrap();
    c.on_mail(&at(t0 + MS));
    assert!(c.poll_transmit().is_none(), "held within the window");
    assert_eq!(c.precise_deadline(), Some(t0 + 5 * MS));
    tx.send(b"three\n".to_vec(), 6).unwrap();
    c.on_mail(&at(t0 + 2 * MS));
    c.tick(&at(t0 + 5 * MS));
    assert_eq!(sent(&mut c), b"two\nthree\n", "one write for both");

    // A reply to the client's own input is never held, and takes held events along.
    tx.send(b"four\n".to_vec(), 5).unwrap();
    c.on_mail(&at(t0 + 6 * MS));
    assert!(c.poll_transmit().is_none());
    c.handle_read(b"x", &at(t0 + 6 * MS));
    assert_eq!(sent(&mut c), b"four\nok\n");
}

#[test]
fn a_mailbox_overflow_ends_a_slow_consumer() {
    let t0 = Instant::now();
    let limits = Limits {
        max_queue: 10,
        ..Limits::default()
    };
    let mut c = engine(Listen::default(), limits, t0);
    let tx = c.session.tx.clone().unwrap();
    tx.send(b"12345678".to_vec(), 8).unwrap();
    assert!(tx.send(b"12345678".to_vec(), 8).is_err());
    assert!(c.mail_waiting());
    c.on_mail(&at(t0));
    assert_eq!(sent(&mut c), b"ERR slow-consumer\n");
    assert_eq!(c.reason, Reason::SlowConsumer);
    assert_eq!(c.listener().stats.slow_consumers.load(Ordering::Relaxed), 1);
}

#[test]
fn a_drain_answers_what_was_read_then_says_goodbye() {
    let t0 = Instant::now();
    let mut c = engine(AckSession, Limits::default(), t0);
    c.begin_drain();
    assert!(c.is_draining());
    c.handle_read(b"last words", &at(t0));
    c.shutdown_goodbye(&at(t0));
    assert_eq!(sent(&mut c), b"ACK!ERR server shutting down\n");
    assert!(c.poll_shutdown_write());
    assert_eq!(c.reason, Reason::Shutdown);
}

#[test]
fn a_refused_connection_hears_only_that_the_server_is_busy() {
    let t0 = Instant::now();
    let mut c = Conn::new(
        GreetSession,
        ConnInfo::test(1),
        listener(Limits::default()),
        WakeKind::None,
        t0,
    );
    c.open(&at(t0), true);
    assert_eq!(sent(&mut c), b"ERR server busy\n");
    assert_eq!(c.reason, Reason::Busy);
}

#[test]
fn a_quiet_connection_its_session_keeps_asks_for_keepalive_once() {
    /// Keeps quiet connections.
    struct Patient;
    impl Session for Patient {
        type Event = ();
        fn read(&mut self, input: &[u8], _cx: &mut Cx<'_, ()>) -> usize {
            input.len()
        }
        fn idle_ok(&self) -> bool {
            true
        }
    }
    let t0 = Instant::now();
    let limits = Limits {
        idle_timeout: 4 * SEC,
        ..Limits::default()
    };
    let mut c = engine(Patient, limits, t0);
    for q in 1..=4 {
        assert_eq!(c.poll_keepalive(), None);
        c.tick(&at(t0 + q * SEC));
    }
    assert_eq!(c.poll_keepalive(), Some(4 * SEC));
    assert_eq!(c.poll_keepalive(), None, "once");
    assert_eq!(c.phase(), Phase::Open);
}

#[test]
fn close_reason_names_follow_the_reasons_they_count() {
    let named = [
        (Reason::Open, "open"),
        (Reason::PeerClosed, "eof"),
        (Reason::Done, "done"),
        (Reason::Busy, "busy"),
        (Reason::Idle, "idle"),
        (Reason::Shutdown, "shutdown"),
        (Reason::SlowReader, "slow_reader"),
        (Reason::SlowConsumer, "slow_consumer"),
        (Reason::InputLimit, "input_limit"),
        (Reason::OverBudget, "over_budget"),
        (Reason::Error, "error"),
    ];
    assert_eq!(named.len(), CLOSE_REASONS.len());
    for (reason, name) in named {
        assert_eq!(CLOSE_REASONS[reason as usize], name, "{reason:?}");
    }
}
