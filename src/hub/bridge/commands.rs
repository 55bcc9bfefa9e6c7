//! The Redis command of each request: the scripts' keys and arguments.

use super::run::Run;
use super::{channel, cursor_key, hist_key, keys, nick_key, parted_key};
use super::{leases_key, members_key, members_prefix};
use super::{Kind, MemberId, Request};

impl Run {
    /// The command of a request, or `None` for one that needs none. A `SAY` carries
    /// `deadline`: Redis's clock past which it must not run.
    pub(super) fn command(&self, r: &Request, deadline: i64) -> Option<redis::Cmd> {
        let life = self.timing.lifetime.as_millis() as u64;
        let c = match r {
            Request::Say {
                room,
                nick,
                text,
                author,
            } => {
                let (seq, hist) = keys(room);
                let mut c = self.scripts.say.call(7);
                c.arg(seq)
                    .arg(hist)
                    .arg(channel(room, self.cluster))
                    .arg(cursor_key(room))
                    .arg(parted_key(room))
                    .arg(members_key(room, &self.instance))
                    .arg(leases_key(room))
                    .arg(self.history)
                    .arg(&**room)
                    .arg(&**nick)
                    .arg(&**text)
                    .arg(&*self.instance)
                    .arg(deadline)
                    .arg(
                        author
                            .as_ref()
                            .map_or(String::new(), |(m, _, _)| m.0.to_string()),
                    )
                    // Published now, or once replicas have it (`WAIT`, then a flush).
                    .arg(if self.acks.get() == 0 { "1" } else { "" })
                    .arg(life);
                c
            }
            Request::Event { room, kind, member } => {
                let (unlist, list) = match kind {
                    Kind::Join { nick } => ("", &**nick),
                    Kind::Part { nick } => (&**nick, ""),
                    Kind::Nick { old, new } => (&**old, &**new),
                    Kind::Msg { .. } => return None, // Messages go through `Say`.
                };
                let v = crate::hub::events::encode(room, kind, &self.instance, *member)?;
                let mut c = self.scripts.event.call(4);
                c.arg(leases_key(room))
                    .arg(channel(room, self.cluster))
                    .arg(parted_key(room))
                    .arg(members_key(room, &self.instance))
                    .arg(v)
                    .arg(life)
                    .arg(unlist)
                    .arg(list)
                    .arg(&*self.instance)
                    .arg(members_prefix(room));
                c
            }
            Request::Claim {
                nick, old, member, ..
            } => {
                let mut c = self.scripts.claim.call(2);
                // On a cluster the two nicks are on two slots: the old one is
                // released by a command of its own once the new one is claimed.
                let old = if self.cluster { nick } else { old };
                c.arg(nick_key(nick))
                    .arg(nick_key(old))
                    .arg(self.owner(*member))
                    .arg(life);
                c
            }
            Request::Release { nick, member, .. } => {
                let mut c = self.scripts.release.call(1);
                c.arg(nick_key(nick)).arg(self.owner(*member));
                c
            }
            Request::Who { room, .. } => {
                let mut c = self.scripts.who.call(1);
                c.arg(leases_key(room)).arg(members_prefix(room));
                c
            }
            Request::Range {
                room, after, last, ..
            } => self.range(room, after.map(|a| a.0), *last),
            Request::Forget { .. } => return None,
        };
        Some(c)
    }

    /// The read of a room's published history: the messages after id `after`, or the
    /// last `last` (a `JOIN ... AFTER` replay, `HISTORY`, a repair).
    pub(super) fn range(&self, room: &str, after: Option<u64>, last: usize) -> redis::Cmd {
        let mut c = self.scripts.range.call(2);
        c.arg(hist_key(room)).arg(cursor_key(room));
        match after {
            Some(after) => c.arg(after.to_string()).arg(0),
            None => c.arg("").arg(last),
        };
        c
    }

    /// The value of a nick claim: which process and member hold it.
    pub(super) fn owner(&self, member: MemberId) -> String {
        format!("{}:{}", self.instance, member.0)
    }
}
