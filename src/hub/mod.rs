//! The chat hub: the state shared by every chat session of a process — rooms, their
//! members, nicks, and each room's recent history.
//!
//! Sessions reach the hub through their service value (an `Arc<Hub>`), and the hub
//! reaches members only through their session mailbox ([`Sender`]), so a chat session
//! stays a sans-IO state machine testable on plain buffers, under every model.
//!
//! # Fan-out without a global lock
//!
//! Rooms live in 64 shards keyed by a hash of the room name (as in Centrifugo's hub),
//! so joins and messages of different rooms do not contend. A room's member list is an
//! `Arc<Vec<_>>`: a publisher snapshots it (one reference count) and sends outside the
//! lock. A publication is encoded at most once per wire format ([`Wire`]) and the same
//! [`Bytes`] reach every member's mailbox.
//!
//! # One order per room, no gap, no duplicate
//!
//! Every event of a room (message, join, part, nick change) gets a room sequence number
//! under the room's lock and goes into the room's outbox. Whoever finds no delivery in
//! progress becomes the room's deliverer and hands the outbox out, batch by batch, in
//! order, outside the lock; other publishers return at once. A member records the
//! sequence number at which it joined and is handed only later events, so the history
//! replayed by `JOIN <room> AFTER <id>` and the live events meet exactly: no gap, no
//! duplicate (in one process the broker reads that history and the hub records the
//! join under the room's log lock; with Redis the member starts at its own `JOIN` as
//! Redis ordered it, and its replay is read after that `JOIN` on the same connection).
//!
//! # Bounded memory
//!
//! A room keeps at most `--history` messages, and all rooms together at most
//! `--history-bytes` of them (as estimated by [`Publication::cost`]): past that budget
//! the process's oldest messages are dropped first, whatever their room. A room with
//! no member is forgotten at once, its history with it (with `--redis` the history
//! lives in Redis). A member is in at most `--max-rooms-per-conn` rooms
//! ([`HubError::TooManyRooms`]). So whatever one connection sends, what the hub keeps
//! for it is bounded; and when a large part of the history is let go, the allocator is
//! asked to hand the freed memory back to the system.
//!
//! # Slow members
//!
//! A mailbox is bounded in bytes (`--max-queue`); an overflow is never a silent drop:
//! the model ends that session as a slow consumer (`ERR slow-consumer`) and its drop
//! parts it from every room. The other members are not slowed: a send is one short
//! lock on the member's own queue.
//!
//! # Hub and broker
//!
//! The hub is the local fan-out registry: rooms, their members on this process, each
//! room's local order and outbox. What orders a room's events across processes,
//! stores its history, claims nicks and tracks presence is the [`Broker`] under it:
//! [`MemoryBroker`](memory::MemoryBroker) in one process, the Redis bridge with
//! `--redis`. Both feed the same registry; the hub never asks which one it has. An
//! answer the broker gives later reaches the member's mailbox as an [`Answer`], and
//! the hub returns [`Deferred::Later`].

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, DefaultHasher};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::base::mailbox::Sender;
use crate::base::meter;

mod bridge;
mod broker;
mod events;
mod fanout;
mod history;
mod memory;
pub mod names;
mod publication;
mod room;

pub use bridge::BACKOFF_MAX as REDIS_BACKOFF_MAX;

pub use names::{valid_nick, valid_room, MAX_NICK, MAX_ROOM};
pub use publication::{Kind, Publication, Wire};

use self::broker::{Broker, Newcomer};
use self::memory::MemoryBroker;
use self::room::Shard;

/// The nick of backend notifications ([`Hub::announce`]); no member can take it.
pub const SERVER_NICK: &str = "server";

/// Message text is one line of printable characters: a line break would forge
/// protocol lines, and any other control character (ESC, BEL, NUL, the rest of C0,
/// DEL, C1) could drive a member's terminal.
pub fn check_text(text: &str) -> Result<(), HubError> {
    if text.chars().any(char::is_control) {
        Err(HubError::BadText)
    } else {
        Ok(())
    }
}

/// The key a nick is unique under: nicks differing only in case (`ann`, `ANN`) are
/// one nick. Nicks are ASCII ([`valid_nick`]).
fn folded(nick: &str) -> Arc<str> {
    nick.to_ascii_lowercase().into()
}

/// Room shards: enough that unrelated rooms rarely share a lock.
const SHARDS: usize = 64;
/// Default number of messages kept per room (`--history`).
pub const DEFAULT_HISTORY: usize = 100;
/// Most messages one `HISTORY` answers.
pub const MAX_HISTORY_REPLY: usize = 100;
/// Default budget of all rooms' history together, in bytes (`--history-bytes`): with
/// the other per-connection bounds, it keeps what one connection can make the server
/// hold well under 100 MB (BENCHMARKS.md, "Chat memory under attack").
pub const DEFAULT_HISTORY_BYTES: usize = 32 << 20;
/// Default most rooms one connection may be in (`--max-rooms-per-conn`).
pub const DEFAULT_MAX_ROOMS_PER_CONN: usize = 100;

/// An answer of the hub: given now, or coming later through the member's mailbox (as
/// an [`Answer`], with `--redis`, where Redis orders, stores and claims).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deferred<T> {
    /// The answer, now.
    Now(T),
    /// The answer comes later, to the member's mailbox.
    Later,
}

impl<T> Deferred<T> {
    /// The answer if it was given now.
    pub fn now(self) -> Option<T> {
        match self {
            Deferred::Now(t) => Some(t),
            Deferred::Later => None,
        }
    }
}

/// Identifies a member (one connection) inside this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemberId(u64);

/// A message id: orders the messages of one room. Written as a decimal number, but
/// clients treat it as an opaque token.
///
/// Ids come from one process-wide counter that starts at the Unix time in
/// microseconds, so they keep increasing across a restart of the server and across
/// a room emptied and created again: `AFTER` with an old id never skips new messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsgId(pub u64);

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for MsgId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Only plain digits: `+5` or ` 5` are not ids a server ever wrote.
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err("x".parse::<u64>().unwrap_err());
        }
        s.parse().map(MsgId)
    }
}

/// An answer to one member's request that comes later, through its mailbox (with
/// `--redis`, where history lives in Redis and messages are ordered there).
#[derive(Debug, Clone)]
pub enum Answer {
    /// The messages of a `HISTORY`, oldest first.
    History {
        /// The room asked about.
        room: Arc<str>,
        /// The messages, or why there are none.
        msgs: Result<Vec<Arc<Publication>>, HubError>,
    },
    /// The replay of a `JOIN ... AFTER`, oldest first; live events of the room wait
    /// in the session until it arrives.
    Replay {
        /// The room joined.
        room: Arc<str>,
        /// The messages, or why there are none.
        msgs: Result<Vec<Arc<Publication>>, HubError>,
    },
    /// The members of a room on every process (`WHO` with `--redis`), sorted.
    Who {
        /// The room asked about.
        room: Arc<str>,
        /// The nicks, or why there are none.
        nicks: Result<Vec<Arc<str>>, HubError>,
    },
    /// A join is in effect: ordered in Redis (with `--redis`), so the member receives
    /// exactly the room's events ordered after it. The session answers `OK JOIN`.
    Joined {
        /// The room joined.
        room: Arc<str>,
    },
    /// The outcome of a `NICK` claimed in Redis.
    Nick(Result<Arc<str>, HubError>),
    /// A `SAY` that Redis did not take: nothing was delivered.
    Failed {
        /// The member's number for that `SAY` (see [`Hub::say_tagged`]): several may
        /// be in flight, and a failure can come back before an earlier one's message.
        say: u64,
        /// Why.
        error: HubError,
    },
}

/// What a member's mailbox receives from the hub.
#[derive(Debug, Clone)]
pub enum ChatEvent {
    /// An event of a room the member is in. `seq` orders the room's events; a session
    /// hands on only events after the `since` its join returned (see [`Joined`]), which
    /// drops stragglers from an earlier membership of the same room.
    Room {
        /// The room's event sequence number.
        seq: u64,
        /// The event.
        publication: Arc<Publication>,
        /// The member's own message, the answer to its `SAY`: the session answers
        /// the commands after that `SAY` only once it is handed on.
        own: bool,
    },
    /// The rest of a room event whose first `from` bytes of its encoding for the
    /// member's wire a sender already wrote on the member's socket
    /// ([`Sender::send_or_write`](crate::base::mailbox::Sender::send_or_write)): it
    /// goes on the wire next, whatever else the member does.
    Rest {
        /// The event.
        publication: Arc<Publication>,
        /// Bytes of its encoding already written.
        from: usize,
    },
    /// The answer to one of this member's requests.
    Answer(Answer),
}

/// Why the hub refused a request; each maps to the protocol's error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// A nick or room name outside the allowed alphabet or length.
    #[error("names are 1-32 (nick) or 1-64 (room) characters of A-Z a-z 0-9 _ - .")]
    BadName,
    /// The nick belongs to another member.
    #[error("that nick is in use")]
    NickTaken,
    /// The member is not in that room.
    #[error("you are not in that room")]
    NotMember,
    /// The member is in that room already.
    #[error("you are in that room already")]
    AlreadyMember,
    /// No room of that name exists (nobody is in it).
    #[error("no such room")]
    NoSuchRoom,
    /// The member is in `--max-rooms-per-conn` rooms already.
    #[error("you are in as many rooms as a connection may be")]
    TooManyRooms,
    /// Message text that is not one line of printable characters (a line break would
    /// forge protocol lines, other control characters drive terminals).
    #[error("text must be one line without control characters")]
    BadText,
    /// The shared backend (Redis) cannot be reached; nothing was delivered.
    #[error("chat backend unavailable, try again")]
    Unavailable,
}

impl HubError {
    /// The error code of the protocol (`ERR <code> <text>`, `"code"` in JSON).
    pub fn code(self) -> &'static str {
        match self {
            HubError::BadName => "bad-name",
            HubError::NickTaken => "nick-taken",
            HubError::NotMember => "not-member",
            HubError::AlreadyMember => "already-member",
            HubError::NoSuchRoom => "no-such-room",
            HubError::TooManyRooms => "too-many-rooms",
            HubError::BadText => "bad-text",
            HubError::Unavailable => "unavailable",
        }
    }
}

/// What a successful join returns to the session.
#[derive(Debug)]
pub struct Joined {
    /// The room name, shared with the hub.
    pub room: Arc<str>,
    /// The room sequence number at join: events up to it are not for this membership.
    pub since: u64,
    /// Messages after the `AFTER` id still in history, oldest first.
    pub replay: Vec<Arc<Publication>>,
    /// The replay comes later, as [`Answer::Replay`] (with `--redis`).
    pub replay_pending: bool,
    /// The join takes effect later, as [`Answer::Joined`] (with `--redis`).
    pub confirm_pending: bool,
}

/// Hub settings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Messages kept per room (`--history`).
    pub history: usize,
    /// Bytes of history kept by all rooms together (`--history-bytes`); the oldest
    /// messages go first.
    pub history_bytes: usize,
    /// Most rooms one member may be in (`--max-rooms-per-conn`).
    pub max_rooms_per_conn: usize,
    /// With Redis: how long a process's members stay listed after it stops
    /// refreshing them (`--presence-ttl`); a killed process's members part everywhere
    /// within about this long.
    pub presence_ttl: std::time::Duration,
    /// Rooms of more members than this (counting the one joining or leaving, on every
    /// process) get no `JOIN` and `PART` lines: filling a room would otherwise cost
    /// O(n²) lines. `WHO` stays exact in every room.
    pub presence_limit: usize,
}

/// Default [`HubConfig::presence_limit`]: presence lines are sent in rooms of up to
/// 100 members. Filling a room of 100 costs 4,950 `JOIN` lines; one of 100,000 then
/// costs those same 4,950, not 5 × 10⁹.
pub const DEFAULT_PRESENCE_LIMIT: usize = 100;

/// Default `--presence-ttl`.
pub const DEFAULT_PRESENCE_TTL: std::time::Duration = std::time::Duration::from_secs(15);

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            history: DEFAULT_HISTORY,
            history_bytes: DEFAULT_HISTORY_BYTES,
            max_rooms_per_conn: DEFAULT_MAX_ROOMS_PER_CONN,
            presence_ttl: DEFAULT_PRESENCE_TTL,
            presence_limit: DEFAULT_PRESENCE_LIMIT,
        }
    }
}

/// Counters of the hub.
#[derive(Debug, Default)]
pub struct HubStats {
    /// Messages said.
    pub messages: AtomicU64,
    /// Events handed to member mailboxes.
    pub deliveries: AtomicU64,
    /// Of `deliveries`, those a worker made on lent sockets while helping another
    /// worker's fan-out of a large room.
    pub helped: AtomicU64,
    /// Sends refused because the member's mailbox overflowed (the model then ends
    /// that member as a slow consumer).
    pub overflows: AtomicU64,
    /// Connections to Redis made (the first and every reconnection).
    pub redis_connects: AtomicU64,
    /// Connections to Redis lost.
    pub redis_losses: AtomicU64,
    /// Pipelines to Redis answered (round trips), for the average below.
    pub redis_round_trips: AtomicU64,
    /// Microseconds those round trips took, in all.
    pub redis_round_trip_us_sum: AtomicU64,
    /// Microseconds the last round trip took.
    pub redis_round_trip_us_last: AtomicU64,
    /// Requests in the pipeline out now (0 while none is): the pipeline depth.
    pub redis_in_flight: AtomicU64,
    /// Room events, from their place in the room's order on this process to their
    /// hand-off to the last member's mailbox.
    pub fanout: meter::Histogram,
    /// Chat tokens refused (`ERR bad-token`), on either wire.
    pub auth_failures: AtomicU64,
}

/// Why a hub could not be made.
#[derive(Debug, thiserror::Error)]
pub enum HubSetupError {
    /// The `--redis` URL is not one the Redis client takes.
    #[error("--redis {url}: {source}")]
    BadRedisUrl {
        /// The URL given.
        url: String,
        /// Why the client refused it.
        #[source]
        source: redis::RedisError,
    },
}

/// The chat state of one process. See the module documentation.
pub struct Hub {
    shards: Box<[Mutex<Shard>]>,
    hasher: BuildHasherDefault<DefaultHasher>,
    nicks: Mutex<HashMap<Arc<str>, MemberId>>,
    next_member: AtomicU64,
    next_guest: AtomicU64,
    config: HubConfig,
    /// With Redis, guest nicks carry a random per-process part so that processes do
    /// not hand out the same ones.
    guest_prefix: String,
    /// Orders, stores and claims: in this process or across processes.
    broker: Box<dyn Broker>,
    /// The hub itself, for the helpers of a shared fan-out (`Hub::share_lent`),
    /// which may finish it.
    me: Weak<Hub>,
    /// Counters.
    pub stats: HubStats,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the maps consistent before anything can panic, so
    // a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    /// An empty hub, one chat in this process.
    pub fn new(config: HubConfig) -> Arc<Hub> {
        Arc::new_cyclic(|me| {
            let broker = Box::new(MemoryBroker::new(&config));
            Hub::with_broker(config, broker, String::new(), me.clone())
        })
    }

    fn with_broker(
        config: HubConfig,
        broker: Box<dyn Broker>,
        guest_prefix: String,
        me: Weak<Hub>,
    ) -> Hub {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: BuildHasherDefault::default(),
            nicks: Mutex::new(HashMap::new()),
            next_member: AtomicU64::new(1),
            next_guest: AtomicU64::new(1),
            config,
            guest_prefix,
            broker,
            me,
            stats: HubStats::default(),
        }
    }

    /// A hub that is one chat with every other process given the same Redis `url`
    /// (see the bridge's documentation). Connects in the background; an invalid URL
    /// is an error now.
    pub fn with_redis(config: HubConfig, url: &str) -> Result<Arc<Hub>, HubSetupError> {
        let target = bridge::Target::parse(url).map_err(|source| HubSetupError::BadRedisUrl {
            url: url.to_string(),
            source,
        })?;
        let (history, ttl) = (config.history, config.presence_ttl);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ std::process::id().rotate_left(16))
            .unwrap_or(0);
        let (made, ready) = std::sync::mpsc::channel();
        let hub = Arc::new_cyclic(|weak| {
            let bridge = bridge::Bridge::start(target, weak.clone(), history, ttl, ready);
            Hub::with_broker(config, Box::new(bridge), format!("{t:08x}-"), weak.clone())
        });
        // Only now can the bridge reach the hub (its counters, its members).
        let _ = made.send(());
        Ok(hub)
    }

    /// Rooms with a member on this process, and the memberships in them, counted
    /// shard by shard (each lock held for one shard's count, for metrics).
    pub fn census(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(rooms, members), shard| {
            let shard = lock(shard);
            let m: usize = shard.values().map(|r| r.members.len()).sum();
            (rooms + shard.len(), members + m)
        })
    }

    /// Whether this hub is one chat with other processes through Redis.
    pub fn uses_redis(&self) -> bool {
        self.broker.uses_redis()
    }

    /// Whether the shared backend is reachable (always, without `--redis`).
    pub fn is_available(&self) -> bool {
        self.broker.is_up()
    }

    /// Most rooms one member may be in (`--max-rooms-per-conn`).
    pub fn max_rooms_per_conn(&self) -> usize {
        self.config.max_rooms_per_conn
    }

    /// The largest room whose members are told of each `JOIN` and `PART`
    /// (`--presence-limit`).
    pub fn presence_limit(&self) -> usize {
        self.config.presence_limit
    }

    /// Bytes of history kept by all rooms in this process (as [`Publication::cost`]
    /// counts them; none with `--redis`, where the history lives in Redis).
    pub fn history_held(&self) -> usize {
        self.broker.history_held()
    }

    /// Registers a new member and gives it a unique guest nick (`guest-N`).
    pub fn connect(&self) -> (MemberId, Arc<str>) {
        let id = MemberId(self.next_member.fetch_add(1, Ordering::Relaxed));
        let mut nicks = lock(&self.nicks);
        loop {
            let n = self.next_guest.fetch_add(1, Ordering::Relaxed);
            let nick: Arc<str> = format!("guest-{}{n}", self.guest_prefix).into();
            if let std::collections::hash_map::Entry::Vacant(e) = nicks.entry(folded(&nick)) {
                e.insert(id);
                return (id, nick);
            }
        }
    }

    /// Changes a member's nick from `old` to `new` and tells the other members of each
    /// of its `rooms`. With `--redis` the nick is first claimed in Redis (unique across
    /// processes): `Deferred::Later` is returned and the outcome comes later to `to`, as
    /// [`Answer::Nick`]; the session then calls [`Hub::apply_nick`].
    pub fn set_nick(
        &self,
        id: MemberId,
        old: &Arc<str>,
        new: &str,
        rooms: &[Arc<str>],
        to: &Sender<ChatEvent>,
    ) -> Result<Deferred<Arc<str>>, HubError> {
        if !valid_nick(new) {
            return Err(HubError::BadName);
        }
        if **old == *new {
            return Ok(Deferred::Now(old.clone()));
        }
        if new.eq_ignore_ascii_case(SERVER_NICK) {
            return Err(HubError::NickTaken);
        }
        self.broker.claim_nick(self, id, old, new.into(), rooms, to)
    }

    /// Makes a nick change (claimed in Redis already, with `--redis`) and tells the
    /// other members of each of the member's `rooms`.
    pub fn apply_nick(
        &self,
        id: MemberId,
        old: &Arc<str>,
        new: &Arc<str>,
        rooms: &[Arc<str>],
    ) -> Result<(), HubError> {
        {
            let mut nicks = lock(&self.nicks);
            let (key, old_key) = (folded(new), folded(old));
            match nicks.get(&key) {
                Some(owner) if *owner != id => return Err(HubError::NickTaken),
                _ => {}
            }
            // `ann` to `ANN` keeps its one key.
            if old_key != key && nicks.get(&old_key) == Some(&id) {
                nicks.remove(&old_key);
            }
            nicks.insert(key, id);
        }
        for room in rooms {
            self.broker.renamed(self, id, room, old, new);
        }
        Ok(())
    }

    /// Whether `nick` (any case) belongs to a member of this process other than `id`.
    fn nick_held_by_other(&self, nick: &str, id: MemberId) -> bool {
        lock(&self.nicks)
            .get(&folded(nick))
            .is_some_and(|owner| *owner != id)
    }

    /// This process's nicks (case-folded) and their members (what it refreshes in
    /// Redis).
    fn local_nicks(&self) -> Vec<(Arc<str>, MemberId)> {
        lock(&self.nicks)
            .iter()
            .map(|(n, id)| (n.clone(), *id))
            .collect()
    }

    /// Adds a member to `room` (created if need be) and tells the others. With
    /// `after`, also returns the messages after that id still in history; the member
    /// then receives exactly the messages that follow them.
    pub fn join(
        &self,
        id: MemberId,
        nick: &Arc<str>,
        tx: &Sender<ChatEvent>,
        wire: Wire,
        room: &str,
        after: Option<MsgId>,
    ) -> Result<Joined, HubError> {
        if !valid_room(room) {
            return Err(HubError::BadName);
        }
        if after.is_some() && !self.is_available() {
            return Err(HubError::Unavailable);
        }
        let who = Newcomer { id, nick, tx, wire };
        self.broker.join(self, who, room, after)
    }

    /// Removes a member from `room` and tells the others.
    pub fn part(&self, id: MemberId, room: &str) -> Result<(), HubError> {
        self.broker.part(self, id, room)
    }

    /// Says `text` in `room` as member `id`: every member, the author included,
    /// receives it. Returns the message's id.
    ///
    /// With `--redis` the id is given by Redis and `Deferred::Later` is returned: the message
    /// comes back to every member, the author included, through the shared channel.
    pub fn say(&self, id: MemberId, room: &str, text: &str) -> Result<Deferred<MsgId>, HubError> {
        self.say_tagged(id, room, text, 0)
    }

    /// [`Hub::say`], with the member's own number `tag` for this `SAY`: a failure
    /// that comes later ([`Answer::Failed`]) carries it, so a member with several
    /// `SAY`s in flight answers the right one.
    pub fn say_tagged(
        &self,
        id: MemberId,
        room: &str,
        text: &str,
        tag: u64,
    ) -> Result<Deferred<MsgId>, HubError> {
        check_text(text)?;
        let said = self.broker.say(self, id, room, text, tag)?;
        self.stats.messages.fetch_add(1, Ordering::Relaxed);
        Ok(said)
    }

    /// Says `text` in `room` as [`SERVER_NICK`], delivered like a member's `SAY`: the
    /// entry point of backend notifications (`POST /rooms/<room>/messages` on the http
    /// service). Without Redis the room must have a member here ([`HubError::NoSuchRoom`]
    /// otherwise); with Redis it goes to every process, into the room's history.
    pub fn announce(&self, room: &str, text: &str) -> Result<(), HubError> {
        if !valid_room(room) {
            return Err(HubError::BadName);
        }
        check_text(text)?;
        self.broker.announce(self, room, text)?;
        self.stats.messages.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The nicks in `room`, sorted. With `--redis` they are the members on every
    /// process and come later to `to`, as [`Answer::Who`]; `Deferred::Later` is returned.
    pub fn who_all(
        &self,
        room: &str,
        to: &Sender<ChatEvent>,
    ) -> Result<Deferred<Vec<Arc<str>>>, HubError> {
        if !valid_room(room) {
            return Err(HubError::BadName);
        }
        self.broker.who(self, room, to)
    }

    /// Up to `n` (at most [`MAX_HISTORY_REPLY`]) most recent messages of `room`,
    /// oldest first. With `--redis` they come later to `to`, as [`Answer::History`],
    /// and `Deferred::Later` is returned.
    pub fn history(
        &self,
        room: &str,
        n: usize,
        to: &Sender<ChatEvent>,
    ) -> Result<Deferred<Vec<Arc<Publication>>>, HubError> {
        if !valid_room(room) {
            return Err(HubError::BadName);
        }
        self.broker
            .history(self, room, n.min(MAX_HISTORY_REPLY), to)
    }

    /// The member has gone: it parts from each of its `rooms` and its nick is freed.
    pub fn disconnect(&self, id: MemberId, nick: &Arc<str>, rooms: &[Arc<str>]) {
        for room in rooms {
            let _ = self.part(id, room);
        }
        let mut nicks = lock(&self.nicks);
        let key = folded(nick);
        if nicks.get(&key) == Some(&id) {
            nicks.remove(&key);
            drop(nicks);
            self.broker.release_nick(nick, id);
        }
    }
}

#[cfg(test)]
mod tests;
