//! The hub's registry of this process's rooms and members, and the fan-out: what both
//! brokers feed. Every function here takes one shard lock at a time and never calls
//! the broker while holding it.

use std::cell::OnceCell;
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::runtime::{Handle, RuntimeFlavor};

use super::broker::{Newcomer, Order};
use super::room::{Entry, LentFanout, Pending, Room, Shard, Since, SHARED_FROM};
use super::{
    lock, Answer, ChatEvent, Hub, HubError, Kind, MemberId, Publication, SERVER_NICK, SHARDS,
};
use crate::base::mailbox::{SendError, Sender};
use crate::base::meter;
use crate::base::prefetch::prefetch;

/// A member added to a room ([`Hub::join_local`]).
pub(super) struct Added {
    /// The room's name, shared with the hub.
    pub(super) room: Arc<str>,
    /// Where the membership starts.
    pub(super) since: Since,
    /// The caller must hand the room's events out ([`Hub::deliver`]).
    pub(super) deliver: bool,
    /// The room was made for this member: nothing of an earlier room of that name is
    /// for it.
    pub(super) created: bool,
}

/// A member's nick and mailbox in a room ([`Hub::member`]).
pub(super) type Member = (Arc<str>, Arc<str>, Sender<ChatEvent>);

/// A member's nick, with its id once its join has been ordered by the broker.
pub(super) type Listing = (Arc<str>, Option<MemberId>);

impl Hub {
    pub(super) fn shard(&self, room: &str) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(room) as usize) % SHARDS]
    }

    /// Whether `room` has a member here (or a delivery under way).
    pub(super) fn has_room(&self, room: &str) -> bool {
        lock(self.shard(room)).contains_key(room)
    }

    /// Adds `who` to `room`, made if need be. With [`Order::Here`] its `JOIN` is
    /// queued now and the membership starts right after it; with [`Order::Broker`] it
    /// starts once the broker's order of its `JOIN` comes back ([`Hub::inject`]).
    pub(super) fn join_local(
        &self,
        who: Newcomer<'_>,
        room: &str,
        order: Order,
    ) -> Result<Added, HubError> {
        let mut shard = lock(self.shard(room));
        let created = !shard.contains_key(room);
        if created {
            let name: Arc<str> = room.into();
            shard.insert(name.clone(), Room::new(name));
        }
        let r = shard.get_mut(room).expect("just made");
        if r.index.contains_key(&who.id) {
            return Err(HubError::AlreadyMember);
        }
        let name = r.name.clone();
        let (since, deliver) = match order {
            Order::Here if r.presence_shown(self.config.presence_limit, r.members.len() + 1) => {
                let kind = Kind::Join {
                    nick: who.nick.clone(),
                };
                let deliver = r.push(Arc::new(Publication::new(name.clone(), kind)), None, None);
                (Since::Seq(r.seq), deliver)
            }
            // A large room: no `JOIN` line; the membership starts after the room's
            // latest event.
            Order::Here => (Since::Seq(r.seq), false),
            Order::Broker => (Since::Unordered, false),
        };
        r.add(Entry {
            id: who.id,
            nick: who.nick.clone(),
            tx: who.tx.clone(),
            wire: who.wire,
            since,
        });
        Ok(Added {
            room: name,
            since,
            deliver,
            created,
        })
    }

    /// Removes member `id` from `room` and returns the room's name and the member's
    /// nick. With [`Order::Here`] its `PART` is queued (and the caller must deliver if
    /// the flag says so); with [`Order::Broker`] nothing is, and a room left idle is
    /// forgotten at once.
    pub(super) fn part_local(
        &self,
        id: MemberId,
        room: &str,
        order: Order,
    ) -> Result<(Arc<str>, Arc<str>, bool), HubError> {
        let mut shard = lock(self.shard(room));
        let r = shard.get_mut(room).ok_or(HubError::NotMember)?;
        let name = r.name.clone();
        let e = r.remove(id).ok_or(HubError::NotMember)?;
        match order {
            Order::Here if r.presence_shown(self.config.presence_limit, r.members.len() + 1) => {
                let kind = Kind::Part {
                    nick: e.nick.clone(),
                };
                let deliver = r.push(Arc::new(Publication::new(name.clone(), kind)), None, None);
                Ok((name, e.nick, deliver))
            }
            // A large room (no `PART` line), or the broker orders the `PART`.
            Order::Here | Order::Broker => {
                if r.idle() {
                    shard.remove(room);
                    drop(shard);
                    self.broker.room_gone(self, room);
                }
                Ok((name, e.nick, false))
            }
        }
    }

    /// Removes a member from a room without telling anyone (its join never happened).
    pub(super) fn remove_local(&self, id: MemberId, room: &str) {
        let mut shard = lock(self.shard(room));
        if let Some(r) = shard.get_mut(room) {
            r.remove(id);
            if r.idle() {
                shard.remove(room);
                drop(shard);
                self.broker.room_gone(self, room);
            }
        }
    }

    /// Renames member `id` in `room`, queuing its `NICK` for the others with
    /// [`Order::Here`]. `None` if it is not there; else the room's name and whether the
    /// caller must deliver.
    pub(super) fn rename_local(
        &self,
        id: MemberId,
        room: &str,
        old: &Arc<str>,
        new: &Arc<str>,
        order: Order,
    ) -> Option<(Arc<str>, bool)> {
        let mut shard = lock(self.shard(room));
        let r = shard.get_mut(room)?;
        r.entry_mut(id)?.nick = new.clone();
        let name = r.name.clone();
        let deliver = match order {
            Order::Here => {
                let kind = Kind::Nick {
                    old: old.clone(),
                    new: new.clone(),
                };
                r.push(
                    Arc::new(Publication::new(name.clone(), kind)),
                    Some(id),
                    None,
                )
            }
            Order::Broker => false,
        };
        Some((name, deliver))
    }

    /// Queues a message in `room`, now, in the room's local order: by member `author`
    /// ([`HubError::NotMember`] unless it is in the room), or by the server
    /// ([`HubError::NoSuchRoom`] unless someone is). `make` builds the message from the
    /// room's name and the author's nick, under the room's lock. Returns it and
    /// whether the caller must deliver.
    pub(super) fn publish_local(
        &self,
        room: &str,
        author: Option<MemberId>,
        make: impl FnOnce(Arc<str>, Arc<str>) -> Publication,
    ) -> Result<(Arc<Publication>, bool), HubError> {
        let mut shard = lock(self.shard(room));
        let (r, nick) = match author {
            Some(id) => {
                let r = shard.get_mut(room).ok_or(HubError::NotMember)?;
                let nick = r.entry(id).ok_or(HubError::NotMember)?.nick.clone();
                (r, nick)
            }
            None => (
                shard.get_mut(room).ok_or(HubError::NoSuchRoom)?,
                SERVER_NICK.into(),
            ),
        };
        let p = Arc::new(make(r.name.clone(), nick));
        let deliver = r.push(p.clone(), None, author);
        Ok((p, deliver))
    }

    /// The room's name, the nick and the mailbox of member `id` in `room`.
    pub(super) fn member(&self, id: MemberId, room: &str) -> Result<Member, HubError> {
        let shard = lock(self.shard(room));
        let r = shard.get(room).ok_or(HubError::NotMember)?;
        let e = r.entry(id).ok_or(HubError::NotMember)?;
        Ok((r.name.clone(), e.nick.clone(), e.tx.clone()))
    }

    /// The nicks in `room` on this process, sorted.
    pub fn who(&self, room: &str) -> Result<Vec<Arc<str>>, HubError> {
        if !super::valid_room(room) {
            return Err(HubError::BadName);
        }
        let shard = lock(self.shard(room));
        let r = shard.get(room).ok_or(HubError::NoSuchRoom)?;
        let mut nicks: Vec<Arc<str>> = r.members.iter().map(|e| e.nick.clone()).collect();
        drop(shard);
        nicks.sort();
        Ok(nicks)
    }

    /// An event of `room` ordered by the broker, for this process's members of it.
    /// `skip` is the member of this process the event is about, when it must not
    /// receive it; for its own `JOIN`, that membership starts here and the member is
    /// told ([`Answer::Joined`]). Returns the room when the caller must now hand its
    /// events out ([`Hub::deliver`]).
    pub(super) fn inject(
        &self,
        room: &str,
        kind: Kind,
        skip: Option<MemberId>,
        author: Option<MemberId>,
    ) -> Option<Arc<str>> {
        let mut shard = lock(self.shard(room));
        let r = shard.get_mut(room)?; // None: no member here.
        let name = r.name.clone();
        if let Kind::Msg { id, .. } = &kind {
            r.last_msg = Some(id.0);
        }
        let own_join = matches!(kind, Kind::Join { .. });
        let deliver = match self.presence_shown(r, &kind) {
            true => r.push(Arc::new(Publication::new(name.clone(), kind)), skip, author),
            false => false,
        };
        if let (true, Some(m)) = (own_join, skip) {
            // The member's own JOIN, in the broker's order: it receives what follows.
            let seq = r.seq;
            if let Some(e) = r.entry_mut(m) {
                if e.since == Since::Unordered {
                    e.since = Since::Seq(seq);
                    // Sent before any later event of the room is handed out (they
                    // all come through the broker's one thread, after this one).
                    let joined = ChatEvent::Answer(Answer::Joined { room: name.clone() });
                    let _ = e.tx.send(joined, 64);
                }
            }
        }
        deliver.then_some(name)
    }

    /// The id of the last message of `room` put in its order here: `None` when the
    /// room has no member here, `Some(None)` before its first message.
    pub(super) fn last_msg(&self, room: &str) -> Option<Option<u64>> {
        lock(self.shard(room)).get(room).map(|r| r.last_msg)
    }

    /// Queues an event of `room` for this process's members but `skip`, like
    /// [`Hub::inject`] without its handling of a member's own `JOIN`; returns the room
    /// when the caller must hand its events out.
    pub(super) fn push(&self, room: &str, kind: Kind, skip: Option<MemberId>) -> Option<Arc<str>> {
        let mut shard = lock(self.shard(room));
        let r = shard.get_mut(room)?;
        let name = r.name.clone();
        if !self.presence_shown(r, &kind) {
            return None;
        }
        let deliver = r.push(Arc::new(Publication::new(name.clone(), kind)), skip, None);
        deliver.then_some(name)
    }

    /// Whether an event ordered by the broker is sent to the room's members: a `JOIN`
    /// or `PART` only in a room of at most [`HubConfig::presence_limit`](super::HubConfig)
    /// members
    /// ([`Room::presence_shown`]); every other event always.
    fn presence_shown(&self, r: &Room, kind: &Kind) -> bool {
        let limit = self.config.presence_limit;
        match kind {
            // The member joining may be one of this process's, listed already.
            Kind::Join { .. } => r.presence_shown(limit, r.members.len()),
            // The member leaving is no longer listed here.
            Kind::Part { .. } => r.presence_shown(limit, r.members.len() + 1),
            Kind::Msg { .. } | Kind::Nick { .. } => true,
        }
    }

    /// The broker's count of `room`'s members on every process (with Redis, carried by
    /// each `JOIN` and `PART`): what decides, with the local count, whether presence
    /// lines are sent there.
    pub(super) fn report_size(&self, room: &str, members: usize) {
        if let Some(r) = lock(self.shard(room)).get_mut(room) {
            r.reported = members;
        }
    }

    /// The member of this process called `nick` in `room`, if any.
    pub(super) fn member_named(&self, room: &str, nick: &str) -> Option<MemberId> {
        let shard = lock(self.shard(room));
        let r = shard.get(room)?;
        r.members.iter().find(|e| &*e.nick == nick).map(|e| e.id)
    }

    /// This process's members of `room` (none if it has none), each with its id once
    /// its join has been ordered (`None` before: its `JOIN` may not have run yet).
    pub(super) fn listing(&self, room: &str) -> Vec<Listing> {
        let shard = lock(self.shard(room));
        let Some(r) = shard.get(room) else {
            return Vec::new();
        };
        r.members
            .iter()
            .map(|e| {
                let ordered = e.since != Since::Unordered;
                (e.nick.clone(), ordered.then_some(e.id))
            })
            .collect()
    }

    /// Whether `room`'s events are being handed out: a deliverer may still hold a
    /// list of its members from before a member parted.
    pub(crate) fn delivering(&self, room: &str) -> bool {
        lock(self.shard(room))
            .get(room)
            .is_some_and(|r| r.delivering)
    }

    /// Marks `room` as being handed out, or not, as a deliverer at work does.
    #[cfg(test)]
    pub(crate) fn set_delivering(&self, room: &str, on: bool) {
        if let Some(r) = lock(self.shard(room)).get_mut(room) {
            r.delivering = on;
        }
    }

    /// The rooms with a member on this process.
    pub(super) fn local_rooms(&self) -> Vec<Arc<str>> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            all.extend(
                shard
                    .values()
                    .filter(|r| !r.members.is_empty())
                    .map(|r| r.name.clone()),
            );
        }
        all
    }

    /// Hands out a room's outbox in order, batch by batch, until it is empty. Called by
    /// whoever set the room's `delivering` flag; sends happen outside every hub lock.
    /// A room left with no member is forgotten, and its broker told.
    pub(super) fn deliver(&self, room: &Arc<str>) {
        self.deliver_after(room, None);
    }

    /// [`Hub::deliver`], after a fan-out on lent sockets that took `record`.
    fn deliver_after(&self, room: &Arc<str>, mut record: Option<LentFanout>) {
        let shard = self.shard(room);
        let mut batch = VecDeque::new();
        // Looked up once, for the first batch of a room of SHARED_FROM members or more.
        let helpers = OnceCell::new();
        loop {
            let (members, lent, now, helpers) = {
                let mut s = lock(shard);
                let Some(r) = s.get_mut(room) else {
                    return;
                };
                if let Some(rec) = record.take() {
                    r.lent_fanout = Some(rec);
                }
                if r.outbox.is_empty() {
                    r.delivering = false;
                    if r.members.is_empty() {
                        s.remove(room);
                        drop(s);
                        self.broker.room_gone(self, room);
                    }
                    return;
                }
                std::mem::swap(&mut batch, &mut r.outbox);
                let now = Instant::now();
                let helpers = (r.members.len() >= SHARED_FROM)
                    .then(|| helpers.get_or_init(|| self.helpers()).as_ref())
                    .flatten();
                let lent = r.lent_share(batch.len(), r.members.len(), now, helpers.is_some());
                (r.members.clone(), lent, now, helpers)
            };
            // A lent share is only ever given to a batch of one event: one a helper may
            // finish.
            debug_assert!(lent == 0 || batch.len() == 1);
            let mut tally = (0u64, 0u64);
            let mut handed_on = false;
            for p in batch.drain(..) {
                // The members past the lent share first: their tasks, woken now, write
                // on the other workers while the share is written.
                hand_each(&p, &members[lent..], None, &mut tally);
                if lent >= SHARED_FROM {
                    if let Some(helpers) = helpers {
                        match self.share_lent(room, p, &members, lent, now, helpers) {
                            Some(rec) => record = Some(rec),
                            None => handed_on = true,
                        }
                        continue;
                    }
                }
                if lent > 0 {
                    let start = Instant::now();
                    hand_each(&p, &members[..lent], Some(now), &mut tally);
                    record = Some(self.lent_done(p.ordered, now, start, lent));
                    continue;
                }
                let took = meter::ticks().saturating_sub(p.ordered);
                self.stats.fanout.record(took);
            }
            self.count(tally);
            if handed_on {
                // The helper that writes the fan-out's last chunk goes on from here.
                return;
            }
        }
    }

    /// Counts deliveries and overflows, `(delivered, overflowed)`.
    fn count(&self, (delivered, overflowed): (u64, u64)) {
        if delivered > 0 {
            self.stats
                .deliveries
                .fetch_add(delivered, Ordering::Relaxed);
        }
        if overflowed > 0 {
            self.stats
                .overflows
                .fetch_add(overflowed, Ordering::Relaxed);
        }
    }

    /// Writes event `p` on the lent sockets of `members[..lent]` (a member whose socket
    /// is not lent gets it in its mailbox), starting at `now`, with the help of the
    /// runtime's other workers: a helper task per worker claims chunks of members beside
    /// this thread, so the sends run on every core with no task woken per member and no
    /// thread waiting for another. A helper that starts late finds nothing left and
    /// ends. Returns the fan-out's record once each member has the event, or `None`
    /// when a helper is still writing: the one that writes the last chunk then records
    /// it and goes on with the room's outbox ([`Hub::deliver_after`]), so the room's
    /// next event follows this one on every socket, and its `delivering` flag stays set
    /// until then.
    fn share_lent(
        &self,
        room: &Arc<str>,
        p: Pending,
        members: &Arc<Vec<Entry>>,
        lent: usize,
        now: Instant,
        (handle, hub): &(Handle, Arc<Hub>),
    ) -> Option<LentFanout> {
        let start = Instant::now();
        let w = Arc::new(LentWrites {
            hub: hub.clone(),
            room: room.clone(),
            p,
            members: members.clone(),
            end: lent,
            now,
            start,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
        });
        // One helper per worker: spawned from a worker, a task waits in that worker's
        // next-task slot, which the others do not steal from, until the next spawn moves
        // it to the queue they do; so with n workers, n - 1 helpers can start elsewhere
        // now.
        for _ in 0..handle.metrics().num_workers() {
            let w = w.clone();
            handle.spawn(async move {
                if w.work(true) {
                    let rec = w.finish();
                    w.hub.deliver_after(&w.room, Some(rec));
                }
            });
        }
        w.work(false).then(|| w.finish())
    }

    /// The runtime whose other workers help this thread with a large fan-out on lent
    /// sockets ([`Hub::share_lent`]), and the hub they finish it with: on a worker of a
    /// multi-threaded runtime of two or more (`async`). None on the thread models' threads
    /// and the Redis bridge's.
    fn helpers(&self) -> Option<(Handle, Arc<Hub>)> {
        let handle = Handle::try_current().ok().filter(|h| {
            h.runtime_flavor() == RuntimeFlavor::MultiThread && h.metrics().num_workers() > 1
        })?;
        Some((handle, self.me.upgrade()?))
    }

    /// Records a fan-out on lent sockets (one thread's or shared) whose writes began
    /// at `start`: its event's latency, and what
    /// [`Room::lent_share`](super::room::Room::lent_share) sizes the next one by.
    fn lent_done(&self, ordered: u64, now: Instant, start: Instant, lent: usize) -> LentFanout {
        self.stats
            .fanout
            .record(meter::ticks().saturating_sub(ordered));
        LentFanout {
            start: now,
            took: start.elapsed(),
            members: lent,
        }
    }
}

/// [`hand`]s event `p` to each of `members` in turn. While one member's send is in the
/// kernel, the next member's mailbox and the entry after it are brought into the
/// cache (the entry a step earlier, as the mailbox is found through it): the send's
/// trip through the kernel leaves them cold, and waiting for them was most of a lent
/// fan-out's time in user space (BENCHMARKS.md).
fn hand_each(p: &Pending, members: &[Entry], lent: Option<Instant>, tally: &mut (u64, u64)) {
    if let Some(first) = members.get(1) {
        prefetch(first);
    }
    for (i, m) in members.iter().enumerate() {
        if let Some(next) = members.get(i + 1) {
            next.tx.prefetch();
        }
        if let Some(after) = members.get(i + 2) {
            prefetch(after);
        }
        hand(p, m, lent, tally);
    }
}

/// Hands event `p` to member `m`, if it is for it: written on its lent socket at
/// `lent` (the fan-out's time), or into its mailbox. Counts it in `tally`
/// (delivered, overflowed).
fn hand(p: &Pending, m: &Entry, lent: Option<Instant>, tally: &mut (u64, u64)) {
    if !m.since.receives(p.seq) || p.skip == Some(m.id) {
        return;
    }
    let bytes = p.publication.encoded(m.wire);
    let own = p.author == Some(m.id);
    let ev = |from: usize| match from {
        0 => ChatEvent::Room {
            seq: p.seq,
            publication: p.publication.clone(),
            own,
        },
        from => ChatEvent::Rest {
            publication: p.publication.clone(),
            from,
        },
    };
    // A member's own message answers its `SAY`: it always goes through the
    // member's session.
    let sent = match lent.filter(|_| !own) {
        Some(now) => m.tx.send_or_write(bytes, now, ev, bytes.len()).map(|_| ()),
        None => m.tx.send(ev(0), bytes.len()),
    };
    match sent {
        Ok(()) => tally.0 += 1,
        Err(SendError::Overflow) => tally.1 += 1,
        Err(SendError::Closed) => {}
    }
}

/// Members written per claim of a shared fan-out ([`Hub::share_lent`]).
const CHUNK: usize = 32;

/// One event's writes on the lent sockets of `members[..end]`, claimed [`CHUNK`]
/// members at a time by the deliverer and by helper tasks on the other workers.
struct LentWrites {
    hub: Arc<Hub>,
    room: Arc<str>,
    p: Pending,
    members: Arc<Vec<Entry>>,
    end: usize,
    /// When the fan-out started, and when its writes did.
    now: Instant,
    start: Instant,
    /// The first member not claimed yet (past `end` once all are).
    next: AtomicUsize,
    /// Members handed, counted once their chunk is written.
    done: AtomicUsize,
}

impl LentWrites {
    /// Writes chunks until none is left to claim, counting what it delivered (a
    /// `helper`'s share also as helped). Returns whether it wrote the last chunk to
    /// finish: then the fan-out is done, and its caller goes on with the room.
    fn work(&self, helper: bool) -> bool {
        loop {
            let from = self.next.fetch_add(CHUNK, Ordering::Relaxed);
            if from >= self.end {
                return false;
            }
            let to = (from + CHUNK).min(self.end);
            let mut tally = (0, 0);
            hand_each(&self.p, &self.members[from..to], Some(self.now), &mut tally);
            self.hub.count(tally);
            if helper && tally.0 > 0 {
                self.hub.stats.helped.fetch_add(tally.0, Ordering::Relaxed);
            }
            // AcqRel: whoever finishes last sees every other chunk's writes done.
            if self.done.fetch_add(to - from, Ordering::AcqRel) + (to - from) == self.end {
                return true;
            }
        }
    }

    /// The fan-out's record, once its last chunk is written.
    fn finish(&self) -> LentFanout {
        self.hub
            .lent_done(self.p.ordered, self.now, self.start, self.end)
    }
}
