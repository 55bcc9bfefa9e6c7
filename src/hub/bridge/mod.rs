//! The Redis bridge: makes several processes one chat (`--redis URL`), on one Redis
//! or a Redis Cluster (`cluster.rs`: rooms spread over the masters by hash tag, fan-out
//! over sharded pub/sub, messages acknowledged once a replica has them). What follows
//! is written for one Redis; on a cluster it holds per room, on the room's master.
//!
//! Every room event goes through Redis, and each process delivers to its own members
//! only what comes back on the shared channel, so all processes see each room in one
//! order: Redis runs commands one at a time, and pub/sub hands messages out in the
//! order they were published.
//!
//! - A message is one Lua script, atomic in Redis: `INCR` the room's counter (the
//!   message id), `XADD` the event to the room's stream (its history, trimmed to
//!   `--history`, keyed by that id so `AFTER <id>` is an `XRANGE`), and `PUBLISH` it.
//!   Either all three happen or none, and a `SAY` answered `ERR unavailable` is run by
//!   nobody later (next section): nothing is half-delivered.
//! - Joins, parts and nick changes are one script each too: list or unlist the nick in
//!   the room's presence set, then `PUBLISH` the event.
//! - `HISTORY` and the replay of `JOIN ... AFTER` are read from the stream and reach
//!   the member through its mailbox, like everything else.
//!
//! # Pipelining
//!
//! Requests reach the bridge thread through one queue, in the order the hub made
//! them; it is bounded for the requests that may be refused (departures are not: see
//! `queue.rs`). The bridge sends whatever is queued (up to [`BATCH`] requests) as one
//! pipeline on its one connection and, while that pipeline is out, collects the next
//! ones: a group commit, so one round trip serves many requests under load and a lone
//! request still goes out at once. Redis runs a connection's commands in the order
//! they were written, so a member's requests (a `JOIN` then the `XRANGE` of its
//! replay, two `SAY`s) keep their order, and the scripts keep each room's one order.
//! A member keeps up to 32 `SAY`s of one room in flight (`service/chat/member.rs`):
//! a client that pipelines its messages has them in one pipeline, not one round trip
//! each.
//! Only one pipeline is out at a time: that order then never depends on the client
//! library's scheduling. The scripts are loaded once per connection (`SCRIPT LOAD`)
//! and called by hash.
//!
//! Events coming back on the channel are put in order into the rooms by the bridge
//! thread (short: a push and, for a member's own `JOIN`, its `OK JOIN`); handing them
//! to the members, the long part (one send per member), runs on a second thread, so a
//! join storm's fan-out never delays the answers of the joins behind it.
//!
//! # A refused message is never sent
//!
//! A `SAY` whose pipeline gets no answer within [`COMMAND_TIMEOUT`] (Redis hangs: a
//! stopped process, a stalled host) is answered `ERR unavailable`, yet the command
//! already sits in Redis's socket buffer: a Redis that resumes would run it, and the
//! other processes would deliver a message its author was told had failed. So every
//! `SAY` carries a deadline on Redis's own clock, [`SAY_BUDGET`] (half the timeout)
//! after its pipeline goes out, and the script checks it before anything else: past
//! it, it changes nothing and answers `EXPIRED`, which the bridge (if it still waits)
//! answers `unavailable` too. Redis's clock is estimated here from `TIME` readings
//! (see [`Clock`]): one on every connect, then one at the end of each expiry scan's
//! pipeline (every `T/6`). The estimate errs low, which only moves deadlines earlier.
//!
//! So a message Redis runs ran within the budget of going out, and its reply has the
//! other half of the timeout to come back. What is left: a reply delayed more than
//! that margin after the script ran (Redis stopped right after running it, the
//! network or this process stalled), or a connection that breaks (an error, not a
//! timeout) after the script ran and before its reply arrived. Then the author is
//! told `unavailable` although the message was sent; every process delivers it (one
//! whose subscription missed it reads it back from the history: `repair.rs`) and it
//! is in the history. Notifications (`Hub::announce`)
//! go through the same script with the same deadline; their sender was answered when
//! they were queued, so one refused is only logged.
//!
//! # Presence
//!
//! A room's presence in Redis is one set of nicks per process with members there
//! (`mc:room:{room}:at:<process>`) and the room's leases: a sorted set of those
//! processes scored by when each one's lease there lapses. Each nick claim is a key
//! with an expiry. Times are Redis's own clock (`TIME` in the scripts), so processes
//! on hosts whose clocks differ agree. With `T` = `--presence-ttl`, every process
//! renews its lease in each of its rooms and its nick claims every `T/3` for `2T/3`
//! from then: one command per room, whatever its members (a room of 100,000 members
//! over six processes costs six commands per renewal, not a listing per member), and
//! every `T/6` it parts the members of the processes whose lease lapsed in the rooms
//! it has members in, publishing a `PART` for each (one script: whoever parts a
//! process's members publishes their `PART`s, once). A join adds its nick to its
//! process's set, a part removes it, in the script that publishes the event.
//!
//! A process lists its members of a room (the set then holds exactly them, and a nick
//! in it that is no member here any more is parted everywhere) after every connect,
//! before it takes requests (Redis may have come back empty, and a `PART` made while
//! it was down reached nobody), after a renewal found its lease there lost, and after
//! an event of the room failed. A listing goes out ahead of every request made after
//! it was taken, behind those before (one connection runs its commands in order), so
//! each later `JOIN` or `PART` changes the set from there.
//! A process killed just after a renewal has its lease lapse `2T/3` later and its
//! members' `PART`s published at most `T/6` after that: everywhere within `5T/6`,
//! inside the TTL with `T/6` left for the fan-out. A live process has `T/3` of slack
//! for a late renewal before its members would be wrongly parted. `WHO` reads the
//! union of the sets of the processes whose lease holds: the members of every process.
//!
//! When that slack is not enough (Redis hung longer than a lease lives, so the scans
//! queued during the hang run on resume before the renewals), live members are parted
//! everywhere. The scan therefore keeps each nick it parts in the room's parted set,
//! and the process among the room's evicted ones, for a while; the process's next
//! renewal finds itself evicted and lists the room again, and a member listed there
//! whose nick is in the parted set is listed again with its `JOIN` published, in the
//! same script: every process's members see it come back, and `WHO` is right
//! everywhere. A real `PART` or nick change clears the nick from the parted set in its
//! own script, so a listing after it does not bring it back. Only members whose own
//! `JOIN` has come back are repaired (their join script ran first). The member itself
//! is shown neither the false `PART` nor the `JOIN`: it never left. A parted member
//! that speaks before that renewal is listed again by its `SAY`'s script, its `JOIN`
//! published before its message: nobody reads a message from a member it was told
//! had left.
//!
//! The bridge runs on a thread of its own with a single-threaded tokio runtime, so it
//! works the same under every model. When Redis cannot be reached it marks itself
//! down (`SAY` then fails at once with `unavailable`; members stay connected), answers
//! queued requests with `unavailable`, and reconnects with exponential backoff capped
//! at [`BACKOFF_MAX`], subscribing again by itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::broker::{Broker, Newcomer, Order};
use super::{
    Answer, ChatEvent, Deferred, Hub, HubError, Joined, Kind, MemberId, MsgId, Publication,
    SERVER_NICK,
};
use crate::base::mailbox::Sender;

mod clock;
mod cluster;
mod commands;
mod error;
mod inbound;
mod presence;
mod queue;
mod repair;
mod replies;
mod run;
mod scripts;

pub(crate) use self::cluster::Target;
use self::run::Run;
#[cfg(test)]
use self::scripts::SAY_SCRIPT;

/// The pub/sub channel every process subscribes to.
const CHANNEL: &str = "mc:events";
/// Requests waiting for the bridge; beyond this, `SAY` is answered `unavailable`
/// rather than queued without bound. Departures are queued past it (`queue.rs`).
const QUEUE: usize = 8192;
/// Most requests sent in one pipeline. Large enough that a join storm drains in a
/// few round trips; small enough that one pipeline's replies stay a few hundred KiB.
const BATCH: usize = 1024;
/// Most nick claims renewed by one script call, so no single call holds Redis (which
/// runs one script at a time) for long. The script `unpack`s `CHUNK` keys, well below
/// what Redis's Lua stack takes (about 8,000).
const CHUNK: usize = 1000;
/// Renewal commands (a room's lease, a chunk of nick claims) sent in one pipeline at
/// most, so a process in many rooms does not hold its members' requests behind them.
const SPREAD: usize = 16;
/// First reconnection delay.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest reconnection delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Longest wait for one pipeline or connection. A `SAY` whose pipeline gets no
/// answer by then is answered `unavailable`.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long after its pipeline goes out Redis may still run a `SAY`, on Redis's
/// clock: half of [`COMMAND_TIMEOUT`], so a message Redis does run has the other half
/// for its reply to come back before its author would be told `unavailable`.
const SAY_BUDGET: Duration = Duration::from_millis(COMMAND_TIMEOUT.as_millis() as u64 / 2);
/// Readings of Redis's clock the estimate is taken from (see [`Clock`]): one per
/// connect and per expiry scan, so about `8 T/6` of them at `--presence-ttl` `T`.
const CLOCK_SAMPLES: usize = 8;

/// A pipeline slower than this is logged: members' answers are waiting on it.
const SLOW: Duration = Duration::from_millis(500);

/// What sessions ask of Redis, through the hub.
pub(super) enum Request {
    /// A message; a failure is answered to its author (none for a server notice)
    /// with the author's tag for it; the author recognises its own message coming
    /// back by its member id.
    Say {
        room: Arc<str>,
        nick: Arc<str>,
        text: Box<str>,
        author: Option<(MemberId, Sender<ChatEvent>, u64)>,
    },
    /// A join, part or nick change, by `member` of this process.
    Event {
        room: Arc<str>,
        kind: Kind,
        member: MemberId,
    },
    /// The members of a room on every process.
    Who {
        room: Arc<str>,
        to: Sender<ChatEvent>,
    },
    /// Claims `nick` for `member` across processes, releasing `old`.
    Claim {
        nick: Arc<str>,
        old: Arc<str>,
        member: MemberId,
        to: Sender<ChatEvent>,
    },
    /// `member` has gone, or renamed itself: its nick is free. After a rename on a
    /// cluster (the new nick claimed on another slot) it carries the rename's answer,
    /// sent once the old nick is free: whoever hears of the rename may take it.
    Release {
        nick: Arc<str>,
        member: MemberId,
        renamed: Option<(Arc<str>, Sender<ChatEvent>)>,
    },
    /// This process has no member left in `room` (a cluster: its channel is left).
    Forget { room: Arc<str> },
    /// Messages from the room's history: after `after` (a replay) or the last `last`.
    Range {
        room: Arc<str>,
        after: Option<MsgId>,
        last: usize,
        to: Sender<ChatEvent>,
    },
}

/// One command of a pipeline and what to do with its reply.
pub(super) enum Job {
    /// A session's request.
    Req(Request),
    /// Renewal of some of this process's nick claims (of one slot on a cluster: the
    /// hash tag of one of them); the reply lists those lost.
    Nicks(Arc<str>),
    /// Listing of this process's members of a room; the reply lists the nicks
    /// listed again after a scan had parted them, and those parted as gone.
    Presence(Arc<str>),
    /// Renewal of this process's lease in a room; the reply says whether it must
    /// list its members there again.
    Renew(Arc<str>),
    /// Removal of a room's expired listings; the reply lists the nicks parted.
    Expire(Arc<str>),
    /// A reading of Redis's clock (`TIME`), for the estimate of [`Clock`].
    Clock,
    /// The history of a room after its last message here: what its subscription
    /// missed (`repair.rs`).
    Repair(Arc<str>),
}

/// The hub's handle on the bridge thread.
pub(super) struct Bridge {
    tx: queue::Queue,
    up: Arc<AtomicBool>,
    /// On a Redis Cluster, a room with no member here any more has its channel left.
    cluster: bool,
}

/// A nick's claim, under its case-folded form: `ann` and `ANN` are one nick on every
/// process. Its hash tag is the nick: on a cluster, each claim has its own slot.
fn nick_key(nick: &str) -> String {
    format!("mc:nick:{{{}}}", nick.to_ascii_lowercase())
}

/// The hash tag of a nick's claim (see [`nick_key`]).
fn nick_tag(nick: &str) -> Arc<str> {
    nick.to_ascii_lowercase().into()
}

// Every key of a room carries the room's hash tag (`{room}`): on a cluster, all of a
// room's scripts run on its one slot.

/// A room's leases: the processes with members there, each scored by when its lease
/// lapses (Redis's clock, ms).
fn leases_key(room: &str) -> String {
    format!("mc:room:{{{room}}}:here")
}

/// The prefix of a room's member sets: one per process, its id after the prefix.
fn members_prefix(room: &str) -> String {
    format!("mc:room:{{{room}}}:at:")
}

/// The nicks process `instance` lists in a room.
fn members_key(room: &str, instance: &str) -> String {
    format!("{}{instance}", members_prefix(room))
}

/// A room's evicted processes: those a scan parted the members of (their lease had
/// lapsed), scored by when they are forgotten.
fn evicted_key(room: &str) -> String {
    format!("mc:room:{{{room}}}:evicted")
}

/// A room's parted set: nicks an expiry scan unlisted, scored by when they are
/// forgotten.
fn parted_key(room: &str) -> String {
    format!("mc:room:{{{room}}}:parted")
}

/// A room's history: a stream keyed by message id.
fn hist_key(room: &str) -> String {
    format!("mc:room:{{{room}}}:hist")
}

/// The id of a room's last published message: history is read up to it.
fn cursor_key(room: &str) -> String {
    format!("mc:room:{{{room}}}:pub")
}

fn keys(room: &str) -> (String, String) {
    (format!("mc:room:{{{room}}}:seq"), hist_key(room))
}

/// Where a room's events are published: the one channel of a single Redis, or the
/// room's own sharded channel on a cluster.
fn channel(room: &str, cluster: bool) -> String {
    match cluster {
        true => cluster::room_channel(room),
        false => CHANNEL.to_string(),
    }
}

impl Bridge {
    /// Starts the bridge thread for `client`; it connects in the background once
    /// `ready` is told the hub is made (before, the hub it counts and registers in
    /// cannot be reached: a first connection would go uncounted).
    pub(super) fn start(
        target: Target,
        hub: Weak<Hub>,
        history: usize,
        ttl: Duration,
        ready: std::sync::mpsc::Receiver<()>,
    ) -> Bridge {
        let (tx, rx) = queue::queue(QUEUE);
        let up = Arc::new(AtomicBool::new(false));
        let cluster = target.is_cluster();
        let up2 = up.clone();
        let spawned = std::thread::Builder::new()
            .name("redis-bridge".into())
            .spawn(move || {
                if ready.recv().is_err() {
                    return; // The hub was never made.
                }
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("redis: cannot start the bridge runtime: {e}");
                        return;
                    }
                };
                // Made here: its state is the thread's own (`Rc`, `RefCell`).
                let state = Run::new(target, hub, history, ttl, up2);
                rt.block_on(state.run(rx));
            });
        if let Err(e) = spawned {
            tracing::error!("redis: cannot start the bridge thread: {e}");
        }
        Bridge { tx, up, cluster }
    }

    /// Whether Redis is reachable now.
    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Queues a request, or says Redis is unavailable.
    pub(super) fn send(&self, r: Request) -> Result<(), HubError> {
        if !self.is_up() {
            return Err(HubError::Unavailable);
        }
        self.tx.send(r).map_err(|_| HubError::Unavailable)
    }
}

/// Starts the thread that hands rooms' events to their members. It receives a room
/// only when the room had no delivery under way (see `Room::push`), so its queue holds
/// at most one entry per room. Without it (the thread could not start) the bridge
/// thread delivers itself.
pub(super) fn start_deliverer(hub: Weak<Hub>) -> Option<std::sync::mpsc::Sender<Arc<str>>> {
    let (tx, rx) = std::sync::mpsc::channel::<Arc<str>>();
    let spawned = std::thread::Builder::new()
        .name("redis-deliver".into())
        .spawn(move || {
            for room in rx {
                match hub.upgrade() {
                    Some(hub) => hub.deliver(&room),
                    None => return,
                }
            }
        });
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            tracing::error!("redis: cannot start the delivery thread ({e}); delivering inline");
            None
        }
    }
}

/// A process-unique id, so a process recognises its own events coming back.
pub(super) fn instance_id() -> Arc<str> {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}-{:x}", std::process::id(), t & 0xffff_ffff_ffff).into()
}

impl Bridge {
    /// Publishes a part or nick change through Redis. It is queued also while Redis
    /// is down: the bridge then fails it, and lists the room again once connected
    /// (the others are told of the departure then: `presence.lua`).
    fn publish_event(&self, room: &Arc<str>, kind: Kind, member: MemberId) {
        let r = Request::Event {
            room: room.clone(),
            kind,
            member,
        };
        if self.tx.send(r).is_err() {
            tracing::warn!("redis unavailable: a {room} membership event was not published");
        }
    }
}

impl Broker for Bridge {
    fn uses_redis(&self) -> bool {
        true
    }

    fn is_up(&self) -> bool {
        Bridge::is_up(self)
    }

    fn join(
        &self,
        hub: &Hub,
        who: Newcomer<'_>,
        room: &str,
        after: Option<MsgId>,
    ) -> Result<Joined, HubError> {
        // The member starts receiving at its own JOIN as Redis orders it (see
        // `Hub::inject`): events ordered before it are not for it.
        let added = hub.join_local(who, room, Order::Broker)?;
        let r = Request::Event {
            room: added.room.clone(),
            kind: Kind::Join {
                nick: who.nick.clone(),
            },
            member: who.id,
        };
        if let Err(e) = self.send(r) {
            // Not ordered in Redis, the membership would never start: refuse.
            hub.remove_local(who.id, room);
            return Err(e);
        }
        if let Some(after) = after {
            let r = Request::Range {
                room: added.room.clone(),
                after: Some(after),
                last: 0,
                to: who.tx.clone(),
            };
            if let Err(e) = self.send(r) {
                let _ = hub.part(who.id, room);
                return Err(e);
            }
        }
        Ok(Joined {
            room: added.room,
            // The hub starts this membership at its own JOIN; the session's filter
            // has nothing earlier to drop.
            since: 0,
            replay: Vec::new(),
            replay_pending: after.is_some(),
            confirm_pending: true,
        })
    }

    fn part(&self, hub: &Hub, id: MemberId, room: &str) -> Result<(), HubError> {
        let (name, nick, _) = hub.part_local(id, room, Order::Broker)?;
        self.publish_event(&name, Kind::Part { nick }, id);
        Ok(())
    }

    fn say(
        &self,
        hub: &Hub,
        id: MemberId,
        room: &str,
        text: &str,
        tag: u64,
    ) -> Result<Deferred<MsgId>, HubError> {
        let (room, nick, tx) = hub.member(id, room)?;
        self.send(Request::Say {
            room,
            nick,
            text: text.into(),
            author: Some((id, tx, tag)),
        })?;
        Ok(Deferred::Later)
    }

    fn announce(&self, _hub: &Hub, room: &str, text: &str) -> Result<(), HubError> {
        self.send(Request::Say {
            room: room.into(),
            nick: SERVER_NICK.into(),
            text: text.into(),
            author: None,
        })
    }

    fn claim_nick(
        &self,
        hub: &Hub,
        id: MemberId,
        old: &Arc<str>,
        new: Arc<str>,
        _rooms: &[Arc<str>],
        to: &Sender<ChatEvent>,
    ) -> Result<Deferred<Arc<str>>, HubError> {
        if hub.nick_held_by_other(&new, id) {
            return Err(HubError::NickTaken);
        }
        self.send(Request::Claim {
            nick: new,
            old: old.clone(),
            member: id,
            to: to.clone(),
        })?;
        Ok(Deferred::Later)
    }

    fn renamed(&self, hub: &Hub, id: MemberId, room: &str, old: &Arc<str>, new: &Arc<str>) {
        if let Some((name, _)) = hub.rename_local(id, room, old, new, Order::Broker) {
            let kind = Kind::Nick {
                old: old.clone(),
                new: new.clone(),
            };
            self.publish_event(&name, kind, id);
        }
    }

    fn release_nick(&self, nick: &Arc<str>, id: MemberId) {
        let _ = self.send(Request::Release {
            nick: nick.clone(),
            member: id,
            renamed: None,
        });
    }

    fn who(
        &self,
        _hub: &Hub,
        room: &str,
        to: &Sender<ChatEvent>,
    ) -> Result<Deferred<Vec<Arc<str>>>, HubError> {
        self.send(Request::Who {
            room: room.into(),
            to: to.clone(),
        })?;
        Ok(Deferred::Later)
    }

    fn history(
        &self,
        _hub: &Hub,
        room: &str,
        n: usize,
        to: &Sender<ChatEvent>,
    ) -> Result<Deferred<Vec<Arc<Publication>>>, HubError> {
        self.send(Request::Range {
            room: room.into(),
            after: None,
            last: n,
            to: to.clone(),
        })?;
        Ok(Deferred::Later)
    }

    /// Nothing of a room is kept here: its history and presence live in Redis. On a
    /// cluster, this process leaves the room's channel.
    fn room_gone(&self, _hub: &Hub, room: &str) {
        if self.cluster {
            let _ = self.send(Request::Forget { room: room.into() });
        }
    }

    fn history_held(&self) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_say_that_runs_leaves_half_the_timeout_for_its_reply() {
        assert!(SAY_BUDGET > Duration::ZERO);
        assert!(SAY_BUDGET * 2 <= COMMAND_TIMEOUT, "{SAY_BUDGET:?}");
        // The deadline is checked before the script writes anything.
        let check = SAY_SCRIPT.find("now > tonumber(ARGV[6])").unwrap();
        for write in ["'SET'", "'INCR'", "'XADD'", "'PUBLISH'", "'SADD'"] {
            assert!(check < SAY_SCRIPT.find(write).unwrap(), "{write}");
        }
    }
}
