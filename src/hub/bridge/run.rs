//! The bridge thread's loop: connect, register, then serve requests as pipelines
//! (one out at a time), events from the channel, and the presence ticks; reconnect
//! with backoff when the connection fails.

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

use super::clock::{time_ms, Clock};
use super::error::BridgeError;
use super::presence::Timing;
use super::scripts::Scripts;
use super::{
    Hub, Job, Request, BACKOFF_MAX, BACKOFF_START, BATCH, CHANNEL, COMMAND_TIMEOUT, SAY_BUDGET,
    SLOW, SPREAD,
};

/// The bridge thread's state.
pub(super) struct Run {
    client: redis::Client,
    hub: Weak<Hub>,
    pub(super) deliver: Option<std::sync::mpsc::Sender<Arc<str>>>,
    pub(super) history: usize,
    pub(super) instance: Arc<str>,
    up: Arc<AtomicBool>,
    pub(super) timing: Timing,
    pub(super) scripts: Scripts,
    pub(super) clock: RefCell<Clock>,
}

type Conn = redis::aio::MultiplexedConnection;

/// The pipeline out, if any: its replies, one per job.
type Batch = Pin<Box<dyn Future<Output = Result<Vec<Value>, BridgeError>>>>;

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
async fn replies(batch: &mut Option<Batch>) -> Result<Vec<Value>, BridgeError> {
    match batch {
        Some(b) => b.await,
        None => std::future::pending().await,
    }
}

/// The hub is gone: the bridge stops.
struct Gone;

impl Run {
    pub(super) fn new(
        client: redis::Client,
        hub: Weak<Hub>,
        history: usize,
        ttl: Duration,
        up: Arc<AtomicBool>,
    ) -> Run {
        Run {
            client,
            deliver: super::start_deliverer(hub.clone()),
            hub,
            history: history.max(1),
            instance: super::instance_id(),
            up,
            timing: Timing::new(ttl.max(Duration::from_millis(300))),
            scripts: Scripts::new(),
            clock: RefCell::new(Clock::new()),
        }
    }

    pub(super) fn hub(&self) -> Option<Arc<Hub>> {
        self.hub.upgrade()
    }

    pub(super) async fn run(self, mut rx: mpsc::Receiver<Request>) {
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
    async fn register(&self, conn: &mut Conn) -> Result<(), BridgeError> {
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

    async fn connect(&self) -> Result<(Conn, redis::aio::PubSubStream), BridgeError> {
        let mut conn = timed(self.client.get_multiplexed_async_connection()).await?;
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
        let mut ps = timed(self.client.get_async_pubsub()).await?;
        timed(ps.subscribe(CHANNEL)).await?;
        // The first reading of Redis's clock, before any message is sent on this
        // connection; the expiry scans add more.
        self.clock.borrow_mut().reset();
        let time: Value = timed(redis::cmd("TIME").query_async(&mut conn)).await?;
        let received = Instant::now();
        let ms = time_ms(time).ok_or(BridgeError::NoTime)?;
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
    ) -> Option<BridgeError> {
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
        let mut sent = Instant::now();
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
                        sent = Instant::now();
                        self.note_out(n);
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
                    None => break Some(BridgeError::SubscriptionClosed),
                },
                res = replies(&mut batch) => {
                    batch = None;
                    self.note_back(sent.elapsed());
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
}
