//! The chat member: one session core for both wire formats.
//!
//! A [`Member`] owns everything a chat connection is, whatever it speaks: its nick and
//! hub identity, its rooms with what each is waiting for, its `--max-rate` bucket,
//! and the commands held behind an answer still awaited from Redis. It runs every
//! command and every [`ChatEvent`] and says *what happened* through an [`Encoder`]: the
//! line protocol's (`OK JOIN lobby\n`, in [`super`]) or the WebSocket JSON one (one
//! text frame per object, in [`super::socket`]). The two sessions are thin adapters:
//! framing in, encoder out. So both protocols have the same semantics by construction:
//! `OK JOIN` only once the join is in effect, `AFTER` replay with no gap and no
//! duplicate, commands answered in the order they were sent, the same rate limit.
//!
//! Room events are handed on as the hub's shared encoding for the member's wire
//! ([`Publication::encoded`]): encoded once per wire, never per member.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::base::mailbox::Sender;
use crate::hub::{Answer, ChatEvent, Deferred, Hub, HubError, MemberId, MsgId, Publication, Wire};

use super::auth::{Grant, Rooms, Verifier, MAX_FAILURES};
use super::{Command, ParseError};

/// How long a command waits for an answer from Redis before it is answered
/// `unavailable` and the commands after it go on.
pub(super) const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Command bytes kept in order behind a command awaiting its answer; beyond this,
/// commands are carried out at once (their replies may then come before that answer).
const MAX_QUEUED: usize = 256 * 1024;
/// What one queued input counts for beyond its bytes, so that empty frames and refused
/// inputs (which keep no bytes) cannot be queued without bound either.
const QUEUED_ENTRY_COST: usize = 64;

/// A command's success, as the wire says it (`OK JOIN lobby`,
/// `{"type":"ok","cmd":"join","room":"lobby"}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done<'a> {
    /// The nick is now this one.
    Nick(&'a str),
    /// The join of this room is in effect.
    Join(&'a str),
    /// The member left this room.
    Part(&'a str),
    /// The end of a room's history reply.
    History(&'a str),
    /// The member leaves; the connection closes next.
    Quit,
    /// A token was accepted: the member's nick is now its `sub`.
    Auth(&'a str),
}

/// What the member is told, apart from room events.
#[derive(Debug, Clone, Copy)]
pub enum Reply<'a> {
    /// The first thing a member hears: its guest nick, and whether it must present a
    /// token before anything else.
    Welcome {
        /// The guest nick.
        nick: &'a str,
        /// Whether the chat requires a token.
        auth: bool,
    },
    /// A command succeeded.
    Ok(Done<'a>),
    /// The members of a room, sorted.
    Who(&'a str, &'a [Arc<str>]),
    /// A command failed: the protocol's code and a human explanation.
    Error(&'a str, &'a str),
}

/// How a connection ends on the member's initiative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// After `QUIT` (WebSocket close 1000).
    Quit,
    /// The server cannot take the member (no mailbox could be made).
    Refused,
    /// Too many bad tokens ([`MAX_FAILURES`]).
    AuthFailed,
    /// The token expired and no fresh one came (`token-expired`).
    Expired,
}

/// One wire format's way of saying what happened to a member, bound to one call's
/// connection context.
pub trait Encoder {
    /// The hub's encoding this wire receives room events in.
    const WIRE: Wire;
    /// The session's clock.
    fn now(&mut self) -> Instant;
    /// Whether the connection is closing (nothing more will be read).
    fn is_closing(&mut self) -> bool;
    /// A sender into the session's mailbox, for the hub to reach the member.
    fn mailbox(&mut self) -> std::io::Result<Sender<ChatEvent>>;
    /// Says `reply`.
    fn reply(&mut self, reply: Reply<'_>);
    /// Hands on a room event, as the hub encoded it for [`Self::WIRE`].
    fn publication(&mut self, p: &Publication);
    /// Closes the connection once what was said is sent.
    fn end(&mut self, why: End);

    /// Says an error.
    fn error(&mut self, code: &str, text: &str) {
        self.reply(Reply::Error(code, text));
    }

    /// One command is answered (for the metrics' command latency).
    fn answered(&mut self) {}
}

/// One wire format's way of reading a command from one unit of input (a line without
/// its terminator, a text frame's payload). The command may borrow from a decoded
/// form of the input, hence the continuation.
pub trait Decoder {
    /// Decodes `raw` and hands the command (or why it is none) to `run`.
    fn decode<R>(&self, raw: &[u8], run: impl FnOnce(Result<Command<'_>, ParseError>) -> R) -> R;
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

/// A member's view of one room it is in.
#[derive(Debug)]
struct RoomState {
    /// The room sequence number at join: events up to it belong to an earlier
    /// membership and are not handed on.
    since: u64,
    /// The last message id handed on: a message at or before it is a duplicate (a
    /// replayed message that also arrived live).
    last: Option<MsgId>,
    /// The join is in effect: with `--redis`, once it is ordered in Redis (then the
    /// join's `OK` is said), at once without.
    confirmed: bool,
    /// A `JOIN ... AFTER` replay is on its way (with `--redis`).
    awaiting_replay: bool,
    /// A replay that arrived before the join was confirmed.
    stashed: Option<Result<Vec<Arc<Publication>>, HubError>>,
    /// Live events held until the join is confirmed and the replay handed on, each
    /// with whether it is the member's own message.
    held: Vec<(Arc<Publication>, bool)>,
}

impl RoomState {
    fn holding(&self) -> bool {
        !self.confirmed || self.awaiting_replay
    }

    fn replay(&mut self, msgs: Result<Vec<Arc<Publication>>, HubError>, out: &mut impl Encoder) {
        match msgs {
            Ok(msgs) => {
                for p in &msgs {
                    self.hand_on(p, out);
                }
            }
            Err(e) => out.error(e.code(), "the replay of missed messages failed"),
        }
        self.awaiting_replay = false;
    }

    /// Hands on what was held, once nothing is awaited any more; returns whether the
    /// member's own message was among it.
    fn release(&mut self, out: &mut impl Encoder) -> bool {
        let mut own = false;
        if !self.holding() {
            for (p, mine) in std::mem::take(&mut self.held) {
                self.hand_on(&p, out);
                own |= mine;
            }
        }
        own
    }

    fn hand_on(&mut self, p: &Publication, out: &mut impl Encoder) {
        if let Some(id) = p.msg_id() {
            if self.last.is_some_and(|last| id <= last) {
                return;
            }
            self.last = Some(id);
        }
        out.publication(p);
    }
}

struct Me {
    id: MemberId,
    nick: Arc<str>,
    tx: Sender<ChatEvent>,
}

/// A unit of input as the adapter framed it: the raw command, or why the framing
/// already refused it (an over-long line, a binary frame). Refusals wait in line too,
/// so every input is answered in the order it was sent.
pub type Input<'a> = Result<&'a [u8], ParseError>;

/// The member state, apart from the decoder (so a decoded command, which may borrow
/// the decoder's output, can run on it).
struct State {
    hub: Arc<Hub>,
    me: Option<Me>,
    /// The rooms joined.
    rooms: HashMap<Arc<str>, RoomState>,
    rate: Option<Rate>,
    /// Answers awaited (`NICK`, `JOIN`, `WHO`, `HISTORY` with `--redis`; `SAY`
    /// always): the inputs after them wait in `queued`, so replies come in command
    /// order and a `SAY` after a `NICK` speaks with the new nick.
    waiting: u32,
    /// How many of the awaited answers are `SAY`s': the member's own message coming
    /// back through its mailbox in the room's order (or its failure). More than one
    /// only when inputs beyond [`MAX_QUEUED`] ran at once.
    saying: u32,
    waiting_since: Option<Instant>,
    queued: VecDeque<Result<Box<[u8]>, ParseError>>,
    queued_bytes: usize,
    /// Token authentication, when the chat requires it (boxed: a connection of an
    /// open chat pays one pointer for it).
    auth: Option<Box<Auth>>,
}

/// A member's token authentication (see [`super::auth`]).
struct Auth {
    verifier: Arc<Verifier>,
    /// Bad tokens presented so far.
    failures: u32,
    /// What the accepted token grants, once one was.
    granted: Option<Granted>,
    /// A first token whose nick claim is awaited (from Redis).
    claiming: Option<Granted>,
    /// A token to present when the member opens.
    on_open: Option<Box<str>>,
}

/// An accepted token, as the member keeps it.
struct Granted {
    sub: Arc<str>,
    /// When the connection ends unless a fresh token came.
    expires: Option<Instant>,
    rooms: Option<Rooms>,
}

impl Granted {
    fn new(g: Grant, now: Instant) -> Granted {
        Granted {
            sub: g.sub,
            expires: g.expires_in.map(|d| now + d),
            rooms: g.rooms,
        }
    }
}

/// One chat member, on any wire: see the module documentation.
pub struct Member<D> {
    decoder: D,
    s: State,
}

impl<D: Decoder> Member<D> {
    /// A member of `hub`, reading commands with `decoder`, limited to `max_rate`
    /// commands a second (none: unlimited; 0 counts as none).
    pub fn new(hub: Arc<Hub>, decoder: D, max_rate: Option<u32>) -> Member<D> {
        Member {
            decoder,
            s: State {
                hub,
                me: None,
                rooms: HashMap::new(),
                rate: max_rate.filter(|&r| r > 0).map(Rate::new),
                waiting: 0,
                saying: 0,
                waiting_since: None,
                queued: VecDeque::new(),
                queued_bytes: 0,
                auth: None,
            },
        }
    }

    /// Requires a token checked by `verifier` (none: the chat is open, as without
    /// `--jwt-secret`).
    pub fn with_auth(mut self, verifier: Option<Arc<Verifier>>) -> Member<D> {
        self.s.auth = verifier.map(|verifier| {
            Box::new(Auth {
                verifier,
                failures: 0,
                granted: None,
                claiming: None,
                on_open: None,
            })
        });
        self
    }

    /// Presents `token` as soon as the member opens (a WebSocket upgrade's `?token=`);
    /// ignored when the chat requires no token.
    pub fn with_token(mut self, token: Option<&str>) -> Member<D> {
        if let Some(auth) = &mut self.s.auth {
            auth.on_open = token.map(Box::from);
        }
        self
    }

    /// The connection is established: the member gets its guest nick.
    pub fn open(&mut self, out: &mut impl Encoder) {
        match out.mailbox() {
            Ok(tx) => {
                let (id, nick) = self.s.hub.connect();
                out.reply(Reply::Welcome {
                    nick: &nick,
                    auth: self.s.auth.is_some(),
                });
                self.s.me = Some(Me { id, nick, tx });
                if let Some(token) = self.s.auth.as_mut().and_then(|a| a.on_open.take()) {
                    self.s.command(Command::Auth(&token), out);
                }
            }
            Err(e) => {
                tracing::error!("chat: cannot make a mailbox: {e}");
                out.error("unavailable", "the server cannot take members now");
                out.end(End::Refused);
            }
        }
    }

    /// One unit of input: carried out now, or queued behind a command still awaiting
    /// its answer.
    pub fn input(&mut self, input: Input<'_>, out: &mut impl Encoder) {
        let size = QUEUED_ENTRY_COST + input.map_or(0, <[u8]>::len);
        if self.s.waiting > 0 && self.s.queued_bytes + size <= MAX_QUEUED {
            self.s.queued_bytes += size;
            self.s.queued.push_back(input.map(Box::from));
        } else {
            self.run(input, out);
        }
    }

    /// Carries out one input; unless it awaits an answer, it is answered now.
    fn run(&mut self, input: Input<'_>, out: &mut impl Encoder) {
        let waiting = self.s.waiting;
        self.carry_out(input, out);
        if self.s.waiting == waiting {
            out.answered();
        }
    }

    fn carry_out(&mut self, input: Input<'_>, out: &mut impl Encoder) {
        let raw = match input {
            Ok(raw) => raw,
            // A token the framing refused for its size counts as a bad token.
            Err(e) if e.code == "bad-token" => return self.s.refuse_token(e.text, out),
            Err(e) => return out.error(e.code, e.text),
        };
        if let Some(rate) = &mut self.s.rate {
            if !rate.allow(out.now()) {
                return out.error("rate-limited", "too many commands per second");
            }
        }
        let s = &mut self.s;
        self.decoder.decode(raw, |cmd| match cmd {
            Ok(cmd) => s.command(cmd, out),
            Err(e) => out.error(e.code, e.text),
        });
    }

    /// An awaited answer arrived (or timed out): the queued inputs go on.
    fn answered(&mut self, out: &mut impl Encoder) {
        out.answered();
        self.s.waiting = self.s.waiting.saturating_sub(1);
        if self.s.waiting > 0 {
            return;
        }
        self.s.waiting_since = None;
        while self.s.waiting == 0 && !out.is_closing() {
            let Some(input) = self.s.queued.pop_front() else {
                break;
            };
            let input = input.as_deref().map_err(|e| *e);
            self.s.queued_bytes -= QUEUED_ENTRY_COST + input.map_or(0, <[u8]>::len);
            self.run(input, out);
        }
    }

    /// A mailbox event: a room event, or the answer to one of this member's requests.
    pub fn event(&mut self, event: ChatEvent, out: &mut impl Encoder) {
        let s = &mut self.s;
        match event {
            ChatEvent::Room {
                seq,
                publication,
                own,
            } => {
                let Some(st) = s.rooms.get_mut(&publication.room) else {
                    return;
                };
                if seq <= st.since {
                    return;
                }
                if st.holding() {
                    st.held.push((publication, own));
                } else {
                    st.hand_on(&publication, out);
                    if own {
                        self.said(out);
                    }
                }
            }
            ChatEvent::Answer(Answer::History { room, msgs }) => {
                match msgs {
                    Ok(msgs) => history(&room, &msgs, out),
                    Err(e) => out.error(e.code(), &e.to_string()),
                }
                self.answered(out);
            }
            ChatEvent::Answer(Answer::Replay { room, msgs }) => {
                let Some(st) = s.rooms.get_mut(&room) else {
                    return; // Parted meanwhile.
                };
                if st.confirmed {
                    st.replay(msgs, out);
                    if st.release(out) {
                        self.said(out);
                    }
                } else {
                    st.stashed = Some(msgs);
                }
            }
            ChatEvent::Answer(Answer::Joined { room }) => {
                let Some(st) = s.rooms.get_mut(&room) else {
                    return; // Parted meanwhile.
                };
                st.confirmed = true;
                out.reply(Reply::Ok(Done::Join(&room)));
                if let Some(msgs) = st.stashed.take() {
                    st.replay(msgs, out);
                }
                let own = st.release(out);
                self.answered(out);
                if own {
                    self.said(out);
                }
            }
            ChatEvent::Answer(Answer::Who { room, nicks }) => {
                match nicks {
                    Ok(nicks) => out.reply(Reply::Who(&room, &nicks)),
                    Err(e) => out.error(e.code(), &e.to_string()),
                }
                self.answered(out);
            }
            ChatEvent::Answer(Answer::Nick(Ok(new))) => {
                let rooms = s.room_list();
                let Some(me) = &mut s.me else {
                    return;
                };
                let claiming = s.auth.as_mut().and_then(|a| a.claiming.take());
                match s.hub.apply_nick(me.id, &me.nick, &new, &rooms) {
                    Ok(()) => {
                        me.nick = new;
                        match claiming {
                            Some(g) => {
                                out.reply(Reply::Ok(Done::Auth(&me.nick)));
                                if let Some(a) = &mut s.auth {
                                    a.granted = Some(g);
                                }
                            }
                            None => out.reply(Reply::Ok(Done::Nick(&me.nick))),
                        }
                    }
                    Err(e) => out.error(e.code(), &e.to_string()),
                }
                self.answered(out);
            }
            ChatEvent::Answer(Answer::Nick(Err(e))) => {
                if let Some(a) = &mut s.auth {
                    a.claiming = None;
                }
                out.error(e.code(), &e.to_string());
                self.answered(out);
            }
            ChatEvent::Answer(Answer::Failed(e)) => {
                out.error(e.code(), &e.to_string());
                if s.saying > 0 {
                    s.saying -= 1;
                    self.answered(out);
                }
            }
        }
    }

    /// The member's own message was handed on: if its `SAY` awaited it, that `SAY` is
    /// answered and the inputs after it go on.
    fn said(&mut self, out: &mut impl Encoder) {
        if self.s.saying > 0 {
            self.s.saying -= 1;
            self.answered(out);
        }
    }

    /// When an awaited answer is given up on, or the token expires, whichever is
    /// first.
    pub fn deadline(&self) -> Option<Instant> {
        let answer = self.s.waiting_since.map(|t| t + ANSWER_TIMEOUT);
        let expiry = self.s.expires();
        match (answer, expiry) {
            (Some(a), Some(e)) => Some(a.min(e)),
            (a, e) => a.or(e),
        }
    }

    /// A deadline passed: at the token's expiry the connection ends with
    /// `token-expired`; an answer that did not come in time is `unavailable`, and the
    /// queued inputs go on.
    pub fn timeout(&mut self, out: &mut impl Encoder) {
        let now = out.now();
        if self.s.expires().is_some_and(|e| e <= now) {
            out.error(
                "token-expired",
                "the token has expired; connect again with a fresh one",
            );
            // Its rooms are left now, not when the model gets round to the close.
            self.s.leave();
            self.s.me = None;
            out.end(End::Expired);
            return;
        }
        if self.s.waiting == 0 || self.deadline().is_some_and(|d| d > now) {
            return;
        }
        out.error("unavailable", "no answer from the chat backend");
        // A join never confirmed is undone, so it leaves no member that receives
        // nothing but is listed everywhere.
        let s = &mut self.s;
        if let Some(me) = &s.me {
            s.rooms.retain(|room, st| {
                if !st.confirmed {
                    let _ = s.hub.part(me.id, room);
                }
                st.confirmed
            });
        }
        self.s.waiting = 1;
        self.s.saying = 0;
        self.answered(out);
    }

    /// The member is withdrawn before it was ever in a room (a client refused at
    /// `--max-conns`): its guest nick is freed now.
    pub fn withdraw(&mut self) {
        self.s.leave();
        self.s.me = None;
    }

    /// Whether an answer is awaited (from Redis), with commands queued behind it.
    pub fn is_waiting(&self) -> bool {
        self.s.waiting > 0
    }

    /// Whether the member is in at least one room: it may then only listen, and a
    /// quiet room is no reason to drop it as idle.
    pub fn in_a_room(&self) -> bool {
        !self.s.rooms.is_empty()
    }
}

impl<D> Drop for Member<D> {
    /// However the connection ended, its member parts from every room and frees its
    /// nick.
    fn drop(&mut self) {
        self.s.leave();
    }
}

fn history(room: &str, msgs: &[Arc<Publication>], out: &mut impl Encoder) {
    for p in msgs {
        out.publication(p);
    }
    out.reply(Reply::Ok(Done::History(room)));
}

impl State {
    /// When the accepted token expires.
    fn expires(&self) -> Option<Instant> {
        self.auth.as_ref()?.granted.as_ref()?.expires
    }

    /// `AUTH <token>`: a first token takes its `sub` as the nick; a later one for the
    /// same `sub` refreshes the expiry and rooms. Each bad token counts; at
    /// [`MAX_FAILURES`] the connection is closed.
    fn authenticate<E: Encoder>(&mut self, token: &str, out: &mut E) -> bool {
        let Some(auth) = &mut self.auth else {
            out.error(
                "auth-off",
                "this server does not use tokens: no AUTH is needed",
            );
            return false;
        };
        let grant = match auth.verifier.verify(token) {
            Ok(g) => match &auth.granted {
                Some(cur) if !cur.sub.eq_ignore_ascii_case(&g.sub) => {
                    Err("a fresh token must be for the same sub".to_owned())
                }
                _ => Ok(Granted::new(g, out.now())),
            },
            Err(e) => Err(e.to_string()),
        };
        let g = match grant {
            Ok(g) => g,
            Err(why) => {
                self.refuse_token(&why, out);
                return false;
            }
        };
        let Some(me) = &mut self.me else {
            out.error("unavailable", "this connection has no chat membership");
            return false;
        };
        if auth.granted.is_some() || auth.claiming.is_some() {
            // A refresh (or a second token while the first's nick is being claimed).
            out.reply(Reply::Ok(Done::Auth(&me.nick)));
            match &mut auth.claiming {
                Some(c) => *c = g,
                None => auth.granted = Some(g),
            }
            return false;
        }
        let rooms = self.rooms.keys().cloned().collect::<Vec<_>>();
        match self.hub.set_nick(me.id, &me.nick, &g.sub, &rooms, &me.tx) {
            Ok(Deferred::Now(new)) => {
                out.reply(Reply::Ok(Done::Auth(&new)));
                me.nick = new;
                auth.granted = Some(g);
                false
            }
            Ok(Deferred::Later) => {
                auth.claiming = Some(g);
                true
            }
            Err(e) => {
                let text = match e {
                    HubError::NickTaken => "the token's nick is in use by another connection",
                    _ => "the token's nick cannot be taken now",
                };
                out.error(e.code(), text);
                false
            }
        }
    }

    /// A bad token: `bad-token`, and at [`MAX_FAILURES`] of them the connection ends
    /// with a last line saying why.
    fn refuse_token<E: Encoder>(&mut self, why: &str, out: &mut E) {
        out.error("bad-token", why);
        let Some(auth) = &mut self.auth else {
            return;
        };
        auth.failures += 1;
        if auth.failures >= MAX_FAILURES {
            out.error("auth-failed", "too many bad tokens: closing the connection");
            self.leave();
            self.me = None;
            out.end(End::AuthFailed);
        }
    }

    /// Whether `cmd` may run under the chat's authentication; if not, says why.
    fn allowed<E: Encoder>(&self, cmd: &Command<'_>, out: &mut E) -> bool {
        let Some(auth) = &self.auth else {
            return true;
        };
        let Some(g) = &auth.granted else {
            if matches!(cmd, Command::Auth(_) | Command::Quit) {
                return true;
            }
            out.error("auth-required", "send AUTH <token> first");
            return false;
        };
        match cmd {
            Command::Nick(_) => {
                out.error("nick-fixed", "the nick is the token's sub");
                false
            }
            Command::Join { room, .. }
                if g.rooms.as_ref().is_some_and(|r| !r.allows(room))
                    && !self.rooms.contains_key(*room) =>
            {
                out.error("forbidden", "the token does not allow this room");
                false
            }
            _ => true,
        }
    }

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

    fn command<E: Encoder>(&mut self, cmd: Command<'_>, out: &mut E) {
        if !self.allowed(&cmd, out) {
            return;
        }
        if let Command::Auth(token) = cmd {
            if self.authenticate(token, out) {
                self.waiting += 1;
                self.waiting_since.get_or_insert(out.now());
            }
            return;
        }
        if cmd == Command::Quit {
            out.reply(Reply::Ok(Done::Quit));
            self.leave();
            self.me = None;
            out.end(End::Quit);
            return;
        }
        let Some(me) = &mut self.me else {
            out.error("unavailable", "this connection has no chat membership");
            return;
        };
        let hub = &self.hub;
        let mut pending = false;
        let res = match cmd {
            Command::Nick(nick) => {
                let rooms: Vec<Arc<str>> = self.rooms.keys().cloned().collect();
                hub.set_nick(me.id, &me.nick, nick, &rooms, &me.tx)
                    .map(|new| match new {
                        Deferred::Now(new) => {
                            out.reply(Reply::Ok(Done::Nick(&new)));
                            me.nick = new;
                        }
                        Deferred::Later => pending = true,
                    })
            }
            Command::Join { room, .. }
                if self.rooms.len() >= hub.max_rooms_per_conn()
                    && !self.rooms.contains_key(room) =>
            {
                Err(HubError::TooManyRooms)
            }
            Command::Join { room, after } => hub
                .join(me.id, &me.nick, &me.tx, E::WIRE, room, after)
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
                        out.reply(Reply::Ok(Done::Join(&j.room)));
                    } else {
                        pending = true;
                    }
                    for p in &j.replay {
                        st.hand_on(p, out);
                    }
                    self.rooms.insert(j.room, st);
                }),
            Command::Part(room) => hub.part(me.id, room).map(|()| {
                self.rooms.remove(room);
                out.reply(Reply::Ok(Done::Part(room)));
            }),
            // The author's own message arrives through its mailbox like everyone's,
            // so it is in the room's order; it is the `SAY`'s answer, so the commands
            // after it wait for it.
            Command::Say { room, text } => hub.say(me.id, room, text).map(|_| {
                pending = true;
                self.saying += 1;
            }),
            Command::History { room, n } => hub.history(room, n, &me.tx).map(|msgs| match msgs {
                Deferred::Now(msgs) => history(room, &msgs, out),
                Deferred::Later => pending = true,
            }),
            Command::Who(room) => hub.who_all(room, &me.tx).map(|nicks| match nicks {
                Deferred::Now(nicks) => out.reply(Reply::Who(room, &nicks)),
                Deferred::Later => pending = true,
            }),
            Command::Quit | Command::Auth(_) => Ok(()), // Answered above.
        };
        if let Err(e) = res {
            out.error(e.code(), &e.to_string());
        }
        if pending {
            self.waiting += 1;
            self.waiting_since.get_or_insert(out.now());
        }
    }
}

#[cfg(test)]
mod tests {
    //! The core on its own, with an encoder that records what it is told: the deferred
    //! answers of a Redis hub are played by hand, in every order they can come in.

    use super::*;
    use crate::base::mailbox::{Mailbox, WakeKind};
    use crate::hub::{HubConfig, Kind};

    /// Records what a member is told, one short line per thing.
    struct Rec {
        now: Instant,
        closing: bool,
        said: Vec<String>,
        mailbox: Arc<Mailbox<ChatEvent>>,
    }

    impl Rec {
        fn new() -> Rec {
            Rec {
                now: Instant::now(),
                closing: false,
                said: Vec::new(),
                mailbox: Arc::new(Mailbox::new(1 << 20, WakeKind::None).unwrap()),
            }
        }

        fn take(&mut self) -> Vec<String> {
            std::mem::take(&mut self.said)
        }

        /// Hands what the member's mailbox holds to `m`, as a model would.
        fn deliver(&mut self, m: &mut Member<Lines>) {
            let mut batch = VecDeque::new();
            self.mailbox.take(&mut batch);
            for ev in batch {
                m.event(ev, self);
            }
        }
    }

    impl Encoder for Rec {
        const WIRE: Wire = Wire::Line;
        fn now(&mut self) -> Instant {
            self.now
        }
        fn is_closing(&mut self) -> bool {
            self.closing
        }
        fn mailbox(&mut self) -> std::io::Result<Sender<ChatEvent>> {
            Ok(Sender::new(self.mailbox.clone()))
        }
        fn reply(&mut self, reply: Reply<'_>) {
            self.said.push(match reply {
                Reply::Welcome { nick, .. } => format!("welcome {nick}"),
                Reply::Ok(done) => format!("ok {done:?}"),
                Reply::Who(room, nicks) => format!("who {room} {}", nicks.join(" ")),
                Reply::Error(code, _) => format!("error {code}"),
            });
        }
        fn publication(&mut self, p: &Publication) {
            let s = String::from_utf8(p.encoded(Wire::Line).to_vec()).unwrap();
            self.said.push(s.trim_end().to_string());
        }
        fn end(&mut self, why: End) {
            self.said.push(format!("end {why:?}"));
            self.closing = true;
        }
    }

    /// The line protocol's commands.
    struct Lines;

    impl Decoder for Lines {
        fn decode<R>(
            &self,
            raw: &[u8],
            run: impl FnOnce(Result<Command<'_>, ParseError>) -> R,
        ) -> R {
            run(super::super::parse(raw))
        }
    }

    fn member(max_rate: Option<u32>) -> (Member<Lines>, Rec) {
        let hub = Arc::new(Hub::new(HubConfig::default()));
        let mut m = Member::new(hub, Lines, max_rate);
        let mut rec = Rec::new();
        m.open(&mut rec);
        assert!(rec.take()[0].starts_with("welcome guest-"));
        (m, rec)
    }

    /// Joins `room` in the hub, then puts the member where a Redis hub leaves it: the
    /// join not yet in effect (`Answer::Joined` to come), and with `replay`, a replay
    /// on its way (`Answer::Replay` to come).
    fn join_deferred(m: &mut Member<Lines>, rec: &mut Rec, room: &str, replay: bool) {
        m.input(Ok(format!("JOIN {room}").as_bytes()), rec);
        assert_eq!(rec.take(), ["ok Join(\"r\")"], "the local join itself");
        let st = m.s.rooms.get_mut(room).unwrap();
        st.since = 0; // A Redis hub starts the membership at its own JOIN.
        st.confirmed = false;
        st.awaiting_replay = replay;
        m.s.waiting += 1;
        m.s.waiting_since = Some(rec.now);
    }

    fn msg(id: u64, text: &str) -> Arc<Publication> {
        Arc::new(Publication::new(
            "r".into(),
            Kind::Msg {
                id: MsgId(id),
                nick: "ann".into(),
                text: text.into(),
                time: None,
            },
        ))
    }

    fn live(seq: u64, p: &Arc<Publication>) -> ChatEvent {
        ChatEvent::Room {
            seq,
            publication: p.clone(),
            own: false,
        }
    }

    fn answer(a: Answer) -> ChatEvent {
        ChatEvent::Answer(a)
    }

    fn joined() -> ChatEvent {
        answer(Answer::Joined { room: "r".into() })
    }

    fn replay(msgs: &[&Arc<Publication>]) -> ChatEvent {
        answer(Answer::Replay {
            room: "r".into(),
            msgs: Ok(msgs.iter().map(|p| Arc::clone(p)).collect()),
        })
    }

    #[test]
    fn ok_join_waits_for_the_hub_and_replay_has_no_gap_and_no_duplicate() {
        let (m5, m6, m7, m8) = (
            msg(5, "five"),
            msg(6, "six"),
            msg(7, "seven"),
            msg(8, "eight"),
        );
        let want = [
            "ok Join(\"r\")",
            "MSG r 5 ann five",
            "MSG r 6 ann six",
            "MSG r 7 ann seven",
        ];
        // Live first, then the replay, then the confirmation.
        let (mut m, mut rec) = member(None);
        join_deferred(&mut m, &mut rec, "r", true);
        m.event(live(1, &m7), &mut rec);
        m.event(replay(&[&m5, &m6, &m7]), &mut rec);
        assert_eq!(
            rec.take(),
            Vec::<String>::new(),
            "nothing before the join is in effect"
        );
        m.event(joined(), &mut rec);
        assert_eq!(rec.take(), want);
        m.event(live(2, &m8), &mut rec);
        assert_eq!(rec.take(), ["MSG r 8 ann eight"]);

        // The confirmation first, then live events, then the replay.
        let (mut m, mut rec) = member(None);
        join_deferred(&mut m, &mut rec, "r", true);
        m.event(joined(), &mut rec);
        assert_eq!(rec.take(), ["ok Join(\"r\")"]);
        m.event(live(1, &m7), &mut rec);
        assert_eq!(
            rec.take(),
            Vec::<String>::new(),
            "held until the replay is in"
        );
        m.event(replay(&[&m5, &m6]), &mut rec);
        assert_eq!(rec.take(), want[1..]);

        // No replay asked for: held only until the confirmation.
        let (mut m, mut rec) = member(None);
        join_deferred(&mut m, &mut rec, "r", false);
        m.event(live(1, &m7), &mut rec);
        assert_eq!(rec.take(), Vec::<String>::new());
        m.event(joined(), &mut rec);
        assert_eq!(rec.take(), [want[0], want[3]]);
    }

    #[test]
    fn commands_after_a_deferred_join_wait_for_its_ok() {
        let (mut m, mut rec) = member(None);
        join_deferred(&mut m, &mut rec, "r", false);
        m.input(Ok(b"SAY r hello"), &mut rec);
        m.input(
            Err(ParseError {
                code: "line-too-long",
                text: "x",
            }),
            &mut rec,
        );
        m.input(Ok(b"WHO r"), &mut rec);
        rec.deliver(&mut m);
        assert_eq!(rec.take(), Vec::<String>::new(), "all three wait, in order");
        m.event(joined(), &mut rec);
        let nick = m.s.me.as_ref().unwrap().nick.to_string();
        assert_eq!(rec.take(), ["ok Join(\"r\")"], "the rest waits for the SAY");
        rec.deliver(&mut m);
        let said = rec.take();
        assert_eq!(said.len(), 3);
        assert!(said[0].ends_with(&format!(" {nick} hello")), "{said:?}");
        assert_eq!(
            said[1..],
            ["error line-too-long".to_string(), format!("who r {nick}")]
        );
    }

    #[test]
    fn the_queue_behind_an_answer_is_bounded_even_for_empty_inputs() {
        let (mut m, mut rec) = member(None);
        join_deferred(&mut m, &mut rec, "r", false);
        let refused = ParseError {
            code: "bad-json",
            text: "x",
        };
        let room = MAX_QUEUED / QUEUED_ENTRY_COST;
        for i in 0..room + 10 {
            m.input(if i % 2 == 0 { Ok(b"") } else { Err(refused) }, &mut rec);
        }
        assert_eq!(m.s.queued.len(), room);
        assert_eq!(m.s.queued_bytes, room * QUEUED_ENTRY_COST);
        // Beyond the bound, inputs are answered at once rather than kept.
        assert_eq!(rec.take().len(), 10);
        m.event(joined(), &mut rec);
        assert_eq!(rec.take().len(), 1 + room);
        assert_eq!((m.s.queued.len(), m.s.queued_bytes), (0, 0));
    }

    #[test]
    fn an_unanswered_join_times_out_unavailable_and_is_undone() {
        let (mut m, mut rec) = member(None);
        join_deferred(&mut m, &mut rec, "r", true);
        m.input(Ok(b"WHO r"), &mut rec);
        let deadline = m.deadline().expect("a timer while waiting");
        assert_eq!(deadline, rec.now + ANSWER_TIMEOUT);
        rec.now = deadline;
        m.timeout(&mut rec);
        // The queued WHO goes on: the room is gone with its only member.
        assert_eq!(rec.take(), ["error unavailable", "error no-such-room"]);
        assert!(!m.in_a_room());
        assert_eq!(m.deadline(), None);
        // A late confirmation finds no room: nothing is said.
        m.event(joined(), &mut rec);
        assert_eq!(rec.take(), Vec::<String>::new());
    }

    #[test]
    fn a_say_is_answered_by_its_own_message_and_the_commands_after_it_wait() {
        let (mut m, mut rec) = member(None);
        m.input(Ok(b"JOIN r"), &mut rec);
        assert_eq!(rec.take(), ["ok Join(\"r\")"]);
        let nick = m.s.me.as_ref().unwrap().nick.to_string();
        m.input(Ok(b"SAY r hi"), &mut rec);
        m.input(Ok(b"WHO r"), &mut rec);
        m.input(Ok(b"QUIT"), &mut rec);
        assert_eq!(rec.take(), Vec::<String>::new(), "WHO and QUIT wait");
        assert!(m.is_waiting(), "an EOF now must not close");
        rec.deliver(&mut m);
        let said = rec.take();
        assert_eq!(said.len(), 4, "{said:?}");
        assert!(said[0].ends_with(&format!(" {nick} hi")), "{said:?}");
        assert_eq!(
            said[1..],
            [format!("who r {nick}"), "ok Quit".into(), "end Quit".into()]
        );
    }

    #[test]
    fn another_members_message_does_not_answer_a_say() {
        let (mut m, mut rec) = member(None);
        m.input(Ok(b"JOIN r"), &mut rec);
        rec.take();
        // Joined in the hub only, so the room's event reaches the member as it would.
        m.s.waiting += 1;
        m.s.saying = 1;
        m.s.waiting_since = Some(rec.now);
        m.input(Ok(b"WHO r"), &mut rec);
        m.event(live(5, &msg(9, "from ann")), &mut rec);
        assert_eq!(rec.take(), ["MSG r 9 ann from ann"], "WHO still waits");
        let own = ChatEvent::Room {
            seq: 6,
            publication: msg(10, "mine"),
            own: true,
        };
        m.event(own, &mut rec);
        let said = rec.take();
        assert_eq!(said[0], "MSG r 10 ann mine");
        assert!(said[1].starts_with("who r "), "{said:?}");
    }

    #[test]
    fn a_failed_say_is_answered_unavailable_and_the_commands_after_it_go_on() {
        let (mut m, mut rec) = member(None);
        m.input(Ok(b"JOIN r"), &mut rec);
        rec.take();
        m.s.waiting += 1;
        m.s.saying = 1;
        m.s.waiting_since = Some(rec.now);
        m.input(Ok(b"PART r"), &mut rec);
        assert_eq!(rec.take(), Vec::<String>::new());
        m.event(answer(Answer::Failed(HubError::Unavailable)), &mut rec);
        assert_eq!(rec.take(), ["error unavailable", "ok Part(\"r\")"]);
        assert!(!m.is_waiting());
        // A say never answered at all times out the same way.
        m.input(Ok(b"JOIN r"), &mut rec);
        rec.take();
        m.s.waiting += 1;
        m.s.saying = 1;
        m.s.waiting_since = Some(rec.now);
        m.input(Ok(b"PART r"), &mut rec);
        rec.now += ANSWER_TIMEOUT;
        m.timeout(&mut rec);
        assert_eq!(rec.take(), ["error unavailable", "ok Part(\"r\")"]);
    }

    #[test]
    fn says_beyond_the_queue_bound_are_each_answered_and_none_is_left_waiting() {
        let (mut m, mut rec) = member(None);
        m.input(Ok(b"JOIN r"), &mut rec);
        rec.take();
        let text = "x".repeat(4000);
        let n = MAX_QUEUED / (QUEUED_ENTRY_COST + 6 + text.len()) + 5;
        for _ in 0..n {
            m.input(Ok(format!("SAY r {text}").as_bytes()), &mut rec);
        }
        assert!(m.s.saying > 1, "some ran at once, beyond the bound");
        for _ in 0..2 * n {
            rec.deliver(&mut m);
        }
        let msgs = rec.take();
        assert_eq!(msgs.len(), n, "every SAY answered by its MSG");
        assert!(!m.is_waiting(), "nothing left waiting for an answer");
        assert_eq!(m.deadline(), None);
    }

    #[test]
    fn the_rate_limit_counts_commands_not_refused_framing() {
        let (mut m, mut rec) = member(Some(2));
        let refused = ParseError {
            code: "bad-json",
            text: "x",
        };
        m.input(Err(refused), &mut rec);
        m.input(Ok(b"JOIN r"), &mut rec);
        m.input(Ok(b"PART r"), &mut rec);
        m.input(Ok(b"JOIN r"), &mut rec);
        assert_eq!(
            rec.take(),
            [
                "error bad-json",
                "ok Join(\"r\")",
                "ok Part(\"r\")",
                "error rate-limited"
            ]
        );
        rec.now += Duration::from_millis(500);
        m.input(Ok(b"JOIN r"), &mut rec);
        assert_eq!(rec.take(), ["ok Join(\"r\")"], "refilled at 2 a second");
    }
}
