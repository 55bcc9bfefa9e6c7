//! The in-process broker: one chat in this process. The hub's local order of a room is
//! the only order; message ids come from one process-wide counter; the history is kept
//! here, per room, within `--history` messages and `--history-bytes` in all
//! (`history.rs`).
//!
//! A join with `AFTER` and a message take the room's log lock first, then the hub's
//! room lock: the replay read under it and the live events the member is handed
//! after its `JOIN` meet with no gap and no duplicate.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::broker::{Broker, Newcomer, Order};
use super::history::HistoryOrder;
use super::{
    lock, ChatEvent, Deferred, Hub, HubConfig, HubError, Joined, Kind, MemberId, MsgId,
    Publication, SHARDS,
};
use crate::base::mailbox::Sender;

/// A room's history in this process.
#[derive(Default)]
pub(super) struct Log {
    pub(super) history: VecDeque<Arc<Publication>>,
    /// What `history` is counted for ([`Publication::cost`]).
    pub(super) bytes: usize,
}

/// One shard of the rooms' logs (same sharding as the hub's rooms).
pub(super) type Logs = HashMap<Arc<str>, Log>;

/// The broker of one process (see the module documentation).
pub(crate) struct MemoryBroker {
    pub(super) logs: Box<[Mutex<Logs>]>,
    hasher: BuildHasherDefault<DefaultHasher>,
    next_msg: AtomicU64,
    /// Messages kept per room (`--history`).
    pub(super) per_room: usize,
    /// Bytes kept by all rooms together (`--history-bytes`).
    pub(super) budget: usize,
    /// Every room's history in the order it was said, for the process-wide budget.
    pub(super) order: Mutex<HistoryOrder>,
    /// Bytes of history kept by all rooms ([`Publication::cost`]).
    pub(super) held: AtomicUsize,
}

impl MemoryBroker {
    pub(super) fn new(config: &HubConfig) -> MemoryBroker {
        // Ids start at the Unix time in microseconds: they keep increasing across a
        // restart, so `AFTER` with an old id never skips new messages.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        MemoryBroker {
            logs: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: BuildHasherDefault::default(),
            next_msg: AtomicU64::new(start),
            per_room: config.history,
            budget: config.history_bytes,
            order: Mutex::default(),
            held: AtomicUsize::new(0),
        }
    }

    pub(super) fn shard(&self, room: &str) -> &Mutex<Logs> {
        &self.logs[(self.hasher.hash_one(room) as usize) % SHARDS]
    }

    /// Orders and keeps a message of `author` (the server: `None`) and hands it out.
    fn publish(
        &self,
        hub: &Hub,
        author: Option<MemberId>,
        room: &str,
        text: &str,
    ) -> Result<MsgId, HubError> {
        let mut msg = MsgId(0);
        let (p, kept, deliver) = {
            let mut logs = lock(self.shard(room));
            let (p, deliver) = hub.publish_local(room, author, |name, nick| {
                msg = MsgId(self.next_msg.fetch_add(1, Ordering::Relaxed));
                let kind = Kind::Msg {
                    id: msg,
                    nick,
                    text: text.into(),
                    time: Some(super::publication::unix_millis()),
                };
                Publication::new(name, kind)
            })?;
            let kept = match logs.get_mut(room) {
                Some(log) => self.remember(log, &p),
                None => self.remember(logs.entry(p.room.clone()).or_default(), &p),
            };
            (p, kept, deliver)
        };
        if kept {
            self.keep_within_budget(&p);
        }
        if deliver {
            hub.deliver(&p.room);
        }
        Ok(msg)
    }
}

impl Broker for MemoryBroker {
    fn uses_redis(&self) -> bool {
        false
    }

    fn is_up(&self) -> bool {
        true
    }

    fn join(
        &self,
        hub: &Hub,
        who: Newcomer<'_>,
        room: &str,
        after: Option<MsgId>,
    ) -> Result<Joined, HubError> {
        let (added, replay, stale) = {
            let mut logs = lock(self.shard(room));
            let added = hub.join_local(who, room, Order::Here)?;
            // A log left by an earlier room of that name is not this room's (that
            // room's `room_gone` has not run yet).
            let stale = match added.created {
                true => logs.remove(room).map(|old| old.bytes),
                false => None,
            };
            let replay = match (after, logs.get(room)) {
                (Some(after), Some(log)) => log
                    .history
                    .iter()
                    .filter(|p| p.msg_id().is_some_and(|m| m > after))
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            };
            (added, replay, stale)
        };
        if let Some(bytes) = stale {
            self.forgot_room(bytes);
        }
        if added.deliver {
            hub.deliver(&added.room);
        }
        let since = match added.since {
            super::room::Since::Seq(s) => s,
            super::room::Since::Unordered => 0,
        };
        Ok(Joined {
            room: added.room,
            since,
            replay,
            replay_pending: false,
            confirm_pending: false,
        })
    }

    fn part(&self, hub: &Hub, id: MemberId, room: &str) -> Result<(), HubError> {
        let (name, _, deliver) = hub.part_local(id, room, Order::Here)?;
        if deliver {
            hub.deliver(&name);
        }
        Ok(())
    }

    fn say(
        &self,
        hub: &Hub,
        id: MemberId,
        room: &str,
        text: &str,
        _tag: u64,
    ) -> Result<Deferred<MsgId>, HubError> {
        // Nothing fails later in one process: the tag is never needed.
        self.publish(hub, Some(id), room, text).map(Deferred::Now)
    }

    fn announce(&self, hub: &Hub, room: &str, text: &str) -> Result<(), HubError> {
        self.publish(hub, None, room, text).map(|_| ())
    }

    fn claim_nick(
        &self,
        hub: &Hub,
        id: MemberId,
        old: &Arc<str>,
        new: Arc<str>,
        rooms: &[Arc<str>],
        _to: &Sender<ChatEvent>,
    ) -> Result<Deferred<Arc<str>>, HubError> {
        hub.apply_nick(id, old, &new, rooms)?;
        Ok(Deferred::Now(new))
    }

    fn renamed(&self, hub: &Hub, id: MemberId, room: &str, old: &Arc<str>, new: &Arc<str>) {
        if let Some((name, true)) = hub.rename_local(id, room, old, new, Order::Here) {
            hub.deliver(&name);
        }
    }

    fn release_nick(&self, _nick: &Arc<str>, _id: MemberId) {}

    fn who(
        &self,
        hub: &Hub,
        room: &str,
        _to: &Sender<ChatEvent>,
    ) -> Result<Deferred<Vec<Arc<str>>>, HubError> {
        hub.who(room).map(Deferred::Now)
    }

    fn history(
        &self,
        hub: &Hub,
        room: &str,
        n: usize,
        _to: &Sender<ChatEvent>,
    ) -> Result<Deferred<Vec<Arc<Publication>>>, HubError> {
        let logs = lock(self.shard(room));
        if !hub.has_room(room) {
            return Err(HubError::NoSuchRoom);
        }
        let msgs = match logs.get(room) {
            Some(log) => {
                let skip = log.history.len().saturating_sub(n);
                log.history.iter().skip(skip).cloned().collect()
            }
            None => Vec::new(),
        };
        Ok(Deferred::Now(msgs))
    }

    fn room_gone(&self, hub: &Hub, room: &str) {
        let mut logs = lock(self.shard(room));
        if hub.has_room(room) {
            return; // Back already: its join has dealt with the old log.
        }
        let bytes = logs.remove(room).map_or(0, |log| log.bytes);
        drop(logs);
        self.forgot_room(bytes);
    }

    fn history_held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

impl MemoryBroker {
    /// For tests: the broker under a hub made by [`Hub::new`].
    #[cfg(test)]
    pub(super) fn of(hub: &Hub) -> &MemoryBroker {
        let any: &dyn std::any::Any = &*hub.broker;
        any.downcast_ref().expect("a hub made by Hub::new")
    }
}
