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
//! | `AUTH <token>` | `OK AUTH <nick>` or `ERR bad-token ...` (with `--jwt-secret` or `--jwt-public-key`: see [`auth`]) | |
//! | `QUIT` | `OK QUIT`, then close | `PART` in each of its rooms |
//! | anything else | `ERR <code> <human text>`; the connection stays usable | |
//!
//! With a token key configured, every command but `AUTH` and `QUIT` is refused
//! (`ERR auth-required`) until a token is accepted; its `sub` is then the nick (`NICK`
//! gets `ERR nick-fixed`), its `exp` ends the connection and its `rooms` bound `JOIN`.
//! An `AUTH` line may then be longer than `--max-line`, up to a token of 8 KiB.
//!
//! A line longer than `--max-line` (default 4096 bytes) is answered `ERR line-too-long`
//! once and skipped up to its newline; the connection stays usable and holds at most
//! `--max-line` bytes of it. A disconnect of any kind is a `PART` in each room.
//!
//! This session only frames lines: the chat itself (the member's nick and rooms, the
//! commands, the hub's events and deferred answers, `--max-rate`) is the
//! [`member::Member`] core that the WebSocket JSON member ([`socket`]) runs too, with
//! its own encoder, so both protocols behave alike by construction.
//!
//! The session holds no shared state: rooms, nicks and history are the [`Hub`]'s, which
//! reaches the session only through its mailbox, so the whole protocol runs on plain
//! buffers in tests (see `service::Harness`) and under every threaded or async model.
//! Under `single` (one client at a time) a chat makes no sense: the registry refuses
//! to start it there with a clear message, and the default `serve` set leaves it out.
//! Under `pool` each member holds a worker for as long as it is connected, so members
//! beyond `--workers` wait unserved in the queue, as any pool client does.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::base::mailbox::Sender;
use crate::hub::{
    valid_nick, valid_room, ChatEvent, Hub, HubConfig, HubSetupError, MsgId, Publication, Wire,
};

use self::member::{Decoder, Done, Encoder, End, Member, Reply};
use super::{line_goodbye, Cx, Goodbye, Service, Session};

/// Default longest command line (`--max-line`), terminator excluded.
pub const DEFAULT_MAX_LINE: usize = 4096;

/// The chat options of the command line, and the one hub every chat listener of a
/// process shares (the TCP service now, the WebSocket endpoint later).
#[derive(Debug, Clone)]
pub struct ChatOptions {
    /// Messages kept per room (`--history`).
    pub history: usize,
    /// Bytes of history kept by all rooms together (`--history-bytes`).
    pub history_bytes: usize,
    /// Most rooms one connection may be in (`--max-rooms-per-conn`).
    pub max_rooms_per_conn: usize,
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
    /// Rooms of at most this many members get JOIN and PART lines
    /// (`--presence-limit`).
    pub presence_limit: usize,
    /// The token key (`--jwt-secret`, `--jwt-public-key`), read by every chat listener
    /// per connection; empty: no authentication. Clones share it, so a reload can swap
    /// it with [`auth::AuthHandle::set`].
    pub auth: auth::AuthHandle,
    hub: Arc<OnceLock<Result<Arc<Hub>, Arc<HubSetupError>>>>,
}

impl Default for ChatOptions {
    fn default() -> Self {
        ChatOptions {
            history: crate::hub::DEFAULT_HISTORY,
            history_bytes: crate::hub::DEFAULT_HISTORY_BYTES,
            max_rooms_per_conn: crate::hub::DEFAULT_MAX_ROOMS_PER_CONN,
            max_line: DEFAULT_MAX_LINE,
            max_rate: None,
            redis: None,
            presence_ttl: crate::hub::DEFAULT_PRESENCE_TTL,
            presence_limit: crate::hub::DEFAULT_PRESENCE_LIMIT,
            auth: auth::AuthHandle::default(),
            hub: Arc::default(),
        }
    }
}

impl ChatOptions {
    /// The process's hub, made on first use with these options; every clone of these
    /// options gets the same one. Fails only on an invalid `--redis` URL (the error is
    /// shared: every caller gets the same one).
    pub fn hub(&self) -> Result<Arc<Hub>, Arc<HubSetupError>> {
        self.hub
            .get_or_init(|| {
                let config = HubConfig {
                    history: self.history,
                    history_bytes: self.history_bytes,
                    max_rooms_per_conn: self.max_rooms_per_conn,
                    presence_ttl: self.presence_ttl,
                    presence_limit: self.presence_limit,
                };
                match &self.redis {
                    Some(url) => Hub::with_redis(config, url).map_err(Arc::new),
                    None => Ok(Hub::new(config)),
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
    auth: auth::AuthHandle,
}

impl Chat {
    /// A chat service over `hub`, with the line and rate limits of `opts`.
    pub fn new(hub: Arc<Hub>, opts: &ChatOptions) -> Chat {
        Chat {
            hub,
            max_line: opts.max_line.max(1),
            max_rate: opts.max_rate.filter(|&r| r > 0),
            auth: opts.auth.clone(),
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
        let verifier = self.auth.get();
        ChatSession {
            auth_line: verifier.is_some(),
            member: Member::new(self.hub.clone(), LineDecoder, self.max_rate).with_auth(verifier),
            max_line: self.max_line,
            skipping: false,
            eof: false,
            farewell: None,
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
    /// `AUTH <token>`
    Auth(&'a str),
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
        "AUTH" => match args[..] {
            [token] => Ok(Command::Auth(token)),
            _ => usage("usage: AUTH <token>"),
        },
        "QUIT" if args.is_empty() => Ok(Command::Quit),
        "QUIT" => usage("usage: QUIT"),
        _ => Err(perr(
            "unknown-command",
            "commands are NICK JOIN PART SAY WHO HISTORY AUTH QUIT",
        )),
    }
}

const LINE_TOO_LONG: ParseError = perr("line-too-long", "command lines are limited in length");
/// An `AUTH` line beyond [`AUTH_LINE`]: its token is over [`auth::MAX_TOKEN`].
const TOKEN_TOO_LONG: ParseError = perr("bad-token", "tokens are limited to 8 KiB");
/// The longest `AUTH` line framed whole: `AUTH `, a token of [`auth::MAX_TOKEN`] and
/// room for the one past it, so an over-long token is still told apart.
const AUTH_LINE: usize = auth::MAX_TOKEN + 8;

/// Whether `line` (perhaps only its start) is an `AUTH` command.
fn is_auth(line: &[u8]) -> bool {
    line.len() >= 5 && line[..5].eq_ignore_ascii_case(b"AUTH ")
}

/// The line protocol's commands: [`parse`].
struct LineDecoder;

impl Decoder for LineDecoder {
    fn decode<R>(&self, raw: &[u8], run: impl FnOnce(Result<Command<'_>, ParseError>) -> R) -> R {
        run(parse(raw))
    }
}

/// The line protocol's answers, written into the session's output.
struct LineOut<'a, 'x>(&'a mut Cx<'x, ChatEvent>);

impl Encoder for LineOut<'_, '_> {
    const WIRE: Wire = Wire::Line;

    fn now(&mut self) -> Instant {
        self.0.now()
    }

    fn is_closing(&mut self) -> bool {
        self.0.is_closing()
    }

    fn answered(&mut self) {
        self.0.answered(crate::service::Answer::Command);
    }

    fn mailbox(&mut self) -> std::io::Result<Sender<ChatEvent>> {
        self.0.mailbox()
    }

    fn reply(&mut self, reply: Reply<'_>) {
        let out = self.0.out();
        let mut put = |parts: &[&str]| {
            for p in parts {
                out.extend_from_slice(p.as_bytes());
            }
        };
        match reply {
            Reply::Welcome { nick, .. } => put(&["WELCOME ", nick]),
            Reply::Ok(Done::Nick(nick)) => put(&["OK NICK ", nick]),
            Reply::Ok(Done::Join(room)) => put(&["OK JOIN ", room]),
            Reply::Ok(Done::Part(room)) => put(&["OK PART ", room]),
            Reply::Ok(Done::History(room)) => put(&["OK HISTORY ", room]),
            Reply::Ok(Done::Quit) => put(&["OK QUIT"]),
            Reply::Ok(Done::Auth(nick)) => put(&["OK AUTH ", nick]),
            Reply::Who(room, nicks) => {
                put(&["WHO ", room]);
                for n in nicks {
                    put(&[" ", n]);
                }
            }
            Reply::Error(code, text) => put(&["ERR ", code, " ", text]),
        }
        out.push(b'\n');
    }

    fn publication(&mut self, p: &Publication) {
        self.0.send(p.encoded(Wire::Line));
    }

    fn rest(&mut self, p: &Publication, from: usize) {
        self.0.send(&p.encoded(Wire::Line)[from..]);
    }

    fn end(&mut self, why: End) {
        if why == End::AuthFailed {
            self.0.refuse_auth();
        }
        self.0.close();
    }
}

/// One chat connection on the line protocol: the framing of lines around a
/// [`Member`], which runs the chat itself.
pub struct ChatSession {
    member: Member<LineDecoder>,
    max_line: usize,
    /// Tokens are required: an `AUTH` line may be longer than `--max-line`, up to
    /// [`AUTH_LINE`], so a token up to [`auth::MAX_TOKEN`] is judged as a token.
    auth_line: bool,
    /// The rest of an over-long line, already answered, is being discarded.
    skipping: bool,
    /// The client has closed its side: close once every command it sent is answered.
    eof: bool,
    /// The model's shutdown goodbye, held until every command read is answered (see
    /// [`Session::goodbye`]).
    farewell: Option<Goodbye>,
}

impl ChatSession {
    /// After the client's EOF, the connection closes as soon as no answer is awaited:
    /// commands sent just before the EOF (a `WHO` answered through Redis, then
    /// `QUIT`) still get their replies. A shutdown goodbye held back is said then.
    fn close_if_done(&mut self, cx: &mut Cx<'_, ChatEvent>) {
        if self.member.is_waiting() || cx.is_closing() {
            return;
        }
        if let Some(why) = self.farewell.take() {
            line_goodbye(why, cx);
        } else if self.eof {
            cx.close();
        }
    }

    /// Whether the member is in at least one room (and may only listen).
    pub fn in_a_room(&self) -> bool {
        self.member.in_a_room()
    }

    /// A complete line from the client, its `\n` removed.
    fn line(&mut self, line: &[u8], cx: &mut Cx<'_, ChatEvent>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // Too long is checked first, whatever the line holds: a long line that arrives
        // in pieces is refused before its end is seen, so one read must refuse it too.
        if line.len() > self.max_line && !(self.auth_line && is_auth(line)) {
            self.member.input(Err(LINE_TOO_LONG), &mut LineOut(cx));
            return;
        }
        if line.iter().all(|&b| b == b' ' || b == b'\t') {
            return; // A blank line is no command: nothing to answer.
        }
        self.member.input(Ok(line), &mut LineOut(cx));
    }
}

impl Session for ChatSession {
    type Event = ChatEvent;
    const LENDS: bool = true;

    fn open(&mut self, cx: &mut Cx<'_, ChatEvent>) {
        self.member.open(&mut LineOut(cx));
    }

    fn read(&mut self, input: &[u8], cx: &mut Cx<'_, ChatEvent>) -> usize {
        if self.farewell.is_some() {
            // Sent after the shutdown began: not taken in, and the goodbye that
            // follows the answers owed says why.
            return input.len();
        }
        // Never hold more than the model will keep for us: a line longer than that is
        // too long whatever `--max-line` says.
        let limit = cx.input_limit().saturating_sub(2).max(1);
        self.max_line = self.max_line.min(limit);
        let max_line = if self.auth_line {
            self.max_line.max(AUTH_LINE).min(limit)
        } else {
            self.max_line
        };
        let mut pos = 0;
        while pos < input.len() && !cx.is_closing() {
            let rest = &input[pos..];
            match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    pos += i + 1;
                    if std::mem::take(&mut self.skipping) {
                        continue; // The tail of a line already answered.
                    }
                    self.line(&rest[..i], cx);
                }
                None => {
                    if self.skipping {
                        pos = input.len();
                    } else if rest.len() > max_line + 1
                        || (rest.len() > self.max_line + 1 && !(self.auth_line && is_auth(rest)))
                    {
                        // `+ 1`: a line of exactly max_line may still await its `\r\n`.
                        let e = if self.auth_line && is_auth(rest) {
                            TOKEN_TOO_LONG
                        } else {
                            LINE_TOO_LONG
                        };
                        // Through the member, so it waits behind an awaited answer
                        // (a SAY's own MSG) as any other reply does.
                        self.member.input(Err(e), &mut LineOut(cx));
                        self.skipping = true;
                        pos = input.len();
                    }
                    break;
                }
            }
        }
        pos
    }

    fn eof(&mut self, cx: &mut Cx<'_, ChatEvent>) {
        self.eof = true;
        self.close_if_done(cx);
    }

    fn event(&mut self, event: ChatEvent, cx: &mut Cx<'_, ChatEvent>) {
        self.member.event(event, &mut LineOut(cx));
        self.close_if_done(cx);
    }

    fn deadline(&self) -> Option<Instant> {
        self.member.deadline()
    }

    /// A member of a room may only listen: a quiet room is no reason to drop it.
    fn idle_ok(&self) -> bool {
        self.member.in_a_room()
    }

    /// A room event's line is what goes on the wire: the deliverer may write it
    /// while the member has nothing of its own in between.
    fn may_lend(&mut self) -> bool {
        self.farewell.is_none() && !self.eof && !self.skipping && self.member.may_lend()
    }

    fn timeout(&mut self, cx: &mut Cx<'_, ChatEvent>) {
        self.member.timeout(&mut LineOut(cx));
        self.close_if_done(cx);
    }

    /// A shutdown waits for the answers still owed to the commands read (the `SAY`s
    /// in flight and the commands queued behind them): they come first, then the
    /// goodbye. The model bounds that wait (its goodbye grace, `--shutdown-timeout`).
    fn goodbye(&mut self, why: Goodbye, cx: &mut Cx<'_, ChatEvent>) {
        if why == Goodbye::Shutdown && self.member.is_waiting() {
            self.farewell = Some(why);
            return;
        }
        if why.is_refusal() {
            // A refused client is told only that. The model's engine never opens a
            // refused session; a driver that did (`Harness`) has its welcome, not yet
            // sent, withdrawn with the guest nick.
            cx.out().clear();
            self.member.withdraw();
        }
        line_goodbye(why, cx);
    }
}

pub mod auth;
pub mod json;
pub mod member;
pub mod socket;
pub mod web;

#[cfg(test)]
mod tests;
