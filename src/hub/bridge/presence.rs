//! Presence in Redis: the periods derived from `--presence-ttl`, the listing of this
//! process's members, the renewal of its leases and nick claims, and the scan (see the bridge's
//! documentation, "Presence").

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::run::Run;
use super::{channel, evicted_key, leases_key, members_key, members_prefix};
use super::{nick_key, nick_tag, parted_key};
use super::{Job, BACKOFF_MAX, CHUNK, COMMAND_TIMEOUT};

/// The presence periods derived from `--presence-ttl` (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Timing {
    /// How long a lease or nick claim lasts after each refresh.
    pub(super) lifetime: Duration,
    /// How often this process renews its leases and nick claims.
    pub(super) refresh: Duration,
    /// How often it parts the members of lapsed leases (and publishes their `PART`s).
    pub(super) scan: Duration,
    /// How long an expired member stays in its room's parted set, where its process
    /// finds it if it is alive after all (see [`PRESENCE_SCRIPT`]): two lifetimes, then
    /// enough for a process whose pipeline timed out to connect again and register
    /// (two command timeouts and the longest backoff between them).
    pub(super) keep: Duration,
}

impl Timing {
    pub(super) fn new(ttl: Duration) -> Timing {
        Timing {
            lifetime: ttl * 2 / 3,
            refresh: ttl / 3,
            scan: ttl / 6,
            keep: ttl * 4 / 3 + COMMAND_TIMEOUT * 2 + BACKOFF_MAX,
        }
    }

    #[cfg(test)]
    /// The latest a killed process's members are parted everywhere, not counting the
    /// fan-out: listed for `lifetime` after its last refresh, found at most `scan` later.
    fn worst_part(&self) -> Duration {
        self.lifetime + self.scan
    }
}

impl Run {
    /// The commands claiming this process's nicks (after a connect: all of them) or
    /// renewing them (`renew`: only those still held, so a nick released meanwhile
    /// stays free).
    fn nick_claims(&self, renew: bool) -> Vec<(Job, redis::Cmd)> {
        let Some(hub) = self.hub() else {
            return Vec::new();
        };
        let life = self.timing.lifetime.as_millis() as u64;
        let mut out = Vec::new();
        let mut nicks = hub.local_nicks();
        // On a cluster a script's keys must share a slot: the nicks go by slot.
        let mut runs = Vec::new();
        if !self.cluster {
            runs.push(0..nicks.len());
        } else {
            nicks.sort_by_cached_key(|(n, _)| super::cluster::slot(&nick_tag(n)));
            let mut start = 0;
            for i in 1..=nicks.len() {
                let slot = |j: usize| super::cluster::slot(&nick_tag(&nicks[j].0));
                if i == nicks.len() || slot(i) != slot(start) {
                    runs.push(start..i);
                    start = i;
                }
            }
        }
        for chunk in runs.into_iter().flat_map(|r| nicks[r].chunks(CHUNK)) {
            let mut c = self.scripts.nicks.call(chunk.len());
            for (nick, _) in chunk {
                c.arg(nick_key(nick));
            }
            c.arg(life).arg(if renew { "renew" } else { "claim" });
            for (_, member) in chunk {
                c.arg(self.owner(*member));
            }
            out.push((Job::Nicks(nick_tag(&chunk[0].0)), c));
        }
        out
    }

    /// The commands listing this process's members, room by room (each room's set
    /// then holds exactly them: see [`PRESENCE_SCRIPT`](super::scripts::PRESENCE_SCRIPT)),
    /// with its nick claims: after a connect, before any request goes out.
    pub(super) fn register_all(&self) -> Vec<(Job, redis::Cmd)> {
        let mut out = self.nick_claims(false);
        // The rooms whose listing was due go with them (a room left meanwhile too).
        let mut rooms: HashSet<Arc<str>> = std::mem::take(&mut *self.relist.borrow_mut());
        rooms.extend(std::mem::take(&mut *self.relist_later.borrow_mut()));
        rooms.extend(self.hub().map(|h| h.local_rooms()).unwrap_or_default());
        out.extend(self.listings(rooms.into_iter().collect()));
        out
    }

    /// The commands listing this process's members of `rooms`, a room it no longer
    /// has any in included: its set there is emptied.
    /// They must reach Redis before any request made after this call, and after every
    /// one made before it that is already out (one connection runs its commands in
    /// order): the set then matches the members here as of now, and each later `JOIN`
    /// or `PART` changes it from there.
    pub(super) fn listings(&self, rooms: Vec<Arc<str>>) -> Vec<(Job, redis::Cmd)> {
        let Some(hub) = self.hub() else {
            return Vec::new();
        };
        let life = self.timing.lifetime.as_millis() as u64;
        let mut out = Vec::new();
        for room in rooms {
            let members = hub.listing(&room);
            let mut c = self.scripts.presence.call(5);
            c.arg(leases_key(&room))
                .arg(parted_key(&room))
                .arg(channel(&room, self.cluster))
                .arg(members_key(&room, &self.instance))
                .arg(evicted_key(&room));
            c.arg(life)
                .arg(&*room)
                .arg(&*self.instance)
                .arg(members_prefix(&room));
            for (nick, member) in &members {
                c.arg(&**nick);
                match member {
                    Some(m) => c.arg(m.0),
                    None => c.arg(""),
                };
            }
            out.push((Job::Presence(room.clone()), c));
        }
        out
    }

    /// The commands renewing this process's presence: one lease per room it has
    /// members in (not one listing per member), and its nick claims.
    pub(super) fn renewals(&self) -> Vec<(Job, redis::Cmd)> {
        let Some(hub) = self.hub() else {
            return Vec::new();
        };
        let life = self.timing.lifetime.as_millis() as u64;
        let mut out = self.nick_claims(true);
        for room in hub.local_rooms() {
            let mut c = self.scripts.renew.call(3);
            c.arg(leases_key(&room))
                .arg(members_key(&room, &self.instance))
                .arg(evicted_key(&room))
                .arg(life)
                .arg(&*self.instance);
            out.push((Job::Renew(room), c));
        }
        out
    }

    /// The commands parting the members of processes whose lease lapsed in the rooms
    /// this process has members in.
    pub(super) fn scan(&self, jobs: &mut Vec<Job>, p: &mut Vec<redis::Cmd>) {
        let Some(hub) = self.hub() else {
            return;
        };
        for room in hub.local_rooms() {
            let mut c = self.scripts.expire.call(4);
            c.arg(leases_key(&room))
                .arg(channel(&room, self.cluster))
                .arg(parted_key(&room))
                .arg(evicted_key(&room))
                .arg(&*room)
                .arg(self.timing.keep.as_millis() as u64)
                .arg(members_prefix(&room));
            p.push(c);
            jobs.push(Job::Expire(room));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_process_parts_within_the_ttl_and_a_live_one_has_slack() {
        for ms in [300, 2000, 15_000, 60_000] {
            let ttl = Duration::from_millis(ms);
            let t = Timing::new(ttl);
            assert!(t.worst_part() < ttl, "{t:?} for {ttl:?}");
            // What is left of the TTL for the fan-out of the PARTs.
            assert!(ttl - t.worst_part() >= ttl / 7, "{t:?}");
            // A listing outlives its refresh period by a whole period: one late refresh
            // does not part a live process's members.
            assert!(t.lifetime >= t.refresh * 2, "{t:?}");
            assert!(t.scan <= t.refresh / 2, "{t:?}");
            // A member parted by expiry is remembered past its process's next renewal,
            // or its reconnection after a pipeline timed out.
            assert!(
                t.keep > t.refresh + COMMAND_TIMEOUT * 2 + BACKOFF_MAX,
                "{t:?}"
            );
        }
    }
}
