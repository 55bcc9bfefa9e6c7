//! Events coming back on the channel: put in order into the hub's rooms, in the
//! order Redis published them, and handed to the delivery thread.

use super::run::Run;
use super::Kind;

/// Where an event comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// The subscription.
    Live,
    /// The subscription, held behind a repair (`repair.rs`).
    Held,
    /// The room's history, read by a repair.
    History,
}

impl Run {
    /// Puts an event from the channel into its room for this process's members,
    /// unless it shows messages missed here (see `repair.rs`); `None` when the hub is
    /// gone.
    pub(super) fn inject(&self, payload: &[u8]) -> Option<()> {
        self.inject_from(payload, Source::Live)
    }

    /// Puts an event into its room, each message once: a live one through the gate
    /// that holds a room's events behind a repair, the others as they come.
    pub(super) fn inject_from(&self, payload: &[u8], from: Source) -> Option<()> {
        let hub = self.hub()?;
        let Some(ev) = crate::hub::events::parse(payload) else {
            tracing::warn!(
                "redis: ignoring a malformed event: {}",
                String::from_utf8_lossy(payload)
            );
            return Some(());
        };
        let id = match &ev.kind {
            Kind::Msg { id, .. } => Some(id.0),
            _ => None,
        };
        // The id of the room's last message here, for a message.
        let last = id.and_then(|_| hub.last_msg(&ev.room).flatten());
        if id.zip(last).is_some_and(|(id, last)| id <= last) {
            return Some(()); // Delivered already: a repair read it back.
        }
        if from == Source::Live && self.hold(&ev.room, id, last, payload) {
            return Some(());
        }
        if let Some(n) = ev.size {
            hub.report_size(&ev.room, n);
        }
        let own = ev.origin.as_deref() == Some(&*self.instance);
        // A message of this process read back from history answers its `SAY` only if
        // Redis's reply to that `SAY` came (the `SAY` still waits for its message);
        // without it, its author was answered `unavailable`, and it is only a message
        // of the room, as it is on every other process.
        let answers = match (own, id) {
            (true, Some(id)) => {
                let ran = self.ran.borrow_mut().remove(&(ev.room.clone(), id));
                from != Source::History || ran
            }
            _ => true,
        };
        let room = match (&ev.kind, ev.member) {
            // A member of this process listed again after an expiry parted it: it
            // never left, so it is not told it joined (and its join is not confirmed
            // by this: see `Hub::inject`). The others are, having been told it parted.
            (Kind::Join { .. }, Some(m)) if ev.rejoin && own => {
                hub.push(&ev.room, ev.kind, Some(m))
            }
            // The member that joined or renamed itself got its OK instead.
            (Kind::Join { .. } | Kind::Nick { .. }, Some(m)) if own => {
                hub.inject(&ev.room, ev.kind, Some(m), None)
            }
            // A message of a member of this process: its `SAY`'s answer.
            (Kind::Msg { .. }, Some(m)) if own && answers => {
                hub.inject(&ev.room, ev.kind, None, Some(m))
            }
            // An expiry parted a member that is still here (this process will list it
            // again and publish its JOIN): the others are told, as everywhere; it
            // never left, so it is not.
            (Kind::Part { nick }, _) if ev.expired => {
                let skip = hub.member_named(&ev.room, nick);
                hub.inject(&ev.room, ev.kind, skip, None)
            }
            _ => hub.inject(&ev.room, ev.kind, None, None),
        };
        if let Some(room) = room {
            match &self.deliver {
                Some(d) => {
                    if let Err(e) = d.send(room) {
                        hub.deliver(&e.0);
                    }
                }
                None => hub.deliver(&room),
            }
        }
        Some(())
    }
}
