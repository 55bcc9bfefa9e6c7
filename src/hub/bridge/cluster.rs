//! One Redis or a Redis Cluster under the bridge: what `--redis` names, the connection
//! commands go out on, the events coming back, and the acknowledgement of messages by
//! replicas (`WAIT`).
//!
//! # A Redis Cluster
//!
//! `--redis redis+cluster://host:port` (or several URLs, comma-separated) is a Redis
//! Cluster. Every key of a room carries the room's hash tag (`mc:room:{lobby}:seq`,
//! `…:hist`, `…:who`, `…:parted`, `…:pub`) and so does its channel
//! (`mc:room:{lobby}:events`), so each of the room's scripts touches one slot, and a
//! nick's claim has its own (`mc:nick:{ann}`). Rooms are independent, so they spread
//! over the masters. As in Centrifuge's Redis broker, fan-out is sharded pub/sub: the
//! scripts `SPUBLISH` on the room's channel, which the master of its slot hands to the
//! processes that `SSUBSCRIBE`d to it there; a process subscribes to a room's channel
//! before its first member's `JOIN` is ordered (so it sees that `JOIN`) and
//! unsubscribes when its last member has gone. One master runs a room's scripts one
//! at a time and hands its channel's messages out in publication order, so each room
//! keeps one order on every process, as on one Redis.
//!
//! A batch of requests is sent as one pipeline per slot, all at once, each awaited on
//! its own; a pipeline's commands run in order, so a member's `JOIN` and its replay,
//! or two `SAY`s in a room, keep theirs. (A member may have several `SAY`s of one room
//! in flight: they go out in order on the one connection to the room's master, in
//! one pipeline or in successive ones, so they run in that order.) A slot whose pipeline fails (its master is
//! dead, or a failover moved it) is marked down: its requests are answered
//! `unavailable` at once, without a round trip, while a probe (`EXISTS` on a key of
//! that slot) asks every [`PROBE_EVERY`]; the slot is up again when the probe is
//! answered (the client has found the slot's new master meanwhile). Other slots carry
//! on. The client does not retry a command by itself (`retries(0)`): a retried script
//! could run twice.
//!
//! # Acknowledged by a replica
//!
//! With `wait=N` (the default on a cluster that has replicas when the bridge
//! connects: `N = 1`), a `SAY` is acknowledged only once `N` replicas have it, so a
//! failover (its master killed, a replica promoted) loses no message anyone saw. The
//! message script then keeps the message in the room's stream without publishing it;
//! once the pipeline is answered, `WAIT N` on the same connection blocks until `N`
//! replicas have every write made so far, and a second script publishes, in id order,
//! the room's messages up to this one and moves the room's cursor there. A reader of
//! the history (`HISTORY`, the replay of `JOIN … AFTER`) reads only up to the cursor.
//! `WAIT` is sent once per master for a whole batch, after its slots' pipelines are
//! answered: it blocks the master's one connection, and it covers every write made on
//! that connection so far, so one per slot would only queue the slots of one master
//! behind each other. Which slots share a master is read from the pipelines
//! themselves: one that carries messages, or goes to a slot whose master is not known
//! yet, ends with `CLUSTER MYID`. The slots of one master as last seen are sent and
//! acknowledged together, apart from the other masters', so a dead master holds up
//! only its own slots; a slot whose pipeline failed is forgotten and learnt again,
//! and if a failover moved slots meanwhile, the answers of `CLUSTER MYID` split the
//! `WAIT` by the masters that really ran them.
//! When `WAIT` times out ([`WAIT_TIMEOUT`]), the message is deleted unless another
//! process's flush published it already (then a replica has it); deleted, its author
//! is answered `unavailable` and nobody sees it. Joins, parts and nick changes are
//! published at once: losing one in a failover is healed by the presence renewal.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{PushKind, Value};

use super::error::BridgeError;
use super::scripts::Scripts;
use super::COMMAND_TIMEOUT;

/// How long `WAIT` waits for replicas before a message is refused.
pub(super) const WAIT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long after its script ran a message may still be published (on the master's
/// clock): its author's pipeline is then still waited for (see `FLUSH_SCRIPT`). The
/// script ran at most `SAY_BUDGET` after the pipeline went out, so its flush runs
/// within `SAY_BUDGET + FLUSH_BUDGET` of that, half a second before the pipeline's
/// `COMMAND_TIMEOUT + WAIT_TIMEOUT` is over.
pub(super) const FLUSH_BUDGET: Duration = Duration::from_secs(1);
/// How often a slot marked down is probed.
pub(super) const PROBE_EVERY: Duration = Duration::from_millis(200);

/// What `--redis` names.
pub(crate) enum Target {
    /// One Redis.
    Single {
        /// Its client.
        client: redis::Client,
        /// Replicas that must have a message before it is acknowledged (`wait=N`).
        wait: u32,
    },
    /// A Redis Cluster, reached through its seed nodes.
    Cluster {
        /// The seeds' URLs, `redis://host:port`.
        seeds: Vec<String>,
        /// `wait=N`, or `None`: 1 if the cluster has replicas when the bridge connects.
        wait: Option<u32>,
    },
}

impl Target {
    /// Parses `--redis`: one URL, `redis+cluster://` URLs, or several URLs
    /// separated by commas (a cluster's seeds); `?wait=N` (or `&wait=N`) on any of
    /// them sets how many replicas must have a message before it is acknowledged.
    pub(crate) fn parse(spec: &str) -> Result<Target, redis::RedisError> {
        let bad = |what: String| {
            redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "bad --redis", what))
        };
        let mut wait = None;
        let mut cluster = false;
        let mut seeds = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut url = match part.strip_prefix("redis+cluster://") {
                Some(rest) => {
                    cluster = true;
                    format!("redis://{rest}")
                }
                None if part.contains("://") => part.to_string(),
                None => format!("redis://{part}"),
            };
            if let Some(q) = url.find('?') {
                let mut keep = Vec::new();
                for kv in url[q + 1..].split('&') {
                    match kv.strip_prefix("wait=") {
                        Some(n) => {
                            wait = Some(n.parse::<u32>().map_err(|_| {
                                bad(format!("wait={n}: a number of replicas is expected"))
                            })?)
                        }
                        None if kv.is_empty() => {}
                        None => keep.push(kv.to_string()),
                    }
                }
                url = match keep.is_empty() {
                    true => url[..q].to_string(),
                    false => format!("{}?{}", &url[..q], keep.join("&")),
                };
            }
            // Checked now: a mistyped URL is an error at start, not a retry loop.
            redis::Client::open(url.as_str())?;
            seeds.push(url);
        }
        if seeds.is_empty() {
            return Err(bad("no URL".into()));
        }
        if cluster || seeds.len() > 1 {
            redis::cluster::ClusterClient::new(seeds.clone())?;
            return Ok(Target::Cluster { seeds, wait });
        }
        let client = redis::Client::open(seeds.remove(0))?;
        Ok(Target::Single {
            client,
            wait: wait.unwrap_or(0),
        })
    }

    /// Whether it is a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster { .. })
    }
}

/// The slot of a key whose hash tag is `tag` (CRC16/XMODEM, as Redis Cluster).
pub(super) fn slot(tag: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes()) % 16384
}

/// The connection commands go out on.
#[derive(Clone)]
pub(super) enum Conn {
    /// One Redis: one multiplexed connection.
    Single(redis::aio::MultiplexedConnection),
    /// A Redis Cluster: one connection per node, routed by slot.
    Cluster(redis::cluster_async::ClusterConnection),
}

/// Events coming back: a subscription to the one channel, or a cluster's pushes.
pub(super) enum Inbound {
    /// One Redis.
    Single(redis::aio::PubSubStream),
    /// A Redis Cluster's sharded messages.
    Cluster(tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>),
}

/// An event's bytes, as it came.
pub(super) enum Payload {
    Msg(redis::Msg),
    Raw(Vec<u8>),
}

impl Payload {
    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            Payload::Msg(m) => m.get_payload_bytes(),
            Payload::Raw(v) => v,
        }
    }
}

impl Inbound {
    /// The next event; `None` when the subscription is gone.
    pub(super) async fn next(&mut self) -> Option<Payload> {
        use futures_util::StreamExt;
        match self {
            Inbound::Single(s) => s.next().await.map(Payload::Msg),
            Inbound::Cluster(rx) => loop {
                let p = rx.recv().await?;
                if p.kind != PushKind::SMessage {
                    if p.kind == PushKind::Disconnection {
                        tracing::warn!("redis: a cluster node's connection closed");
                    }
                    continue;
                }
                if let Some(Value::BulkString(b)) = p.data.into_iter().nth(1) {
                    return Some(Payload::Raw(b));
                }
            },
        }
    }
}

/// A command of a batch: which slot it goes to (a cluster) and, for a `SAY` to be
/// acknowledged by replicas, its room.
pub(super) struct Meta {
    /// The slot and the hash tag of its keys; `None`: any node (`TIME`).
    pub(super) slot: Option<(u16, Arc<str>)>,
    /// The room of a `SAY` whose publication waits for replicas.
    pub(super) say: Option<Arc<str>>,
}

/// What a batch needs besides its commands.
pub(super) struct Plan {
    /// Replicas that must have a message (0: published at once).
    pub(super) acks: u32,
    /// Rooms whose channel to subscribe to (true) or leave (false) first.
    pub(super) channels: Vec<(Arc<str>, bool)>,
    /// The rooms whose channel this process is subscribed to, shared with the bridge:
    /// a subscription that failed is taken out again.
    pub(super) subscribed: Rc<RefCell<HashSet<Arc<str>>>>,
    pub(super) scripts: Rc<Scripts>,
    /// The master of each slot as its last pipeline with messages found it
    /// (`CLUSTER MYID`); a slot whose pipeline failed is forgotten.
    pub(super) masters: Rc<RefCell<HashMap<u16, Arc<str>>>>,
}

/// A batch's replies, one per command, and the slots whose pipeline failed (with a
/// hash tag of each, for the probe).
pub(super) type Done = (Vec<Value>, Vec<(u16, Arc<str>)>);

/// A room's channel on a cluster.
pub(super) fn room_channel(room: &str) -> String {
    format!("mc:room:{{{room}}}:events")
}

/// An error reply `code detail`, as Redis would send it.
fn error_reply(code: &str, detail: &str) -> Value {
    let line = format!("-{code} {}\r\n", detail.replace(['\r', '\n'], " "));
    redis::parse_redis_value(line.as_bytes()).unwrap_or(Value::Nil)
}

fn unavailable(why: &str) -> Value {
    error_reply("UNAVAILABLE", why)
}

impl Conn {
    async fn pipe(
        &mut self,
        route: Option<u16>,
        p: &redis::Pipeline,
        n: usize,
    ) -> redis::RedisResult<Vec<Value>> {
        use redis::aio::ConnectionLike;
        match self {
            Conn::Single(c) => c.req_packed_commands(p, 0, n).await,
            Conn::Cluster(c) => {
                let route = match route {
                    Some(s) => SingleNodeRoutingInfo::SpecificNode(Route::new(s, SlotAddr::Master)),
                    None => SingleNodeRoutingInfo::Random,
                };
                c.route_pipeline(p, 0, n, route).await
            }
        }
    }

    /// Sends a batch and waits for its replies (see the module documentation): on one
    /// Redis one pipeline, whose failure is the connection's; on a cluster one per
    /// slot, whose failure fails its commands only.
    pub(super) async fn exec(
        self,
        cmds: Vec<redis::Cmd>,
        meta: Vec<Meta>,
        plan: Plan,
    ) -> Result<Done, BridgeError> {
        let budget = COMMAND_TIMEOUT + WAIT_TIMEOUT;
        match self {
            Conn::Single(_) => {
                let says = meta
                    .iter()
                    .enumerate()
                    .filter_map(|(i, m)| Some((i, m.say.clone()?)));
                let says: Vec<_> = says.collect();
                let mut conn = self;
                let r = tokio::time::timeout(budget, conn.group(None, cmds, says, &plan)).await;
                match r {
                    Ok(r) => Ok((r?, Vec::new())),
                    Err(_) => Err(BridgeError::Timeout(budget)),
                }
            }
            Conn::Cluster(ref c) => {
                // Channels first, each on its slot's master: a member's JOIN must find
                // its process subscribed.
                let mut failed_rooms = HashSet::new();
                let subs = plan.channels.iter().map(|(room, on)| {
                    let mut c = c.clone();
                    let (room, on) = (room.clone(), *on);
                    async move {
                        let ch = room_channel(&room);
                        let r = match on {
                            true => c.ssubscribe(&ch).await,
                            false => c.sunsubscribe(&ch).await,
                        };
                        (room, on, r)
                    }
                });
                for (room, on, r) in futures_util::future::join_all(subs).await {
                    if let Err(e) = r {
                        tracing::warn!("redis: cannot (un)subscribe to {room}: {e}");
                        if on {
                            plan.subscribed.borrow_mut().remove(&room);
                            failed_rooms.insert(slot(&room));
                        }
                    }
                }
                let n = cmds.len();
                let mut groups: HashMap<Option<u16>, (Vec<usize>, Vec<redis::Cmd>)> =
                    HashMap::new();
                let mut tags: HashMap<u16, Arc<str>> = HashMap::new();
                for (i, (c, m)) in cmds.into_iter().zip(&meta).enumerate() {
                    let s = m.slot.as_ref().map(|(s, tag)| {
                        tags.entry(*s).or_insert_with(|| tag.clone());
                        *s
                    });
                    let g = groups.entry(s).or_default();
                    g.0.push(i);
                    g.1.push(c);
                }
                let mut replies: Vec<Value> = vec![Value::Nil; n];
                let mut down = Vec::new();
                let until = tokio::time::Instant::now() + budget;
                let acks = plan.acks;
                // The slots grouped by their master as last seen; a slot not seen yet
                // (or since its failure) is a group of its own.
                let mut teams: HashMap<Team, Vec<SlotPipe>> = HashMap::new();
                {
                    let seen = plan.masters.borrow();
                    for (s, (idx, cmds)) in groups {
                        let team = match s.and_then(|s| seen.get(&s)) {
                            Some(node) => Team::Node(node.clone()),
                            None => Team::Slot(s),
                        };
                        teams.entry(team).or_default().push((s, idx, cmds));
                    }
                }
                let runs = teams.into_iter().map(|(team, slots)| {
                    // A slot whose master is not known yet asks even without messages,
                    // so that its first messages already share their master's `WAIT`.
                    let learn = matches!(team, Team::Slot(Some(_)));
                    let plan = &plan;
                    let failed_rooms = &failed_rooms;
                    let meta = &meta;
                    async move {
                        // Each slot's pipeline, all at once; one that carries messages
                        // to be acknowledged also asks which node ran it
                        // (`CLUSTER MYID`).
                        let pipes = slots.into_iter().map(|(s, idx, cmds)| {
                            let mut conn = Conn::Cluster(c.clone());
                            let says = idx.iter().any(|&i| meta[i].say.is_some());
                            let skip = s.is_some_and(|s| failed_rooms.contains(&s));
                            async move {
                                if skip {
                                    return (s, idx, Err(BridgeError::Subscribe));
                                }
                                let ask = (says || learn) && acks > 0 && s.is_some();
                                let r = conn.scripts(s, cmds, ask);
                                let r = tokio::time::timeout_at(until, r).await;
                                (s, idx, r.unwrap_or(Err(BridgeError::Timeout(budget))))
                            }
                        });
                        let done = futures_util::future::join_all(pipes).await;
                        // Then one `WAIT` per master for all its slots' messages.
                        let mut by_node: HashMap<&str, (Vec<u16>, Vec<_>)> = HashMap::new();
                        for (s, idx, r) in &done {
                            if let (Some(s), Ok((values, Some(node)))) = (s, r) {
                                let ids = message_ids(idx, values, meta);
                                let e = by_node.entry(&**node).or_default();
                                e.0.push(*s);
                                e.1.extend(ids);
                            }
                        }
                        let mut refused = Vec::new();
                        let mut lost = Vec::new();
                        for (slots, ids) in by_node.into_values().filter(|(_, ids)| !ids.is_empty())
                        {
                            let mut conn = Conn::Cluster(c.clone());
                            let r = conn.acknowledge(Some(slots[0]), &ids, plan);
                            match tokio::time::timeout_at(until, r).await {
                                Ok(Ok(r)) => refused.extend(r),
                                Ok(Err(e)) => lost.push((slots, ids, e)),
                                Err(_) => lost.push((slots, ids, BridgeError::Timeout(budget))),
                            }
                        }
                        (done, refused, lost)
                    }
                });
                for (done, refused, lost) in futures_util::future::join_all(runs).await {
                    for (s, idx, r) in done {
                        match r {
                            Ok((values, node)) => {
                                for (i, v) in idx.into_iter().zip(values) {
                                    replies[i] = v;
                                }
                                if let (Some(s), Some(node)) = (s, node) {
                                    plan.masters.borrow_mut().insert(s, node);
                                }
                            }
                            Err(e) => {
                                let why = e.to_string();
                                for i in idx {
                                    replies[i] = unavailable(&why);
                                }
                                if let Some(s) = s {
                                    tracing::warn!("redis: slot {s} is down: {why}");
                                    plan.masters.borrow_mut().remove(&s);
                                    down.push((s, tags[&s].clone()));
                                }
                            }
                        }
                    }
                    for (i, v) in refused {
                        replies[i] = v;
                    }
                    for (slots, ids, e) in lost {
                        let why = e.to_string();
                        for (i, _, _) in ids {
                            replies[i] = unavailable(&why);
                        }
                        for s in slots {
                            tracing::warn!("redis: slot {s} is down: {why}");
                            plan.masters.borrow_mut().remove(&s);
                            down.push((s, tags[&s].clone()));
                        }
                    }
                }
                Ok((replies, down))
            }
        }
    }

    /// One pipeline, then, for the `SAY`s among it (`says`: index and room) when
    /// replicas must have them, `WAIT` and their publication or retraction (one
    /// Redis).
    async fn group(
        &mut self,
        route: Option<u16>,
        cmds: Vec<redis::Cmd>,
        says: Vec<(usize, Arc<str>)>,
        plan: &Plan,
    ) -> Result<Vec<Value>, BridgeError> {
        let (mut replies, _) = self.scripts(route, cmds, false).await?;
        if plan.acks == 0 {
            return Ok(replies);
        }
        let ids: Vec<(usize, Arc<str>, u64)> = says
            .into_iter()
            .filter_map(|(i, room)| {
                let id = redis::from_redis_value::<u64>(&replies[i]).ok()?;
                Some((i, room, id))
            })
            .collect();
        if ids.is_empty() {
            return Ok(replies);
        }
        for (i, v) in self.acknowledge(route, &ids, plan).await? {
            replies[i] = v;
        }
        Ok(replies)
    }

    /// One pipeline of `cmds`, with `CLUSTER MYID` last when `ask`: its replies, and
    /// the id of the node that ran it.
    async fn scripts(
        &mut self,
        route: Option<u16>,
        cmds: Vec<redis::Cmd>,
        ask: bool,
    ) -> Result<(Vec<Value>, Option<Arc<str>>), BridgeError> {
        let n = cmds.len() + usize::from(ask);
        let mut p = redis::pipe();
        for c in cmds {
            p.add_command(c);
        }
        if ask {
            p.cmd("CLUSTER").arg("MYID");
        }
        let mut replies = self.pipe(route, &p, n).await?;
        if replies.len() != n {
            return Err(BridgeError::Replies {
                replies: replies.len(),
                commands: n,
            });
        }
        let node = match ask {
            true => replies
                .pop()
                .and_then(|v| redis::from_owned_redis_value::<String>(v).ok())
                .map(Arc::from),
            false => None,
        };
        Ok((replies, node))
    }

    /// Messages that ran (`ids`: reply index, room, id), all written on this
    /// connection to one master: `WAIT` once for every one of them, then their
    /// publication (one flush per room) or retraction. The replies of those refused.
    async fn acknowledge(
        &mut self,
        route: Option<u16>,
        ids: &[(usize, Arc<str>, u64)],
        plan: &Plan,
    ) -> Result<Vec<(usize, Value)>, BridgeError> {
        let mut refused = Vec::new();
        let mut w = redis::pipe();
        w.cmd("WAIT")
            .arg(plan.acks)
            .arg(WAIT_TIMEOUT.as_millis() as u64);
        let got = self.pipe(route, &w, 1).await?;
        let got = got
            .first()
            .and_then(|v| redis::from_redis_value::<u32>(v).ok());
        let s = &plan.scripts;
        if got.is_some_and(|g| g >= plan.acks) {
            let mut last: HashMap<&Arc<str>, u64> = HashMap::new();
            for (_, room, id) in ids {
                let e = last.entry(room).or_default();
                *e = (*e).max(*id);
            }
            let mut f = redis::pipe();
            for (room, id) in &last {
                let mut c = s.flush.call(3);
                c.arg(super::hist_key(room))
                    .arg(super::cursor_key(room))
                    .arg(super::channel(room, route.is_some()))
                    .arg(*id)
                    .arg(FLUSH_BUDGET.as_millis() as u64);
                f.add_command(c);
            }
            let stale = self.pipe(route, &f, last.len()).await?;
            let stale: HashSet<u64> = stale
                .iter()
                .filter_map(|v| redis::from_redis_value::<Vec<String>>(v).ok())
                .flatten()
                .filter_map(|id| id.strip_suffix("-0")?.parse().ok())
                .collect();
            for (i, _, id) in ids {
                if stale.contains(id) {
                    let v = error_reply("NOTREPLICATED", "published too late: deleted");
                    refused.push((*i, v));
                }
            }
            return Ok(refused);
        }
        tracing::warn!(
            "redis: {} messages not on {} replicas within {WAIT_TIMEOUT:?} (WAIT answered \
             {got:?}): refused",
            ids.len(),
            plan.acks
        );
        let mut r = redis::pipe();
        for (_, room, id) in ids {
            let mut c = s.retract.call(2);
            c.arg(super::hist_key(room))
                .arg(super::cursor_key(room))
                .arg(*id);
            r.add_command(c);
        }
        let gone = self.pipe(route, &r, ids.len()).await?;
        for ((i, _, _), g) in ids.iter().zip(gone) {
            // 0: another process published it after its own WAIT: a replica has it.
            if redis::from_redis_value::<i64>(&g).unwrap_or(1) != 0 {
                let v = error_reply(
                    "NOTREPLICATED",
                    "no replica acknowledged the message in time",
                );
                refused.push((*i, v));
            }
        }
        Ok(refused)
    }
}

/// The messages that ran among the commands `idx` of a batch (reply index, room, id):
/// those whose reply is their id.
/// `values` are the replies of the commands `idx` (indexes in the batch).
fn message_ids(idx: &[usize], values: &[Value], meta: &[Meta]) -> Vec<(usize, Arc<str>, u64)> {
    idx.iter()
        .zip(values)
        .filter_map(|(&i, v)| {
            let room = meta[i].say.clone()?;
            let id = redis::from_redis_value::<u64>(v).ok()?;
            Some((i, room, id))
        })
        .collect()
}

/// One slot's pipeline of a batch: its slot (none: any node), the indexes of its
/// commands in the batch, and the commands.
type SlotPipe = (Option<u16>, Vec<usize>, Vec<redis::Cmd>);

/// Slots whose pipelines are sent together, then acknowledged with one `WAIT`: those
/// of one master as last seen, or a slot alone.
#[derive(PartialEq, Eq, Hash)]
enum Team {
    Node(Arc<str>),
    Slot(Option<u16>),
}

/// Probes the slots marked down (`EXISTS` on a key with each one's hash tag); the
/// slots that answered.
pub(super) async fn probe(
    conn: redis::cluster_async::ClusterConnection,
    slots: Vec<(u16, Arc<str>)>,
) -> Vec<u16> {
    let probes = slots.into_iter().map(|(s, tag)| {
        let mut c = conn.clone();
        async move {
            let mut cmd = redis::cmd("EXISTS");
            cmd.arg(format!("mc:probe:{{{tag}}}"));
            let route = redis::cluster_routing::RoutingInfo::SingleNode(
                SingleNodeRoutingInfo::SpecificNode(Route::new(s, SlotAddr::Master)),
            );
            let r = tokio::time::timeout(COMMAND_TIMEOUT, c.route_command(&cmd, route)).await;
            matches!(r, Ok(Ok(Value::Int(_)))).then_some(s)
        }
    });
    futures_util::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flushed_message_leaves_time_for_its_reply() {
        let flushed_by = super::super::SAY_BUDGET + FLUSH_BUDGET;
        let given_up = COMMAND_TIMEOUT + WAIT_TIMEOUT;
        assert!(
            flushed_by + Duration::from_millis(400) <= given_up,
            "{flushed_by:?}"
        );
        assert!(WAIT_TIMEOUT < FLUSH_BUDGET);
    }

    #[test]
    fn redis_names_one_server_or_a_cluster() {
        match Target::parse("redis://127.0.0.1:6379/").unwrap() {
            Target::Single { wait, .. } => assert_eq!(wait, 0),
            _ => panic!("one URL is one Redis"),
        }
        match Target::parse("redis://127.0.0.1:6379/?wait=1").unwrap() {
            Target::Single { wait, .. } => assert_eq!(wait, 1),
            _ => panic!("one URL is one Redis"),
        }
        match Target::parse("redis+cluster://127.0.0.1:7000").unwrap() {
            Target::Cluster { seeds, wait } => {
                assert_eq!(seeds, ["redis://127.0.0.1:7000"]);
                assert_eq!(wait, None);
            }
            _ => panic!("redis+cluster is a cluster"),
        }
        match Target::parse("redis://127.0.0.1:7000,127.0.0.1:7001?wait=0").unwrap() {
            Target::Cluster { seeds, wait } => {
                assert_eq!(seeds, ["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]);
                assert_eq!(wait, Some(0));
            }
            _ => panic!("several seeds are a cluster"),
        }
        for bad in [
            "",
            " , ",
            "redis://h:1?wait=x",
            "http://h:1",
            "redis+cluster://",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn made_up_errors_read_as_redis_errors() {
        match error_reply("NOTREPLICATED", "no\r\nreplica") {
            Value::ServerError(e) => {
                assert_eq!(e.code(), "NOTREPLICATED");
                assert_eq!(e.details(), Some("no  replica"));
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn slots_are_redis_clusters() {
        // Values from `CLUSTER KEYSLOT` of Redis 7.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("lobby"), slot("lobby"));
        assert_eq!(slot("123456789"), 12739);
    }
}
