//! The Redis bridge: makes several processes one chat (`--redis URL`).
//!
//! Every room event goes through Redis, and each process delivers to its own members
//! only what comes back on the shared channel, so all processes see each room in one
//! order: Redis runs commands one at a time, and pub/sub hands messages out in the
//! order they were published.
//!
//! - A message is one Lua script, atomic in Redis: `INCR` the room's counter (the
//!   message id), `XADD` the event to the room's stream (its history, trimmed to
//!   `--history`, keyed by that id so `AFTER <id>` is an `XRANGE`), and `PUBLISH` it.
//!   Either all three happen or none, and a `SAY` answered `ERR unavailable` is run by
//!   nobody later (next section): nothing is half-delivered.
//! - Joins, parts and nick changes are one script each too: list or unlist the nick in
//!   the room's presence set, then `PUBLISH` the event.
//! - `HISTORY` and the replay of `JOIN ... AFTER` are read from the stream and reach
//!   the member through its mailbox, like everything else.
//!
//! # Pipelining
//!
//! Requests reach the bridge thread through one bounded queue, in the order the hub
//! made them. The bridge sends whatever is queued (up to [`BATCH`] requests) as one
//! pipeline on its one connection and, while that pipeline is out, collects the next
//! ones: a group commit, so one round trip serves many requests under load and a lone
//! request still goes out at once. Redis runs a connection's commands in the order
//! they were written, so a member's requests (a `JOIN` then the `XRANGE` of its
//! replay, two `SAY`s) keep their order, and the scripts keep each room's one order.
//! Only one pipeline is out at a time: that order then never depends on the client
//! library's scheduling. The scripts are loaded once per connection (`SCRIPT LOAD`)
//! and called by hash.
//!
//! Events coming back on the channel are put in order into the rooms by the bridge
//! thread (short: a push and, for a member's own `JOIN`, its `OK JOIN`); handing them
//! to the members, the long part (one send per member), runs on a second thread, so a
//! join storm's fan-out never delays the answers of the joins behind it.
//!
//! # A refused message is never sent
//!
//! A `SAY` whose pipeline gets no answer within [`COMMAND_TIMEOUT`] (Redis hangs: a
//! stopped process, a stalled host) is answered `ERR unavailable`, yet the command
//! already sits in Redis's socket buffer: a Redis that resumes would run it, and the
//! other processes would deliver a message its author was told had failed. So every
//! `SAY` carries a deadline on Redis's own clock, [`SAY_BUDGET`] (half the timeout)
//! after its pipeline goes out, and the script checks it before anything else: past
//! it, it changes nothing and answers `EXPIRED`, which the bridge (if it still waits)
//! answers `unavailable` too. Redis's clock is estimated here from `TIME` readings
//! (see [`Clock`]): one on every connect, then one at the end of each expiry scan's
//! pipeline (every `T/6`). The estimate errs low, which only moves deadlines earlier.
//!
//! So a message Redis runs ran within the budget of going out, and its reply has the
//! other half of the timeout to come back. What is left: a reply delayed more than
//! that margin after the script ran (Redis stopped right after running it, the
//! network or this process stalled), or a connection that breaks (an error, not a
//! timeout) after the script ran and before its reply arrived. Then the author is
//! told `unavailable` although the message was sent; the other processes deliver it
//! and it is in the history, and the author's own process delivers it only if its
//! subscription was still up when it was published. Notifications (`Hub::announce`)
//! go through the same script with the same deadline; their sender was answered when
//! they were queued, so one refused is only logged.
//!
//! # Presence
//!
//! Each room has a sorted set of nicks scored by when their listing expires, and each
//! nick claim is a key with an expiry; times are Redis's own clock (`TIME` in the
//! scripts), so processes on hosts whose clocks differ agree. With `T` =
//! `--presence-ttl`, every process renews its members' listings and nick claims every
//! `T/3` for `2T/3` from then (in chunks, a few per pipeline; only entries still there,
//! so a member that parted meanwhile is not listed again), and every `T/6` removes the
//! expired listings of the rooms it has members in, publishing a `PART` for each (one
//! script: whoever removes an entry publishes its `PART`, once). After every connect,
//! before it takes requests, it lists all its members and claims all its nicks in one
//! pipeline: Redis may have come back empty.
//! A process killed just after re-listing is unlisted `2T/3` later and its members'
//! `PART`s are published at most `T/6` after that: everywhere within `5T/6`, inside
//! the TTL with `T/6` left for the fan-out. A live process has `T/3` of slack for a
//! late refresh before its members would be wrongly parted. `WHO` reads the set: the
//! members of every process.
//!
//! When that slack is not enough (Redis hung longer than a listing lives, so the scans
//! queued during the hang run on resume before the renewals), live members are parted
//! everywhere. The expiry scan therefore keeps each nick it parts in the room's parted
//! set for a while, and the renewal (or the registration after a connect) of a member
//! missing from the listing but in the parted set lists it again and publishes its
//! `JOIN`, in the same script: every process's members see it come back, and `WHO` is
//! right everywhere. A real `PART` or nick change clears the nick from both sets in
//! its own script, so a renewal Redis runs after it lists nobody again, and one it
//! runs before it is followed by it (one connection runs its commands in order). Only
//! members whose own `JOIN` has come back are repaired (their join script ran first).
//! The member itself is shown neither the false `PART` nor the `JOIN`: it never left.
//!
//! The bridge runs on a thread of its own with a single-threaded tokio runtime, so it
//! works the same under every model. When Redis cannot be reached it marks itself
//! down (`SAY` then fails at once with `unavailable`; members stay connected), answers
//! queued requests with `unavailable`, and reconnects with exponential backoff capped
//! at [`BACKOFF_MAX`], subscribing again by itself.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::ConnectionLike;
use redis::Value;
use tokio::sync::mpsc;

use super::{Answer, ChatEvent, Hub, HubError, Kind, MemberId, MsgId, Publication};
use crate::base::mailbox::Sender;

mod clock;
mod scripts;

use self::clock::{time_ms, Clock};
use self::scripts::Scripts;
#[cfg(test)]
use self::scripts::SAY_SCRIPT;

/// The pub/sub channel every process subscribes to.
const CHANNEL: &str = "mc:events";
/// Requests waiting for the bridge; beyond this, `SAY` is answered `unavailable`
/// rather than queued without bound.
const QUEUE: usize = 8192;
/// Most requests sent in one pipeline. Large enough that a join storm drains in a
/// few round trips; small enough that one pipeline's replies stay a few hundred KiB.
const BATCH: usize = 1024;
/// Most nicks re-listed by one script call, so no single call holds Redis (which runs
/// one script at a time) for long. The scripts `unpack` up to `2 * CHUNK + 1` values,
/// well below what Redis's Lua stack takes (about 8,000).
const CHUNK: usize = 1000;
/// Re-listing commands sent in one pipeline at most, after the first registration.
const SPREAD: usize = 4;
/// First reconnection delay.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest reconnection delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Longest wait for one pipeline or connection. A `SAY` whose pipeline gets no
/// answer by then is answered `unavailable`.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long after its pipeline goes out Redis may still run a `SAY`, on Redis's
/// clock: half of [`COMMAND_TIMEOUT`], so a message Redis does run has the other half
/// for its reply to come back before its author would be told `unavailable`.
const SAY_BUDGET: Duration = Duration::from_millis(COMMAND_TIMEOUT.as_millis() as u64 / 2);
/// Readings of Redis's clock the estimate is taken from (see [`Clock`]): one per
/// connect and per expiry scan, so about `8 T/6` of them at `--presence-ttl` `T`.
const CLOCK_SAMPLES: usize = 8;

/// A pipeline slower than this is logged: members' answers are waiting on it.
const SLOW: Duration = Duration::from_millis(500);

/// The presence periods derived from `--presence-ttl` (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timing {
    /// How long a listing or nick claim lasts after each refresh.
    lifetime: Duration,
    /// How often this process re-lists its members and nicks.
    refresh: Duration,
    /// How often it removes expired listings (and publishes their `PART`s).
    scan: Duration,
    /// How long an expired member stays in its room's parted set, where its process
    /// finds it if it is alive after all (see [`PRESENCE_SCRIPT`]): two lifetimes, then
    /// enough for a process whose pipeline timed out to connect again and register
    /// (two command timeouts and the longest backoff between them).
    keep: Duration,
}

impl Timing {
    fn new(ttl: Duration) -> Timing {
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

/// What sessions ask of Redis, through the hub.
pub(crate) enum Request {
    /// A message; a failure is answered to its author (none for a server notice),
    /// which recognises its own message coming back by its member id.
    Say {
        room: Arc<str>,
        nick: Arc<str>,
        text: Box<str>,
        author: Option<(MemberId, Sender<ChatEvent>)>,
    },
    /// A join, part or nick change, by `member` of this process.
    Event {
        room: Arc<str>,
        kind: Kind,
        member: MemberId,
    },
    /// The members of a room on every process.
    Who {
        room: Arc<str>,
        to: Sender<ChatEvent>,
    },
    /// Claims `nick` for `member` across processes, releasing `old`.
    Claim {
        nick: Arc<str>,
        old: Arc<str>,
        member: MemberId,
        to: Sender<ChatEvent>,
    },
    /// `member` has gone: its nick is free.
    Release { nick: Arc<str>, member: MemberId },
    /// Messages from the room's history: after `after` (a replay) or the last `last`.
    Range {
        room: Arc<str>,
        after: Option<MsgId>,
        last: usize,
        to: Sender<ChatEvent>,
    },
}

/// One command of a pipeline and what to do with its reply.
enum Job {
    /// A session's request.
    Req(Request),
    /// Renewal of some of this process's nick claims; the reply lists those lost.
    Nicks,
    /// Re-listing of this process's members of a room; the reply lists the nicks
    /// listed again after an expiry had parted them.
    Presence(Arc<str>),
    /// Removal of a room's expired listings; the reply lists the nicks parted.
    Expire(Arc<str>),
    /// A reading of Redis's clock (`TIME`), for the estimate of [`Clock`].
    Clock,
}

/// The hub's handle on the bridge thread.
pub(crate) struct Bridge {
    tx: mpsc::Sender<Request>,
    up: Arc<AtomicBool>,
}

/// A nick's claim, under its case-folded form: `ann` and `ANN` are one nick on every
/// process.
fn nick_key(nick: &str) -> String {
    format!("mc:nick:{}", nick.to_ascii_lowercase())
}

fn who_key(room: &str) -> String {
    format!("mc:room:{room}:who")
}

/// A room's parted set: nicks an expiry scan unlisted, scored by when they are
/// forgotten.
fn parted_key(room: &str) -> String {
    format!("mc:room:{room}:parted")
}

fn keys(room: &str) -> (String, String) {
    (
        format!("mc:room:{room}:seq"),
        format!("mc:room:{room}:hist"),
    )
}

impl Bridge {
    /// Starts the bridge thread for `client`; it connects in the background.
    pub(crate) fn start(
        client: redis::Client,
        hub: Weak<Hub>,
        history: usize,
        ttl: Duration,
    ) -> Bridge {
        let (tx, rx) = mpsc::channel(QUEUE);
        let up = Arc::new(AtomicBool::new(false));
        let state = Run {
            client,
            deliver: start_deliverer(hub.clone()),
            hub,
            history: history.max(1),
            instance: instance_id(),
            up: up.clone(),
            timing: Timing::new(ttl.max(Duration::from_millis(300))),
            scripts: Scripts::new(),
            clock: RefCell::new(Clock::new()),
        };
        let spawned = std::thread::Builder::new()
            .name("redis-bridge".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("redis: cannot start the bridge runtime: {e}");
                        return;
                    }
                };
                rt.block_on(state.run(rx));
            });
        if let Err(e) = spawned {
            tracing::error!("redis: cannot start the bridge thread: {e}");
        }
        Bridge { tx, up }
    }

    /// Whether Redis is reachable now.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Queues a request, or says Redis is unavailable.
    pub(crate) fn send(&self, r: Request) -> Result<(), HubError> {
        if !self.is_up() {
            return Err(HubError::Unavailable);
        }
        self.tx.try_send(r).map_err(|_| HubError::Unavailable)
    }
}

/// Starts the thread that hands rooms' events to their members. It receives a room
/// only when the room had no delivery under way (see `Room::push`), so its queue holds
/// at most one entry per room. Without it (the thread could not start) the bridge
/// thread delivers itself.
fn start_deliverer(hub: Weak<Hub>) -> Option<std::sync::mpsc::Sender<Arc<str>>> {
    let (tx, rx) = std::sync::mpsc::channel::<Arc<str>>();
    let spawned = std::thread::Builder::new()
        .name("redis-deliver".into())
        .spawn(move || {
            for room in rx {
                match hub.upgrade() {
                    Some(hub) => hub.deliver(&room),
                    None => return,
                }
            }
        });
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            tracing::error!("redis: cannot start the delivery thread ({e}); delivering inline");
            None
        }
    }
}

/// A process-unique id, so a process recognises its own events coming back.
fn instance_id() -> Arc<str> {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}-{:x}", std::process::id(), t & 0xffff_ffff_ffff).into()
}

struct Run {
    client: redis::Client,
    hub: Weak<Hub>,
    deliver: Option<std::sync::mpsc::Sender<Arc<str>>>,
    history: usize,
    instance: Arc<str>,
    up: Arc<AtomicBool>,
    timing: Timing,
    scripts: Scripts,
    clock: RefCell<Clock>,
}

type Conn = redis::aio::MultiplexedConnection;

/// The pipeline out, if any: its replies, one per job.
type Batch = Pin<Box<dyn Future<Output = Result<Vec<Value>, String>>>>;

async fn timed<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(COMMAND_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {COMMAND_TIMEOUT:?}")),
    }
}

/// The replies of the pipeline out, or never when none is.
async fn replies(batch: &mut Option<Batch>) -> Result<Vec<Value>, String> {
    match batch {
        Some(b) => b.await,
        None => std::future::pending().await,
    }
}

/// The hub is gone: the bridge stops.
struct Gone;

impl Run {
    fn hub(&self) -> Option<Arc<Hub>> {
        self.hub.upgrade()
    }

    async fn run(self, mut rx: mpsc::Receiver<Request>) {
        let mut backoff = BACKOFF_START;
        loop {
            match self.connect().await {
                Ok((mut conn, stream)) => {
                    // Members and nicks are registered before anyone is told Redis is
                    // up: it may have come back empty.
                    if let Err(e) = self.register(&mut conn).await {
                        tracing::warn!(
                            "redis: cannot register members: {e}; retrying in {backoff:?}"
                        );
                        if self.wait(&mut rx, backoff).await.is_none() {
                            return;
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                    if let Some(h) = self.hub() {
                        h.stats.redis_connects.fetch_add(1, Ordering::Relaxed);
                    }
                    self.up.store(true, Ordering::Release);
                    // Logged once requests are taken: a readiness signal (.ci, tests).
                    tracing::info!("redis: connected and subscribed");
                    backoff = BACKOFF_START;
                    let why = self.serve(conn, stream, &mut rx).await;
                    self.up.store(false, Ordering::Release);
                    if let Some(h) = self.hub() {
                        h.stats.redis_losses.fetch_add(1, Ordering::Relaxed);
                    }
                    match why {
                        Some(why) => tracing::warn!("redis: connection lost: {why}; reconnecting"),
                        None => return, // The hub is gone.
                    }
                }
                Err(e) => tracing::warn!("redis: cannot connect: {e}; retrying in {backoff:?}"),
            }
            if self.wait(&mut rx, backoff).await.is_none() {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Waits `backoff` while down, answering queued requests at once rather than
    /// leaving them waiting; `None` when the hub is gone.
    async fn wait(&self, rx: &mut mpsc::Receiver<Request>, backoff: Duration) -> Option<()> {
        let until = tokio::time::Instant::now() + backoff;
        loop {
            tokio::select! {
                r = rx.recv() => self.fail(r?),
                _ = tokio::time::sleep_until(until) => return Some(()),
            }
        }
    }

    /// Lists every member and nick of this process, in one pipeline.
    async fn register(&self, conn: &mut Conn) -> Result<(), String> {
        let (jobs, cmds): (Vec<Job>, Vec<redis::Cmd>) = self.relist(false).into_iter().unzip();
        if jobs.is_empty() {
            return Ok(());
        }
        let mut p = redis::pipe();
        for c in cmds {
            p.add_command(c);
        }
        let n = jobs.len();
        self.finish(jobs, timed(conn.req_packed_commands(&p, 0, n)).await)
    }

    async fn connect(&self) -> Result<(Conn, redis::aio::PubSubStream), String> {
        let mut conn = timed(self.client.get_multiplexed_async_connection()).await?;
        let mut load = redis::pipe();
        for s in self.scripts.all() {
            load.cmd("SCRIPT").arg("LOAD").arg(&s.code);
        }
        let hashes: Vec<String> = timed(load.query_async(&mut conn)).await?;
        for (s, h) in self.scripts.all().iter().zip(&hashes) {
            if s.hash != *h {
                return Err(format!("SCRIPT LOAD answered {h}, expected {}", s.hash));
            }
        }
        let mut ps = timed(self.client.get_async_pubsub()).await?;
        timed(ps.subscribe(CHANNEL)).await?;
        // The first reading of Redis's clock, before any message is sent on this
        // connection; the expiry scans add more.
        self.clock.borrow_mut().reset();
        let time: Value = timed(redis::cmd("TIME").query_async(&mut conn)).await?;
        let received = Instant::now();
        let ms = time_ms(time).ok_or_else(|| "TIME answered no time".to_string())?;
        self.clock.borrow_mut().sample(ms, received);
        Ok((conn, ps.into_on_message()))
    }

    /// The deadline, on Redis's clock, of a `SAY` going out now: [`SAY_BUDGET`] from
    /// now. Without a reading of the clock (never while serving: `connect` takes one)
    /// it is 0, so the message is refused rather than possibly run late.
    fn say_deadline(&self) -> i64 {
        self.clock
            .borrow()
            .redis_ms(Instant::now())
            .map_or(0, |now| now + SAY_BUDGET.as_millis() as i64)
    }

    /// Serves until the connection fails (the reason) or the hub is gone (`None`).
    async fn serve(
        &self,
        conn: Conn,
        mut stream: redis::aio::PubSubStream,
        rx: &mut mpsc::Receiver<Request>,
    ) -> Option<String> {
        // A tick per scan, a refresh every second tick; none at once: `register` has
        // just listed everyone.
        let start = tokio::time::Instant::now() + self.timing.scan;
        let mut ticks = tokio::time::interval_at(start, self.timing.scan);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let per_refresh = (self.timing.refresh.as_nanos() / self.timing.scan.as_nanos()).max(1);
        let mut tick: u128 = 0;
        let (mut refresh_due, mut scan_due) = (false, false);
        // Re-listing commands not sent yet: a few go in each pipeline, so that no
        // pipeline carries a whole refresh of many members ahead of their requests.
        let mut relist: std::collections::VecDeque<(Job, redis::Cmd)> = Default::default();
        // A request taken from the queue while no pipeline was out: the next one's first.
        let mut first: Option<Request> = None;
        let mut batch: Option<Batch> = None;
        let mut out: Vec<Job> = Vec::new();
        let why = loop {
            if batch.is_none() {
                // A renewal still going out when the next is due (pipelines slower
                // than the spread assumes) goes out whole now: listings must not
                // expire, and the queue holds at most one renewal.
                let mut spread = SPREAD;
                if std::mem::take(&mut refresh_due) {
                    if !relist.is_empty() {
                        tracing::warn!("redis: presence renewal lagging: sent in one go");
                        spread = usize::MAX;
                    }
                    relist.extend(self.relist(true));
                }
                let scan = std::mem::take(&mut scan_due);
                match self.collect(&mut relist, spread, scan, first.take(), rx) {
                    Ok((jobs, pipe)) if !jobs.is_empty() => {
                        out = jobs;
                        let mut conn = conn.clone();
                        let n = out.len();
                        batch = Some(Box::pin(async move {
                            let t = tokio::time::Instant::now();
                            let r = timed(conn.req_packed_commands(&pipe, 0, n)).await;
                            if t.elapsed() > SLOW {
                                tracing::warn!(
                                    "redis: a pipeline of {n} commands took {:?}",
                                    t.elapsed()
                                );
                            }
                            r
                        }));
                    }
                    Ok(_) => {}
                    Err(Gone) => break None,
                }
            }
            tokio::select! {
                _ = ticks.tick() => {
                    scan_due = true;
                    refresh_due |= tick % per_refresh == 0;
                    tick += 1;
                }
                m = stream.next() => match m {
                    Some(m) => {
                        if self.inject(m.get_payload_bytes()).is_none() {
                            break None;
                        }
                    }
                    None => break Some("subscription closed".into()),
                },
                res = replies(&mut batch) => {
                    batch = None;
                    if let Err(e) = self.finish(std::mem::take(&mut out), res) {
                        break Some(e);
                    }
                }
                r = rx.recv(), if batch.is_none() => match r {
                    Some(r) => first = Some(r),
                    None => break None,
                },
            }
        };
        // Whatever was taken and not answered is answered now.
        for job in out {
            self.fail_job(job);
        }
        if let Some(r) = first {
            self.fail(r);
        }
        why
    }

    /// The next pipeline: up to `spread` re-listing commands, the expiry scan if
    /// due, then `first` and the requests queued behind it, in queue order.
    fn collect(
        &self,
        relist: &mut std::collections::VecDeque<(Job, redis::Cmd)>,
        spread: usize,
        scan: bool,
        first: Option<Request>,
        rx: &mut mpsc::Receiver<Request>,
    ) -> Result<(Vec<Job>, redis::Pipeline), Gone> {
        let mut jobs = Vec::new();
        let mut pipe = redis::pipe();
        for (job, c) in relist.drain(..spread.min(relist.len())) {
            pipe.add_command(c);
            jobs.push(job);
        }
        if scan {
            self.scan(&mut jobs, &mut pipe);
        }
        let deadline = self.say_deadline();
        let mut next = first;
        let mut taken = 0;
        loop {
            let r = match next.take() {
                Some(r) => r,
                None if taken >= BATCH => break,
                None => match rx.try_recv() {
                    Ok(r) => r,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return Err(Gone),
                },
            };
            taken += 1;
            match self.command(&r, deadline) {
                Some(c) => {
                    pipe.add_command(c);
                    jobs.push(Job::Req(r));
                }
                None => self.fail(r),
            }
        }
        if scan {
            // Last in the pipeline, so that little but the reply's way back lies
            // between Redis reading its clock and the pipeline's answer here.
            pipe.add_command(redis::cmd("TIME"));
            jobs.push(Job::Clock);
        }
        Ok((jobs, pipe))
    }

    /// The commands re-listing this process's nicks and members: all of them when
    /// `renew` is false (after a connect), else only those still listed.
    fn relist(&self, renew: bool) -> Vec<(Job, redis::Cmd)> {
        let Some(hub) = self.hub() else {
            return Vec::new();
        };
        let life = self.timing.lifetime.as_millis() as u64;
        let mut out = Vec::new();
        let nicks = hub.local_nicks();
        for chunk in nicks.chunks(CHUNK) {
            let mut c = self.scripts.nicks.call(chunk.len());
            for (nick, _) in chunk {
                c.arg(nick_key(nick));
            }
            c.arg(life).arg(if renew { "renew" } else { "claim" });
            for (_, member) in chunk {
                c.arg(self.owner(*member));
            }
            out.push((Job::Nicks, c));
        }
        for (room, members) in listings(&hub) {
            let (key, parted) = (who_key(&room), parted_key(&room));
            for chunk in members.chunks(CHUNK) {
                let mut c = self.scripts.presence.call(3);
                c.arg(&key).arg(&parted).arg(CHANNEL);
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
    fn scan(&self, jobs: &mut Vec<Job>, p: &mut redis::Pipeline) {
        let Some(hub) = self.hub() else {
            return;
        };
        for (room, _) in hub.local_presence() {
            let mut c = self.scripts.expire.call(3);
            c.arg(who_key(&room))
                .arg(CHANNEL)
                .arg(parted_key(&room))
                .arg(&*room)
                .arg(self.timing.keep.as_millis() as u64);
            p.add_command(c);
            jobs.push(Job::Expire(room));
        }
    }

    /// The command of a request, or `None` for one that needs none. A `SAY` carries
    /// `deadline`: Redis's clock past which it must not run.
    fn command(&self, r: &Request, deadline: i64) -> Option<redis::Cmd> {
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
                let v = super::events::encode(room, kind, &self.instance, *member)?;
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

    /// Answers the jobs of a pipeline from its replies. An error of the connection
    /// fails them all and ends it; an error of one command fails that job only, but
    /// a script Redis no longer knows (flushed) ends the connection too, so that the
    /// next one loads the scripts again.
    fn finish(&self, jobs: Vec<Job>, res: Result<Vec<Value>, String>) -> Result<(), String> {
        let received = Instant::now();
        let res = res.and_then(|r| match r.len() == jobs.len() {
            true => Ok(r),
            false => Err(format!("{} replies to {} commands", r.len(), jobs.len())),
        });
        let replies = match res {
            Ok(r) => r,
            Err(e) => {
                for job in jobs {
                    self.fail_job(job);
                }
                return Err(e);
            }
        };
        let mut lost = None;
        let mut expired = 0;
        for (job, reply) in jobs.into_iter().zip(replies) {
            if let Value::ServerError(e) = &reply {
                if e.code() == "EXPIRED" {
                    // Redis ran the message too late: it sent nothing.
                    expired += 1;
                    self.fail_job(job);
                    continue;
                }
                tracing::warn!("redis: a command failed: {e:?}");
                if e.code() == "NOSCRIPT" {
                    lost = Some("Redis lost the bridge's scripts".to_string());
                }
                self.fail_job(job);
                continue;
            }
            if let Job::Clock = job {
                match time_ms(reply) {
                    Some(ms) => self.clock.borrow_mut().sample(ms, received),
                    None => tracing::warn!("redis: TIME answered no time"),
                }
                continue;
            }
            self.answer(job, reply);
        }
        if expired > 0 {
            tracing::warn!(
                "redis: {expired} messages reached Redis after their deadline: not sent, \
                 answered unavailable"
            );
        }
        lost.map_or(Ok(()), Err)
    }

    /// Hands a reply to whoever waits for it.
    fn answer(&self, job: Job, reply: Value) {
        let r = match job {
            Job::Req(r) => r,
            Job::Clock => return,
            Job::Presence(room) => {
                for nick in redis::from_owned_redis_value::<Vec<String>>(reply).unwrap_or_default()
                {
                    tracing::warn!(
                        "redis: {nick} in {room} was parted by expiry while still here \
                         (a late renewal, or Redis hung): listed again, JOIN published"
                    );
                }
                return;
            }
            Job::Nicks => {
                for nick in redis::from_owned_redis_value::<Vec<String>>(reply).unwrap_or_default()
                {
                    tracing::warn!("redis: {nick} is held by another member now; not renewed");
                }
                return;
            }
            Job::Expire(room) => {
                for nick in redis::from_owned_redis_value::<Vec<String>>(reply).unwrap_or_default()
                {
                    tracing::info!("redis: {nick} in {room} expired: parting it everywhere");
                }
                return;
            }
        };
        match r {
            Request::Say { .. } | Request::Event { .. } | Request::Release { .. } => {}
            Request::Claim { nick, to, .. } => {
                let answer = match redis::from_owned_redis_value::<i64>(reply) {
                    Ok(1) => Ok(nick),
                    Ok(_) => Err(HubError::NickTaken),
                    Err(_) => Err(HubError::Unavailable),
                };
                let _ = to.send(ChatEvent::Answer(Answer::Nick(answer)), 64);
            }
            Request::Who { room, to } => {
                let nicks = match redis::from_owned_redis_value::<Vec<String>>(reply) {
                    Ok(n) if n.is_empty() => Err(HubError::NoSuchRoom),
                    Ok(n) => {
                        let mut n: Vec<Arc<str>> = n.into_iter().map(Arc::from).collect();
                        n.sort();
                        Ok(n)
                    }
                    Err(_) => Err(HubError::Unavailable),
                };
                let _ = to.send(ChatEvent::Answer(Answer::Who { room, nicks }), 64);
            }
            Request::Range {
                room, after, to, ..
            } => {
                let msgs = match redis::from_owned_redis_value::<redis::streams::StreamRangeReply>(
                    reply,
                ) {
                    Ok(r) => {
                        let mut msgs: Vec<Arc<Publication>> = r
                            .ids
                            .iter()
                            .filter_map(|e| {
                                let v: Vec<u8> = e.get("e")?;
                                let ev = super::events::parse(&v)?;
                                Some(Arc::new(Publication::new(ev.room, ev.kind)))
                            })
                            .collect();
                        if after.is_none() {
                            msgs.reverse();
                        }
                        Ok(msgs)
                    }
                    Err(_) => Err(HubError::Unavailable),
                };
                let _ = to.send(range_answer(room, after, msgs), 64);
            }
        }
    }

    fn fail_job(&self, job: Job) {
        if let Job::Req(r) = job {
            self.fail(r);
        }
    }

    /// The value of a nick claim: which process and member hold it.
    fn owner(&self, member: MemberId) -> String {
        format!("{}:{}", self.instance, member.0)
    }

    /// Puts an event from the channel into its room for this process's members;
    /// `None` when the hub is gone.
    fn inject(&self, payload: &[u8]) -> Option<()> {
        let hub = self.hub()?;
        let Some(ev) = super::events::parse(payload) else {
            tracing::warn!(
                "redis: ignoring a malformed event: {}",
                String::from_utf8_lossy(payload)
            );
            return Some(());
        };
        let own = ev.origin.as_deref() == Some(&*self.instance);
        let room = match (&ev.kind, ev.member) {
            // A member of this process listed again after an expiry parted it: it
            // never left, so it is not told it joined (and its join is not confirmed
            // by this: see `Hub::inject`). The others are, having been told it parted.
            (Kind::Join { .. }, Some(m)) if ev.rejoin && own => {
                push(&hub, &ev.room, ev.kind, Some(m))
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
                let skip = member_named(&hub, &ev.room, nick);
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

    /// Answers a request that Redis will not serve with `unavailable`.
    fn fail(&self, r: Request) {
        let ev = match r {
            Request::Say {
                author: Some((_, author)),
                ..
            } => (
                author,
                ChatEvent::Answer(Answer::Failed(HubError::Unavailable)),
            ),
            Request::Say {
                author: None, room, ..
            } => {
                // A notification: its sender was answered when it was queued.
                tracing::warn!("redis: a notification to {room} was not sent: Redis unavailable");
                return;
            }
            Request::Range {
                room, after, to, ..
            } => (to, range_answer(room, after, Err(HubError::Unavailable))),
            Request::Who { to, room } => (
                to,
                ChatEvent::Answer(Answer::Who {
                    room,
                    nicks: Err(HubError::Unavailable),
                }),
            ),
            Request::Claim { to, .. } => (
                to,
                ChatEvent::Answer(Answer::Nick(Err(HubError::Unavailable))),
            ),
            Request::Event { .. } | Request::Release { .. } => return,
        };
        let _ = ev.0.send(ev.1, 64);
    }
}

/// A member's nick, with its id once its join has come back from Redis.
type Listing = (Arc<str>, Option<MemberId>);

/// This process's members, room by room, each with its id once its join has come back
/// from Redis (`None` before: its `JOIN` may not have run yet, so a missing listing is
/// no sign of an expiry, and it is never repaired).
fn listings(hub: &Hub) -> Vec<(Arc<str>, Vec<Listing>)> {
    let mut all = Vec::new();
    for shard in hub.shards.iter() {
        let shard = super::lock(shard);
        for r in shard.values() {
            if !r.members.is_empty() {
                let members = r.members.iter().map(|e| {
                    let joined = e.since != u64::MAX;
                    (e.nick.clone(), joined.then_some(e.id))
                });
                all.push((r.name.clone(), members.collect()));
            }
        }
    }
    all
}

/// The member of this process called `nick` in `room`, if any.
fn member_named(hub: &Hub, room: &str, nick: &str) -> Option<MemberId> {
    let shard = super::lock(hub.shard(room));
    let r = shard.get(room)?;
    r.members.iter().find(|e| &*e.nick == nick).map(|e| e.id)
}

/// Queues an event of `room` for this process's members but `skip`, like
/// `Hub::inject` without its handling of a member's own `JOIN` (a rejoin is not one);
/// returns the room when the caller must hand its events out.
fn push(hub: &Hub, room: &str, kind: Kind, skip: Option<MemberId>) -> Option<Arc<str>> {
    let mut shard = super::lock(hub.shard(room));
    let r = shard.get_mut(room)?;
    let name = r.name.clone();
    let deliver = r.push(Arc::new(Publication::new(name.clone(), kind)), skip);
    deliver.then_some(name)
}

fn range_answer(
    room: Arc<str>,
    after: Option<MsgId>,
    msgs: Result<Vec<Arc<Publication>>, HubError>,
) -> ChatEvent {
    ChatEvent::Answer(match after {
        Some(_) => Answer::Replay { room, msgs },
        None => Answer::History { room, msgs },
    })
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

    #[test]
    fn a_say_that_runs_leaves_half_the_timeout_for_its_reply() {
        assert!(SAY_BUDGET > Duration::ZERO);
        assert!(SAY_BUDGET * 2 <= COMMAND_TIMEOUT, "{SAY_BUDGET:?}");
        // The deadline is checked before the script writes anything.
        let check = SAY_SCRIPT.find("now > tonumber(ARGV[6])").unwrap();
        for write in ["'SET'", "'INCR'", "'XADD'", "'PUBLISH'"] {
            assert!(check < SAY_SCRIPT.find(write).unwrap(), "{write}");
        }
    }
}
