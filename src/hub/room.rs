//! A room as the hub keeps it: its members on this process, its local event order
//! and the outbox a deliverer hands out.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ChatEvent, MemberId, Publication, Wire};
use crate::base::mailbox::Sender;

/// Where a membership starts in its room's local order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Since {
    /// The join is not ordered yet (its `JOIN` has not come back from the broker): the
    /// member receives nothing of the room until it is.
    Unordered,
    /// Ordered at this room sequence number: the member receives the events after it.
    Seq(u64),
}

impl Since {
    /// Whether the event at `seq` is for this membership.
    #[inline]
    pub(super) fn receives(self, seq: u64) -> bool {
        match self {
            Since::Unordered => false,
            Since::Seq(since) => seq > since,
        }
    }
}

/// A member's entry in a room's member list.
#[derive(Clone)]
pub(super) struct Entry {
    pub(super) id: MemberId,
    pub(super) nick: Arc<str>,
    pub(super) tx: Sender<ChatEvent>,
    pub(super) wire: Wire,
    pub(super) since: Since,
}

/// An event queued for the room's members, in the room's order.
pub(super) struct Pending {
    pub(super) seq: u64,
    pub(super) publication: Arc<Publication>,
    /// A member the event is not for (its author, for a nick change).
    pub(super) skip: Option<MemberId>,
    /// The member whose own message this is (its `SAY`'s answer).
    pub(super) author: Option<MemberId>,
    /// When it was put in the room's order here ([`crate::base::meter::ticks`]), for
    /// the fan-out latency.
    pub(super) ordered: u64,
}

/// How long one fan-out writes on lent sockets, at most, on the publisher's thread
/// alone (see [`Room::lent_share`]): the other members' tasks take the rest on the
/// other workers meanwhile.
const LENT_BUDGET: Duration = Duration::from_millis(10);

/// The same when the runtime's other workers help with a large fan-out
/// (`Hub::share_lent`), for one of [`SHARED_FROM`] members or more.
const SHARED_LENT_BUDGET: Duration = Duration::from_millis(50);

/// Fan-outs to this many lent sockets or more are shared with the runtime's other
/// workers. A smaller one, about 10 ms of sends at most, is written by one thread as
/// before: shared, a room of 1,000 cost 13% more CPU per delivery for a quarter off
/// its last delivery (BENCHMARKS.md).
pub(super) const SHARED_FROM: usize = 2048;

/// How many members a room's first fan-out writes on lent sockets, before any cost
/// per send is measured.
const FIRST_LENT_SHARE: usize = 256;

/// A fan-out's writes on lent sockets: when it started, how long they took and for
/// how many members.
#[derive(Debug, Clone, Copy)]
pub(super) struct LentFanout {
    pub(super) start: Instant,
    pub(super) took: Duration,
    pub(super) members: usize,
}

/// A room with at least one member on this process (or a delivery under way).
pub(super) struct Room {
    pub(super) name: Arc<str>,
    /// Copy-on-write: a deliverer holds a snapshot while joins and parts go on.
    pub(super) members: Arc<Vec<Entry>>,
    pub(super) index: HashMap<MemberId, usize>,
    pub(super) seq: u64,
    pub(super) outbox: VecDeque<Pending>,
    /// Someone is handing out the outbox.
    pub(super) delivering: bool,
    /// The last fan-out that wrote on lent sockets ([`Room::lent_share`]).
    pub(super) lent_fanout: Option<LentFanout>,
    /// The room's size on every process as the broker last reported it (with Redis:
    /// the presence set's count carried by a `JOIN` or `PART`); 0 when it reports
    /// none. Decides with the local count whether presence lines are sent
    /// ([`Room::presence_shown`]).
    pub(super) reported: usize,
    /// With Redis: the id of the room's last message put in its order here (`None`
    /// before the first). Ids of a room follow one another: a later one coming in
    /// shows what this process missed (see the bridge's `repair`). A room made again
    /// starts without one, so its new members get nothing from before them.
    pub(super) last_msg: Option<u64>,
}

impl Room {
    pub(super) fn new(name: Arc<str>) -> Room {
        Room {
            name,
            members: Arc::new(Vec::new()),
            index: HashMap::new(),
            seq: 0,
            outbox: VecDeque::new(),
            delivering: false,
            lent_fanout: None,
            reported: 0,
            last_msg: None,
        }
    }

    /// How many of the room's `members` (the first ones) a fan-out of `events` events
    /// starting `now` writes on the sockets they lent, the others' events going into
    /// their mailboxes. Writing on a lent socket, one send and no wake-up, is the
    /// cheapest delivery, but one line per send, and it holds the publisher's thread
    /// (and, when they `can_share` it, the other workers, which help with a large
    /// room), while the members' tasks spread over every worker, interleave with every
    /// other task and batch what piles up. So: none in a busy room (events piled up,
    /// or the last such fan-out would hold its writers over a tenth of the time), and
    /// at most what they write in [`LENT_BUDGET`], or in [`SHARED_LENT_BUDGET`] with
    /// help when that is [`SHARED_FROM`] members or more (at the time per member the
    /// last one measured; 256 to begin with); a larger room's other members get the
    /// event in their mailboxes first.
    pub(super) fn lent_share(
        &self,
        events: usize,
        members: usize,
        now: Instant,
        can_share: bool,
    ) -> usize {
        if events != 1 {
            return 0;
        }
        let Some(last) = &self.lent_fanout else {
            return members.min(FIRST_LENT_SHARE);
        };
        if now.saturating_duration_since(last.start) < last.took * 10 {
            return 0;
        }
        let per_send = last.took.as_secs_f64() / last.members.max(1) as f64;
        let fits = |budget: Duration| {
            let share = (budget.as_secs_f64() / per_send.max(1e-9)) as usize;
            members.min(share.max(1))
        };
        match fits(SHARED_LENT_BUDGET) {
            share if can_share && share >= SHARED_FROM => share,
            _ => fits(LENT_BUDGET),
        }
    }

    /// Whether the `JOIN` or `PART` of a member is sent to the room's members: only in
    /// a room of at most `limit` members, counting the member joining or leaving.
    /// `here` is that count on this process; the broker's report may say more.
    ///
    /// Above the limit a room's fill would cost O(n²) lines (every join a line to
    /// each member already there: 5 × 10⁹ for 100,000 members), so, as Centrifugo
    /// turns join and leave messages off for large channels, presence there is what
    /// `WHO` answers, exactly, and no longer a stream of lines.
    pub(super) fn presence_shown(&self, limit: usize, here: usize) -> bool {
        here.max(self.reported) <= limit
    }

    /// Queues an event, a message of `author` (told it is its own) if any, for every
    /// member but `skip`; returns whether the caller must deliver the outbox.
    pub(super) fn push(
        &mut self,
        publication: Arc<Publication>,
        skip: Option<MemberId>,
        author: Option<MemberId>,
    ) -> bool {
        self.seq += 1;
        self.outbox.push_back(Pending {
            seq: self.seq,
            publication,
            skip,
            author,
            ordered: crate::base::meter::ticks(),
        });
        !std::mem::replace(&mut self.delivering, true)
    }

    pub(super) fn entry(&self, id: MemberId) -> Option<&Entry> {
        self.index.get(&id).map(|&i| &self.members[i])
    }

    pub(super) fn entry_mut(&mut self, id: MemberId) -> Option<&mut Entry> {
        let i = *self.index.get(&id)?;
        Some(&mut Arc::make_mut(&mut self.members)[i])
    }

    pub(super) fn add(&mut self, e: Entry) {
        self.index.insert(e.id, self.members.len());
        Arc::make_mut(&mut self.members).push(e);
    }

    pub(super) fn remove(&mut self, id: MemberId) -> Option<Entry> {
        let i = self.index.remove(&id)?;
        let members = Arc::make_mut(&mut self.members);
        let e = members.swap_remove(i);
        if let Some(moved) = members.get(i) {
            self.index.insert(moved.id, i);
        }
        Some(e)
    }

    /// No member and no delivery under way: the room can be forgotten.
    pub(super) fn idle(&self) -> bool {
        self.members.is_empty() && !self.delivering
    }
}

/// One shard of the rooms.
pub(super) type Shard = HashMap<Arc<str>, Room>;
