//! Connections open per client address, for `--max-conns-per-ip`.
//!
//! One table per server, shared by every listener and every model: a connection takes
//! an [`IpSlot`] when its session opens and gives it back when the session is dropped,
//! however the connection ended. The table is 64 shards of a small hash table of
//! addresses (the hub shards its rooms the same way), so two clients rarely share a
//! lock, and an address's entry is removed when its count reaches zero: the table
//! holds only addresses with a connection open, never a history of every client.
//! Written here rather than taken from a crate: the whole of it is a count per key
//! under a lock.
//!
//! An address is hashed once per connection, with a randomly keyed hash (SipHash) so
//! that a client cannot pick addresses that all land on one lock or one chain: the
//! hash chooses the shard (from its middle bits) and the place in the shard's table
//! (`hashbrown`'s `HashTable`, which takes a hash computed by its user), and the slot
//! keeps it for its drop. (A map keyed by address would hash it again inside the
//! shard, and once more on the way out.)
//!
//! The limit can change while the server runs (a reload), 0 meaning none: a table with
//! no limit still counts, so that a limit set later holds against the connections
//! already open (an address with five open and a new limit of two gets no sixth, nor
//! a third once three have closed).

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hashbrown::hash_table::{Entry, HashTable};

/// Shards of the table: enough that unrelated clients rarely share a lock.
const SHARDS: usize = 64;

/// Each address of a shard with a connection open, and how many.
type Shard = HashTable<(IpAddr, u32)>;

/// How many connections each client address has open, and the most it may have.
#[derive(Debug)]
pub struct PerIp {
    /// Changeable while the server runs (a configuration reload): connections open
    /// above a lowered limit stay, and new ones wait until their address is below it.
    /// 0: no limit (connections are still counted).
    limit: AtomicUsize,
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
}

/// One open connection of an address, counted until this is dropped.
#[derive(Debug)]
pub struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
    /// The address's keyed hash, computed once when the slot was taken.
    hash: u64,
}

impl PerIp {
    /// A table allowing `limit` connections per address; 0 counts them without a limit.
    pub fn new(limit: usize) -> Arc<PerIp> {
        Arc::new(PerIp {
            limit: AtomicUsize::new(limit),
            shards: (0..SHARDS).map(|_| Mutex::new(HashTable::new())).collect(),
            hasher: RandomState::new(),
        })
    }

    /// The most connections one address may have open; 0 when there is no limit.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Sets the most connections one address may have open (0: no limit), for the
    /// next connection: those open stay.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Counts one more connection from `ip`, or returns how many it has open already
    /// when that is the limit. An IPv4 address seen as IPv6 (`::ffff:a.b.c.d`, from a
    /// dual-stack listener or a PROXY header) counts as the IPv4 address.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<IpSlot, usize> {
        let ip = ip.to_canonical();
        let hash = self.hasher.hash_one(ip);
        let limit = self.limit();
        let mut shard = self.shard(hash);
        match shard.entry(hash, |e| e.0 == ip, |e| self.hasher.hash_one(e.0)) {
            Entry::Occupied(mut e) => {
                let n = &mut e.get_mut().1;
                if limit > 0 && *n as usize >= limit {
                    return Err(*n as usize);
                }
                *n += 1;
            }
            // A first connection is within any limit (0 is none).
            Entry::Vacant(e) => {
                e.insert((ip, 1));
            }
        }
        Ok(IpSlot {
            table: self.clone(),
            ip,
            hash,
        })
    }

    /// Connections `ip` has open now.
    pub fn open(&self, ip: IpAddr) -> usize {
        let ip = ip.to_canonical();
        let hash = self.hasher.hash_one(ip);
        self.shard(hash)
            .find(hash, |e| e.0 == ip)
            .map_or(0, |e| e.1 as usize)
    }

    /// Addresses with a connection open now (the table's size).
    pub fn addresses(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// The shard of an address's hash. Its middle bits: the shard's table places an
    /// entry by the hash's low bits and tags it with its top seven, so a shard chosen by
    /// either would leave its table's entries alike in the bits that spread them.
    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        lock(&self.shards[(hash >> 32) as usize % SHARDS])
    }
}

impl IpSlot {
    /// The address this slot counts.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let ip = self.ip;
        let mut shard = self.table.shard(self.hash);
        if let Ok(mut e) = shard.find_entry(self.hash, |e| e.0 == ip) {
            let n = &mut e.get_mut().1;
            *n -= 1;
            if *n == 0 {
                e.remove();
            }
        }
    }
}

/// A poisoned shard holds only counts, each changed in one step: still consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_next_connection_past_the_limit_is_refused_and_others_are_not() {
        let t = PerIp::new(2);
        let a = t.acquire(ip("10.0.0.1")).unwrap();
        let _b = t.acquire(ip("10.0.0.1")).unwrap();
        assert_eq!(t.acquire(ip("10.0.0.1")).unwrap_err(), 2);
        let _other = t
            .acquire(ip("10.0.0.2"))
            .expect("another address is unaffected");
        drop(a);
        let _c = t
            .acquire(ip("10.0.0.1"))
            .expect("a slot given back is free again");
        t.set_limit(3);
        let _d = t
            .acquire(ip("10.0.0.1"))
            .expect("a raised limit admits one more");
        assert!(t.acquire(ip("10.0.0.1")).is_err());
    }

    #[test]
    fn without_a_limit_connections_are_counted_so_a_limit_set_later_holds() {
        let t = PerIp::new(0);
        let held: Vec<_> = (0..3).map(|_| t.acquire(ip("10.0.0.1")).unwrap()).collect();
        assert_eq!(t.open(ip("10.0.0.1")), 3, "counted without a limit");
        t.set_limit(2);
        assert_eq!(
            t.acquire(ip("10.0.0.1")).unwrap_err(),
            3,
            "the held ones count against the new limit"
        );
        drop(held);
        let _a = t.acquire(ip("10.0.0.1")).expect("below the limit again");
        t.set_limit(0);
        let _more: Vec<_> = (0..5).map(|_| t.acquire(ip("10.0.0.1")).unwrap()).collect();
    }

    #[test]
    fn an_address_is_forgotten_when_its_last_connection_ends() {
        let t = PerIp::new(3);
        let slots: Vec<_> = (0..3).map(|_| t.acquire(ip("::1")).unwrap()).collect();
        assert_eq!(t.open(ip("::1")), 3);
        assert_eq!(t.addresses(), 1);
        drop(slots);
        assert_eq!(t.open(ip("::1")), 0);
        assert_eq!(t.addresses(), 0, "no entry is kept at zero");
    }

    #[test]
    fn many_addresses_keep_their_own_counts_as_the_shards_grow() {
        // 20,000 addresses: every shard's table grows (and rehashes) many times over.
        let t = PerIp::new(2);
        let addr = |i: u32| IpAddr::from(i.to_be_bytes());
        let first: Vec<_> = (0..20_000).map(|i| t.acquire(addr(i)).unwrap()).collect();
        let second: Vec<_> = (0..20_000).map(|i| t.acquire(addr(i)).unwrap()).collect();
        assert_eq!(t.addresses(), 20_000);
        assert!((0..20_000).all(|i| t.open(addr(i)) == 2));
        assert!((0..20_000).all(|i| t.acquire(addr(i)).err() == Some(2)));
        drop(first);
        assert!((0..20_000).all(|i| t.open(addr(i)) == 1));
        drop(second);
        assert_eq!(t.addresses(), 0);
        assert_eq!(t.open(addr(7)), 0);
    }

    #[test]
    fn an_ipv4_mapped_address_counts_as_the_ipv4_address() {
        let t = PerIp::new(1);
        let _a = t.acquire(ip("192.0.2.7")).unwrap();
        assert!(t.acquire(ip("::ffff:192.0.2.7")).is_err());
    }

    #[test]
    fn slots_taken_and_given_back_on_many_threads_leave_the_table_empty() {
        let t = PerIp::new(1000);
        std::thread::scope(|s| {
            for i in 0..4u8 {
                let t = &t;
                s.spawn(move || {
                    for j in 0..500u32 {
                        let a = IpAddr::from([10, i, (j % 7) as u8, 1]);
                        let slot = t.acquire(a).unwrap();
                        assert!(t.open(a) >= 1);
                        drop(slot);
                    }
                });
            }
        });
        assert_eq!(t.addresses(), 0);
    }
}
