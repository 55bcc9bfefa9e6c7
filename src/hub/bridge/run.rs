//! The bridge thread's loop: connect, register, then serve requests as pipelines
//! (one out at a time), events from the channel, and the presence ticks; reconnect
//! with backoff when the connection fails.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redis::Value;
use tokio::sync::mpsc;

use super::clock::{time_ms, Clock};
use super::cluster::{self, Conn, Done, Inbound, Meta, Plan, Target, PROBE_EVERY};
use super::error::BridgeError;
use super::presence::Timing;
use super::queue::Inbox;
use super::repair::Repair;
use super::scripts::Scripts;
use super::{
    nick_tag, Hub, Job, Kind, Request, BACKOFF_MAX, BACKOFF_START, BATCH, CHANNEL, COMMAND_TIMEOUT,
    SAY_BUDGET, SLOW, SPREAD,
};

/// The bridge thread's state.
pub(super) struct Run {
    target: Target,
    /// `target` is a Redis Cluster.
    pub(super) cluster: bool,
    /// Replicas that must have a message before it is published (see `cluster.rs`),
    /// decided at each connect.
    pub(super) acks: Cell<u32>,
    /// Rooms whose sharded channel this process is subscribed to (a cluster).
    subscribed: Rc<RefCell<HashSet<Arc<str>>>>,
    /// Channels to join (true) or leave before the next pipeline (a cluster).
    channels: RefCell<HashMap<Arc<str>, bool>>,
    /// Slots whose pipeline failed, with a hash tag of each: their requests are
    /// answered `unavailable` until a probe gets an answer (a cluster).
    down: RefCell<HashMap<u16, Arc<str>>>,
    /// The master of each slot as last seen (a cluster; see `cluster.rs`).
    masters: Rc<RefCell<HashMap<u16, Arc<str>>>>,
    /// Requests made by replies, sent with the next pipeline (a cluster: the release
    /// of an old nick once the new one is claimed).
    pub(super) followups: RefCell<Vec<Request>>,
    /// Rooms whose missed messages are being read back, with the events held
    /// meanwhile (`repair.rs`).
    pub(super) repairs: RefCell<HashMap<Arc<str>, Repair>>,
    /// Repairs to send with the next pipeline: the room and its last message here.
    pub(super) repair_due: RefCell<Vec<(Arc<str>, u64)>>,
    /// Messages of this process's members that Redis ran (the reply to their `SAY`
    /// came) and that have not come back yet: read back by a repair, one answers its
    /// `SAY` (`inbound.rs`). At most `replies::RAN_MAX`.
    pub(super) ran: RefCell<HashSet<(Arc<str>, u64)>>,
    /// Rooms whose members here are listed again in Redis before the next requests
    /// (`presence.rs`): this process's lease there was lost, or an event failed.
    pub(super) relist: RefCell<HashSet<Arc<str>>>,
    /// Rooms whose listing failed: listed again with the next renewal.
    pub(super) relist_later: RefCell<HashSet<Arc<str>>>,
    hub: Weak<Hub>,
    pub(super) deliver: Option<std::sync::mpsc::Sender<Arc<str>>>,
    pub(super) history: usize,
    pub(super) instance: Arc<str>,
    up: Arc<AtomicBool>,
    pub(super) timing: Timing,
    pub(super) scripts: Rc<Scripts>,
    pub(super) clock: RefCell<Clock>,
}

/// The pipeline out, if any: its replies, one per job, and the slots that failed.
type Batch = Pin<Box<dyn Future<Output = Result<Done, BridgeError>>>>;

/// The probe of the slots marked down, if one is out: those that answered.
type Probe = Pin<Box<dyn Future<Output = Vec<u16>>>>;

async fn timed<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, BridgeError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(BridgeError::Redis(e)),
        Err(_) => Err(BridgeError::Timeout(COMMAND_TIMEOUT)),
    }
}

/// The replies of the pipeline out, or never when none is.
async fn replies(batch: &mut Option<Batch>) -> Result<Done, BridgeError> {
    match batch {
        Some(b) => b.await,
        None => std::future::pending().await,
    }
}

/// The answer of the probe out, or never when none is.
async fn probed(probe: &mut Option<Probe>) -> Vec<u16> {
    match probe {
        Some(p) => p.await,
        None => std::future::pending().await,
    }
}

/// The hub is gone: the bridge stops.
struct Gone;

impl Run {
    pub(super) fn new(
        target: Target,
        hub: Weak<Hub>,
        history: usize,
        ttl: Duration,
        up: Arc<AtomicBool>,
    ) -> Run {
        let cluster = target.is_cluster();
        Run {
            target,
            cluster,
            acks: Cell::new(0),
            subscribed: Default::default(),
            channels: Default::default(),
            down: Default::default(),
            masters: Default::default(),
            followups: Default::default(),
            repairs: Default::default(),
            repair_due: Default::default(),
            ran: Default::default(),
            relist: Default::default(),
            relist_later: Default::default(),
            deliver: super::start_deliverer(hub.clone()),
            hub,
            history: history.max(1),
            instance: super::instance_id(),
            up,
            timing: Timing::new(ttl.max(Duration::from_millis(300))),
            scripts: Rc::new(Scripts::new(cluster)),
            clock: RefCell::new(Clock::new()),
        }
    }

    pub(super) fn hub(&self) -> Option<Arc<Hub>> {
        self.hub.upgrade()
    }

    pub(super) async fn run(self, mut rx: Inbox) {
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
                    // Messages published while this process was not subscribed.
                    self.repair_all();
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
    async fn wait(&self, rx: &mut Inbox, backoff: Duration) -> Option<()> {
        let until = tokio::time::Instant::now() + backoff;
        loop {
            tokio::select! {
                r = rx.recv() => self.fail(r?),
                _ = tokio::time::sleep_until(until) => return Some(()),
            }
        }
    }

    /// Lists every member and nick of this process, in one pipeline.
    async fn register(&self, conn: &mut Conn) -> Result<(), BridgeError> {
        let (jobs, cmds): (Vec<Job>, Vec<redis::Cmd>) = self.register_all().into_iter().unzip();
        if jobs.is_empty() {
            return Ok(());
        }
        let res = self.launch(conn, &jobs, cmds).await;
        let res = res.map(|(values, down)| {
            self.mark_down(down);
            values
        });
        self.finish(jobs, res)
    }

    /// The hash tag of a request's keys: its slot on a cluster.
    fn request_tag(r: &Request) -> Arc<str> {
        match r {
            Request::Say { room, .. }
            | Request::Event { room, .. }
            | Request::Who { room, .. }
            | Request::Range { room, .. }
            | Request::Forget { room } => room.clone(),
            Request::Claim { nick, .. } | Request::Release { nick, .. } => nick_tag(nick),
        }
    }

    fn job_tag(job: &Job) -> Option<Arc<str>> {
        match job {
            Job::Req(r) => Some(Self::request_tag(r)),
            Job::Nicks(tag) => Some(tag.clone()),
            Job::Presence(room) | Job::Renew(room) | Job::Expire(room) | Job::Repair(room) => {
                Some(room.clone())
            }
            Job::Clock => None,
        }
    }

    /// Sends `cmds` (one per job) and the channel changes due, as one pipeline, or
    /// one per slot on a cluster.
    fn launch(&self, conn: &Conn, jobs: &[Job], cmds: Vec<redis::Cmd>) -> Batch {
        let acks = self.acks.get();
        let hub = self.hub();
        let mut meta = Vec::with_capacity(jobs.len());
        for job in jobs {
            let joins = match job {
                Job::Req(Request::Event {
                    room,
                    kind: Kind::Join { .. },
                    ..
                }) => Some(room),
                // A listing of a room with members here (not one emptying this
                // process's set of a room it left).
                Job::Presence(room) if hub.as_ref().is_some_and(|h| h.has_room(room)) => Some(room),
                _ => None,
            };
            if let Some(room) = joins.filter(|_| self.cluster) {
                if self.subscribed.borrow_mut().insert(room.clone()) {
                    self.channels.borrow_mut().insert(room.clone(), true);
                }
            }
            let say = match job {
                Job::Req(Request::Say { room, .. }) if acks > 0 => Some(room.clone()),
                _ => None,
            };
            let slot = match self.cluster {
                true => Self::job_tag(job).map(|t| (cluster::slot(&t), t)),
                false => None,
            };
            meta.push(Meta { slot, say });
        }
        let plan = Plan {
            acks,
            channels: self.channels.borrow_mut().drain().collect(),
            subscribed: self.subscribed.clone(),
            scripts: self.scripts.clone(),
            masters: self.masters.clone(),
        };
        Box::pin(conn.clone().exec(cmds, meta, plan))
    }

    /// A cluster: every room's channel is subscribed to again with the next pipeline
    /// (at each presence renewal). Subscribing twice is harmless, and a subscription
    /// the client lost when it replaced a node's connection (a failover elsewhere
    /// makes it reconnect) is back within `T/3`.
    fn resubscribe(&self) {
        if self.cluster {
            let mut ch = self.channels.borrow_mut();
            for room in self.subscribed.borrow().iter() {
                ch.entry(room.clone()).or_insert(true);
            }
        }
    }

    /// Marks slots down after their pipeline failed (see `cluster.rs`).
    fn mark_down(&self, slots: Vec<(u16, Arc<str>)>) {
        self.down.borrow_mut().extend(slots);
    }

    /// Whether a request goes to a slot marked down: then it is answered `unavailable`.
    fn is_down(&self, r: &Request) -> bool {
        let down = self.down.borrow();
        !down.is_empty() && down.contains_key(&cluster::slot(&Self::request_tag(r)))
    }

    async fn connect(&self) -> Result<(Conn, Inbound), BridgeError> {
        self.subscribed.borrow_mut().clear();
        self.channels.borrow_mut().clear();
        self.down.borrow_mut().clear();
        self.masters.borrow_mut().clear();
        self.clock.borrow_mut().reset();
        let (client, wait) = match &self.target {
            Target::Single { client, wait } => (client, *wait),
            Target::Cluster { seeds, wait } => return self.connect_cluster(seeds, *wait).await,
        };
        self.acks.set(wait);
        let mut conn = timed(client.get_multiplexed_async_connection()).await?;
        let mut load = redis::pipe();
        for s in self.scripts.all() {
            load.cmd("SCRIPT").arg("LOAD").arg(&s.code);
        }
        let hashes: Vec<String> = timed(load.query_async(&mut conn)).await?;
        for (s, h) in self.scripts.all().iter().zip(&hashes) {
            if s.hash != *h {
                return Err(BridgeError::ScriptHash {
                    got: h.clone(),
                    want: s.hash.clone(),
                });
            }
        }
        let mut ps = timed(client.get_async_pubsub()).await?;
        timed(ps.subscribe(CHANNEL)).await?;
        // The first reading of Redis's clock, before any message is sent on this
        // connection; the expiry scans add more.
        let time: Value = timed(redis::cmd("TIME").query_async(&mut conn)).await?;
        let received = Instant::now();
        let ms = time_ms(time).ok_or(BridgeError::NoTime)?;
        self.clock.borrow_mut().sample(ms, received);
        Ok((Conn::Single(conn), Inbound::Single(ps.into_on_message())))
    }

    /// Connects to a Redis Cluster: one connection per node, whose sharded messages
    /// come back as pushes (RESP3). The client retries nothing by itself (a retried
    /// script could run twice) and finds a slot's new master after a failover.
    async fn connect_cluster(
        &self,
        seeds: &[String],
        wait: Option<u32>,
    ) -> Result<(Conn, Inbound), BridgeError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let client = redis::cluster::ClusterClientBuilder::new(seeds.to_vec())
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(tx)
            .retries(0)
            .connection_timeout(COMMAND_TIMEOUT)
            .response_timeout(COMMAND_TIMEOUT)
            .build()?;
        let mut conn = timed(client.get_async_connection()).await?;
        let any = redis::cluster_routing::RoutingInfo::SingleNode(
            redis::cluster_routing::SingleNodeRoutingInfo::Random,
        );
        let acks = match wait {
            Some(n) => n,
            None => {
                // Acknowledged by one replica when the cluster has replicas now.
                let mut c = redis::cmd("CLUSTER");
                c.arg("NODES");
                let nodes = timed(conn.route_command(&c, any.clone())).await?;
                let nodes: String = redis::from_owned_redis_value(nodes)?;
                let replicas = nodes
                    .lines()
                    .filter(|l| l.contains("slave") && !l.contains("fail"))
                    .count();
                u32::from(replicas > 0)
            }
        };
        self.acks.set(acks);
        tracing::info!("redis: a cluster; a message is acknowledged by {acks} replicas");
        let time = timed(conn.route_command(&redis::cmd("TIME"), any)).await?;
        let received = Instant::now();
        let ms = time_ms(time).ok_or(BridgeError::NoTime)?;
        self.clock.borrow_mut().sample(ms, received);
        Ok((Conn::Cluster(conn), Inbound::Cluster(rx)))
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
    async fn serve(&self, conn: Conn, mut stream: Inbound, rx: &mut Inbox) -> Option<BridgeError> {
        let mut probes = tokio::time::interval(PROBE_EVERY);
        probes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut probe: Option<Probe> = None;
        // A tick per scan, a refresh every second tick; none at once: `register` has
        // just listed everyone.
        let start = tokio::time::Instant::now() + self.timing.scan;
        let mut ticks = tokio::time::interval_at(start, self.timing.scan);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let per_refresh = (self.timing.refresh.as_nanos() / self.timing.scan.as_nanos()).max(1);
        let mut tick: u128 = 0;
        let (mut refresh_due, mut scan_due) = (false, false);
        // Renewals not sent yet: a few go in each pipeline, so that no pipeline
        // carries a whole refresh of many rooms and nicks ahead of the requests.
        let mut renewals: std::collections::VecDeque<(Job, redis::Cmd)> = Default::default();
        // A request taken from the queue while no pipeline was out: the next one's first.
        let mut first: Option<Request> = None;
        let mut batch: Option<Batch> = None;
        let mut out: Vec<Job> = Vec::new();
        let mut sent = Instant::now();
        let why = loop {
            if batch.is_none() {
                // A renewal still going out when the next is due (pipelines slower
                // than the spread assumes) goes out whole now: listings must not
                // expire, and the queue holds at most one renewal.
                let mut spread = SPREAD;
                if std::mem::take(&mut refresh_due) {
                    self.resubscribe();
                    if self.cluster {
                        // Each channel subscribed to again: what it missed meanwhile.
                        self.repair_all();
                    }
                    if !renewals.is_empty() {
                        tracing::warn!("redis: presence renewal lagging: sent in one go");
                        spread = usize::MAX;
                    }
                    renewals.extend(self.renewals());
                    let later = std::mem::take(&mut *self.relist_later.borrow_mut());
                    self.relist.borrow_mut().extend(later);
                }
                let scan = std::mem::take(&mut scan_due);
                match self.collect(&mut renewals, spread, scan, first.take(), rx) {
                    Ok((jobs, cmds)) if !jobs.is_empty() => {
                        let n = jobs.len();
                        let run = self.launch(&conn, &jobs, cmds);
                        out = jobs;
                        sent = Instant::now();
                        self.note_out(n);
                        batch = Some(Box::pin(async move {
                            let t = tokio::time::Instant::now();
                            let r = run.await;
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
                        if self.inject(m.bytes()).is_none() {
                            break None;
                        }
                    }
                    None => break Some(BridgeError::SubscriptionClosed),
                },
                res = replies(&mut batch) => {
                    batch = None;
                    self.note_back(sent.elapsed());
                    let res = res.map(|(values, down)| {
                        self.mark_down(down);
                        values
                    });
                    if let Err(e) = self.finish(std::mem::take(&mut out), res) {
                        break Some(e);
                    }
                }
                _ = probes.tick(), if probe.is_none() && !self.down.borrow().is_empty() => {
                    if let Conn::Cluster(c) = &conn {
                        let slots = self.down.borrow().iter().map(|(s, t)| (*s, t.clone())).collect();
                        probe = Some(Box::pin(cluster::probe(c.clone(), slots)));
                    }
                }
                up = probed(&mut probe) => {
                    probe = None;
                    let mut down = self.down.borrow_mut();
                    for s in up {
                        down.remove(&s);
                        tracing::info!("redis: slot {s} answers again");
                    }
                }
                r = rx.recv(), if batch.is_none() => match r {
                    Some(r) => first = Some(r),
                    None => break None,
                },
            }
        };
        // Whatever was taken and not answered is answered now.
        self.note_out(0);
        for job in out {
            self.fail_job(job);
        }
        if let Some(r) = first {
            self.fail(r);
        }
        why
    }

    /// A pipeline of `n` requests went out (0: none is out any more): the pipeline
    /// depth operators see (`/metrics`, `/stats`).
    fn note_out(&self, n: usize) {
        if let Some(h) = self.hub() {
            h.stats.redis_in_flight.store(n as u64, Ordering::Relaxed);
        }
    }

    /// The pipeline out was answered after `rtt`: the Redis round trip operators see.
    fn note_back(&self, rtt: Duration) {
        if let Some(h) = self.hub() {
            let us = rtt.as_micros() as u64;
            let s = &h.stats;
            s.redis_in_flight.store(0, Ordering::Relaxed);
            s.redis_round_trips.fetch_add(1, Ordering::Relaxed);
            s.redis_round_trip_us_sum.fetch_add(us, Ordering::Relaxed);
            s.redis_round_trip_us_last.store(us, Ordering::Relaxed);
        }
    }

    /// The next pipeline: up to `spread` re-listing commands, the expiry scan if
    /// due, then `first` and the requests queued behind it, in queue order.
    fn collect(
        &self,
        renewals: &mut std::collections::VecDeque<(Job, redis::Cmd)>,
        spread: usize,
        scan: bool,
        first: Option<Request>,
        rx: &mut Inbox,
    ) -> Result<(Vec<Job>, Vec<redis::Cmd>), Gone> {
        let mut jobs = Vec::new();
        let mut pipe = Vec::new();
        // Listings first: taken now, they go out ahead of every request made since.
        let relist: Vec<Arc<str>> = self.relist.borrow_mut().drain().collect();
        for (job, c) in self.listings(relist) {
            pipe.push(c);
            jobs.push(job);
        }
        for (job, c) in renewals.drain(..spread.min(renewals.len())) {
            pipe.push(c);
            jobs.push(job);
        }
        if scan {
            self.scan(&mut jobs, &mut pipe);
        }
        self.repair_jobs(&mut jobs, &mut pipe);
        let deadline = self.say_deadline();
        let mut followups = std::mem::take(&mut *self.followups.borrow_mut()).into_iter();
        let mut next = first;
        let mut taken = 0;
        loop {
            let r = match (followups.next(), next.take()) {
                (Some(f), n) => {
                    next = n;
                    f
                }
                (None, Some(r)) => r,
                (None, None) if taken >= BATCH => break,
                (None, None) => match rx.try_recv() {
                    Ok(r) => r,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return Err(Gone),
                },
            };
            taken += 1;
            if let Request::Forget { room } = &r {
                if self.subscribed.borrow_mut().remove(room) {
                    self.channels.borrow_mut().insert(room.clone(), false);
                }
                continue;
            }
            if self.cluster && self.is_down(&r) {
                self.fail(r);
                continue;
            }
            match self.command(&r, deadline) {
                Some(c) => {
                    pipe.push(c);
                    jobs.push(Job::Req(r));
                }
                None => self.fail(r),
            }
        }
        if scan {
            // Last in the pipeline, so that little but the reply's way back lies
            // between Redis reading its clock and the pipeline's answer here.
            pipe.push(redis::cmd("TIME"));
            jobs.push(Job::Clock);
        }
        Ok((jobs, pipe))
    }
}
