//! The Lua scripts the bridge runs in Redis (`../lua/*.lua`, included at build time),
//! what each takes and answers, and their loading by hash.

/// Milliseconds of Redis's clock, as a Lua number (exact: below 2^53).
pub(super) const NOW_MS: &str = include_str!("../lua/now.lua");

/// `KEYS`: counter, stream, channel, published cursor, the room's parted set, this
/// process's set of the room, the room's leases. `ARGV`: history length, room, nick,
/// text, origin (this process's id), deadline (ms of Redis's clock), the author's
/// member id (empty for a notification), `1` to publish now (else [`FLUSH_SCRIPT`]
/// publishes it once a replica has it; see "Acknowledged by a replica" in the module
/// documentation), lease (ms).
///
/// An author a scan parted (its process's lease lapsed) is listed again and its `JOIN`
/// published first, as [`PRESENCE_SCRIPT`] does, so no process reads a message from a
/// member it was told had left; the renewal then lists the process's other members.
///
/// The cursor is the id of the room's last published message: [`RANGE_SCRIPT`] reads
/// history only up to it, so nobody reads a message before it is published.
///
/// Past its deadline the script does nothing and answers an `EXPIRED` error: the
/// bridge has told (or is about to tell) the author `unavailable`, so the message must
/// reach nobody (see "A refused message is never sent" in the module documentation).
///
/// A room's counter starts at Redis's clock in microseconds, so ids keep increasing
/// even when Redis restarts empty: a client's `AFTER <old id>` then misses nothing and
/// sessions never take new messages for duplicates. (`%.0f`: Lua numbers are doubles,
/// exact below 2^53, and `tostring` would print them in exponent form.)
pub(super) const SAY_SCRIPT: &str = concat!(
    include_str!("../lua/leases.lua"),
    include_str!("../lua/say.lua")
);

/// Publishes, in id order, a room's messages after its cursor up to `ARGV[1]` and
/// moves the cursor there; run once a replica acknowledged that id (`WAIT`), which
/// covers every earlier write to that master, so every message it publishes is on a
/// replica. A message that ran more than `ARGV[2]` ms ago is deleted instead: its
/// author has been answered `unavailable` (its pipeline failed: the master died after
/// running it, say) or is about to be, so it must reach nobody, as in "A refused
/// message is never sent". `KEYS`: stream, cursor, channel. Answers the stream ids
/// (`<id>-0`) it deleted.
pub(super) const FLUSH_SCRIPT: &str = include_str!("../lua/flush.lua");

/// Deletes message `ARGV[1]` from the stream unless it is published already (another
/// process's flush, after its own `WAIT`, got there first): a message no replica
/// acknowledged in time is refused and reaches nobody. `KEYS`: stream, cursor.
/// Answers 1 if deleted.
pub(super) const RETRACT_SCRIPT: &str = include_str!("../lua/retract.lua");

/// History up to the room's cursor: after `ARGV[1]` (a replay, oldest first) or, with
/// `ARGV[1]` empty, the last `ARGV[2]` (newest first). `KEYS`: stream, cursor.
pub(super) const RANGE_SCRIPT: &str = include_str!("../lua/range.lua");

/// A join, part or nick change. `KEYS`: the room's leases, channel, parted set, this
/// process's set of the room. `ARGV`: the event, lease (ms), nick to unlist (or
/// empty), nick to list (or empty), this process's id, the prefix of the room's sets.
/// Both nicks leave the parted set: after an event of its own a member's expiry is no
/// longer something to repair (see [`PRESENCE_SCRIPT`]). The event also starts this
/// process's lease in the room again (or ends it with its last member there). A
/// `PART` of a nick the set no longer holds is not published: a scan or a listing
/// (below) published it already.
pub(super) const EVENT_SCRIPT: &str = concat!(
    include_str!("../lua/leases.lua"),
    include_str!("../lua/event.lua")
);

/// Lists a process's members of one room: its set of the room then holds exactly
/// them, and its lease there starts again. Returns the nicks listed again after a scan
/// had parted them, and the nicks parted as gone. `KEYS`: the room's leases, parted
/// set, channel, this process's set, evicted processes. `ARGV`: lease (ms), room, this
/// process's id, the prefix of the room's sets, then pairs of nick and member id
/// (empty for a member whose `JOIN` has not come back: kept if listed, not listed by
/// this; its `JOIN` lists it).
///
/// A member missing from the set whose nick is in the parted set (a scan parted it
/// when this process's lease lapsed, and it has had no join, part or nick change
/// since) is still here: Redis hung longer than a lease lives, or this process's
/// renewal came late. It is listed again and its `JOIN` is published, in this one
/// script, so every process's members see it come back and `WHO` is right everywhere.
/// A nick in the set that is no member here any more (its `PART` was lost: Redis was
/// down, or the room's master failing over) is parted everywhere, unless a member of
/// another process has taken the nick and listed it there since.
///
/// Sent after a connect for every room, and for a room whose lease was found lost
/// ([`RENEW_SCRIPT`]) or whose event failed, ahead of every request made after the
/// listing was taken (see `Run::listings`).
pub(super) const PRESENCE_SCRIPT: &str = concat!(
    include_str!("../lua/leases.lua"),
    include_str!("../lua/presence.lua")
);

/// Renews a process's lease in one room, whatever its members there: presence costs
/// Redis one command per room and process every `T/3`, not one per member. `KEYS`:
/// the room's leases, this process's set, evicted processes. `ARGV`: lease (ms), this
/// process's id. Answers 1, renewing nothing, when a scan parted this process's
/// members there or the lease is gone: the bridge lists the room again.
pub(super) const RENEW_SCRIPT: &str = concat!(
    include_str!("../lua/leases.lua"),
    include_str!("../lua/renew.lua")
);

/// Parts the members of the processes whose lease lapsed in a room, publishing their
/// `PART`s (marked `x`: by expiry); returns their nicks. Each is kept in the room's
/// parted set, and the process in the evicted set, until `ARGV[2]` from now, so that
/// the process, if it is alive after all, lists them again and publishes their `JOIN`s
/// (see [`PRESENCE_SCRIPT`]). `KEYS`: the room's leases, channel, parted set, evicted
/// processes. `ARGV`: room, how long a parted nick is kept (ms), the prefix of the
/// room's sets.
pub(super) const EXPIRE_SCRIPT: &str = concat!(
    include_str!("../lua/leases.lua"),
    include_str!("../lua/expire.lua")
);

/// The members of a room: the union of the sets of the processes whose lease holds.
/// `KEYS`: the room's leases. `ARGV`: the prefix of the room's sets.
pub(super) const WHO_SCRIPT: &str = concat!(
    include_str!("../lua/leases.lua"),
    include_str!("../lua/who.lua")
);

/// Claims a nick unless another member holds it, then releases the member's old one.
/// `KEYS`: new nick, old nick. `ARGV`: owner, claim lifetime (ms). 1 if claimed.
pub(super) const CLAIM_SCRIPT: &str = include_str!("../lua/claim.lua");

/// Deletes a nick's claim only if it is still this member's. `KEYS`: nick.
/// `ARGV`: owner.
pub(super) const RELEASE_SCRIPT: &str = include_str!("../lua/release.lua");

/// Renews a process's nick claims, or makes them again after a connect (Redis may
/// have lost them), leaving alone those another member holds now; returns those.
/// `KEYS`: the nicks. `ARGV`: claim lifetime (ms), `renew` (only claims still held:
/// a nick released meanwhile stays free) or `claim`, then each nick's owner.
pub(super) const NICKS_SCRIPT: &str = include_str!("../lua/nicks.lua");

/// A script loaded into Redis and called by its hash.
pub(super) struct Lua {
    pub(super) code: String,
    pub(super) hash: String,
    /// Sent whole (`EVAL`) rather than by hash: on a Redis Cluster, where a replica
    /// promoted by a failover has an empty script cache (Redis 7 does not replicate
    /// `SCRIPT LOAD`).
    eval: bool,
}

impl Lua {
    /// The script `body`, after the clock prelude if it reads `now`; on a cluster
    /// (`cluster`), its `PUBLISH` is the sharded `SPUBLISH` and it is sent whole.
    pub(super) fn new(body: &str, clock: bool, cluster: bool) -> Lua {
        let mut code = if clock {
            format!("{NOW_MS}{body}")
        } else {
            body.to_string()
        };
        if cluster {
            code = code.replace("'PUBLISH'", "'SPUBLISH'");
        }
        let hash = redis::Script::new(&code).get_hash().to_string();
        Lua {
            code,
            hash,
            eval: cluster,
        }
    }

    /// `EVALSHA` (or `EVAL`) of this script with `keys` keys; the caller adds keys and
    /// arguments.
    pub(super) fn call(&self, keys: usize) -> redis::Cmd {
        let mut c = match self.eval {
            true => {
                let mut c = redis::cmd("EVAL");
                c.arg(&self.code);
                c
            }
            false => {
                let mut c = redis::cmd("EVALSHA");
                c.arg(&self.hash);
                c
            }
        };
        c.arg(keys);
        c
    }
}

/// Every script of the bridge, loaded on each connection.
pub(super) struct Scripts {
    pub(super) say: Lua,
    pub(super) event: Lua,
    pub(super) presence: Lua,
    pub(super) renew: Lua,
    pub(super) expire: Lua,
    pub(super) who: Lua,
    pub(super) claim: Lua,
    pub(super) release: Lua,
    pub(super) nicks: Lua,
    pub(super) flush: Lua,
    pub(super) retract: Lua,
    pub(super) range: Lua,
}

impl Scripts {
    /// The scripts for one Redis (`cluster` false) or a Redis Cluster.
    pub(super) fn new(cluster: bool) -> Scripts {
        let c = cluster;
        Scripts {
            say: Lua::new(SAY_SCRIPT, true, c),
            event: Lua::new(EVENT_SCRIPT, true, c),
            presence: Lua::new(PRESENCE_SCRIPT, true, c),
            renew: Lua::new(RENEW_SCRIPT, true, c),
            expire: Lua::new(EXPIRE_SCRIPT, true, c),
            who: Lua::new(WHO_SCRIPT, true, c),
            claim: Lua::new(CLAIM_SCRIPT, false, c),
            release: Lua::new(RELEASE_SCRIPT, false, c),
            nicks: Lua::new(NICKS_SCRIPT, false, c),
            flush: Lua::new(FLUSH_SCRIPT, true, c),
            retract: Lua::new(RETRACT_SCRIPT, false, c),
            range: Lua::new(RANGE_SCRIPT, false, c),
        }
    }

    pub(super) fn all(&self) -> [&Lua; 12] {
        [
            &self.say,
            &self.event,
            &self.presence,
            &self.renew,
            &self.expire,
            &self.who,
            &self.claim,
            &self.release,
            &self.nicks,
            &self.flush,
            &self.retract,
            &self.range,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_read_the_clock_they_use() {
        for l in Scripts::new(false)
            .all()
            .into_iter()
            .chain(Scripts::new(true).all())
        {
            // A script that uses `now` defines it first, from Redis's clock.
            let uses = l.code.replacen(NOW_MS, "", 1).contains("now");
            assert_eq!(uses, l.code.starts_with(NOW_MS), "{}", l.code);
            assert_eq!(l.hash.len(), 40);
        }
    }

    #[test]
    fn on_a_cluster_every_script_publishes_sharded_and_is_sent_whole() {
        for l in Scripts::new(true).all() {
            assert!(!l.code.contains("'PUBLISH'"), "{}", l.code);
            let c = l.call(0);
            let args: Vec<_> = c.args_iter().collect();
            assert!(matches!(args[0], redis::Arg::Simple(b"EVAL")));
        }
        let say = Scripts::new(true).say;
        assert!(say.code.contains("'SPUBLISH'"));
    }
}
