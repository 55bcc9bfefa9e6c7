//! The WebSocket engine driven through the HTTP engine as clients reach it: the
//! handshake, every close code, fragments, pings, the mailbox; proptests over splits
//! and junk. (The ws module itself cannot name the HTTP engine, which depends on it.)

use super::apps::UPGRADE_ONLY;
use super::{App, HttpOptions, HttpSession, Reply, Request, Route, Ws};
use crate::service::ws::*;
use crate::service::{ConnInfo, Cx, Goodbye, Harness, Service, Session};
use std::sync::Arc;
use std::time::Duration;

/// The RFC 6455 §1.3 sample key and its accept value.
pub(crate) const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub(crate) const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

pub(crate) fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A client frame, masked as RFC 6455 requires (or not, to test the refusal).
pub(crate) fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let m = if masked { 0x80 } else { 0 };
    let mut v = vec![first];
    match payload.len() {
        n if n < 126 => v.push(m | n as u8),
        n if n < 65536 => {
            v.push(m | 126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            v.push(m | 127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        v.extend_from_slice(payload);
    }
    v
}

pub(crate) const TEXT: u8 = 0x81;
pub(crate) const BINARY: u8 = 0x82;
pub(crate) const CLOSE: u8 = 0x88;
pub(crate) const PING: u8 = 0x89;
pub(crate) const PONG: u8 = 0x8a;

/// Server frames (unmasked) as (first byte, payload).
pub(crate) fn frames(mut out: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut v = Vec::new();
    while out.len() >= 2 {
        assert_eq!(out[1] & 0x80, 0, "server frames are not masked");
        let (len, hdr) = match out[1] & 0x7f {
            126 => (u16::from_be_bytes([out[2], out[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(out[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        v.push((out[0], out[hdr..hdr + len].to_vec()));
        out = &out[hdr + len..];
    }
    assert!(out.is_empty(), "trailing partial frame");
    v
}

fn close_code(f: &(u8, Vec<u8>)) -> u16 {
    assert_eq!(f.0, CLOSE, "expected a close frame, got {f:?}");
    u16::from_be_bytes([f.1[0], f.1[1]])
}

fn service(echo: bool, max_message: usize) -> Ws {
    Ws::new(HttpOptions {
        ws: Arc::new(WsOptions {
            echo,
            max_message,
            ..WsOptions::default()
        }),
        ..HttpOptions::default()
    })
}

/// A session past its handshake, with the 101 checked and taken.
fn open(echo: bool, max_message: usize) -> Harness<<Ws as Service>::Session> {
    let mut h = Harness::new(service(echo, max_message).session(&ConnInfo::test(1)));
    h.feed(upgrade_request("/").as_bytes());
    let out = String::from_utf8(h.take_output()).unwrap();
    assert!(
        out.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{out}"
    );
    assert!(
        out.contains(&format!("Sec-WebSocket-Accept: {ACCEPT}\r\n")),
        "{out}"
    );
    assert!(out.ends_with("\r\n\r\n"));
    h
}

fn handshake_status(req: &str) -> String {
    let mut h = Harness::new(service(false, 1 << 20).session(&ConnInfo::test(1)));
    h.feed(req.as_bytes());
    assert!(h.is_closing(), "a refused handshake closes");
    String::from_utf8(h.take_output()).unwrap()
}

#[test]
fn handshake_answers_101_with_the_accept_key() {
    open(false, 1 << 20);
}

#[test]
fn handshake_without_upgrade_is_426_with_version() {
    let out = handshake_status("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 426 "), "{out}");
    assert!(out.contains("Sec-WebSocket-Version: 13\r\n"));
}

#[test]
fn handshake_with_other_version_is_426() {
    let req = upgrade_request("/").replace("Version: 13", "Version: 8");
    let out = handshake_status(&req);
    assert!(out.starts_with("HTTP/1.1 426 "), "{out}");
    assert!(out.contains("Sec-WebSocket-Version: 13\r\n"));
}

#[test]
fn malformed_handshakes_are_400() {
    for req in [
        upgrade_request("/").replace(KEY, "c2hvcnQ="),
        upgrade_request("/").replace("Connection: Upgrade", "Connection: keep-alive"),
        upgrade_request("/").replace("Sec-WebSocket-Version: 13\r\n", ""),
        upgrade_request("/").replace("HTTP/1.1", "HTTP/1.0"),
        upgrade_request("/").replace("Host: x\r\n", ""),
    ] {
        let out = handshake_status(&req);
        assert!(out.starts_with("HTTP/1.1 400 "), "{req:?} -> {out}");
    }
}

#[test]
fn text_and_binary_get_the_seed_reply_in_kind() {
    let mut h = open(false, 1 << 20);
    h.feed(&frame(TEXT, b"hi", true));
    h.feed(&frame(BINARY, &[0, 1, 0xff], true));
    let f = frames(&h.take_output());
    assert_eq!(f[0], (TEXT, b"Server received: hi".to_vec()));
    assert_eq!(f[1], (BINARY, b"Server received: \x00\x01\xff".to_vec()));
    assert!(!h.is_closing());
}

#[test]
fn echo_mode_answers_exactly_the_message() {
    let mut h = open(true, 1 << 20);
    h.feed(&frame(TEXT, "héllo".as_bytes(), true));
    assert_eq!(
        frames(&h.take_output()),
        [(TEXT, "héllo".as_bytes().to_vec())]
    );
}

/// What tungstenite's own writer sends for `msg` from a server.
fn tungstenite_frame(msg: Message) -> Vec<u8> {
    struct Out(Vec<u8>);
    impl std::io::Read for Out {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::WouldBlock.into())
        }
    }
    impl std::io::Write for Out {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut ctx =
        tungstenite::protocol::WebSocketContext::new(tungstenite::protocol::Role::Server, None);
    let mut out = Out(Vec::new());
    ctx.write(&mut out, msg).unwrap();
    ctx.flush(&mut out).unwrap();
    out.0
}

/// Replies are framed into the output directly, not by tungstenite's writer: byte
/// for byte what that writer sends, at each edge of the three length forms, for text
/// and binary, the seed's prefixed reply and the exact echo.
#[test]
fn replies_are_framed_as_tungstenite_frames_them() {
    for exact in [false, true] {
        let mut h = open(exact, 1 << 20);
        for n in [
            0, 1, 108, 109, 125, 126, 127, 65_518, 65_535, 65_536, 70_000,
        ] {
            let text = "é".repeat(n / 2) + &"x".repeat(n % 2);
            let reply = if exact {
                text.clone()
            } else {
                format!("{PREFIX}{text}")
            };
            h.feed(&frame(TEXT, text.as_bytes(), true));
            assert_eq!(
                h.take_output(),
                tungstenite_frame(Message::text(reply)),
                "text {n}"
            );
            let bin: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let reply = if exact {
                bin.clone()
            } else {
                [PREFIX.as_bytes(), &bin].concat()
            };
            h.feed(&frame(BINARY, &bin, true));
            assert_eq!(
                h.take_output(),
                tungstenite_frame(Message::binary(reply)),
                "binary {n}"
            );
        }
    }
}

#[test]
fn ping_gets_pong_with_its_payload() {
    let mut h = open(false, 1 << 20);
    h.feed(&frame(PING, b"abc", true));
    assert_eq!(frames(&h.take_output()), [(PONG, b"abc".to_vec())]);
}

#[test]
fn close_echoes_the_peer_code_then_closes() {
    let mut h = open(false, 1 << 20);
    let mut payload = 4000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    h.feed(&frame(CLOSE, &payload, true));
    let f = frames(&h.take_output());
    assert_eq!(close_code(&f[0]), 4000);
    assert!(h.is_closing());
}

#[test]
fn fragments_with_a_ping_between_make_one_message() {
    let mut h = open(false, 1 << 20);
    h.feed(&frame(0x01, b"frag", true)); // text, not final
    h.feed(&frame(PING, b"p", true));
    h.feed(&frame(0x00, b"men", true)); // continuation, not final
    h.feed(&frame(0x80, b"ted", true)); // continuation, final
    let f = frames(&h.take_output());
    assert_eq!(
        f,
        [
            (PONG, b"p".to_vec()),
            (TEXT, b"Server received: fragmented".to_vec())
        ]
    );
}

#[test]
fn invalid_utf8_across_fragments_is_1007() {
    let mut h = open(false, 1 << 20);
    // "κ" is CE BA; a lone CE followed by an ASCII byte is invalid.
    h.feed(&frame(0x01, b"ok \xce", true));
    h.feed(&frame(0x80, b"(", true));
    let f = frames(&h.take_output());
    assert_eq!(close_code(f.last().unwrap()), 1007);
    assert!(h.is_closing());
}

#[test]
fn valid_utf8_split_across_fragments_is_accepted() {
    let mut h = open(true, 1 << 20);
    h.feed(&frame(0x01, b"\xce", true));
    h.feed(&frame(0x80, b"\xba", true));
    assert_eq!(frames(&h.take_output()), [(TEXT, "κ".as_bytes().to_vec())]);
}

#[test]
fn message_over_the_limit_is_1009() {
    let mut h = open(false, 100);
    h.feed(&frame(TEXT, &[b'a'; 101], true));
    assert_eq!(close_code(&frames(&h.take_output())[0]), 1009);
    assert!(h.is_closing());
    // Fragments adding up past the limit too.
    let mut h = open(false, 100);
    h.feed(&frame(0x02, &[1; 60], true));
    h.feed(&frame(0x80, &[1; 60], true));
    assert_eq!(close_code(&frames(&h.take_output())[0]), 1009);
}

#[test]
fn protocol_errors_are_1002() {
    for bad in [
        frame(TEXT, b"unmasked", false),
        frame(0x83, b"reserved opcode", true),
        frame(0xc1, b"rsv1 set", true),
        frame(0x80, b"continuation first", true),
        frame(0x09, b"fragmented ping", true),
        frame(PING, &[0; 126], true),
    ] {
        let mut h = open(false, 1 << 20);
        h.feed(&bad);
        let f = frames(&h.take_output());
        assert_eq!(close_code(&f[0]), 1002, "{bad:02x?}");
        assert!(h.is_closing());
    }
}

#[test]
fn busy_finishes_the_handshake_then_closes_1013() {
    let mut h = Harness::new(service(false, 1 << 20).session(&ConnInfo::test(1)));
    h.goodbye(Goodbye::Busy);
    assert!(!h.is_closing(), "waits for the handshake");
    h.feed(upgrade_request("/").as_bytes());
    let out = h.take_output();
    let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(out.starts_with(b"HTTP/1.1 101 "));
    assert_eq!(close_code(&frames(&out[end..])[0]), 1013);
    assert!(h.is_closing());
}

#[test]
fn shutdown_is_1001_and_waits_for_the_reply() {
    let mut h = open(false, 1 << 20);
    h.goodbye(Goodbye::Shutdown);
    assert_eq!(close_code(&frames(&h.take_output())[0]), 1001);
    assert!(!h.is_closing(), "the close handshake is finished first");
    h.feed(&frame(CLOSE, &1001u16.to_be_bytes(), true));
    assert!(h.is_closing());
}

#[test]
fn slow_consumer_is_1008_and_idle_1001() {
    let mut h = open(false, 1 << 20);
    h.goodbye(Goodbye::SlowConsumer);
    assert_eq!(close_code(&frames(&h.take_output())[0]), 1008);
    assert!(h.is_closing());
    let mut h = open(false, 1 << 20);
    h.goodbye(Goodbye::Idle);
    assert_eq!(close_code(&frames(&h.take_output())[0]), 1001);
    assert!(h.is_closing());
}

#[test]
fn silent_clients_are_pinged_then_closed() {
    let opts = WsOptions::default();
    let mut h = open(false, 1 << 20);
    let t0 = h.now;
    h.advance_to(t0 + opts.ping_interval - Duration::from_millis(1));
    assert!(h.take_output().is_empty());
    h.advance_to(t0 + opts.ping_interval);
    assert_eq!(frames(&h.take_output()), [(PING, vec![])]);
    // A pong (any frame) keeps it open and restarts the clock.
    let t1 = t0 + opts.ping_interval + Duration::from_secs(1);
    h.now = t1;
    h.feed(&frame(PONG, b"", true));
    h.advance_to(t1 + opts.ping_interval);
    assert_eq!(frames(&h.take_output()), [(PING, vec![])]);
    assert!(!h.is_closing());
    h.advance_to(t1 + opts.ping_interval + opts.ping_timeout);
    assert_eq!(close_code(&frames(&h.take_output())[0]), 1001);
    assert!(h.is_closing());
}

/// A client that leaves our frames unread past the output limit: the server stops
/// reading, so the pong it may have sent waits in the socket; the ping's timeout
/// does not close it then, and its pong counts once it reads again.
#[test]
fn a_pong_waiting_behind_unread_frames_is_not_timed_out() {
    let opts = WsOptions::default();
    let limits = crate::base::Limits {
        coalesce: Duration::ZERO,
        max_output: 64,
        ..crate::base::Limits::default()
    };
    let mut h = Harness::with_limits(service(false, 1 << 20).session(&ConnInfo::test(1)), limits);
    h.feed(upgrade_request("/").as_bytes());
    assert!(String::from_utf8(h.take_output())
        .unwrap()
        .starts_with("HTTP/1.1 101"));
    let t0 = h.now;
    h.feed(&frame(TEXT, &[b'x'; 100], true));
    assert!(!h.is_reading(), "the answer, unread, passes the 64 bytes");
    h.advance_to(t0 + opts.ping_interval);
    h.advance_to(t0 + opts.ping_interval + opts.ping_timeout);
    h.advance_to(t0 + opts.ping_interval + 2 * opts.ping_timeout);
    assert!(!h.is_closing());
    let f = frames(&h.take_output());
    assert_eq!(f.len(), 2, "the answer and one ping: {f:?}");
    assert_eq!(f[1], (PING, vec![]));
    assert!(h.is_reading());
    h.feed(&frame(PONG, b"", true));
    h.advance_to(h.now + opts.ping_timeout);
    assert!(!h.is_closing());
}

/// A message does not move the silence check (moving it reset the connection's timer
/// on every message): the check stays where it was, and when it comes for a client
/// heard since, it moves to a ping interval after that client last spoke, where the
/// ping then goes out.
#[test]
fn messages_leave_the_silence_check_armed_and_the_ping_follows_the_last_one() {
    let opts = WsOptions::default();
    let mut h = open(true, 1 << 20);
    let t0 = h.now;
    let first = h.session().deadline();
    assert_eq!(first, Some(t0 + opts.ping_interval));
    let t1 = t0 + opts.ping_interval / 2;
    h.now = t1;
    h.feed(&frame(TEXT, b"hi", true));
    assert_eq!(frames(&h.take_output()), [(TEXT, b"hi".to_vec())]);
    assert_eq!(h.session().deadline(), first, "the timer stays as armed");
    h.advance_to(t0 + opts.ping_interval);
    assert!(h.take_output().is_empty(), "heard since: no ping yet");
    assert_eq!(h.session().deadline(), Some(t1 + opts.ping_interval));
    h.advance_to(t1 + opts.ping_interval - Duration::from_millis(1));
    assert!(h.take_output().is_empty());
    h.advance_to(t1 + opts.ping_interval);
    assert_eq!(frames(&h.take_output()), [(PING, vec![])]);
}

/// A handler woken by its mailbox, as the chat's will be: events pushed by
/// another connection arrive as text frames.
struct Notified {
    registry: Arc<std::sync::Mutex<Option<crate::base::mailbox::Sender<String>>>>,
}

impl Handler for Notified {
    type Event = String;
    fn open(&mut self, ws: &mut WsCx<'_, '_, '_, String>) {
        let tx = ws.cx().mailbox().expect("mailbox");
        *self.registry.lock().unwrap() = Some(tx);
    }
    fn message(&mut self, _msg: Message, _ws: &mut WsCx<'_, '_, '_, String>) {}
    fn event(&mut self, ev: String, ws: &mut WsCx<'_, '_, '_, String>) {
        ws.send(Message::text(ev));
    }
}

struct NotifyApp(Arc<std::sync::Mutex<Option<crate::base::mailbox::Sender<String>>>>);

impl App for NotifyApp {
    type Ws = Notified;
    fn routes(&self) -> &[Route] {
        UPGRADE_ONLY
    }
    fn handle(&self, _req: &Request<'_>, _cx: &mut Cx<'_, String>) -> Reply<Notified> {
        Reply::Upgrade(Notified {
            registry: self.0.clone(),
        })
    }
}

/// An upgraded [`Notified`] session, and the sender into its mailbox.
fn notified() -> (
    Harness<HttpSession<NotifyApp>>,
    crate::base::mailbox::Sender<String>,
) {
    let registry = Arc::new(std::sync::Mutex::new(None));
    let app = Arc::new(NotifyApp(registry.clone()));
    let mut h = Harness::new(HttpSession::new(app, Arc::default()));
    h.feed(upgrade_request("/chat/ws").as_bytes());
    assert!(h.take_output().starts_with(b"HTTP/1.1 101 "));
    let tx = registry.lock().unwrap().take().expect("registered on open");
    (h, tx)
}

#[test]
fn mailbox_events_reach_an_upgraded_session() {
    let (mut h, tx) = notified();
    tx.send("from elsewhere".to_string(), 14).unwrap();
    h.deliver();
    assert_eq!(
        frames(&h.take_output()),
        [(TEXT, b"from elsewhere".to_vec())]
    );
}

/// Once the server's close is out, events are not sent: no data frame may follow a
/// close (RFC 6455 §5.5.1).
#[test]
fn nothing_follows_the_servers_close() {
    let (mut h, tx) = notified();
    h.goodbye(Goodbye::Shutdown);
    assert_eq!(close_code(&frames(&h.take_output())[0]), 1001);
    assert!(!h.is_closing(), "waits for the client's close");
    tx.send("too late".to_string(), 8).unwrap();
    h.deliver();
    assert_eq!(h.take_output(), b"", "an event after the close is dropped");
}

fn run_split(bytes: &[u8], cuts: &[usize]) -> (Vec<u8>, bool) {
    let mut h = Harness::new(service(false, 1000).session(&ConnInfo::test(1)));
    let mut last = 0;
    for &c in cuts {
        h.feed(&bytes[last..c]);
        last = c;
    }
    h.feed(&bytes[last..]);
    (h.take_output(), h.is_closing())
}

fn conversation() -> Vec<u8> {
    let mut b = upgrade_request("/").into_bytes();
    b.extend(frame(TEXT, b"one", true));
    b.extend(frame(0x02, b"two-", true));
    b.extend(frame(PING, b"x", true));
    b.extend(frame(0x80, b"parts", true));
    b.extend(frame(TEXT, &[b'z'; 300], true));
    b.extend(frame(CLOSE, &1000u16.to_be_bytes(), true));
    b
}

proptest::proptest! {
    #[test]
    fn any_split_gives_the_same_replies(mut cuts in proptest::collection::vec(0usize..10_000, 0..12)) {
        let bytes = conversation();
        let whole = run_split(&bytes, &[]);
        cuts.iter_mut().for_each(|c| *c %= bytes.len() + 1);
        cuts.sort_unstable();
        proptest::prop_assert_eq!(run_split(&bytes, &cuts), whole);
    }

    #[test]
    fn any_bytes_after_the_handshake_never_panic(junk in proptest::collection::vec(proptest::num::u8::ANY, 0..2000)) {
        let mut h = open(false, 1000);
        h.feed(&junk);
        let out = h.take_output();
        // Whatever came back is well-formed frames.
        frames(&out);
    }
}
