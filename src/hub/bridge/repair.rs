//! Messages this process's subscription missed, read back from the room's history.
//!
//! Pub/sub keeps nothing: a message published while this process was not subscribed
//! (its connection to Redis broke and came back; on a cluster, the client library
//! replaced a node's connection during a failover and the channel was subscribed to
//! again only at the next renewal) reaches the other processes' members and the
//! history, but not this process's members, though its author saw it acknowledged.
//!
//! A room's message ids follow one another (`INCR`), so a message whose id is past the
//! next one shows the gap; and after every connect (and, on a cluster, at every
//! renewal, when each channel is subscribed to again) every room with a message here
//! is checked the same way, for a gap at its end. The room's history from its last
//! message here up to its published cursor (the `range` script, as for `JOIN ...
//! AFTER`) fills the gap; meanwhile the room's events coming in are held, then put in
//! the room's order after what the history gave, each message once (ids it has
//! already are dropped). What history gives is taken as is: an id it lacks was never
//! published (refused for want of a replica) or was trimmed.

use std::sync::Arc;

use redis::Value;

use super::inbound::Source;
use super::run::Run;
use super::Job;

/// A room's repair under way: its read of history is queued or out, and the events
/// that came in meanwhile wait, in order.
#[derive(Default)]
pub(super) struct Repair {
    pub(super) held: Vec<Box<[u8]>>,
}

impl Run {
    /// Holds an event of `room` (a message: its id, and the id of the room's last
    /// message here) if a repair of the room is under way, or if it shows a gap: then
    /// a repair starts. Whether it was held.
    pub(super) fn hold(
        &self,
        room: &Arc<str>,
        id: Option<u64>,
        last: Option<u64>,
        payload: &[u8],
    ) -> bool {
        let mut repairs = self.repairs.borrow_mut();
        if let Some(r) = repairs.get_mut(room) {
            r.held.push(payload.into());
            return true;
        }
        let (Some(id), Some(last)) = (id, last) else {
            return false;
        };
        if id <= last + 1 {
            return false;
        }
        tracing::info!(
            "redis: {room}: message {id} came after {last}: reading the ones between from \
             history"
        );
        repairs.insert(
            room.clone(),
            Repair {
                held: vec![payload.into()],
            },
        );
        self.repair_due.borrow_mut().push((room.clone(), last));
        true
    }

    /// Checks every room with a message here for messages missed at its end (after a
    /// connect; on a cluster, at every renewal).
    pub(super) fn repair_all(&self) {
        let Some(hub) = self.hub() else {
            return;
        };
        let mut repairs = self.repairs.borrow_mut();
        for room in hub.local_rooms() {
            if repairs.contains_key(&room) {
                continue;
            }
            if let Some(Some(last)) = hub.last_msg(&room) {
                repairs.insert(room.clone(), Repair::default());
                self.repair_due.borrow_mut().push((room, last));
            }
        }
    }

    /// The commands of the repairs due: the room's history after its last message
    /// here, up to its published cursor.
    pub(super) fn repair_jobs(&self, jobs: &mut Vec<Job>, pipe: &mut Vec<redis::Cmd>) {
        for (room, after) in self.repair_due.borrow_mut().drain(..) {
            pipe.push(self.range(&room, Some(after), 0));
            jobs.push(Job::Repair(room));
        }
    }

    /// A repair's read came back (`None`: it failed): the messages it found go in
    /// first, then the events held meanwhile, each message once.
    pub(super) fn repaired(&self, room: &Arc<str>, reply: Option<Value>) {
        let Some(repair) = self.repairs.borrow_mut().remove(room) else {
            return;
        };
        let found = reply.and_then(|v| {
            redis::from_owned_redis_value::<redis::streams::StreamRangeReply>(v).ok()
        });
        match &found {
            // Debug: a check at a renewal often reads a message still on its way here.
            Some(r) if !r.ids.is_empty() => {
                tracing::debug!(
                    "redis: {room}: {} messages read back from history",
                    r.ids.len()
                )
            }
            Some(_) => {}
            None => tracing::warn!(
                "redis: {room}: history could not be read now; read again after the next \
                 connect (on a cluster, the next renewal)"
            ),
        }
        let entries = found.map(|r| r.ids).unwrap_or_default();
        for e in entries {
            if let Some(v) = e.get::<Vec<u8>>("e") {
                self.inject_from(&v, Source::History);
            }
        }
        for payload in repair.held {
            self.inject_from(&payload, Source::Held);
        }
        // What is left of the room's messages that ran up to here never came: forget
        // them.
        if let Some(Some(last)) = self.hub().and_then(|h| h.last_msg(room)) {
            self.ran
                .borrow_mut()
                .retain(|(r, id)| r != room || *id > last);
        }
    }
}
