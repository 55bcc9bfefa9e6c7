//! Presence in Redis: the periods derived from `--presence-ttl`, the renewal of this
//! process's listings and nick claims, and the expiry scan (see the bridge's
//! documentation, "Presence").

use std::time::Duration;

use super::run::Run;
use super::{channel, nick_key, nick_tag, parted_key, who_key};
use super::{Job, BACKOFF_MAX, CHUNK, COMMAND_TIMEOUT};

/// The presence periods derived from `--presence-ttl` (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Timing {
    /// How long a listing or nick claim lasts after each refresh.
    pub(super) lifetime: Duration,
    /// How often this process re-lists its members and nicks.
    pub(super) refresh: Duration,
    /// How often it removes expired listings (and publishes their `PART`s).
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
    /// The commands re-listing this process's nicks and members: all of them when
    /// `renew` is false (after a connect), else only those still listed.
    pub(super) fn relist(&self, renew: bool) -> Vec<(Job, redis::Cmd)> {
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
        for (room, members) in hub.listings() {
            let (key, parted) = (who_key(&room), parted_key(&room));
            for chunk in members.chunks(CHUNK) {
                let mut c = self.scripts.presence.call(3);
                c.arg(&key).arg(&parted).arg(channel(&room, self.cluster));
                c.arg(life).arg(if renew { "XX" } else { "" });
                c.arg(&*room).arg(&*self.instance);
                for (nick, member) in chunk {
                    c.arg(&**nick);
                    match member {
                        Some(m) => c.arg(m.0),
                        None => c.arg(""),
                    };
                }
                out.push((Job::Presence(room.clone()), c));
            }
        }
        out
    }

    /// The commands removing the expired listings of the rooms this process has
    /// members in.
    pub(super) fn scan(&self, jobs: &mut Vec<Job>, p: &mut Vec<redis::Cmd>) {
        let Some(hub) = self.hub() else {
            return;
        };
        for room in hub.local_rooms() {
            let mut c = self.scripts.expire.call(3);
            c.arg(who_key(&room))
                .arg(channel(&room, self.cluster))
                .arg(parted_key(&room))
                .arg(&*room)
                .arg(self.timing.keep.as_millis() as u64);
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
