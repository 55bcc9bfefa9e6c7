//! A member's view of one room: what it waits for before handing events on, and the
//! duplicates it drops.

use std::collections::HashMap;
use std::sync::Arc;

use super::Encoder;
use crate::hub::{HubError, MsgId, Publication};

/// A member's view of one room it is in.
#[derive(Debug)]
pub(super) struct RoomState {
    /// The room sequence number at join: events up to it belong to an earlier
    /// membership and are not handed on.
    pub(super) since: u64,
    /// The last message id handed on: a message at or before it is a duplicate (a
    /// replayed message that also arrived live).
    pub(super) last: Option<MsgId>,
    /// The join is in effect: with `--redis`, once it is ordered in Redis (then the
    /// join's `OK` is said), at once without.
    pub(super) confirmed: bool,
    /// A `JOIN ... AFTER` replay is on its way (with `--redis`).
    pub(super) awaiting_replay: bool,
    /// A replay that arrived before the join was confirmed.
    pub(super) stashed: Option<Result<Vec<Arc<Publication>>, HubError>>,
    /// Live events held until the join is confirmed and the replay handed on, each
    /// with whether it is the member's own message.
    pub(super) held: Vec<(Arc<Publication>, bool)>,
    /// Messages were handed on from a replay and no live message after them yet: a
    /// live message may still be one of them, to be dropped here, so events of this
    /// room must come through the member (its socket is not lent).
    pub(super) replayed: bool,
}

impl RoomState {
    pub(super) fn holding(&self) -> bool {
        !self.confirmed || self.awaiting_replay
    }

    pub(super) fn replay(
        &mut self,
        msgs: Result<Vec<Arc<Publication>>, HubError>,
        out: &mut impl Encoder,
    ) {
        match msgs {
            Ok(msgs) => {
                for p in &msgs {
                    self.hand_on(p, out);
                }
                self.replayed |= !msgs.is_empty();
            }
            Err(e) => out.error(e.code(), "the replay of missed messages failed"),
        }
        self.awaiting_replay = false;
    }

    /// Hands on what was held, once nothing is awaited any more; returns how many of
    /// the member's own messages were among it.
    pub(super) fn release(&mut self, out: &mut impl Encoder) -> usize {
        let mut own = 0;
        if !self.holding() {
            for (p, mine) in std::mem::take(&mut self.held) {
                self.hand_on_live(&p, out);
                own += usize::from(mine);
            }
        }
        own
    }

    /// Hands `p` on unless it is a message handed on already; returns whether it
    /// was a message handed on.
    pub(super) fn hand_on(&mut self, p: &Publication, out: &mut impl Encoder) -> bool {
        let id = p.msg_id();
        if let Some(id) = id {
            if self.last.is_some_and(|last| id <= last) {
                return false;
            }
            self.last = Some(id);
        }
        out.publication(p);
        id.is_some()
    }

    /// [`RoomState::hand_on`] for a live event: a live message handed on is later
    /// than anything replayed, so no later one can be a duplicate.
    pub(super) fn hand_on_live(&mut self, p: &Publication, out: &mut impl Encoder) {
        if self.hand_on(p, out) {
            self.replayed = false;
        }
    }

    /// Whether the room's next events may be written as they are, with no member
    /// state in between: nothing held, awaited, or to be dropped as replayed.
    pub(super) fn settled(&self) -> bool {
        !self.holding() && self.held.is_empty() && !self.replayed
    }
}

/// The rooms a member is in, by name. Most members are in one room: that one is kept
/// in the member itself, so a delivery finds its room without reaching into a table
/// of its own (with every member's room in a `HashMap`, the table's cache misses were
/// most of the member's own cost per delivery: `perf record` in BENCHMARKS.md). The
/// others are in a map. A name is in one of the two, never both.
#[derive(Debug, Default)]
pub(super) struct Joined {
    first: Option<(Arc<str>, RoomState)>,
    rest: HashMap<Arc<str>, RoomState>,
}

impl Joined {
    pub(super) fn get_mut(&mut self, room: &str) -> Option<&mut RoomState> {
        match &mut self.first {
            Some((key, st)) if **key == *room => Some(st),
            _ => self.rest.get_mut(room),
        }
    }

    /// The name as kept, shared with the hub.
    pub(super) fn key(&self, room: &str) -> Option<&Arc<str>> {
        match &self.first {
            Some((key, _)) if **key == *room => Some(key),
            _ => self.rest.get_key_value(room).map(|(k, _)| k),
        }
    }

    pub(super) fn contains_key(&self, room: &str) -> bool {
        self.key(room).is_some()
    }

    pub(super) fn insert(&mut self, room: Arc<str>, st: RoomState) {
        match &mut self.first {
            Some((key, old)) if *key == room => *old = st,
            Some(_) => {
                self.rest.insert(room, st);
            }
            None if self.rest.contains_key(&room) => {
                self.rest.insert(room, st);
            }
            None => self.first = Some((room, st)),
        }
    }

    pub(super) fn remove(&mut self, room: &str) {
        match &self.first {
            Some((key, _)) if **key == *room => self.first = None,
            _ => {
                self.rest.remove(room);
            }
        }
    }

    pub(super) fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.first.is_none() && self.rest.is_empty()
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &Arc<str>> {
        self.first.iter().map(|(k, _)| k).chain(self.rest.keys())
    }

    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Arc<str>, &mut RoomState) -> bool) {
        if let Some((key, st)) = &mut self.first {
            if !keep(key, st) {
                self.first = None;
            }
        }
        self.rest.retain(|k, st| keep(k, st));
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &RoomState> {
        self.first
            .iter()
            .map(|(_, st)| st)
            .chain(self.rest.values())
    }

    pub(super) fn clear(&mut self) {
        self.first = None;
        self.rest.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(since: u64) -> RoomState {
        RoomState {
            since,
            last: None,
            confirmed: true,
            awaiting_replay: false,
            stashed: None,
            held: Vec::new(),
            replayed: false,
        }
    }

    #[test]
    fn joined_rooms_are_found_by_name_wherever_they_are_kept() {
        let mut j = Joined::default();
        assert!(j.is_empty());
        let lobby: Arc<str> = "lobby".into();
        j.insert(lobby.clone(), state(1));
        j.insert("b".into(), state(2));
        j.insert("c".into(), state(3));
        assert_eq!(j.len(), 3);
        // By the hub's own name and by a copy of its text.
        assert_eq!(j.get_mut(&lobby).map(|s| s.since), Some(1));
        assert_eq!(j.get_mut("lobby").map(|s| s.since), Some(1));
        assert!(Arc::ptr_eq(j.key("lobby").unwrap(), &lobby));
        assert_eq!(j.get_mut("c").map(|s| s.since), Some(3));
        assert!(j.get_mut("lobb").is_none() && !j.contains_key("d"));
        // The inline room leaves; the others stay found, and a room joined next
        // takes its place.
        j.remove("lobby");
        assert!(!j.contains_key("lobby") && j.contains_key("b") && j.len() == 2);
        j.insert("d".into(), state(4));
        j.insert("b".into(), state(5)); // kept where it was, replaced
        assert_eq!(j.len(), 3);
        assert_eq!(j.get_mut("b").map(|s| s.since), Some(5));
        let mut keys: Vec<&str> = j.keys().map(|k| &**k).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["b", "c", "d"]);
        j.retain(|k, _| &**k != "d" && &**k != "c");
        assert_eq!(j.keys().map(|k| &**k).collect::<Vec<_>>(), ["b"]);
        j.clear();
        assert!(j.is_empty() && j.keys().next().is_none());
    }
}
