//! `chat`: rooms, nicks, presence and history over a TCP line protocol (port 7000).
//!
//! One command per line, `\n` or `\r\n` terminated:
//!
//! | client sends | it gets | the room's other members get |
//! |---|---|---|
//! | (connects) | `WELCOME <nick>` (a unique guest nick) | |
//! | `NICK <nick>` | `OK NICK <nick>` or `ERR nick-taken ...` / `ERR bad-name ...` | `NICK <room> <old> <new>` |
//! | `JOIN <room> [AFTER <id>]` | `OK JOIN <room>`, then with `AFTER` every message after `<id>` still in history | `JOIN <room> <nick>` |
//! | `PART <room>` | `OK PART <room>` | `PART <room> <nick>` |
//! | `SAY <room> <text>` | its own `MSG` line, like every member | `MSG <room> <id> <nick> <text>` |
//! | `WHO <room>` | `WHO <room> <nick> ...` | |
//! | `HISTORY <room> <n>` | up to n (≤ 100) recent `MSG` lines, oldest first, then `OK HISTORY <room>` | |
//! | `QUIT` | `OK QUIT`, then close | `PART` in each of its rooms |
//! | anything else | `ERR <code> <human text>`; the connection stays usable | |
//!
//! A line longer than `--max-line` (default 4096 bytes) is answered `ERR line-too-long`
//! once and skipped up to its newline; the connection stays usable and holds at most
//! `--max-line` bytes of it. A disconnect of any kind is a `PART` in each room.
//!
//! The session holds no shared state: rooms, nicks and history are the [`Hub`]'s, which
//! reaches the session only through its mailbox, so the whole protocol runs on plain
//! buffers in tests (see `service::Harness`) and under every threaded or async model.
//! Under `single` (one client at a time) a chat makes no sense: the registry refuses
//! to start it there with a clear message, and the default `serve` set leaves it out.
//! Under `pool` each member holds a worker for as long as it is connected, so members
//! beyond `--workers` wait unserved in the queue, as any pool client does.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::hub::{
    valid_nick, valid_room, Answer, ChatEvent, Hub, HubConfig, HubError, MemberId, MsgId,
    Publication, Wire,
};
use crate::model::mailbox::Sender;

use super::{line_goodbye, Cx, Goodbye, Service, Session};

/// How long a command waits for an answer from Redis before it is answered
/// `ERR unavailable` and the commands after it go on.
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Command bytes kept in order behind a command awaiting its answer; beyond this,
/// commands are carried out at once (their replies may then come before that answer).
const MAX_QUEUED: usize = 256 * 1024;

/// Default longest command line (`--max-line`), terminator excluded.
pub const DEFAULT_MAX_LINE: usize = 4096;

/// The chat options of the command line, and the one hub every chat listener of a
/// process shares (the TCP service now, the WebSocket endpoint later).
#[derive(Debug, Clone)]
pub struct ChatOptions {
    /// Messages kept per room (`--history`).
    pub history: usize,
    /// Longest command line in bytes (`--max-line`).
    pub max_line: usize,
    /// Commands per second per connection (`--max-rate`); none by default, since the
    /// load tester sends thousands of messages per second on one connection.
    pub max_rate: Option<u32>,
    /// Redis URL (`--redis`): several processes given the same one are one chat.
    pub redis: Option<String>,
    /// With Redis: how long members of a stopped process stay listed
    /// (`--presence-ttl`).
    pub presence_ttl: std::time::Duration,
    hub: Arc<OnceLock<Result<Arc<Hub>, String>>>,
}

impl Default for ChatOptions {
    fn default() -> Self {
        ChatOptions {
            history: crate::hub::DEFAULT_HISTORY,
            max_line: DEFAULT_MAX_LINE,
            max_rate: None,
            redis: None,
            presence_ttl: crate::hub::DEFAULT_PRESENCE_TTL,
            hub: Arc::default(),
        }
    }
}

impl ChatOptions {
    /// The process's hub, made on first use with these options; every clone of these
    /// options gets the same one. Fails only on an invalid `--redis` URL.
    pub fn hub(&self) -> Result<Arc<Hub>, String> {
        self.hub
            .get_or_init(|| {
                let config = HubConfig {
                    history: self.history,
                    presence_ttl: self.presence_ttl,
                };
                match &self.redis {
                    Some(url) => Hub::with_redis(config, url),
                    None => Ok(Arc::new(Hub::new(config))),
                }
            })
            .clone()
    }
}

/// The chat service: makes a [`ChatSession`] per connection, all sharing one hub.
#[derive(Debug, Clone)]
pub struct Chat {
    hub: Arc<Hub>,
    max_line: usize,
    max_rate: Option<u32>,
}

impl Chat {
    /// A chat service over `hub`, with the line and rate limits of `opts`.
    pub fn new(hub: Arc<Hub>, opts: &ChatOptions) -> Chat {
        Chat {
            hub,
            max_line: opts.max_line.max(1),
            max_rate: opts.max_rate.filter(|&r| r > 0),
        }
    }

    /// The hub its sessions share.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }
}

impl Service for Chat {
    type Session = ChatSession;
    fn name(&self) -> &str {
        "chat"
    }
    fn session(&self, _conn: &super::ConnInfo) -> ChatSession {
        ChatSession {
            hub: self.hub.clone(),
            me: None,
            rooms: HashMap::new(),
            max_line: self.max_line,
            skipping: false,
            rate: self.max_rate.map(Rate::new),
            waiting: 0,
            waiting_since: None,
            queued: std::collections::VecDeque::new(),
            queued_bytes: 0,
        }
    }
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `NICK <nick>`
    Nick(&'a str),
    /// `JOIN <room> [AFTER <id>]`
    Join {
        /// The room.
        room: &'a str,
        /// Replay the messages after this id.
        after: Option<MsgId>,
    },
    /// `PART <room>`
    Part(&'a str),
    /// `SAY <room> <text>`
    Say {
        /// The room.
        room: &'a str,
        /// The rest of the line.
        text: &'a str,
    },
    /// `WHO <room>`
    Who(&'a str),
    /// `HISTORY <room> <n>`
    History {
        /// The room.
        room: &'a str,
        /// How many messages.
        n: usize,
    },
    /// `QUIT`
    Quit,
}

/// A command line that is not a valid command: its code and a human explanation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseError {
    /// The protocol's error code.
    pub code: &'static str,
    /// What was wrong, for a human.
    pub text: &'static str,
}

const fn perr(code: &'static str, text: &'static str) -> ParseError {
    ParseError { code, text }
}

const BAD_NAME: ParseError = perr(
    "bad-name",
    "names are 1-32 (nick) or 1-64 (room) characters of A-Z a-z 0-9 _ - .",
);

fn room_arg(s: &str) -> Result<&str, ParseError> {
    if valid_room(s) {
        Ok(s)
    } else {
        Err(BAD_NAME)
    }
}

/// Parses one line, its terminator already removed. Command words are
/// case-insensitive; arguments are separated by single spaces, and `SAY`'s text is the
/// rest of the line as sent.
pub fn parse(line: &[u8]) -> Result<Command<'_>, ParseError> {
    let line =
        std::str::from_utf8(line).map_err(|_| perr("bad-text", "commands must be UTF-8 text"))?;
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    let args: Vec<&str> = rest.split(' ').filter(|a| !a.is_empty()).collect();
    let usage = |text| Err(perr("bad-args", text));
    let w = word.to_ascii_uppercase();
    match w.as_str() {
        "NICK" => match args[..] {
            [nick] if valid_nick(nick) => Ok(Command::Nick(nick)),
            [_] => Err(BAD_NAME),
            _ => usage("usage: NICK <nick>"),
        },
        "JOIN" => match args[..] {
            [room] => Ok(Command::Join {
                room: room_arg(room)?,
                after: None,
            }),
            [room, kw, id] if kw.eq_ignore_ascii_case("AFTER") => {
                let after = id
                    .parse::<MsgId>()
                    .map_err(|_| perr("bad-args", "AFTER takes a message id"))?;
                Ok(Command::Join {
                    room: room_arg(room)?,
                    after: Some(after),
                })
            }
            _ => usage("usage: JOIN <room> [AFTER <id>]"),
        },
        "PART" => match args[..] {
            [room] => Ok(Command::Part(room_arg(room)?)),
            _ => usage("usage: PART <room>"),
        },
        "SAY" => {
            let (room, text) = rest.split_once(' ').unwrap_or((rest, ""));
            if room.is_empty() || text.is_empty() {
                return usage("usage: SAY <room> <text>");
            }
            Ok(Command::Say {
                room: room_arg(room)?,
                text,
            })
        }
        "WHO" => match args[..] {
            [room] => Ok(Command::Who(room_arg(room)?)),
            _ => usage("usage: WHO <room>"),
        },
        "HISTORY" => match args[..] {
            [room, n] => {
                let n = n
                    .parse::<usize>()
                    .map_err(|_| perr("bad-args", "HISTORY takes a count"))?;
                Ok(Command::History {
                    room: room_arg(room)?,
                    n,
                })
            }
            _ => usage("usage: HISTORY <room> <n>"),
        },
        "QUIT" if args.is_empty() => Ok(Command::Quit),
        "QUIT" => usage("usage: QUIT"),
        _ => Err(perr(
            "unknown-command",
            "commands are NICK JOIN PART SAY WHO HISTORY QUIT",
        )),
    }
}

/// A token bucket for `--max-rate`: up to `per_sec` commands in a burst, refilled at
/// `per_sec` a second.
#[derive(Debug)]
struct Rate {
    per_sec: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl Rate {
    fn new(per_sec: u32) -> Rate {
        Rate {
            per_sec: per_sec as f64,
            tokens: per_sec as f64,
            last: None,
        }
    }

    fn allow(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.per_sec).min(self.per_sec);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A session's view of one room it is in.
struct RoomState {
    /// The room sequence number at join: events up to it belong to an earlier
    /// membership and are not handed on.
    since: u64,
    /// The last message id handed on: a message at or before it is a duplicate (a
    /// replayed message that also arrived live).
    last: Option<MsgId>,
    /// The join is in effect: with `--redis`, once it is ordered in Redis (then
    /// `OK JOIN` is sent), at once without.
    confirmed: bool,
    /// A `JOIN ... AFTER` replay is on its way (with `--redis`).
    awaiting_replay: bool,
    /// A replay that arrived before the join was confirmed.
    stashed: Option<Result<Vec<Arc<Publication>>, HubError>>,
    /// Live events held until the join is confirmed and the replay handed on.
    held: Vec<Arc<Publication>>,
}

impl RoomState {
    fn holding(&self) -> bool {
        !self.confirmed || self.awaiting_replay
    }

    fn replay<E>(&mut self, msgs: Result<Vec<Arc<Publication>>, HubError>, cx: &mut Cx<'_, E>) {
        match msgs {
            Ok(msgs) => {
                for p in &msgs {
                    self.hand_on(p, cx);
                }
            }
            Err(e) => err(cx, e.code(), "the replay of missed messages failed"),
        }
        self.awaiting_replay = false;
    }

    /// Hands on what was held, once nothing is awaited any more.
    fn release<E>(&mut self, cx: &mut Cx<'_, E>) {
        if !self.holding() {
            for p in std::mem::take(&mut self.held) {
                self.hand_on(&p, cx);
            }
        }
    }

    fn hand_on<E>(&mut self, p: &Publication, cx: &mut Cx<'_, E>) {
        if let Some(id) = p.msg_id() {
            if self.last.is_some_and(|last| id <= last) {
                return;
            }
            self.last = Some(id);
        }
        cx.send(p.encoded(Wire::Line));
    }
}

struct Me {
    id: MemberId,
    nick: Arc<str>,
    tx: Sender<ChatEvent>,
}

/// One chat connection: its member identity, its rooms, and the line framing.
pub struct ChatSession {
    hub: Arc<Hub>,
    me: Option<Me>,
    /// The rooms joined.
    rooms: HashMap<Arc<str>, RoomState>,
    max_line: usize,
    /// The rest of an over-long line, already answered, is being discarded.
    skipping: bool,
    rate: Option<Rate>,
    /// Answers awaited from Redis (`NICK`, `JOIN`, `WHO`, `HISTORY` with `--redis`):
    /// the commands after them wait in `queued`, so replies come in command order and
    /// a `SAY` after a `NICK` speaks with the new nick.
    waiting: u32,
    waiting_since: Option<Instant>,
    queued: std::collections::VecDeque<Box<[u8]>>,
    queued_bytes: usize,
}

fn err<E>(cx: &mut Cx<'_, E>, code: &str, text: &str) {
    let out = cx.out();
    out.extend_from_slice(b"ERR ");
    out.extend_from_slice(code.as_bytes());
    out.push(b' ');
    out.extend_from_slice(text.as_bytes());
    out.push(b'\n');
}

impl ChatSession {
    fn room_list(&self) -> Vec<Arc<str>> {
        self.rooms.keys().cloned().collect()
    }

    fn leave(&mut self) {
        if let Some(me) = &self.me {
            let rooms = self.room_list();
            self.hub.disconnect(me.id, &me.nick, &rooms);
            self.rooms.clear();
        }
    }

    fn line(&mut self, line: &[u8], cx: &mut Cx<'_, ChatEvent>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(|&b| b == b' ' || b == b'\t') {
            return; // A blank line is no command: nothing to answer.
        }
        if line.len() > self.max_line {
            err(cx, "line-too-long", "command lines are limited in length");
            return;
        }
        if let Some(rate) = &mut self.rate {
            if !rate.allow(cx.now()) {
                err(cx, "rate-limited", "too many commands per second");
                return;
            }
        }
        match parse(line) {
            Ok(cmd) => self.command(cmd, cx),
            Err(e) => err(cx, e.code, e.text),
        }
    }

    fn command(&mut self, cmd: Command<'_>, cx: &mut Cx<'_, ChatEvent>) {
        if cmd == Command::Quit {
            cx.send(b"OK QUIT\n");
            self.leave();
            cx.close();
            return;
        }
        let Some(me) = &mut self.me else {
            err(cx, "unavailable", "this connection has no chat membership");
            return;
        };
        let hub = &self.hub;
        let mut pending = false;
        let res = match cmd {
            Command::Nick(nick) => {
                let rooms: Vec<Arc<str>> = self.rooms.keys().cloned().collect();
                hub.set_nick(me.id, &me.nick, nick, &rooms, &me.tx)
                    .map(|new| match new {
                        Some(new) => {
                            cx.send(format!("OK NICK {new}\n").as_bytes());
                            me.nick = new;
                        }
                        None => pending = true,
                    })
            }
            Command::Join { room, after } => hub
                .join(me.id, &me.nick, &me.tx, Wire::Line, room, after)
                .map(|j| {
                    let mut st = RoomState {
                        since: j.since,
                        last: None,
                        confirmed: !j.confirm_pending,
                        awaiting_replay: j.replay_pending,
                        stashed: None,
                        held: Vec::new(),
                    };
                    if st.confirmed {
                        cx.send(format!("OK JOIN {}\n", j.room).as_bytes());
                    } else {
                        pending = true;
                    }
                    for p in &j.replay {
                        st.hand_on(p, cx);
                    }
                    self.rooms.insert(j.room, st);
                }),
            Command::Part(room) => hub.part(me.id, room).map(|()| {
                self.rooms.remove(room);
                cx.send(format!("OK PART {room}\n").as_bytes());
            }),
            // The author's own MSG line arrives through its mailbox like everyone's,
            // so it is in the room's order.
            Command::Say { room, text } => hub.say(me.id, room, text).map(|_| ()),
            Command::History { room, n } => hub.history(room, n, &me.tx).map(|msgs| match msgs {
                Some(msgs) => history_lines(room, &msgs, cx),
                None => pending = true,
            }),
            Command::Who(room) => hub.who_all(room, &me.tx).map(|nicks| match nicks {
                Some(nicks) => who_line(room, &nicks, cx),
                None => pending = true,
            }),
            Command::Quit => Ok(()), // Answered above.
        };
        if let Err(e) = res {
            err(cx, e.code(), &e.to_string());
        }
        if pending {
            self.waiting += 1;
            self.waiting_since.get_or_insert(cx.now());
        }
    }

    /// A complete line from the client: carried out now, or queued behind a command
    /// still awaiting its answer.
    fn take_line(&mut self, line: &[u8], cx: &mut Cx<'_, ChatEvent>) {
        if self.waiting > 0 && self.queued_bytes + line.len() <= MAX_QUEUED {
            self.queued_bytes += line.len();
            self.queued.push_back(line.into());
        } else {
            self.line(line, cx);
        }
    }

    /// An awaited answer arrived (or timed out): the queued commands go on.
    fn answered(&mut self, cx: &mut Cx<'_, ChatEvent>) {
        self.waiting = self.waiting.saturating_sub(1);
        if self.waiting > 0 {
            return;
        }
        self.waiting_since = None;
        while self.waiting == 0 && !cx.is_closing() {
            let Some(line) = self.queued.pop_front() else {
                break;
            };
            self.queued_bytes -= line.len();
            self.line(&line, cx);
        }
    }
}

fn who_line<E>(room: &str, nicks: &[Arc<str>], cx: &mut Cx<'_, E>) {
    let out = cx.out();
    out.extend_from_slice(b"WHO ");
    out.extend_from_slice(room.as_bytes());
    for n in nicks {
        out.push(b' ');
        out.extend_from_slice(n.as_bytes());
    }
    out.push(b'\n');
}

fn history_lines<E>(room: &str, msgs: &[Arc<Publication>], cx: &mut Cx<'_, E>) {
    for p in msgs {
        cx.send(p.encoded(Wire::Line));
    }
    cx.send(format!("OK HISTORY {room}\n").as_bytes());
}

impl Session for ChatSession {
    type Event = ChatEvent;

    fn open(&mut self, cx: &mut Cx<'_, ChatEvent>) {
        match cx.mailbox() {
            Ok(tx) => {
                let (id, nick) = self.hub.connect();
                cx.send(format!("WELCOME {nick}\n").as_bytes());
                self.me = Some(Me { id, nick, tx });
            }
            Err(e) => {
                tracing::error!("chat: cannot make a mailbox: {e}");
                err(cx, "unavailable", "the server cannot take members now");
                cx.close();
            }
        }
    }

    fn read(&mut self, input: &[u8], cx: &mut Cx<'_, ChatEvent>) -> usize {
        // Never hold more than the model will keep for us: a line longer than that is
        // too long whatever `--max-line` says.
        let max_line = self.max_line.min(cx.input_limit().saturating_sub(2).max(1));
        self.max_line = max_line;
        let mut pos = 0;
        while pos < input.len() && !cx.is_closing() {
            let rest = &input[pos..];
            match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    pos += i + 1;
                    if std::mem::take(&mut self.skipping) {
                        continue; // The tail of a line already answered.
                    }
                    self.take_line(&rest[..i], cx);
                }
                None => {
                    if self.skipping {
                        pos = input.len();
                    } else if rest.len() > max_line + 1 {
                        // `+ 1`: a line of exactly max_line may still await its `\r\n`.
                        err(cx, "line-too-long", "command lines are limited in length");
                        self.skipping = true;
                        pos = input.len();
                    }
                    break;
                }
            }
        }
        pos
    }

    fn event(&mut self, event: ChatEvent, cx: &mut Cx<'_, ChatEvent>) {
        match event {
            ChatEvent::Room { seq, publication } => {
                let Some(st) = self.rooms.get_mut(&publication.room) else {
                    return;
                };
                if seq <= st.since {
                    return;
                }
                if st.holding() {
                    st.held.push(publication);
                } else {
                    st.hand_on(&publication, cx);
                }
            }
            ChatEvent::Answer(Answer::History { room, msgs }) => {
                match msgs {
                    Ok(msgs) => history_lines(&room, &msgs, cx),
                    Err(e) => err(cx, e.code(), &e.to_string()),
                }
                self.answered(cx);
            }
            ChatEvent::Answer(Answer::Replay { room, msgs }) => {
                let Some(st) = self.rooms.get_mut(&room) else {
                    return; // Parted meanwhile.
                };
                if st.confirmed {
                    st.replay(msgs, cx);
                    st.release(cx);
                } else {
                    st.stashed = Some(msgs);
                }
            }
            ChatEvent::Answer(Answer::Joined { room }) => {
                let Some(st) = self.rooms.get_mut(&room) else {
                    return; // Parted meanwhile.
                };
                st.confirmed = true;
                cx.send(format!("OK JOIN {room}\n").as_bytes());
                if let Some(msgs) = st.stashed.take() {
                    st.replay(msgs, cx);
                }
                st.release(cx);
                self.answered(cx);
            }
            ChatEvent::Answer(Answer::Who { room, nicks }) => {
                match nicks {
                    Ok(nicks) => who_line(&room, &nicks, cx),
                    Err(e) => err(cx, e.code(), &e.to_string()),
                }
                self.answered(cx);
            }
            ChatEvent::Answer(Answer::Nick(Ok(new))) => {
                let rooms = self.room_list();
                let Some(me) = &mut self.me else {
                    return;
                };
                match self.hub.apply_nick(me.id, &me.nick, &new, &rooms) {
                    Ok(()) => {
                        cx.send(format!("OK NICK {new}\n").as_bytes());
                        me.nick = new;
                    }
                    Err(e) => err(cx, e.code(), &e.to_string()),
                }
                self.answered(cx);
            }
            ChatEvent::Answer(Answer::Nick(Err(e))) => {
                err(cx, e.code(), &e.to_string());
                self.answered(cx);
            }
            ChatEvent::Answer(Answer::Failed(e)) => err(cx, e.code(), &e.to_string()),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.waiting_since.map(|t| t + ANSWER_TIMEOUT)
    }

    /// A member of a room may only listen: a quiet room is no reason to drop it.
    fn idle_ok(&self) -> bool {
        !self.rooms.is_empty()
    }

    fn timeout(&mut self, cx: &mut Cx<'_, ChatEvent>) {
        if self.waiting > 0 {
            err(cx, "unavailable", "no answer from the chat backend");
            // A join never confirmed is undone, so it leaves no member that receives
            // nothing but is listed everywhere.
            let unconfirmed: Vec<Arc<str>> = self
                .rooms
                .iter()
                .filter(|(_, st)| !st.confirmed)
                .map(|(r, _)| r.clone())
                .collect();
            if let Some(me) = &self.me {
                for room in unconfirmed {
                    let _ = self.hub.part(me.id, &room);
                    self.rooms.remove(&room);
                }
            }
            self.waiting = 1;
            self.answered(cx);
        }
    }

    fn goodbye(&mut self, why: Goodbye, cx: &mut Cx<'_, ChatEvent>) {
        if why == Goodbye::Busy {
            // A refused client is told only that: the welcome written by `open` a
            // moment ago, not yet sent, is withdrawn with its guest nick.
            cx.out().clear();
            self.leave();
            self.me = None;
        }
        line_goodbye(why, cx);
    }
}

impl Drop for ChatSession {
    /// However the connection ended, its member parts from every room and frees its
    /// nick.
    fn drop(&mut self) {
        self.leave();
    }
}

pub mod json;
pub mod socket;
pub mod web;

#[cfg(test)]
mod tests;
