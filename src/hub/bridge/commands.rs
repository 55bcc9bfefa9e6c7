//! The Redis command of each request: the scripts' keys and arguments.

use super::run::Run;
use super::{keys, nick_key, parted_key, who_key, Kind, MemberId, Request, CHANNEL};

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
                let mut c = self.scripts.say.call(3);
                c.arg(seq)
                    .arg(hist)
                    .arg(CHANNEL)
                    .arg(self.history)
                    .arg(&**room)
                    .arg(&**nick)
                    .arg(&**text)
                    .arg(&*self.instance)
                    .arg(deadline)
                    .arg(
                        author
                            .as_ref()
                            .map_or(String::new(), |(m, _)| m.0.to_string()),
                    );
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
                let mut c = self.scripts.event.call(3);
                c.arg(who_key(room))
                    .arg(CHANNEL)
                    .arg(parted_key(room))
                    .arg(v)
                    .arg(life)
                    .arg(unlist)
                    .arg(list);
                c
            }
            Request::Claim {
                nick, old, member, ..
            } => {
                let mut c = self.scripts.claim.call(2);
                c.arg(nick_key(nick))
                    .arg(nick_key(old))
                    .arg(self.owner(*member))
                    .arg(life);
                c
            }
            Request::Release { nick, member } => {
                let mut c = self.scripts.release.call(1);
                c.arg(nick_key(nick)).arg(self.owner(*member));
                c
            }
            Request::Who { room, .. } => {
                let mut c = self.scripts.who.call(1);
                c.arg(who_key(room));
                c
            }
            Request::Range {
                room, after, last, ..
            } => {
                let (_, hist) = keys(room);
                match after {
                    Some(after) => {
                        let mut c = redis::cmd("XRANGE");
                        c.arg(hist).arg(format!("({after}-0")).arg("+");
                        c
                    }
                    None => {
                        let mut c = redis::cmd("XREVRANGE");
                        c.arg(hist).arg("+").arg("-").arg("COUNT").arg(*last);
                        c
                    }
                }
            }
        };
        Some(c)
    }

    /// The value of a nick claim: which process and member hold it.
    pub(super) fn owner(&self, member: MemberId) -> String {
        format!("{}:{}", self.instance, member.0)
    }
}
