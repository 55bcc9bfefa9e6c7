//! Events coming back on the channel: put in order into the hub's rooms, in the
//! order Redis published them, and handed to the delivery thread.

use super::run::Run;
use super::Kind;

impl Run {
    /// Puts an event from the channel into its room for this process's members,
    /// unless it shows messages missed here (see `repair.rs`); `None` when the hub is
    /// gone.
    pub(super) fn inject(&self, payload: &[u8]) -> Option<()> {
        self.inject_checked(payload, true)
    }

    /// Puts an event into its room: with `check`, through the gate that holds a room's
    /// events behind a repair; without (what a repair read, and what it held), as it
    /// comes, but each message once.
    pub(super) fn inject_checked(&self, payload: &[u8], check: bool) -> Option<()> {
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
        if check && self.hold(&ev.room, id, last, payload) {
            return Some(());
        }
        if let Some(n) = ev.size {
            hub.report_size(&ev.room, n);
        }
        let own = ev.origin.as_deref() == Some(&*self.instance);
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
            (Kind::Msg { .. }, Some(m)) if own => hub.inject(&ev.room, ev.kind, None, Some(m)),
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
