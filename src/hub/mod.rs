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
//! replayed by `JOIN <room> AFTER <id>` (read under the same lock) and the live events
//! meet exactly: no gap, no duplicate.
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

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::base::mailbox::{SendError, Sender};
use crate::base::meter;

mod bridge;
mod events;
mod history;
pub mod names;
mod publication;

pub use bridge::BACKOFF_MAX as REDIS_BACKOFF_MAX;

pub use names::{valid_nick, valid_room, MAX_NICK, MAX_ROOM};
pub use publication::{Kind, Publication, Wire};

use self::history::HistoryOrder;

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
    /// A request failed (a `SAY` that Redis did not take: nothing was delivered).
    Failed(HubError),
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

/// A member's entry in a room's member list.
#[derive(Clone)]
struct Entry {
    id: MemberId,
    nick: Arc<str>,
    tx: Sender<ChatEvent>,
    wire: Wire,
    /// The room sequence number at join: only later events are handed to it.
    since: u64,
}

struct Pending {
    seq: u64,
    publication: Arc<Publication>,
    /// A member the event is not for (its author, for a nick change).
    skip: Option<MemberId>,
    /// The member whose own message this is (its `SAY`'s answer).
    author: Option<MemberId>,
    /// When it was put in the room's order here ([`meter::ticks`]), for the fan-out
    /// latency.
    ordered: u64,
}

struct Room {
    name: Arc<str>,
    /// Copy-on-write: a deliverer holds a snapshot while joins and parts go on.
    members: Arc<Vec<Entry>>,
    index: HashMap<MemberId, usize>,
    history: VecDeque<Arc<Publication>>,
    /// What `history` is counted for ([`Publication::cost`]).
    history_bytes: usize,
    seq: u64,
    outbox: VecDeque<Pending>,
    /// Someone is handing out the outbox.
    delivering: bool,
}

impl Room {
    fn new(name: Arc<str>) -> Room {
        Room {
            name,
            members: Arc::new(Vec::new()),
            index: HashMap::new(),
            history: VecDeque::new(),
            history_bytes: 0,
            seq: 0,
            outbox: VecDeque::new(),
            delivering: false,
        }
    }

    /// Queues an event; returns whether the caller must deliver the outbox.
    fn push(&mut self, publication: Arc<Publication>, skip: Option<MemberId>) -> bool {
        self.push_by(publication, skip, None)
    }

    /// Queues an event, a message of `author` (told it is its own); returns whether
    /// the caller must deliver the outbox.
    fn push_by(
        &mut self,
        publication: Arc<Publication>,
        skip: Option<MemberId>,
        author: Option<MemberId>,
    ) -> bool {
        self.seq += 1;
        self.outbox.push_back(Pending {
            seq: self.seq,
            publication,
            skip,
            author,
            ordered: meter::ticks(),
        });
        !std::mem::replace(&mut self.delivering, true)
    }

    fn entry(&self, id: MemberId) -> Option<&Entry> {
        self.index.get(&id).map(|&i| &self.members[i])
    }

    fn remove(&mut self, id: MemberId) -> Option<Entry> {
        let i = self.index.remove(&id)?;
        let members = Arc::make_mut(&mut self.members);
        let e = members.swap_remove(i);
        if let Some(moved) = members.get(i) {
            self.index.insert(moved.id, i);
        }
        Some(e)
    }
}

type Shard = HashMap<Arc<str>, Room>;

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
}

/// Default `--presence-ttl`.
pub const DEFAULT_PRESENCE_TTL: std::time::Duration = std::time::Duration::from_secs(15);

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            history: DEFAULT_HISTORY,
            history_bytes: DEFAULT_HISTORY_BYTES,
            max_rooms_per_conn: DEFAULT_MAX_ROOMS_PER_CONN,
            presence_ttl: DEFAULT_PRESENCE_TTL,
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
    /// Sends refused because the member's mailbox overflowed (the model then ends
    /// that member as a slow consumer).
    pub overflows: AtomicU64,
    /// Connections to Redis made (the first and every reconnection).
    pub redis_connects: AtomicU64,
    /// Connections to Redis lost.
    pub redis_losses: AtomicU64,
    /// Room events, from their place in the room's order on this process to their
    /// hand-off to the last member's mailbox.
    pub fanout: meter::Histogram,
}

/// The chat state of one process. See the module documentation.
pub struct Hub {
    shards: Box<[Mutex<Shard>]>,
    hasher: BuildHasherDefault<DefaultHasher>,
    nicks: Mutex<HashMap<Arc<str>, MemberId>>,
    next_member: AtomicU64,
    next_guest: AtomicU64,
    next_msg: AtomicU64,
    config: HubConfig,
    /// With Redis, guest nicks carry a random per-process part so that processes do
    /// not hand out the same ones.
    guest_prefix: String,
    bridge: Option<bridge::Bridge>,
    /// Every room's history in the order it was said, for the process-wide budget.
    history: Mutex<HistoryOrder>,
    /// Bytes of history kept by all rooms ([`Publication::cost`]).
    history_held: AtomicUsize,
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
    /// An empty hub.
    pub fn new(config: HubConfig) -> Hub {
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: BuildHasherDefault::default(),
            nicks: Mutex::new(HashMap::new()),
            next_member: AtomicU64::new(1),
            next_guest: AtomicU64::new(1),
            next_msg: AtomicU64::new(start),
            config,
            guest_prefix: String::new(),
            bridge: None,
            history: Mutex::default(),
            history_held: AtomicUsize::new(0),
            stats: HubStats::default(),
        }
    }

    /// A hub that is one chat with every other process given the same Redis `url`
    /// (see the bridge's documentation). Connects in the background; an invalid URL
    /// is an error now.
    pub fn with_redis(config: HubConfig, url: &str) -> Result<Arc<Hub>, String> {
        let client = redis::Client::open(url).map_err(|e| format!("--redis {url}: {e}"))?;
        let (history, ttl) = (config.history, config.presence_ttl);
        Ok(Arc::new_cyclic(|weak| {
            let mut hub = Hub::new(config);
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() ^ std::process::id().rotate_left(16))
                .unwrap_or(0);
            hub.guest_prefix = format!("{t:08x}-");
            hub.bridge = Some(bridge::Bridge::start(client, weak.clone(), history, ttl));
            hub
        }))
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
        self.bridge.is_some()
    }

    /// Whether the shared backend is reachable (always, without `--redis`).
    pub fn is_available(&self) -> bool {
        self.bridge.as_ref().is_none_or(|b| b.is_up())
    }

    /// Publishes a join, part or nick change through Redis; while it is down the event
    /// reaches nobody (logged and counted by the bridge's state).
    fn publish_event(&self, b: &bridge::Bridge, room: &Arc<str>, kind: Kind, member: MemberId) {
        let r = bridge::Request::Event {
            room: room.clone(),
            kind,
            member,
        };
        if b.send(r).is_err() {
            tracing::warn!("redis unavailable: a {room} membership event was not published");
        }
    }

    /// An event of `room` from Redis, for this process's members of it. `skip` is the
    /// member of this process the event is about, when it must not receive it.
    /// Returns the room when the caller must now hand its events out
    /// ([`Hub::deliver`]): the bridge has that done on another thread, so that putting
    /// events in order never waits for a fan-out.
    fn inject(
        &self,
        room: &str,
        kind: Kind,
        skip: Option<MemberId>,
        author: Option<MemberId>,
    ) -> Option<Arc<str>> {
        {
            let mut shard = lock(self.shard(room));
            let r = shard.get_mut(room)?; // None: no member here.
            let name = r.name.clone();
            let own_join = matches!(kind, Kind::Join { .. });
            let p = Arc::new(Publication::new(name.clone(), kind));
            let deliver = r.push_by(p, skip, author);
            if let (true, Some(m)) = (own_join, skip) {
                // The member's own JOIN, in Redis's order: it receives what follows.
                if let Some(&i) = r.index.get(&m) {
                    let seq = r.seq;
                    let e = &mut Arc::make_mut(&mut r.members)[i];
                    if e.since == u64::MAX {
                        e.since = seq;
                        // Sent before any later event of the room is handed out (they
                        // all come through this thread, after this one).
                        let joined = ChatEvent::Answer(Answer::Joined { room: name.clone() });
                        let _ = e.tx.send(joined, 64);
                    }
                }
            }
            deliver.then_some(name)
        }
    }

    /// Removes a member from a room without telling anyone (its join never happened).
    fn remove_local(&self, id: MemberId, room: &str) {
        let mut shard = lock(self.shard(room));
        if let Some(r) = shard.get_mut(room) {
            r.remove(id);
            if r.members.is_empty() && !r.delivering {
                shard.remove(room);
            }
        }
    }

    fn shard(&self, room: &str) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(room) as usize) % SHARDS]
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
        let new: Arc<str> = new.into();
        if let Some(b) = &self.bridge {
            if lock(&self.nicks)
                .get(&folded(&new))
                .is_some_and(|owner| *owner != id)
            {
                return Err(HubError::NickTaken);
            }
            b.send(bridge::Request::Claim {
                nick: new,
                old: old.clone(),
                member: id,
                to: to.clone(),
            })?;
            return Ok(Deferred::Later);
        }
        self.apply_nick(id, old, &new, rooms)?;
        Ok(Deferred::Now(new))
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
        let new = new.clone();
        {
            let mut nicks = lock(&self.nicks);
            let (key, old_key) = (folded(&new), folded(old));
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
            let deliver = {
                let mut shard = lock(self.shard(room));
                let Some(r) = shard.get_mut(room) else {
                    continue;
                };
                let Some(&i) = r.index.get(&id) else {
                    continue;
                };
                Arc::make_mut(&mut r.members)[i].nick = new.clone();
                let kind = Kind::Nick {
                    old: old.clone(),
                    new: new.clone(),
                };
                if let Some(b) = &self.bridge {
                    drop(shard);
                    self.publish_event(b, room, kind, id);
                    continue;
                }
                r.push(Arc::new(Publication::new(room.clone(), kind)), Some(id))
            };
            if deliver {
                self.deliver(room);
            }
        }
        Ok(())
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
        let (joined, deliver) = {
            let mut shard = lock(self.shard(room));
            if !shard.contains_key(room) {
                let name: Arc<str> = room.into();
                shard.insert(name.clone(), Room::new(name));
            }
            let r = shard.get_mut(room).expect("just made");
            let name = r.name.clone();
            if r.index.contains_key(&id) {
                return Err(HubError::AlreadyMember);
            }
            let deliver = match self.bridge {
                Some(_) => false, // Published through Redis below.
                None => {
                    let p = Publication::new(name.clone(), Kind::Join { nick: nick.clone() });
                    r.push(Arc::new(p), None)
                }
            };
            // With Redis, the member starts receiving at its own JOIN as Redis orders
            // it (see `inject`): events ordered before it are not for it.
            let since = if self.bridge.is_some() {
                u64::MAX
            } else {
                r.seq
            };
            r.index.insert(id, r.members.len());
            Arc::make_mut(&mut r.members).push(Entry {
                id,
                nick: nick.clone(),
                tx: tx.clone(),
                wire,
                since,
            });
            let replay = match after {
                Some(_) if self.bridge.is_some() => Vec::new(),
                Some(after) => r
                    .history
                    .iter()
                    .filter(|p| p.msg_id().is_some_and(|m| m > after))
                    .cloned()
                    .collect(),
                None => Vec::new(),
            };
            (
                Joined {
                    room: name,
                    since,
                    replay,
                    replay_pending: false,
                    confirm_pending: self.bridge.is_some(),
                },
                deliver,
            )
        };
        if deliver {
            self.deliver(&joined.room);
        }
        let mut joined = joined;
        if let Some(b) = &self.bridge {
            let r = bridge::Request::Event {
                room: joined.room.clone(),
                kind: Kind::Join { nick: nick.clone() },
                member: id,
            };
            if let Err(e) = b.send(r) {
                // Not ordered in Redis, the membership would never start: refuse.
                self.remove_local(id, room);
                return Err(e);
            }
            if let Some(after) = after {
                let r = bridge::Request::Range {
                    room: joined.room.clone(),
                    after: Some(after),
                    last: 0,
                    to: tx.clone(),
                };
                if let Err(e) = b.send(r) {
                    let _ = self.part(id, room);
                    return Err(e);
                }
                joined.replay_pending = true;
            }
            // The hub starts this membership at its own JOIN; the session's filter
            // has nothing earlier to drop.
            joined.since = 0;
        }
        Ok(joined)
    }

    /// Removes a member from `room` and tells the others.
    pub fn part(&self, id: MemberId, room: &str) -> Result<(), HubError> {
        let name = {
            let mut shard = lock(self.shard(room));
            let Some(r) = shard.get_mut(room) else {
                return Err(HubError::NotMember);
            };
            let name = r.name.clone();
            let Some(e) = r.remove(id) else {
                return Err(HubError::NotMember);
            };
            let kind = Kind::Part { nick: e.nick };
            if let Some(b) = &self.bridge {
                let empty = r.members.is_empty() && !r.delivering;
                if empty {
                    shard.remove(room);
                }
                drop(shard);
                self.publish_event(b, &name, kind, id);
                return Ok(());
            }
            if !r.push(Arc::new(Publication::new(name.clone(), kind)), None) {
                return Ok(());
            }
            name
        };
        self.deliver(&name);
        Ok(())
    }

    /// Says `text` in `room` as member `id`: every member, the author included,
    /// receives it. Returns the message's id.
    ///
    /// With `--redis` the id is given by Redis and `Deferred::Later` is returned: the message
    /// comes back to every member, the author included, through the shared channel.
    pub fn say(&self, id: MemberId, room: &str, text: &str) -> Result<Deferred<MsgId>, HubError> {
        check_text(text)?;
        let (name, msg, deliver, kept, p) = {
            let mut shard = lock(self.shard(room));
            let Some(r) = shard.get_mut(room) else {
                return Err(HubError::NotMember);
            };
            let name = r.name.clone();
            let entry = r.entry(id).ok_or(HubError::NotMember)?;
            let nick = entry.nick.clone();
            if let Some(b) = &self.bridge {
                let author = Some((id, entry.tx.clone()));
                drop(shard);
                b.send(bridge::Request::Say {
                    room: name,
                    nick,
                    text: text.into(),
                    author,
                })?;
                self.stats.messages.fetch_add(1, Ordering::Relaxed);
                return Ok(Deferred::Later);
            }
            let msg = MsgId(self.next_msg.fetch_add(1, Ordering::Relaxed));
            let p = Arc::new(Publication::new(
                name.clone(),
                Kind::Msg {
                    id: msg,
                    nick,
                    text: text.into(),
                },
            ));
            let kept = self.remember(r, &p);
            (name, msg, r.push_by(p.clone(), None, Some(id)), kept, p)
        };
        if kept {
            self.keep_within_budget(&p);
        }
        self.stats.messages.fetch_add(1, Ordering::Relaxed);
        if deliver {
            self.deliver(&name);
        }
        Ok(Deferred::Now(msg))
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
        if let Some(b) = &self.bridge {
            b.send(bridge::Request::Say {
                room: room.into(),
                nick: SERVER_NICK.into(),
                text: text.into(),
                author: None,
            })?;
            self.stats.messages.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let (name, p, deliver, kept) = {
            let mut shard = lock(self.shard(room));
            let r = shard.get_mut(room).ok_or(HubError::NoSuchRoom)?;
            let msg = MsgId(self.next_msg.fetch_add(1, Ordering::Relaxed));
            let p = Arc::new(Publication::new(
                r.name.clone(),
                Kind::Msg {
                    id: msg,
                    nick: SERVER_NICK.into(),
                    text: text.into(),
                },
            ));
            let kept = self.remember(r, &p);
            (r.name.clone(), p.clone(), r.push(p, None), kept)
        };
        if kept {
            self.keep_within_budget(&p);
        }
        self.stats.messages.fetch_add(1, Ordering::Relaxed);
        if deliver {
            self.deliver(&name);
        }
        Ok(())
    }

    /// This process's members, room by room (what it refreshes in Redis).
    fn local_presence(&self) -> Vec<(Arc<str>, Vec<Arc<str>>)> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            for r in shard.values() {
                if !r.members.is_empty() {
                    all.push((
                        r.name.clone(),
                        r.members.iter().map(|e| e.nick.clone()).collect(),
                    ));
                }
            }
        }
        all
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
        match &self.bridge {
            Some(b) => {
                b.send(bridge::Request::Who {
                    room: room.into(),
                    to: to.clone(),
                })?;
                Ok(Deferred::Later)
            }
            None => self.who(room).map(Deferred::Now),
        }
    }

    /// The nicks in `room` on this process, sorted.
    pub fn who(&self, room: &str) -> Result<Vec<Arc<str>>, HubError> {
        if !valid_room(room) {
            return Err(HubError::BadName);
        }
        let shard = lock(self.shard(room));
        let r = shard.get(room).ok_or(HubError::NoSuchRoom)?;
        let mut nicks: Vec<Arc<str>> = r.members.iter().map(|e| e.nick.clone()).collect();
        drop(shard);
        nicks.sort();
        Ok(nicks)
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
        let n = n.min(MAX_HISTORY_REPLY);
        if let Some(b) = &self.bridge {
            b.send(bridge::Request::Range {
                room: room.into(),
                after: None,
                last: n,
                to: to.clone(),
            })?;
            return Ok(Deferred::Later);
        }
        let shard = lock(self.shard(room));
        let r = shard.get(room).ok_or(HubError::NoSuchRoom)?;
        let skip = r.history.len().saturating_sub(n);
        Ok(Deferred::Now(
            r.history.iter().skip(skip).cloned().collect(),
        ))
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
            if let Some(b) = &self.bridge {
                let _ = b.send(bridge::Request::Release {
                    nick: nick.clone(),
                    member: id,
                });
            }
        }
    }

    /// This process's nicks (case-folded) and their members (what it refreshes in
    /// Redis).
    fn local_nicks(&self) -> Vec<(Arc<str>, MemberId)> {
        lock(&self.nicks)
            .iter()
            .map(|(n, id)| (n.clone(), *id))
            .collect()
    }

    /// Most rooms one member may be in (`--max-rooms-per-conn`).
    pub fn max_rooms_per_conn(&self) -> usize {
        self.config.max_rooms_per_conn
    }

    /// Hands out a room's outbox in order, batch by batch, until it is empty. Called by
    /// whoever set the room's `delivering` flag; sends happen outside every hub lock.
    fn deliver(&self, room: &Arc<str>) {
        let shard = self.shard(room);
        let mut batch = VecDeque::new();
        loop {
            let members = {
                let mut s = lock(shard);
                let Some(r) = s.get_mut(room) else {
                    return;
                };
                if r.outbox.is_empty() {
                    r.delivering = false;
                    if r.members.is_empty() {
                        let forgotten = r.history_bytes;
                        s.remove(room);
                        drop(s);
                        self.forgot_room(forgotten);
                    }
                    return;
                }
                std::mem::swap(&mut batch, &mut r.outbox);
                r.members.clone()
            };
            let (mut delivered, mut overflowed) = (0u64, 0u64);
            for p in batch.drain(..) {
                for m in members.iter() {
                    if p.seq <= m.since || p.skip == Some(m.id) {
                        continue;
                    }
                    let cost = p.publication.encoded(m.wire).len();
                    let ev = ChatEvent::Room {
                        seq: p.seq,
                        publication: p.publication.clone(),
                        own: p.author == Some(m.id),
                    };
                    match m.tx.send(ev, cost) {
                        Ok(()) => delivered += 1,
                        Err(SendError::Overflow) => overflowed += 1,
                        Err(SendError::Closed) => {}
                    }
                }
                let took = meter::ticks().saturating_sub(p.ordered);
                self.stats.fanout.record(took);
            }
            self.stats
                .deliveries
                .fetch_add(delivered, Ordering::Relaxed);
            if overflowed > 0 {
                self.stats
                    .overflows
                    .fetch_add(overflowed, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests;
