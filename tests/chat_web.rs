//! The chat on the http service over real sockets, under threads, pool and async: TCP
//! and WebSocket members of one room, `after` replay, bad JSON, a slow WebSocket
//! member, and notifications with every status they can get.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

use multiclient::model::{Limits, Model};
use multiclient::serve::ServiceOptions;
use multiclient::service::chat::web::{ApiKey, WebOptions};
use multiclient::service::chat::ChatOptions;

mod common;
use common::chat::{Member as Tcp, Running};
use common::redis::RedisServer;

/// A safety net only: a test that waits this long has already failed.
const TIMEOUT: Duration = Duration::from_secs(20);
const KEY: &str = "test-key-0123456789";

/// The http and chat services of one process, sharing its hub, as `serve` runs them.
fn start_with(model: Model, limits: Limits, key: Option<&str>) -> Running {
    start_chat(model, limits, key, ChatOptions::default())
}

/// [`start_with`] with chat options of the test's own (`--max-rate`, `--redis`).
fn start_chat(model: Model, limits: Limits, key: Option<&str>, chat: ChatOptions) -> Running {
    let opts = ServiceOptions {
        chat,
        web: WebOptions {
            api_key: key.and_then(ApiKey::new),
        }
        .into(),
        ..ServiceOptions::default()
    };
    Running::start(model, limits, &opts)
}

fn start(model: Model) -> Running {
    start_with(model, Limits::default(), Some(KEY))
}

/// A WebSocket member speaking JSON.
struct Web {
    ws: WebSocket<TcpStream>,
    nick: String,
}

impl Web {
    fn connect(addr: SocketAddr, nick: &str) -> Web {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let (ws, resp) = tungstenite::client(format!("ws://{addr}/chat/ws"), s).unwrap();
        assert_eq!(resp.status(), 101);
        let mut c = Web {
            ws,
            nick: nick.into(),
        };
        let w = c.next();
        assert_eq!(w["type"], "welcome", "{w}");
        assert!(w["nick"].as_str().unwrap().starts_with("guest-"));
        c.send(json!({"type": "nick", "nick": nick}));
        c.expect(json!({"type": "ok", "cmd": "nick", "nick": nick}));
        c
    }

    fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).unwrap();
    }

    fn next(&mut self) -> Value {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    return without_time(serde_json::from_str(&t).expect("JSON"))
                }
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(m) => panic!("{}: unexpected {m:?}", self.nick),
                Err(e) => panic!("{}: no message within {TIMEOUT:?}: {e}", self.nick),
            }
        }
    }

    fn expect(&mut self, want: Value) {
        assert_eq!(self.next(), want, "{}", self.nick);
    }

    fn join(&mut self, room: &str) {
        self.send(json!({"type": "join", "room": room}));
        self.expect(json!({"type": "ok", "cmd": "join", "room": room}));
    }

    /// Says `text`; returns the id of its `msg` as echoed back.
    fn say(&mut self, room: &str, text: &str) -> String {
        self.send(json!({"type": "say", "room": room, "text": text}));
        let m = self.next();
        assert_eq!(m["type"], "msg", "{m}");
        assert_eq!(m["nick"], self.nick.as_str());
        assert_eq!(m["text"], text);
        m["id"].as_str().unwrap().to_string()
    }
}

/// `v` without the `time` of a `msg`, once that time is checked: every message, live
/// or replayed from history (in memory or from Redis), carries when it was said, in
/// Unix milliseconds, within the last minute of this test.
fn without_time(mut v: Value) -> Value {
    if v["type"] == "msg" {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let t = v["time"]
            .as_u64()
            .unwrap_or_else(|| panic!("a msg without a time: {v}"));
        assert!(
            now - 60_000 <= t && t <= now + 1_000,
            "time {t} is not near {now}"
        );
        v.as_object_mut().unwrap().remove("time");
    }
    v
}

fn msg(room: &str, id: &str, nick: &str, text: &str) -> Value {
    json!({"type": "msg", "room": room, "id": id, "nick": nick, "text": text})
}

fn tcp_and_web_members_see_each_other(model: Model) {
    let srv = start(model);
    let mut tom = Tcp::connect(srv.chat.addr, "tom");
    let mut wes = Web::connect(srv.http.addr, "wes");
    tom.send("JOIN lobby");
    tom.expect("OK JOIN lobby");
    wes.join("lobby");
    tom.expect("JOIN lobby wes");
    let id = wes.say("lobby", "hello \"tom\" é");
    tom.expect(&format!("MSG lobby {id} wes hello \"tom\" é"));
    tom.send("SAY lobby hi wes");
    let l = tom.line();
    let tid = l.split(' ').nth(2).unwrap().to_string();
    assert_eq!(l, format!("MSG lobby {tid} tom hi wes"));
    wes.expect(msg("lobby", &tid, "tom", "hi wes"));
    wes.send(json!({"type": "who", "room": "lobby"}));
    wes.expect(json!({"type": "who", "room": "lobby", "nicks": ["tom", "wes"]}));
    wes.send(json!({"type": "history", "room": "lobby", "n": 2}));
    wes.expect(msg("lobby", &id, "wes", "hello \"tom\" é"));
    wes.expect(msg("lobby", &tid, "tom", "hi wes"));
    wes.expect(json!({"type": "ok", "cmd": "history", "room": "lobby"}));
    // Nick changes, parts and joins cross the two wire formats.
    tom.send("NICK tommy");
    tom.expect("OK NICK tommy");
    wes.expect(json!({"type": "nick", "room": "lobby", "old": "tom", "new": "tommy"}));
    wes.send(json!({"type": "nick", "nick": "wesley"}));
    wes.expect(json!({"type": "ok", "cmd": "nick", "nick": "wesley"}));
    tom.expect("NICK lobby wes wesley");
    wes.send(json!({"type": "part", "room": "lobby"}));
    wes.expect(json!({"type": "ok", "cmd": "part", "room": "lobby"}));
    tom.expect("PART lobby wesley");
    wes.join("lobby");
    tom.expect("JOIN lobby wesley");
    tom.send("PART lobby");
    tom.expect("OK PART lobby");
    wes.expect(json!({"type": "part", "room": "lobby", "nick": "tommy"}));
    tom.send("JOIN lobby");
    tom.expect("OK JOIN lobby");
    wes.expect(json!({"type": "join", "room": "lobby", "nick": "tommy"}));
    // A WebSocket member that goes away parts, like a TCP one; quit says ok first.
    wes.send(json!({"type": "quit"}));
    wes.expect(json!({"type": "ok", "cmd": "quit"}));
    match wes.ws.read() {
        Ok(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1000),
        other => panic!("expected close 1000, got {other:?}"),
    }
    tom.expect("PART lobby wesley");
    let mut w2 = Web::connect(srv.http.addr, "w2");
    w2.join("lobby");
    tom.expect("JOIN lobby w2");
    drop(w2);
    tom.expect("PART lobby w2");
}

/// `tom` on the line protocol and `wes` on the WebSocket, both in room `r`.
fn tom_and_wes(srv: &Running) -> (Tcp, Web) {
    let mut tom = Tcp::connect(srv.chat.addr, "tom");
    tom.send("JOIN r");
    tom.expect("OK JOIN r");
    let mut wes = Web::connect(srv.http.addr, "wes");
    wes.join("r");
    tom.expect("JOIN r wes");
    (tom, wes)
}

fn after_replays_what_was_missed(model: Model) {
    let srv = start(model);
    let (mut tom, mut wes) = tom_and_wes(&srv);
    let mut ids = Vec::new();
    for i in 0..3 {
        tom.send(&format!("SAY r m{i}"));
        let l = tom.line();
        ids.push(l.split(' ').nth(2).unwrap().to_string());
        wes.expect(msg("r", &ids[i], "tom", &format!("m{i}")));
    }
    drop(wes);
    tom.expect("PART r wes");
    for i in 3..6 {
        tom.send(&format!("SAY r m{i}"));
        let l = tom.line();
        ids.push(l.split(' ').nth(2).unwrap().to_string());
    }
    // Back, from the last message seen: exactly what was missed, then live.
    let mut wes = Web::connect(srv.http.addr, "wes");
    wes.send(json!({"type": "join", "room": "r", "after": ids[2]}));
    wes.expect(json!({"type": "ok", "cmd": "join", "room": "r"}));
    for (i, id) in ids.iter().enumerate().skip(3) {
        wes.expect(msg("r", id, "tom", &format!("m{i}")));
    }
    tom.expect("JOIN r wes");
    tom.send("SAY r live");
    let l = tom.line();
    let live = l.split(' ').nth(2).unwrap().to_string();
    wes.expect(msg("r", &live, "tom", "live"));
    // A bad id is refused, and the member is not joined twice.
    wes.send(json!({"type": "join", "room": "r", "after": "nope"}));
    assert_eq!(wes.next()["code"], "bad-args");
    wes.send(json!({"type": "join", "room": "r"}));
    assert_eq!(wes.next()["code"], "already-member");
}

fn bad_json_gets_an_error_and_harms_no_one(model: Model) {
    let srv = start(model);
    let (mut tom, mut wes) = tom_and_wes(&srv);
    let cases: &[(&str, &str)] = &[
        ("not json", "bad-json"),
        ("{\"type\":\"say\"", "bad-json"),
        ("[1,2]", "bad-json"),
        ("{\"type\":\"dance\"}", "unknown-command"),
        ("{\"type\":\"say\",\"room\":\"r\"}", "bad-args"),
        ("{\"type\":\"say\",\"room\":5,\"text\":\"x\"}", "bad-args"),
        ("{\"type\":\"join\",\"room\":\"no spaces\"}", "bad-name"),
        (
            "{\"type\":\"say\",\"room\":\"other\",\"text\":\"x\"}",
            "not-member",
        ),
        (
            "{\"type\":\"say\",\"room\":\"r\",\"text\":\"two\\nlines\"}",
            "bad-text",
        ),
        ("{\"type\":\"nick\",\"nick\":\"tom\"}", "nick-taken"),
        ("{\"type\":\"nick\",\"nick\":\"server\"}", "nick-taken"),
    ];
    for (frame, code) in cases {
        wes.ws.send(Message::text(*frame)).unwrap();
        let e = wes.next();
        assert_eq!(e["type"], "error", "{frame} -> {e}");
        assert_eq!(e["code"], *code, "{frame} -> {e}");
        assert!(!e["text"].as_str().unwrap().is_empty());
    }
    let long = "x".repeat(multiclient::service::chat::DEFAULT_MAX_LINE + 1);
    wes.send(json!({"type": "say", "room": "r", "text": long}));
    assert_eq!(wes.next()["code"], "text-too-long");
    wes.ws.send(Message::binary(b"{}".to_vec())).unwrap();
    assert_eq!(wes.next()["code"], "bad-json");
    // Still a member, still usable; the other member saw nothing of it.
    let id = wes.say("r", "still here");
    tom.expect(&format!("MSG r {id} wes still here"));
}

/// A WebSocket member that never reads is closed 1008 and counted, and the TCP member
/// that floods the room keeps its connection.
fn slow_web_member_is_closed_1008(model: Model) {
    let limits = Limits {
        max_queue: 64 * 1024,
        ..Limits::default()
    };
    let srv = start_with(model, limits, None);
    let mut tom = Tcp::connect(srv.chat.addr, "tom");
    tom.send("JOIN r");
    tom.expect("OK JOIN r");
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(16 * 1024).unwrap();
    s.connect(&srv.http.addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let (ws, _) = tungstenite::client(format!("ws://{}/chat/ws", srv.http.addr), s).unwrap();
    let mut slow = Web {
        ws,
        nick: "slow".into(),
    };
    assert_eq!(slow.next()["type"], "welcome");
    slow.join("r");
    assert!(tom.line().starts_with("JOIN r guest-"));
    // Tom reads his own MSG lines back every 16 messages, so that only the slow
    // member falls behind.
    let text = "y".repeat(1000);
    let deadline = Instant::now() + TIMEOUT;
    let (mut sent, mut parted) = (0, false);
    while srv.http.stats.slow_consumers.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline && sent < 100_000,
            "no slow consumer after {sent} messages"
        );
        for _ in 0..16 {
            tom.send(&format!("SAY r {text}"));
        }
        sent += 16;
        let mut echoed = 0;
        while echoed < 16 {
            let l = tom.line();
            if l.starts_with("MSG r ") {
                echoed += 1;
            } else {
                assert!(l.starts_with("PART r guest-"), "{l}");
                parted = true;
            }
        }
    }
    // The slow member's stream ends with a close 1008, after what it had queued.
    let code = loop {
        match slow.ws.read() {
            Ok(Message::Close(Some(f))) => break u16::from(f.code),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(code, 1008);
    if !parted {
        assert!(tom.line().starts_with("PART r guest-"));
    }
    tom.send("WHO r");
    tom.expect("WHO r tom");
}

fn close_code(ws: &mut WebSocket<TcpStream>) -> u16 {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return u16::from(f.code),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

/// At `--max-conns` a chat WebSocket is closed 1013 after its handshake; on shutdown
/// a member is closed 1001.
fn busy_is_1013_and_shutdown_1001(model: Model) {
    let limits = Limits {
        max_conns: 1,
        ..Limits::default()
    };
    let mut srv = start_with(model, limits, None);
    let mut wes = Web::connect(srv.http.addr, "wes");
    wes.join("r");
    let s = TcpStream::connect(srv.http.addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let (mut refused, resp) =
        tungstenite::client(format!("ws://{}/chat/ws", srv.http.addr), s).unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(close_code(&mut refused), 1013);
    // The member in the room is untouched by the refusal.
    let id = wes.say("r", "still served");
    assert!(!id.is_empty());
    let server = srv.server.take().unwrap();
    server.drain().start();
    assert_eq!(close_code(&mut wes.ws), 1001);
    drop(wes);
    assert_eq!(server.wait(), 0, "nobody was cut off");
}

/// How many `SAY`s each client pipelines before a shutdown.
const SAYS_AT_SHUTDOWN: usize = 100;

/// Sends `join`, [`SAYS_AT_SHUTDOWN`] `say`s and `who` for `room` in one write: frames
/// written one by one could wait in the client's own kernel (Nagle) when the shutdown
/// begins, never sent.
fn web_pipeline(w: &mut Web, room: &str) {
    let mut frames = vec![json!({"type": "join", "room": room})];
    frames.extend(
        (0..SAYS_AT_SHUTDOWN)
            .map(|k| json!({"type": "say", "room": room, "text": format!("m{k}")})),
    );
    frames.push(json!({"type": "who", "room": room}));
    for f in frames {
        w.ws.write(Message::text(f.to_string())).unwrap();
    }
    w.ws.flush().unwrap();
}

/// What [`web_pipeline`] must get after a shutdown: every answer in order, then 1001.
fn web_answered_then_closed(w: &mut Web, room: &str) {
    let mut got = Vec::new();
    let code = loop {
        match w.ws.read() {
            Ok(Message::Text(t)) => got.push(serde_json::from_str::<Value>(&t).unwrap()),
            Ok(Message::Close(Some(f))) => break u16::from(f.code),
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            other => panic!("{}: unexpected {other:?}", w.nick),
        }
    };
    assert_eq!(code, 1001, "{}", w.nick);
    assert_eq!(got.len(), SAYS_AT_SHUTDOWN + 2, "{}: {got:?}", w.nick);
    assert_eq!(got[0], json!({"type": "ok", "cmd": "join", "room": room}));
    for (k, m) in got[1..=SAYS_AT_SHUTDOWN].iter().enumerate() {
        assert_eq!(m["type"], "msg", "{m}");
        assert_eq!(m["text"], format!("m{k}"), "{m}");
    }
    let who = &got[SAYS_AT_SHUTDOWN + 1];
    assert_eq!(who["type"], "who", "{who}");
}

/// The line protocol's [`web_pipeline`], with its check: `tcp`'s answers in order,
/// then the goodbye and the close.
fn line_pipeline(tcp: &mut Tcp, room: &str) {
    let mut batch = format!("JOIN {room}\n");
    for k in 0..SAYS_AT_SHUTDOWN {
        batch.push_str(&format!("SAY {room} m{k}\n"));
    }
    batch.push_str(&format!("WHO {room}\n"));
    tcp.w.write_all(batch.as_bytes()).unwrap();
}

fn line_answered_then_closed(tcp: &mut Tcp, room: &str) {
    let mut rest = String::new();
    tcp.r.read_to_string(&mut rest).unwrap();
    let got: Vec<&str> = rest.lines().collect();
    assert_eq!(got.len(), SAYS_AT_SHUTDOWN + 3, "{}: {got:?}", tcp.nick);
    assert_eq!(got[0], format!("OK JOIN {room}"));
    for (k, l) in got[1..=SAYS_AT_SHUTDOWN].iter().enumerate() {
        let suffix = format!(" {} m{k}", tcp.nick);
        assert!(
            l.starts_with(&format!("MSG {room} ")) && l.ends_with(&suffix),
            "{l}"
        );
    }
    assert_eq!(
        got[SAYS_AT_SHUTDOWN + 1],
        format!("WHO {room} {}", tcp.nick)
    );
    assert_eq!(got[SAYS_AT_SHUTDOWN + 2], "ERR server shutting down");
}

/// `tcps` line clients and `webs` WebSocket members of `srv` that each pipeline a
/// join, [`SAYS_AT_SHUTDOWN`] says and a who (in a room of their own), then the server
/// shuts down: each gets every answer, in order, then the goodbye, and nobody is cut
/// off.
fn shutdown_answers_every_pipelined_command(mut srv: Running, tcps: usize, webs: usize) {
    let mut tcps: Vec<Tcp> = (0..tcps)
        .map(|i| Tcp::connect(srv.chat.addr, &format!("t{i}")))
        .collect();
    let mut webs: Vec<Web> = (0..webs)
        .map(|i| Web::connect(srv.http.addr, &format!("w{i}")))
        .collect();
    for t in tcps.iter_mut() {
        let room = t.nick.clone();
        line_pipeline(t, &room);
    }
    for w in webs.iter_mut() {
        let room = w.nick.clone();
        web_pipeline(w, &room);
    }
    let server = srv.server.take().unwrap();
    server.drain().start();
    for t in tcps.iter_mut() {
        let room = t.nick.clone();
        line_answered_then_closed(t, &room);
    }
    for w in webs.iter_mut() {
        let room = w.nick.clone();
        web_answered_then_closed(w, &room);
    }
    drop((tcps, webs));
    assert_eq!(server.wait(), 0, "nobody was cut off");
}

/// Members that each send a `join`, many `say`s and a `who`, then the server shuts
/// down: every message already sent is answered, in order, then the close is 1001.
fn shutdown_answers_every_message_already_sent(model: Model) {
    shutdown_answers_every_pipelined_command(start(model), 0, 4);
}

/// A raw HTTP exchange: the status and body of the answer.
fn post(addr: SocketAddr, path: &str, auth: Option<&str>, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let out = String::from_utf8_lossy(&out).to_string();
    let status = out[9..12].parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn notifications_have_every_status(model: Model) {
    let srv = start(model);
    let addr = srv.http.addr;
    let path = "/rooms/news/messages";
    let bearer = format!("Bearer {KEY}");
    let mut tom = Tcp::connect(srv.chat.addr, "tom");
    tom.send("JOIN news");
    tom.expect("OK JOIN news");
    let mut wes = Web::connect(addr, "wes");
    wes.join("news");
    tom.expect("JOIN news wes");

    assert_eq!(post(addr, path, Some(&bearer), b"deploy done\n").0, 202);
    let l = tom.line();
    let id = l.split(' ').nth(2).unwrap().to_string();
    assert_eq!(l, format!("MSG news {id} server deploy done"));
    wes.expect(msg("news", &id, "server", "deploy done"));

    assert_eq!(post(addr, path, None, b"x").0, 401);
    assert_eq!(post(addr, path, Some(KEY), b"x").0, 401, "no scheme");
    assert_eq!(post(addr, path, Some(&format!("Basic {KEY}")), b"x").0, 401);
    assert_eq!(post(addr, path, Some("Bearer "), b"x").0, 401);
    assert_eq!(post(addr, path, Some("Bearer wrong-key"), b"x").0, 403);
    assert_eq!(
        post(addr, path, Some(&format!("Bearer {KEY}x")), b"x").0,
        403
    );
    let long = vec![b'x'; multiclient::service::chat::DEFAULT_MAX_LINE + 1];
    assert_eq!(post(addr, path, Some(&bearer), &long).0, 413);
    let huge = vec![b'x'; (1 << 20) + 1];
    assert_eq!(
        post(addr, path, Some(&bearer), &huge).0,
        413,
        "over --max-body"
    );
    assert_eq!(
        post(addr, "/rooms/bad%20name/messages", Some(&bearer), b"x").0,
        400
    );
    assert_eq!(
        post(
            addr,
            &format!("/rooms/{}/messages", "r".repeat(65)),
            Some(&bearer),
            b"x"
        )
        .0,
        400
    );
    assert_eq!(post(addr, path, Some(&bearer), b"").0, 400);
    assert_eq!(post(addr, path, Some(&bearer), b"two\nlines").0, 400);
    assert_eq!(post(addr, path, Some(&bearer), b"\xff\xfe").0, 400);
    let (status, body) = post(addr, "/rooms/empty/messages", Some(&bearer), b"x");
    assert_eq!(
        (status, body.as_str()),
        (404, "no such room: nobody is in it\n")
    );
    // A GET is not a notification.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /rooms/news/messages HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 405 "), "{out}");
    // None of the refused ones was delivered: the next line is the next accepted one.
    assert_eq!(post(addr, path, Some(&bearer), b"second").0, 202);
    assert!(tom.line().ends_with(" server second"));
    assert_eq!(wes.next()["text"], "second");

    // Without a key the endpoint does not exist.
    let off = start_with(model, Limits::default(), None);
    let (status, body) = post(off.http.addr, path, Some(&bearer), b"x");
    assert_eq!(status, 404);
    assert!(body.contains("--api-key"), "{body}");
}

fn page_is_served(model: Model) {
    let srv = start(model);
    for (path, ctype, needle) in [
        ("/chat", "text/html", "<script src=\"/chat/app.js\""),
        ("/chat/app.js", "text/javascript", "/chat/ws"),
        ("/chat/app.css", "text/css", "#log"),
        ("/chat/favicon.svg", "image/svg+xml", "<svg"),
    ] {
        let mut s = TcpStream::connect(srv.http.addr).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200 "), "{path}: {out}");
        assert!(out.contains(&format!("Content-Type: {ctype}")), "{path}");
        assert!(out.contains(needle), "{path}");
    }
}

/// `--max-rate` holds for WebSocket members as for TCP ones: commands beyond it are
/// answered `rate-limited`, have no effect, and the connection stays usable.
fn web_members_are_rate_limited(model: Model) {
    let mut chat = ChatOptions::default();
    chat.max_rate = Some(3);
    let srv = start_chat(model, Limits::default(), None, chat);
    let mut tom = Tcp::connect(srv.chat.addr, "tom");
    tom.send("JOIN r");
    tom.expect("OK JOIN r");
    let mut wes = Web::connect(srv.http.addr, "wes");
    wes.send(json!({"type": "join", "room": "r"}));
    let first = wes.next();
    // The nick and the join took 2 of the 3 tokens, unless some refilled meanwhile.
    assert_eq!(first, json!({"type": "ok", "cmd": "join", "room": "r"}));
    tom.expect("JOIN r wes");
    const N: usize = 20;
    for i in 0..N {
        wes.send(json!({"type": "say", "room": "r", "text": format!("m{i}")}));
    }
    let (mut said, mut limited) = (Vec::new(), 0);
    for _ in 0..N {
        let v = wes.next();
        match v["type"].as_str() {
            Some("msg") => said.push(v["text"].as_str().unwrap().to_string()),
            Some("error") => {
                assert_eq!(
                    v,
                    json!({"type": "error", "code": "rate-limited", "text": "too many commands per second"})
                );
                limited += 1;
            }
            _ => panic!("unexpected {v}"),
        }
    }
    // At 3 a second, 20 commands sent at once cannot all pass (they would need 6 s).
    assert!(
        limited > 0,
        "no rate-limited answer to {N} says at --max-rate 3"
    );
    assert!(!said.is_empty(), "the first tokens let some through");
    // What was refused reached no one: tom gets exactly what wes got, then its own.
    for text in &said {
        let l = tom.line();
        assert!(
            l.starts_with("MSG r ") && l.ends_with(&format!(" wes {text}")),
            "{l}"
        );
    }
    tom.send("SAY r marker");
    let l = tom.line();
    assert!(l.ends_with(" tom marker"), "nothing more from wes: {l}");
}

/// A chat with `--redis`: the http and chat services of one process, and its hub.
fn start_redis(redis: &RedisServer) -> (Running, std::sync::Arc<multiclient::hub::Hub>) {
    let mut chat = ChatOptions::default();
    chat.redis = Some(redis.url());
    let hub = chat.hub().unwrap();
    let srv = start_chat(Model::Threads, Limits::default(), None, chat);
    wait_available(&hub, true);
    (srv, hub)
}

/// Waits (bounded) until the hub's Redis link is up or down.
fn wait_available(hub: &multiclient::hub::Hub, up: bool) {
    let deadline = Instant::now() + TIMEOUT;
    while hub.is_available() != up {
        assert!(Instant::now() < deadline, "redis link never became up={up}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// With `--redis`, where each `SAY` is answered by its message coming back through
/// Redis: at a shutdown, line and WebSocket members that pipelined a `JOIN`, 100
/// `SAY`s and a `WHO` get every answer, in order, then the goodbye.
#[test]
#[ignore = "needs redis-server: .ci/chat.sh installs it and runs this with --ignored"]
fn with_redis_a_shutdown_answers_every_command_already_sent() {
    let redis = RedisServer::start();
    let (srv, _hub) = start_redis(&redis);
    shutdown_answers_every_pipelined_command(srv, 4, 2);
}

/// With `--redis`, a WebSocket member's join is `ok` only once Redis has ordered it,
/// as on the line protocol: while Redis hangs, the join is answered `unavailable`
/// after the answer timeout and undone, never `ok` for a membership that receives
/// nothing.
#[test]
#[ignore = "needs redis-server: .ci/chat.sh installs it and runs this with --ignored"]
fn with_redis_a_web_join_is_ok_only_once_ordered() {
    let redis = RedisServer::start();
    let (srv, hub) = start_redis(&redis);
    let mut wes = Web::connect(srv.http.addr, "wes");
    wes.join("a");
    redis.pause();
    wes.send(json!({"type": "join", "room": "b"}));
    let answer = wes.next();
    assert_eq!(
        answer["type"], "error",
        "a join Redis never ordered: {answer}"
    );
    assert_eq!(answer["code"], "unavailable", "{answer}");
    wes.send(json!({"type": "say", "room": "b", "text": "x"}));
    assert_eq!(
        wes.next()["code"],
        "not-member",
        "the unconfirmed join was undone"
    );
    redis.resume();
    wait_available(&hub, true);
    wes.join("b");
    wes.say("b", "back");
}

/// With `--redis`, members of both wires that join with `after` while messages keep
/// coming get the `ok` first, then every message after the id exactly once, in order.
#[test]
#[ignore = "needs redis-server: .ci/chat.sh installs it and runs this with --ignored"]
fn with_redis_after_has_no_gap_and_no_duplicate_on_both_wires() {
    let redis = RedisServer::start();
    let (srv, _hub) = start_redis(&redis);
    let mut tom = Tcp::connect(srv.chat.addr, "tom");
    tom.send("JOIN r");
    tom.expect("OK JOIN r");
    let say = |tom: &mut Tcp, text: &str| {
        tom.send(&format!("SAY r {text}"));
        loop {
            let l = tom.line();
            if l.starts_with("MSG r ") && l.ends_with(&format!(" tom {text}")) {
                return l.split(' ').nth(2).unwrap().to_string();
            }
        }
    };
    let early: Vec<String> = (0..5).map(|i| say(&mut tom, &format!("m{i}"))).collect();
    const LAST: usize = 40;
    // Messages keep coming while the others join, so replay and live overlap.
    let talker = std::thread::spawn(move || {
        for i in 5..=LAST {
            say(&mut tom, &format!("m{i}"));
        }
        tom
    });
    let mut wes = Web::connect(srv.http.addr, "wes");
    let mut tim = Tcp::connect(srv.chat.addr, "tim");
    wes.send(json!({"type": "join", "room": "r", "after": early[1]}));
    tim.send(&format!("JOIN r AFTER {}", early[1]));
    let want: Vec<String> = (2..=LAST).map(|i| format!("m{i}")).collect();

    assert_eq!(
        wes.next(),
        json!({"type": "ok", "cmd": "join", "room": "r"})
    );
    let mut got = Vec::new();
    while got.last() != want.last() {
        let v = wes.next();
        if v["type"] == "msg" {
            got.push(v["text"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(got, want, "websocket member");

    tim.expect("OK JOIN r");
    let mut got = Vec::new();
    while got.last() != want.last() {
        let l = tim.line();
        if let Some(rest) = l.strip_prefix("MSG r ") {
            got.push(rest.rsplit(' ').next().unwrap().to_string());
        }
    }
    assert_eq!(got, want, "line member");
    talker.join().unwrap();
}

/// A WebSocket member that sends `join`, three `say`s and `quit` in one write gets the
/// `ok`, its three `msg`s in order, then the `ok` of `quit` and close 1000.
fn web_author_gets_every_own_msg_before_quit(addr: SocketAddr) {
    let mut wes = Web::connect(addr, "wes");
    let frames = [
        json!({"type": "join", "room": "q"}),
        json!({"type": "say", "room": "q", "text": "one"}),
        json!({"type": "say", "room": "q", "text": "two"}),
        json!({"type": "say", "room": "q", "text": "three"}),
        json!({"type": "quit"}),
    ];
    for f in frames {
        wes.ws.write(Message::text(f.to_string())).unwrap();
    }
    wes.ws.flush().unwrap();
    wes.expect(json!({"type": "ok", "cmd": "join", "room": "q"}));
    for text in ["one", "two", "three"] {
        let m = wes.next();
        assert_eq!(
            (&m["type"], &m["nick"], &m["text"]),
            (&json!("msg"), &json!("wes"), &json!(text)),
            "{m}"
        );
    }
    wes.expect(json!({"type": "ok", "cmd": "quit"}));
    assert_eq!(close_code(&mut wes.ws), 1000);
}

fn web_say_is_answered_before_quit(model: Model) {
    let srv = start(model);
    web_author_gets_every_own_msg_before_quit(srv.http.addr);
}

macro_rules! under_models {
    ($($name:ident: $model:expr,)*) => {
        mod members_under { use super::*; $(#[test] fn $name() { tcp_and_web_members_see_each_other($model) })* }
        mod after_under { use super::*; $(#[test] fn $name() { after_replays_what_was_missed($model) })* }
        mod bad_json_under { use super::*; $(#[test] fn $name() { bad_json_gets_an_error_and_harms_no_one($model) })* }
        mod slow_under { use super::*; $(#[test] fn $name() { slow_web_member_is_closed_1008($model) })* }
        mod notify_under { use super::*; $(#[test] fn $name() { notifications_have_every_status($model) })* }
        mod goodbye_under { use super::*; $(#[test] fn $name() { busy_is_1013_and_shutdown_1001($model) })* }
        mod page_under { use super::*; $(#[test] fn $name() { page_is_served($model) })* }
        mod rate_under { use super::*; $(#[test] fn $name() { web_members_are_rate_limited($model) })* }
        mod own_msg_under { use super::*; $(#[test] fn $name() { web_say_is_answered_before_quit($model) })* }
        mod shutdown_under { use super::*; $(#[test] fn $name() { shutdown_answers_every_message_already_sent($model) })* }
    };
}

under_models! {
    threads: Model::Threads,
    pool: Model::Pool { workers: 10 },
    async_: Model::Async { workers: 2 },
}

/// With `--redis`, a line client that sends commands and closes its side at once
/// (`printf 'WHO r\nQUIT\n' | ...`) still gets every reply: answers awaited from
/// Redis are not dropped by the EOF.
#[test]
#[ignore = "needs redis-server: .ci/chat.sh installs it and runs this with --ignored"]
fn with_redis_commands_before_eof_are_all_answered() {
    let redis = RedisServer::start();
    let (srv, _hub) = start_redis(&redis);
    let mut tom = Tcp::connect(srv.chat.addr, "tom");
    tom.send("JOIN r");
    tom.expect("OK JOIN r");
    tom.send("WHO r");
    tom.send("HISTORY r 5");
    tom.send("QUIT");
    tom.w.shutdown(std::net::Shutdown::Write).unwrap();
    tom.expect("WHO r tom");
    tom.expect("OK HISTORY r");
    tom.expect("OK QUIT");
    let mut rest = String::new();
    tom.r.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "", "closed after the last reply");
}

/// With `--redis`, a WebSocket member's pipelined `say`s are each answered by its own
/// `msg`, ordered through Redis, before the `ok` of its `quit`.
#[test]
#[ignore = "needs redis-server: .ci/chat.sh installs it and runs this with --ignored"]
fn with_redis_web_say_is_answered_before_quit() {
    let redis = RedisServer::start();
    let (srv, _hub) = start_redis(&redis);
    web_author_gets_every_own_msg_before_quit(srv.http.addr);
}
