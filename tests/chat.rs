//! The chat service over real sockets, under each model that can run it (threads,
//! pool, async; `single` is refused).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use multiclient::model::{Limits, Listening, Model, Server};
use multiclient::serve::{ServiceName, ServiceOptions};
use multiclient::service::chat::ChatOptions;

/// How long a client waits for a line before the test fails.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

struct Running {
    server: Option<Server>,
    l: Listening,
    chat: ChatOptions,
}

impl Running {
    fn addr(&self) -> SocketAddr {
        self.l.addr
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.drain().start();
            s.wait();
        }
    }
}

fn start_with(model: Model, limits: Limits, chat: ChatOptions) -> Running {
    let mut server = Server::new(model, limits).unwrap();
    let opts = ServiceOptions {
        chat: chat.clone(),
        ..ServiceOptions::default()
    };
    let l = ServiceName::Chat
        .listen(&mut server, "127.0.0.1:0".parse().unwrap(), &opts)
        .unwrap();
    Running {
        server: Some(server),
        l,
        chat,
    }
}

fn start(model: Model) -> Running {
    start_with(model, Limits::default(), ChatOptions::default())
}

struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
    nick: String,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        Client::from_stream(TcpStream::connect(addr).unwrap())
    }

    /// A client with a small fixed receive buffer, so what the kernel holds for a
    /// client that does not read stays small and predictable (no autotuning).
    fn connect_small_buffer(addr: SocketAddr) -> Client {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(16 * 1024).unwrap();
        s.connect(&addr.into()).unwrap();
        Client::from_stream(s.into())
    }

    fn from_stream(w: TcpStream) -> Client {
        w.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        let mut c = Client {
            r: BufReader::new(w.try_clone().unwrap()),
            w,
            nick: String::new(),
        };
        let welcome = c.line();
        c.nick = welcome
            .strip_prefix("WELCOME ")
            .unwrap_or_else(|| panic!("expected WELCOME, got {welcome:?}"))
            .to_string();
        c
    }

    fn send(&mut self, line: &str) {
        // One write: a second small one would wait for the first's ACK (Nagle).
        self.w.write_all(format!("{line}\n").as_bytes()).unwrap();
    }

    fn line(&mut self) -> String {
        let mut s = String::new();
        match self.r.read_line(&mut s) {
            Ok(0) => panic!("connection closed"),
            Ok(_) => {}
            Err(e) => panic!("{}: no line within {READ_TIMEOUT:?}: {e}", self.nick),
        }
        assert!(s.ends_with('\n'), "partial line {s:?}");
        s.pop();
        s
    }

    fn expect(&mut self, want: &str) {
        assert_eq!(self.line(), want);
    }

    /// Reads lines until one starts with `prefix`; returns it.
    fn until(&mut self, prefix: &str) -> String {
        loop {
            let l = self.line();
            if l.starts_with(prefix) {
                return l;
            }
        }
    }

    fn nick(&mut self, nick: &str) {
        self.send(&format!("NICK {nick}"));
        self.expect(&format!("OK NICK {nick}"));
        self.nick = nick.to_string();
    }

    fn join(&mut self, room: &str) {
        self.send(&format!("JOIN {room}"));
        self.expect(&format!("OK JOIN {room}"));
    }

    /// Says `text` and returns the id of its MSG as echoed back.
    fn say(&mut self, room: &str, text: &str) -> String {
        self.send(&format!("SAY {room} {text}"));
        let l = self.until(&format!("MSG {room} "));
        let parts: Vec<&str> = l.splitn(5, ' ').collect();
        assert_eq!(parts[3], self.nick);
        assert_eq!(parts[4], text);
        parts[2].to_string()
    }
}

fn msg_id(line: &str) -> &str {
    line.split(' ').nth(2).unwrap()
}

fn conversation(model: Model) {
    let srv = start(model);
    let mut a = Client::connect(srv.addr());
    let mut b = Client::connect(srv.addr());
    assert_ne!(a.nick, b.nick, "guest nicks are unique");
    a.nick("ann");
    b.send("NICK ann");
    assert!(b.line().starts_with("ERR nick-taken "));
    b.nick("bob");
    a.join("lobby");
    b.join("lobby");
    a.expect("JOIN lobby bob");
    let id = a.say("lobby", "hello bob");
    b.expect(&format!("MSG lobby {id} ann hello bob"));
    let id2 = b.say("lobby", "hi ann");
    a.expect(&format!("MSG lobby {id2} bob hi ann"));
    a.send("WHO lobby");
    a.expect("WHO lobby ann bob");
    b.nick("bobby");
    a.expect("NICK lobby bob bobby");
    a.send("HISTORY lobby 1");
    a.expect(&format!("MSG lobby {id2} bob hi ann"));
    a.expect("OK HISTORY lobby");
    b.send("HISTORY lobby 100");
    b.expect(&format!("MSG lobby {id} ann hello bob"));
    b.expect(&format!("MSG lobby {id2} bob hi ann"));
    b.expect("OK HISTORY lobby");
    b.send("PART lobby");
    b.expect("OK PART lobby");
    a.expect("PART lobby bobby");
    b.join("lobby");
    a.expect("JOIN lobby bobby");
    b.send("QUIT");
    b.expect("OK QUIT");
    let mut rest = String::new();
    b.r.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "", "closed after OK QUIT");
    a.expect("PART lobby bobby");
    // A disconnect without QUIT is a PART too.
    let mut c = Client::connect(srv.addr());
    c.join("lobby");
    a.expect(&format!("JOIN lobby {}", c.nick));
    let cn = c.nick.clone();
    drop(c);
    a.expect(&format!("PART lobby {cn}"));
    a.send("WHO lobby");
    a.expect("WHO lobby ann");
}

fn join_after_has_no_gap_or_duplicate(model: Model) {
    let mut chat = ChatOptions::default();
    chat.history = 1000;
    let srv = start_with(model, Limits::default(), chat);
    let mut a = Client::connect(srv.addr());
    a.join("r");
    let ids: Vec<String> = (0..5).map(|i| a.say("r", &format!("m{i}"))).collect();
    let mut b = Client::connect(srv.addr());
    b.send(&format!("JOIN r AFTER {}", ids[1]));
    b.expect("OK JOIN r");
    for (i, id) in ids.iter().enumerate().skip(2) {
        b.expect(&format!("MSG r {id} {} m{i}", a.nick));
    }
    // Now under traffic: a writes without waiting while c joins after an id it saw.
    let mut w = Client::connect(srv.addr());
    w.join("r");
    a.until(&format!("JOIN r {}", w.nick));
    b.expect(&format!("JOIN r {}", w.nick));
    const N: usize = 300;
    let mut writer = w.w.try_clone().unwrap();
    let (joined_tx, joined) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        for i in 0..N {
            if i == N / 2 {
                // Half before the join completes (racing it), half surely after.
                joined.recv().unwrap();
            }
            writer
                .write_all(format!("SAY r live{i}\n").as_bytes())
                .unwrap();
        }
    });
    let mut seen = Vec::new();
    while seen.len() < 20 {
        seen.push(msg_id(&a.until("MSG r ")).to_string());
    }
    let after = seen[10].clone();
    let mut c = Client::connect(srv.addr());
    c.send(&format!("JOIN r AFTER {after}"));
    c.expect("OK JOIN r");
    joined_tx.send(()).unwrap();
    t.join().unwrap();
    while seen.len() < N {
        seen.push(msg_id(&a.until("MSG r ")).to_string());
    }
    let want: Vec<&String> = seen.iter().skip(11).collect();
    let mut got = Vec::new();
    while got.len() < want.len() {
        let l = c.line();
        assert!(l.starts_with("MSG r "), "only messages expected, got {l:?}");
        got.push(msg_id(&l).to_string());
    }
    assert_eq!(got.iter().collect::<Vec<_>>(), want, "no gap, no duplicate");
    // b, a member all along, got every live message in the same order as a.
    let mut b_seen = Vec::new();
    while b_seen.len() < N {
        b_seen.push(msg_id(&b.until("MSG r ")).to_string());
    }
    assert_eq!(b_seen, seen);
}

fn bad_input_never_affects_another(model: Model) {
    let srv = start(model);
    let mut good = Client::connect(srv.addr());
    good.join("r");
    let mut bad = Client::connect(srv.addr());
    let long = "x".repeat(5000);
    for (line, code) in [
        ("HELLO", "unknown-command"),
        ("JOIN", "bad-args"),
        ("JOIN r/x", "bad-name"),
        ("SAY r hi", "not-member"),
        ("WHO nowhere", "no-such-room"),
        (&format!("SAY r {long}"), "line-too-long"),
        ("HISTORY r lots", "bad-args"),
        ("NICK guest-with-a-name-far-too-long-for-it", "bad-name"),
    ] {
        bad.send(line);
        let got = bad.line();
        assert!(
            got.starts_with(&format!("ERR {code} ")),
            "{line:.40} -> {got}"
        );
    }
    bad.w.write_all(b"JOIN \xff\xfe\r\n").unwrap();
    assert!(bad.line().starts_with("ERR bad-text "));
    bad.w.write_all(b"\x00\x01\x02\x03\n").unwrap();
    assert!(bad.line().starts_with("ERR unknown-command "));
    // Still usable: it joins and speaks, and the good member sees only that.
    bad.join("r");
    let id = bad.say("r", "sorry");
    good.expect(&format!("JOIN r {}", bad.nick));
    good.expect(&format!("MSG r {id} {} sorry", bad.nick));
    let id2 = good.say("r", "fine");
    bad.expect(&format!("MSG r {id2} {} fine", good.nick));
}

/// A member that never reads is dropped as a slow consumer, while `others` members of
/// its room keep receiving every message.
fn slow_consumer_is_dropped_while_others_get_everything(model: Model, others: usize) {
    let limits = Limits {
        max_queue: 256 * 1024,
        max_output: 64 * 1024,
        write_timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let srv = start_with(model, limits, ChatOptions::default());
    let mut speaker = Client::connect(srv.addr());
    speaker.join("main");
    // The slow member: in the main room and in a busy one, and it never reads.
    let mut slow = Client::connect_small_buffer(srv.addr());
    slow.join("main");
    slow.join("flood");
    speaker.expect(&format!("JOIN main {}", slow.nick));
    let mut members: Vec<Client> = (0..others)
        .map(|_| {
            let mut c = Client::connect(srv.addr());
            c.join("main");
            c
        })
        .collect();
    const BEFORE: usize = 10;
    const AFTER: usize = 10;
    let mut ids = Vec::new();
    for i in 0..BEFORE {
        ids.push(speaker.say("main", &format!("before {i}")));
    }
    // Flood the slow member (and only it) until the server reports it dropped.
    let mut flooder = Client::connect(srv.addr());
    flooder.join("flood");
    let mut drain = flooder.r.get_ref().try_clone().unwrap();
    let sink = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(drain.read(&mut buf), Ok(n) if n > 0) {}
    });
    let text = "f".repeat(3000);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0;
    // Bounded in count and time; once the flood is sent, the server gets the rest of
    // the deadline to notice (no readiness signal exists for a counter).
    while srv.l.stats.slow_consumers.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "no slow consumer after {sent} messages; hub: {:?}",
            srv.chat.hub().unwrap().stats
        );
        if sent < 20_000 {
            flooder.send(&format!("SAY flood {text}"));
            sent += 1;
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // The dropped member now reads: its last line is the goodbye.
    let mut rest = Vec::new();
    let read = slow.r.read_to_end(&mut rest);
    assert!(
        rest.ends_with(b"ERR slow-consumer\n"),
        "the slow member's read ({read:?}) ends with {:?}",
        String::from_utf8_lossy(&rest[rest.len().saturating_sub(60)..])
    );
    if others + 2 <= multiclient::hub::DEFAULT_PRESENCE_LIMIT {
        speaker.expect(&format!("PART main {}", slow.nick));
    } else {
        // A room past the presence limit: the drop's PART is no line (docs/chat.md),
        // and WHO stops listing the member once its session is gone (bounded polling:
        // nothing signals that moment to another member).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            speaker.send("WHO main");
            let who = speaker.until("WHO main ");
            if !who.split(' ').any(|n| n == slow.nick) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} still listed: {who}",
                slow.nick
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for i in 0..AFTER {
        ids.push(speaker.say("main", &format!("after {i}")));
    }
    for (k, m) in members.iter_mut().enumerate() {
        let mut got = Vec::new();
        while got.len() < ids.len() {
            let l = m.line();
            if l.starts_with("MSG main ") {
                got.push(msg_id(&l).to_string());
            }
        }
        assert_eq!(got, ids, "member {k} got every message, in order");
    }
    assert_eq!(srv.l.stats.slow_consumers.load(Ordering::Relaxed), 1);
    drop(flooder);
    sink.join().unwrap();
}

/// A member that stops reading while a room floods it: what it finally reads is
/// every message of the flood from the first, whole lines in order with none
/// missing or torn, then its goodbye. (Under `async` an idle member lends its socket
/// and the deliverer writes on it; the line that fills it is cut short there and its
/// rest goes out first when the member takes its socket back.)
fn a_flooded_member_gets_whole_lines_in_order_then_its_goodbye(model: Model) {
    let limits = Limits {
        max_queue: 256 * 1024,
        max_output: 64 * 1024,
        write_timeout: Duration::from_secs(60),
        // No write window: every event may be written by the deliverer while the
        // member waits, so the line that fills its socket is cut short there.
        coalesce: Duration::ZERO,
        ..Limits::default()
    };
    // Long lines: a send that finds the socket nearly full then writes part of one.
    let mut chat = ChatOptions::default();
    chat.max_line = 48 * 1024;
    let srv = start_with(model, limits, chat);
    let mut slow = Client::connect_small_buffer(srv.addr());
    slow.join("flood");
    let mut flooder = Client::connect(srv.addr());
    flooder.join("flood");
    slow.expect(&format!("JOIN flood {}", flooder.nick));
    // Texts of many lengths, so lines end at every offset of the socket's buffer.
    let text = |i: usize| format!("{i:06}{}", "f".repeat(1000 + (i * 7919) % 39_000));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0;
    while srv.l.stats.slow_consumers.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "no slow consumer after {sent}");
        if sent < 20_000 {
            // One message at a time (each awaits its own MSG): the room is never
            // busy, so under `async` its lines go on the slow member's lent socket.
            flooder.say("flood", &text(sent));
            sent += 1;
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let mut rest = Vec::new();
    if let Err(e) = slow.r.read_to_end(&mut rest) {
        panic!(
            "no end after {} bytes ({e}): {:?}",
            rest.len(),
            String::from_utf8_lossy(&rest[rest.len().saturating_sub(80)..])
        );
    }
    let rest = String::from_utf8(rest).unwrap();
    let lines: Vec<&str> = rest.split_inclusive('\n').collect();
    // Events still queued when the mailbox overflowed are dropped with the member,
    // so the messages read are a prefix of the flood (under `pool` it may be empty:
    // the flood can fill the mailbox before the member's worker takes any of it).
    let (last, msgs) = lines.split_last().expect("the member read something");
    assert_eq!(*last, "ERR slow-consumer\n");
    for (i, l) in msgs.iter().enumerate() {
        let want = format!("{} {}\n", flooder.nick, text(i));
        let said = l
            .strip_prefix("MSG flood ")
            .and_then(|l| l.split_once(' '))
            .filter(|(id, _)| id.bytes().all(|b| b.is_ascii_digit()));
        assert!(
            said.is_some_and(|(_, said)| said == want),
            "line {i} of {} is {:?}",
            msgs.len(),
            &l[..l.len().min(80)]
        );
    }
}

fn busy_client_is_told_without_a_welcome(model: Model) {
    let srv = start_with(
        model,
        Limits {
            max_conns: 1,
            ..Limits::default()
        },
        ChatOptions::default(),
    );
    let _a = Client::connect(srv.addr());
    let mut b = TcpStream::connect(srv.addr()).unwrap();
    b.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let mut got = String::new();
    b.read_to_string(&mut got).unwrap();
    assert_eq!(got, "ERR server busy\n");
}

/// A member of a quiet room is kept past the idle timeout (TCP keepalive watches it
/// instead), while a connection that joined nothing is ended as idle.
fn quiet_member_outlives_the_idle_timeout(model: Model) {
    let srv = start_with(
        model,
        Limits {
            idle_timeout: Duration::from_millis(400),
            ..Limits::default()
        },
        ChatOptions::default(),
    );
    let mut member = Client::connect(srv.addr());
    member.join("quiet");
    // Opened after the member's last byte: its idle timeout comes later than the
    // member's would, so once it fires the member has been quiet for longer.
    let mut idle = Client::connect(srv.addr());
    idle.expect("ERR idle timeout");
    let mut rest = String::new();
    idle.r.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "", "nothing after the idle goodbye");
    member.send("WHO quiet");
    member.expect(&format!("WHO quiet {}", member.nick));
}

/// Everything the server sends until it closes, as lines.
fn rest_of(c: &mut Client) -> Vec<String> {
    let mut rest = String::new();
    c.r.read_to_string(&mut rest).unwrap();
    rest.lines().map(String::from).collect()
}

/// Lines of `MSG <room> <id> <nick> <text>`, without the id (a test cannot know it).
fn without_ids(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| match l.splitn(4, ' ').collect::<Vec<_>>()[..] {
            ["MSG", room, _id, rest] => format!("MSG {room} - {rest}"),
            _ => l.clone(),
        })
        .collect()
}

fn the_author_gets_every_own_msg_in_command_order_before_quit_or_close(model: Model) {
    let srv = start(model);
    // Pipelined in one write, then QUIT: each SAY's MSG comes before OK QUIT.
    let mut a = Client::connect(srv.addr());
    let n = a.nick.clone();
    a.w.write_all(b"JOIN q\nSAY q one\nSAY q two\nSAY q three\nQUIT\n")
        .unwrap();
    assert_eq!(
        without_ids(&rest_of(&mut a)),
        [
            "OK JOIN q".to_string(),
            format!("MSG q - {n} one"),
            format!("MSG q - {n} two"),
            format!("MSG q - {n} three"),
            "OK QUIT".into(),
        ]
    );
    // SAY then WHO: the MSG is the SAY's answer, so it comes first.
    let mut b = Client::connect(srv.addr());
    let n = b.nick.clone();
    b.w.write_all(b"JOIN w\nSAY w hi\nWHO w\n").unwrap();
    b.expect("OK JOIN w");
    assert_eq!(without_ids(&[b.line()]), [format!("MSG w - {n} hi")]);
    b.expect(&format!("WHO w {n}"));
    // SAY then the client's EOF: the MSG still comes, then the close. A room each:
    // the previous client's PART may otherwise come between (other members' events
    // may interleave anywhere).
    for i in 0..20 {
        let mut c = Client::connect(srv.addr());
        let n = c.nick.clone();
        c.w.write_all(format!("JOIN e{i}\nSAY e{i} bye\n").as_bytes())
            .unwrap();
        c.w.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(
            without_ids(&rest_of(&mut c)),
            [format!("OK JOIN e{i}"), format!("MSG e{i} - {n} bye")]
        );
    }
}

fn a_connection_is_in_at_most_max_rooms_per_conn(model: Model) {
    let srv = start(model);
    let max = multiclient::hub::DEFAULT_MAX_ROOMS_PER_CONN;
    let mut a = Client::connect(srv.addr());
    let joins: String = (0..=max).map(|i| format!("JOIN r{i}\n")).collect();
    a.w.write_all(joins.as_bytes()).unwrap();
    for i in 0..max {
        a.expect(&format!("OK JOIN r{i}"));
    }
    let l = a.line();
    assert!(l.starts_with("ERR too-many-rooms "), "{l}");
    a.send("JOIN r0");
    let l = a.line();
    assert!(l.starts_with("ERR already-member "), "{l}");
    a.send(&format!("PART r{}", max - 1));
    a.expect(&format!("OK PART r{}", max - 1));
    a.join(&format!("r{max}"));
}

/// Clients that each pipeline a `JOIN`, many `SAY`s and a `WHO` in one write, then the
/// server shuts down: every command already sent is answered, in order, before the
/// goodbye (the `SAY`s in flight and the commands queued behind them alike).
fn a_shutdown_answers_every_command_already_sent(model: Model) {
    // Fewer than the pool's workers: each client holds one while connected.
    const CLIENTS: usize = 12;
    const SAYS: usize = 100;
    let mut srv = start(model);
    let mut clients: Vec<Client> = (0..CLIENTS).map(|_| Client::connect(srv.addr())).collect();
    let mut wants = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let n = c.nick.clone();
        let mut batch = format!("JOIN s{i}\n");
        let mut want = vec![format!("OK JOIN s{i}")];
        for k in 0..SAYS {
            batch.push_str(&format!("SAY s{i} m{k}\n"));
            want.push(format!("MSG s{i} - {n} m{k}"));
        }
        batch.push_str(&format!("WHO s{i}\n"));
        want.push(format!("WHO s{i} {n}"));
        want.push("ERR server shutting down".into());
        c.w.write_all(batch.as_bytes()).unwrap();
        wants.push(want);
    }
    let server = srv.server.take().unwrap();
    server.drain().start();
    for (i, (c, want)) in clients.iter_mut().zip(&wants).enumerate() {
        let got = without_ids(&rest_of(c));
        assert_eq!(got.len(), want.len(), "client {i}: {got:?}");
        assert_eq!(&got, want, "client {i}");
    }
    drop(clients);
    assert_eq!(server.wait(), 0, "nobody was cut off");
}

/// A client that pipelines far more `SAY`s than the server keeps waiting behind an
/// answer (20,000, over 256 KiB) gets one answer per command, in command order: its
/// `MSG`, or `ERR queue-full` for a command that found the queue full; none is
/// answered out of turn and none is left unanswered.
fn a_flood_of_pipelined_says_is_answered_in_command_order(model: Model) {
    const SAYS: usize = 20_000;
    let srv = start(model);
    let mut c = Client::connect(srv.addr());
    let n = c.nick.clone();
    let mut batch = String::from("JOIN f\n");
    for k in 0..SAYS {
        batch.push_str(&format!("SAY f m{k}\n"));
    }
    batch.push_str("WHO f\nQUIT\n");
    let mut w = c.w.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(batch.as_bytes()));
    let got = without_ids(&rest_of(&mut c));
    writer.join().unwrap().unwrap();
    assert_eq!(got.len(), SAYS + 3, "one answer per command");
    assert_eq!(got[0], "OK JOIN f");
    let mut refused = 0;
    for (k, line) in got[1..=SAYS].iter().enumerate() {
        if line.starts_with("ERR queue-full ") {
            refused += 1;
        } else {
            assert_eq!(line, &format!("MSG f - {n} m{k}"), "answer {k} out of turn");
        }
    }
    assert!(refused < SAYS, "some were carried out");
    let who = &got[SAYS + 1];
    assert!(
        *who == format!("WHO f {n}") || who.starts_with("ERR queue-full "),
        "{who}"
    );
    assert_eq!(got[SAYS + 2], "OK QUIT");
}

macro_rules! every_model {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[test]
            fn threads() {
                super::$name(Model::Threads)
            }
            #[test]
            fn pool() {
                super::$name(Model::Pool { workers: 16 })
            }
            #[test]
            fn async_() {
                super::$name(Model::Async { workers: 2 })
            }
        }
    )*};
}

every_model!(
    conversation,
    join_after_has_no_gap_or_duplicate,
    bad_input_never_affects_another,
    busy_client_is_told_without_a_welcome,
    quiet_member_outlives_the_idle_timeout,
    the_author_gets_every_own_msg_in_command_order_before_quit_or_close,
    a_connection_is_in_at_most_max_rooms_per_conn,
    a_shutdown_answers_every_command_already_sent,
    a_flood_of_pipelined_says_is_answered_in_command_order,
    a_flooded_member_gets_whole_lines_in_order_then_its_goodbye,
);

#[test]
fn slow_consumer_async_1000_others() {
    slow_consumer_is_dropped_while_others_get_everything(Model::Async { workers: 2 }, 1000);
}

#[test]
fn slow_consumer_threads_1000_others() {
    slow_consumer_is_dropped_while_others_get_everything(Model::Threads, 1000);
}

#[test]
fn slow_consumer_pool_100_others() {
    // Under pool every member holds a worker for as long as it is connected.
    slow_consumer_is_dropped_while_others_get_everything(Model::Pool { workers: 110 }, 100);
}

#[test]
fn single_is_refused_with_a_clear_message() {
    let mut server = Server::new(Model::Single, Limits::default()).unwrap();
    let err = ServiceName::Chat
        .listen(
            &mut server,
            "127.0.0.1:0".parse().unwrap(),
            &ServiceOptions::default(),
        )
        .err()
        .expect("chat under single is refused");
    assert!(err.to_string().contains("--model single"), "{err}");
    assert!(!ServiceName::Chat.runs_under(Model::Single));
}
