//! The Lua scripts the bridge runs in Redis (`../lua/*.lua`, included at build time),
//! what each takes and answers, and their loading by hash.

/// Milliseconds of Redis's clock, as a Lua number (exact: below 2^53).
pub(super) const NOW_MS: &str = include_str!("../lua/now.lua");

/// `KEYS`: counter, stream, channel. `ARGV`: history length, room, nick, text, origin,
/// deadline (ms of Redis's clock), the author's member id (empty for a notification).
///
/// Past its deadline the script does nothing and answers an `EXPIRED` error: the
/// bridge has told (or is about to tell) the author `unavailable`, so the message must
/// reach nobody (see "A refused message is never sent" in the module documentation).
///
/// A room's counter starts at Redis's clock in microseconds, so ids keep increasing
/// even when Redis restarts empty: a client's `AFTER <old id>` then misses nothing and
/// sessions never take new messages for duplicates. (`%.0f`: Lua numbers are doubles,
/// exact below 2^53, and `tostring` would print them in exponent form.)
pub(super) const SAY_SCRIPT: &str = include_str!("../lua/say.lua");

/// A join, part or nick change. `KEYS`: presence set, channel, parted set. `ARGV`:
/// the event, listing lifetime (ms), nick to unlist (or empty), nick to list (or
/// empty). Both nicks leave the parted set: after an event of its own a member's
/// expiry is no longer something to repair (see [`PRESENCE_SCRIPT`]).
pub(super) const EVENT_SCRIPT: &str = include_str!("../lua/event.lua");

/// Re-lists a process's members of one room (at most [`CHUNK`]: one variadic
/// `ZADD`); returns the nicks it listed again after an expiry had parted them.
/// `KEYS`: presence set, parted set, channel. `ARGV`: listing lifetime (ms), `XX`
/// (renew: only members still listed, or repaired) or empty (list them all, after a
/// connect), room, this process's id, then pairs of nick and member id (empty for a
/// member whose join has not come back yet: never repaired).
///
/// A member missing from the set whose nick is in the parted set (an expiry scan
/// unlisted it and published its `PART`, and it has had no join, part or nick change
/// since) is still here: Redis hung longer than its listing lived, or this process's
/// renewal came late. It is listed again and its `JOIN` is published, in this one
/// script, so every process's members see it come back and `WHO` is right everywhere.
/// A member that really parted or renamed itself is in neither set (its event's
/// script cleared both), so a renewal that reaches Redis after its `PART` does not
/// list it again; one before its `PART` is followed by it, on this same connection.
pub(super) const PRESENCE_SCRIPT: &str = include_str!("../lua/presence.lua");

/// Unlists the expired members of a room and publishes their `PART`s (marked `x`:
/// by expiry); returns their nicks. Each is kept in the room's parted set until
/// `ARGV[2]` from now, so that its process, if it is alive after all, lists it again
/// and publishes its `JOIN` (see [`PRESENCE_SCRIPT`]). `KEYS`: presence set, channel,
/// parted set. `ARGV`: room, how long a parted nick is kept (ms).
pub(super) const EXPIRE_SCRIPT: &str = include_str!("../lua/expire.lua");

/// The listed members of a room. `KEYS`: presence set.
pub(super) const WHO_SCRIPT: &str = include_str!("../lua/who.lua");

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
}

impl Lua {
    pub(super) fn new(body: &str, clock: bool) -> Lua {
        let code = if clock {
            format!("{NOW_MS}{body}")
        } else {
            body.to_string()
        };
        let hash = redis::Script::new(&code).get_hash().to_string();
        Lua { code, hash }
    }

    /// `EVALSHA` of this script with `keys` keys; the caller adds keys and arguments.
    pub(super) fn call(&self, keys: usize) -> redis::Cmd {
        let mut c = redis::cmd("EVALSHA");
        c.arg(&self.hash).arg(keys);
        c
    }
}

/// Every script of the bridge, loaded on each connection.
pub(super) struct Scripts {
    pub(super) say: Lua,
    pub(super) event: Lua,
    pub(super) presence: Lua,
    pub(super) expire: Lua,
    pub(super) who: Lua,
    pub(super) claim: Lua,
    pub(super) release: Lua,
    pub(super) nicks: Lua,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            say: Lua::new(SAY_SCRIPT, true),
            event: Lua::new(EVENT_SCRIPT, true),
            presence: Lua::new(PRESENCE_SCRIPT, true),
            expire: Lua::new(EXPIRE_SCRIPT, true),
            who: Lua::new(WHO_SCRIPT, true),
            claim: Lua::new(CLAIM_SCRIPT, false),
            release: Lua::new(RELEASE_SCRIPT, false),
            nicks: Lua::new(NICKS_SCRIPT, false),
        }
    }

    pub(super) fn all(&self) -> [&Lua; 8] {
        [
            &self.say,
            &self.event,
            &self.presence,
            &self.expire,
            &self.who,
            &self.claim,
            &self.release,
            &self.nicks,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_read_the_clock_they_use() {
        let s = Scripts::new();
        for l in s.all() {
            // A script that uses `now` defines it first, from Redis's clock.
            let uses = l.code.replacen(NOW_MS, "", 1).contains("now");
            assert_eq!(uses, l.code.starts_with(NOW_MS), "{}", l.code);
            assert_eq!(l.hash.len(), 40);
        }
    }
}
