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
//! A `SAY`'s answer is its own message coming back (over Redis, a round trip), so
//! the commands after it wait; but `SAY`s of one room that follow it go out at once,
//! up to [`MAX_IN_FLIGHT`], each answered in its turn: by its message (a room's
//! messages come back in the order they were sent), or by the refusal it got, said
//! only once the `SAY`s before it are answered. A refusal from Redis carries the
//! `SAY`'s tag, since it may arrive before an earlier `SAY`'s message (the two come on
//! different connections). The one case this cannot tell apart: a `SAY` answered
//! `unavailable` whose message Redis did run and publish late (see the bridge's "A
//! refused message is never sent") answers the next pending `SAY` of its room early.
//!
//! Room events are handed on as the hub's shared encoding for the member's wire
//! ([`Publication::encoded`]): encoded once per wire, never per member.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::base::mailbox::Sender;
use crate::hub::{Answer, ChatEvent, Deferred, Hub, HubError, MemberId, Publication, Wire};

use super::auth::Verifier;
use super::{Command, ParseError};
use rate::Rate;

mod auth;
mod rate;
mod room;
mod says;

use auth::Auth;
use room::{Joined, RoomState};
use says::{Outcome, Refusal, Said, Says};

/// How long a command waits for an answer from Redis before it is answered
/// `unavailable` and the commands after it go on.
pub(super) const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// The text of the `unavailable` answer of a command whose answer did not come in
/// time (its message may have gone out nevertheless: see `hub/bridge`).
const NO_ANSWER: &str = "no answer from the chat backend";
/// Command bytes kept in order behind a command awaiting its answer; beyond this,
/// commands are not carried out: each is refused `queue-full` in its turn (counted,
/// not kept), so answers still come in command order and memory stays bounded.
const MAX_QUEUED: usize = 256 * 1024;
/// In `State::overflow`: a `QUIT` came after the commands refused `queue-full`.
const QUIT_AFTER: u32 = 1 << 31;
/// The refusal of a command that came while [`MAX_QUEUED`] were waiting.
const QUEUE_FULL: (&str, &str) = (
    "queue-full",
    "too many commands wait for an answer (256 KiB); this one was not carried out",
);
/// What one queued input counts for beyond its bytes, so that empty frames and refused
/// inputs (which keep no bytes) cannot be queued without bound either.
const QUEUED_ENTRY_COST: usize = 64;
/// `SAY`s of one connection sent on before the first of them is answered. Over Redis a
/// `SAY` is answered by its own message coming back, a round trip; a client that
/// pipelines its messages would otherwise pay one round trip each, in series. Each
/// one in flight stays charged to [`MAX_QUEUED`] (its bytes wait in the bridge's
/// queue) until it is answered.
pub(super) const MAX_IN_FLIGHT: usize = 32;

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
        /// The largest room whose members are told of joins and parts: a client
        /// showing a larger room's members asks `WHO` again now and then.
        presence_limit: usize,
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
    /// Sends the rest of a room event's encoding for [`Self::WIRE`], from byte
    /// `from`: the deliverer wrote the first part on the socket
    /// ([`ChatEvent::Rest`]). Only a wire whose session lends its socket gets one.
    fn rest(&mut self, p: &Publication, from: usize) {
        let _ = from;
        tracing::error!("chat: a partly written event on a wire that never lends its socket");
        self.publication(p);
    }
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
    rooms: Joined,
    rate: Option<Rate>,
    /// Answers awaited (`NICK`, `JOIN`, `WHO`, `HISTORY` with `--redis`; `SAY`
    /// always): the inputs after them wait in `queued`, so replies come in command
    /// order and a `SAY` after a `NICK` speaks with the new nick. `SAY`s of one room
    /// go on before (see [`Said`]).
    waiting: u32,
    /// The awaited answers that are `SAY`s', in command order (counted in `waiting`
    /// too). Up to [`MAX_IN_FLIGHT`] of one room go out at once: Redis runs them in
    /// the order sent and publishes the room's messages in that order, so their own
    /// messages come back in it.
    says: Says,
    /// Since when the oldest awaited answer that is not a `SAY`'s is awaited.
    waiting_since: Option<Instant>,
    queued: VecDeque<Result<Box<[u8]>, ParseError>>,
    /// Inputs that came while `queued` was full, after everything in it: each is
    /// refused `queue-full` in its turn. While any is counted, every new input joins
    /// them, so none is answered out of turn. With [`QUIT_AFTER`]: a `QUIT` came
    /// after them, carried out once they are refused (whatever came after it is
    /// never read, as after any `QUIT`).
    overflow: u32,
    /// Bytes of `queued` and of the `SAY`s in flight, each with its entry cost (a
    /// `u32` keeps the member small; it stays within `MAX_QUEUED` and one input).
    queued_bytes: u32,
    /// Token authentication, when the chat requires it (boxed: a connection of an
    /// open chat pays one pointer for it).
    auth: Option<Box<Auth>>,
    /// Rooms left while their events were being handed out: a deliverer may still
    /// hold a list of members with this one in it, so the member's socket is not lent
    /// (see [`Member::may_lend`]) until none of them is being handed out.
    fenced: Vec<Arc<str>>,
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
                rooms: Joined::default(),
                rate: max_rate.filter(|&r| r > 0).map(Rate::new),
                waiting: 0,
                says: Says(None),
                waiting_since: None,
                queued: VecDeque::new(),
                overflow: 0,
                queued_bytes: 0,
                auth: None,
                fenced: Vec::new(),
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
                    presence_limit: self.s.hub.presence_limit(),
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
        if self.s.waiting == 0 {
            return self.run(input, out);
        }
        let size = QUEUED_ENTRY_COST + input.map_or(0, <[u8]>::len);
        if self.s.overflow == 0 && self.s.queued_bytes as usize + size <= MAX_QUEUED {
            self.s.queued_bytes += size as u32;
            self.s.queued.push_back(input.map(Box::from));
            self.ahead(out);
        } else if self.s.overflow & QUIT_AFTER == 0 {
            let quit = input.is_ok_and(|raw| {
                self.decoder
                    .decode(raw, |cmd| matches!(cmd, Ok(Command::Quit)))
            });
            self.s.overflow = if quit {
                self.s.overflow | QUIT_AFTER
            } else {
                (self.s.overflow + 1).min(QUIT_AFTER - 1)
            };
        }
    }

    /// While only `SAY`s are awaited, sends on the queued `SAY`s of their room that
    /// come next, up to [`MAX_IN_FLIGHT`]: each is answered in its turn all the same
    /// (a refusal now is said once the ones before it are answered).
    fn ahead(&mut self, out: &mut impl Encoder) {
        let s = &mut self.s;
        while s.waiting as usize == s.says.len()
            && s.says.len() < MAX_IN_FLIGHT
            && s.auth.as_ref().is_none_or(|a| a.granted.is_some())
            && !out.is_closing()
        {
            let (Some(last), Some(Ok(_))) = (s.says.back(), s.queued.front()) else {
                return;
            };
            let room = last.room.clone();
            let Some(Ok(raw)) = s.queued.pop_front() else {
                return;
            };
            let cost = (QUEUED_ENTRY_COST + raw.len()) as u32;
            let taken = self.decoder.decode(&raw, |cmd| match cmd {
                Ok(Command::Say { room: r, text }) if *r == *room => {
                    s.say_ahead(room, text, cost, out);
                    true
                }
                _ => false,
            });
            if !taken {
                s.queued.push_front(Ok(raw));
                return;
            }
            // Its bytes stay charged, now to the `SAY` in flight.
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
        if self.s.waiting as usize == self.s.says.len() {
            self.s.waiting_since = None;
        }
        while self.s.waiting == 0 && !out.is_closing() {
            let Some(input) = self.s.queued.pop_front() else {
                // Then the inputs that found the queue full, each refused in turn.
                let overflow = std::mem::take(&mut self.s.overflow);
                for _ in 0..overflow & !QUIT_AFTER {
                    out.error(QUEUE_FULL.0, QUEUE_FULL.1);
                    out.answered();
                }
                if overflow & QUIT_AFTER != 0 {
                    self.s.command(Command::Quit, out);
                    out.answered();
                }
                break;
            };
            let input = input.as_deref().map_err(|e| *e);
            self.s.queued_bytes -= (QUEUED_ENTRY_COST + input.map_or(0, <[u8]>::len)) as u32;
            self.run(input, out);
        }
        self.ahead(out);
    }

    /// Answers the `SAY`s at the front whose outcome is known, in command order.
    fn settle(&mut self, out: &mut impl Encoder) {
        while let Some(front) = self.s.says.front() {
            match front.outcome {
                Outcome::Pending => return,
                Outcome::Delivered => {}
                Outcome::Refused(code, why) => match why {
                    Refusal::Hub(e) => out.error(code, &e.to_string()),
                    Refusal::RateLimited => out.error(code, "too many commands per second"),
                    Refusal::NoAnswer => out.error(code, NO_ANSWER),
                },
            }
            let cost = front.cost;
            self.s.says.pop_front();
            self.s.queued_bytes -= cost;
            self.answered(out);
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
                    st.hand_on_live(&publication, out);
                    if own {
                        self.said(&publication.room, 1, out);
                    }
                }
            }
            ChatEvent::Rest { publication, from } => out.rest(&publication, from),
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
                    let own = st.release(out);
                    self.said(&room, own, out);
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
                self.said(&room, own, out);
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
            ChatEvent::Answer(Answer::Failed { say, error }) => {
                // Not found: it was answered already (its answer timed out).
                let pending = s.says.iter_mut().find(|x| x.tag == say);
                if let Some(said) = pending.filter(|x| matches!(x.outcome, Outcome::Pending)) {
                    said.outcome = Outcome::Refused(error.code(), Refusal::Hub(error));
                    self.settle(out);
                }
            }
        }
    }

    /// `n` of the member's own messages in `room` were handed on: each answers the
    /// first `SAY` of that room still pending (its messages come back in the order
    /// sent, and a `SAY` refused has none), and the `SAY`s answered in turn go on.
    fn said(&mut self, room: &str, n: usize, out: &mut impl Encoder) {
        if n == 0 {
            return;
        }
        let mut left = n;
        for said in self.s.says.iter_mut() {
            if left == 0 {
                break;
            }
            if matches!(said.outcome, Outcome::Pending) && *said.room == *room {
                said.outcome = Outcome::Delivered;
                left -= 1;
            }
        }
        self.settle(out);
    }

    /// When an awaited answer is given up on, or the token expires, whichever is
    /// first.
    pub fn deadline(&self) -> Option<Instant> {
        let say = self.s.says.front().map(|s| s.since);
        let since = match (self.s.waiting_since, say) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let answer = since.map(|t| t + ANSWER_TIMEOUT);
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
        if self
            .s
            .waiting_since
            .is_none_or(|t| t + ANSWER_TIMEOUT > now)
        {
            // Only `SAY`s are late: each late one is answered `unavailable`, in turn.
            let late = now.checked_sub(ANSWER_TIMEOUT);
            for said in self.s.says.iter_mut() {
                if matches!(said.outcome, Outcome::Pending) && late.is_some_and(|l| said.since <= l)
                {
                    said.outcome = Outcome::Refused("unavailable", Refusal::NoAnswer);
                }
            }
            self.settle(out);
            return;
        }
        out.error("unavailable", NO_ANSWER);
        // A join never confirmed is undone, so it leaves no member that receives
        // nothing but is listed everywhere.
        let s = &mut self.s;
        if let Some(me) = &s.me {
            let fenced = &mut s.fenced;
            s.rooms.retain(|room, st| {
                if !st.confirmed {
                    let _ = s.hub.part(me.id, room);
                    fenced.push(room.clone());
                }
                st.confirmed
            });
        }
        // Every other answer awaited is given up on with it; `SAY`s, each answered
        // in turn, are not.
        self.s.waiting = self.s.says.len() as u32 + 1;
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

    /// Whether the member's next room events may be written on its socket by the
    /// deliverer itself ([`Session::may_lend`](crate::service::Session::may_lend)):
    /// nothing awaited or queued, and every room's events handed on as they come (no
    /// join unconfirmed, no replay to deduplicate against, no room just left whose
    /// events a deliverer may still be handing out).
    pub fn may_lend(&mut self) -> bool {
        let s = &mut self.s;
        if s.me.is_none()
            || s.waiting > 0
            || s.overflow > 0
            || !s.queued.is_empty()
            || s.says.len() > 0
            || !s.rooms.values().all(RoomState::settled)
        {
            return false;
        }
        if !s.fenced.is_empty() {
            let hub = &s.hub;
            s.fenced.retain(|room| hub.delivering(room));
        }
        s.fenced.is_empty()
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
    /// `room` was left: its deliverer, if one is at work, may still hold this member.
    fn fence(&mut self, room: &str) {
        if self.hub.delivering(room) {
            self.fenced.push(room.into());
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
                        replayed: !j.replay.is_empty(),
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
                self.fence(room);
                out.reply(Reply::Ok(Done::Part(room)));
            }),
            // The author's own message arrives through its mailbox like everyone's,
            // so it is in the room's order; it is the `SAY`'s answer, so the commands
            // after it wait for it.
            Command::Say { room, text } => {
                let tag = self.says.next_tag();
                let cost = (QUEUED_ENTRY_COST + text.len()) as u32;
                hub.say_tagged(me.id, room, text, tag).map(|_| {
                    let known = self.rooms.key(room).cloned();
                    let room = known.unwrap_or_else(|| Arc::from(room));
                    self.says.push_back(Said {
                        tag,
                        room,
                        since: out.now(),
                        cost,
                        outcome: Outcome::Pending,
                    });
                    self.queued_bytes += cost;
                    self.waiting += 1;
                })
            }
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

    /// A `SAY` in `room` sent on behind the `SAY`s in flight (see `Member::ahead`):
    /// in flight too, or refused, to be answered in its turn.
    fn say_ahead<E: Encoder>(&mut self, room: Arc<str>, text: &str, cost: u32, out: &mut E) {
        let now = out.now();
        let tag = self.says.next_tag();
        let allowed = self.rate.as_mut().is_none_or(|r| r.allow(now));
        let outcome = match &self.me {
            _ if !allowed => Outcome::Refused("rate-limited", Refusal::RateLimited),
            None => Outcome::Refused("unavailable", Refusal::Hub(HubError::Unavailable)),
            Some(me) => match self.hub.say_tagged(me.id, &room, text, tag) {
                Ok(_) => Outcome::Pending,
                Err(e) => Outcome::Refused(e.code(), Refusal::Hub(e)),
            },
        };
        self.says.push_back(Said {
            tag,
            room,
            since: now,
            cost,
            outcome,
        });
        self.waiting += 1;
    }
}

#[cfg(test)]
mod tests;
