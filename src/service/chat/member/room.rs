//! A member's view of one room: what it waits for before handing events on, and the
//! duplicates it drops.

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
                self.hand_on(&p, out);
                own += usize::from(mine);
            }
        }
        own
    }

    pub(super) fn hand_on(&mut self, p: &Publication, out: &mut impl Encoder) {
        if let Some(id) = p.msg_id() {
            if self.last.is_some_and(|last| id <= last) {
                return;
            }
            self.last = Some(id);
        }
        out.publication(p);
    }
}
