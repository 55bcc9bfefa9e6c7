//! The broker under the hub: what orders a room's events, keeps its history, claims
//! nicks and tracks presence. The hub (`fanout.rs`) only keeps this process's members
//! and hands each room's events out in the order the broker gave them.
//!
//! Two brokers exist: [`MemoryBroker`](super::memory::MemoryBroker), one chat in this
//! process, and the Redis bridge (`--redis`), one chat across every process sharing a
//! Redis. Each feeds the hub's registry the same way (`Hub::join_local`,
//! `Hub::publish_local`, `Hub::inject`...), choosing only who orders an event
//! ([`Order`]). As in Centrifuge (`broker.go`, `broker_memory.go`, `broker_redis.go`),
//! the Redis bridge also runs on a Redis Cluster (`bridge/cluster.rs`): rooms are
//! independent, so each room's keys live on the one slot of its hash tag.
//!
//! The trait is object-safe and the hub holds a `Box<dyn Broker>`: one indirect call
//! per command, against a fan-out of one mailbox send per member (BENCHMARKS.md,
//! "Chat CPU per delivery, hub and broker").
//!
//! Lock order: a broker may take its own locks and then the hub's shard locks, never
//! the other way round; the hub calls its broker with no lock held.

use std::any::Any;
use std::sync::Arc;

use super::{ChatEvent, Deferred, Hub, HubError, Joined, MemberId, MsgId, Publication, Wire};
use crate::base::mailbox::Sender;

/// Who orders the event of a membership change the hub makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Order {
    /// The hub queues it now, in the room's local order (one process: that order is
    /// the only one).
    Here,
    /// The broker orders it and feeds it back later (`Hub::inject`); the hub queues
    /// nothing now.
    Broker,
}

/// A member joining a room.
#[derive(Clone, Copy)]
pub(super) struct Newcomer<'a> {
    pub(super) id: MemberId,
    pub(super) nick: &'a Arc<str>,
    pub(super) tx: &'a Sender<ChatEvent>,
    pub(super) wire: Wire,
}

/// Orders and stores a chat's events (see the module documentation). Every method is
/// called with no hub lock held; names, text and limits are checked by the hub first.
pub(super) trait Broker: Any + Send + Sync {
    /// Whether the chat spans processes through Redis (for `/readyz` and metrics).
    fn uses_redis(&self) -> bool;

    /// Whether the broker can take requests now (always, in one process).
    fn is_up(&self) -> bool;

    /// Adds `who` to `room` in the hub and orders its `JOIN`; with `after`, the
    /// history after that id, which meets the live events with no gap and no
    /// duplicate (now, or later as [`Answer::Replay`](super::Answer::Replay)).
    fn join(
        &self,
        hub: &Hub,
        who: Newcomer<'_>,
        room: &str,
        after: Option<MsgId>,
    ) -> Result<Joined, HubError>;

    /// Removes `id` from `room` in the hub and orders its `PART`.
    fn part(&self, hub: &Hub, id: MemberId, room: &str) -> Result<(), HubError>;

    /// Orders, keeps and publishes a message of member `id` (checked text); a later
    /// failure is answered as [`Answer::Failed`](super::Answer::Failed) with `tag`.
    fn say(
        &self,
        hub: &Hub,
        id: MemberId,
        room: &str,
        text: &str,
        tag: u64,
    ) -> Result<Deferred<MsgId>, HubError>;

    /// Orders, keeps and publishes a message of the server (checked room and text).
    fn announce(&self, hub: &Hub, room: &str, text: &str) -> Result<(), HubError>;

    /// Claims `new` for member `id` (a valid nick, not the server's), then or later
    /// applying it with `Hub::apply_nick`.
    fn claim_nick(
        &self,
        hub: &Hub,
        id: MemberId,
        old: &Arc<str>,
        new: Arc<str>,
        rooms: &[Arc<str>],
        to: &Sender<ChatEvent>,
    ) -> Result<Deferred<Arc<str>>, HubError>;

    /// Member `id`, now `new`, is renamed in `room` and its `NICK` ordered.
    fn renamed(&self, hub: &Hub, id: MemberId, room: &str, old: &Arc<str>, new: &Arc<str>);

    /// Member `id` has gone and its `nick` is free.
    fn release_nick(&self, nick: &Arc<str>, id: MemberId);

    /// The members of `room`, sorted (on every process the chat spans).
    fn who(
        &self,
        hub: &Hub,
        room: &str,
        to: &Sender<ChatEvent>,
    ) -> Result<Deferred<Vec<Arc<str>>>, HubError>;

    /// The last `n` messages of `room`, oldest first.
    fn history(
        &self,
        hub: &Hub,
        room: &str,
        n: usize,
        to: &Sender<ChatEvent>,
    ) -> Result<Deferred<Vec<Arc<Publication>>>, HubError>;

    /// The hub forgot `room` (no member here any more): what the broker keeps of it
    /// for this process alone may go, unless the room is back.
    fn room_gone(&self, hub: &Hub, room: &str);

    /// Bytes of history this process keeps ([`Publication::cost`]).
    fn history_held(&self) -> usize;
}
