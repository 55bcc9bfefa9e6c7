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
//!   Either all three happen or none: a failed `SAY` is answered `ERR unavailable` and
//!   nothing is half-delivered.
//! - Joins, parts and nick changes are published as they are.
//! - `HISTORY` and the replay of `JOIN ... AFTER` are read from the stream and reach
//!   the member through its mailbox, like everything else.
//! - Presence: each room has a sorted set of nicks scored by when their listing
//!   expires. Every process refreshes its own members every third of
//!   `--presence-ttl` (which also re-registers them after Redis comes back empty), and
//!   removes the expired entries of the rooms it has members in; whoever removes an
//!   entry publishes its `PART`. So the members of a killed process part everywhere
//!   within about the TTL. `WHO` reads the set: the members of every process.
//!
//! The bridge runs on a thread of its own with a single-threaded tokio runtime, so it
//! works the same under every model. When Redis cannot be reached it marks itself
//! down (`SAY` then fails at once with `unavailable`; members stay connected), answers
//! queued requests with `unavailable`, and reconnects with exponential backoff capped
//! at [`BACKOFF_MAX`], subscribing again by itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{Answer, ChatEvent, Hub, HubError, Kind, MemberId, MsgId, Publication};
use crate::model::mailbox::Sender;

/// The pub/sub channel every process subscribes to.
const CHANNEL: &str = "mc:events";
/// Requests waiting for the bridge; beyond this, `SAY` is answered `unavailable`
/// rather than queued without bound.
const QUEUE: usize = 8192;
/// First reconnection delay.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest reconnection delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Longest wait for one Redis command or connection.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// `KEYS`: counter, stream, channel. `ARGV`: history length, room, nick, text, origin.
///
/// A room's counter starts at Redis's clock in microseconds, so ids keep increasing
/// even when Redis restarts empty: a client's `AFTER <old id>` then misses nothing and
/// sessions never take new messages for duplicates. (`%.0f`: Lua numbers are doubles,
/// exact below 2^53, and `tostring` would print them in exponent form.)
const SAY_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[1], string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2])))
end
local id = string.format('%.0f', redis.call('INCR', KEYS[1]))
local ev = cjson.encode({t='msg', room=ARGV[2], id=id, nick=ARGV[3], text=ARGV[4], o=ARGV[5]})
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], id .. '-0', 'e', ev)
redis.call('PUBLISH', KEYS[3], ev)
return id
"#;

/// What sessions ask of Redis, through the hub.
pub(crate) enum Request {
    /// A message; a failure is answered to its author (none for a server notice).
    Say {
        room: Arc<str>,
        nick: Arc<str>,
        text: Box<str>,
        author: Option<Sender<ChatEvent>>,
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

/// The hub's handle on the bridge thread.
pub(crate) struct Bridge {
    tx: mpsc::Sender<Request>,
    up: Arc<AtomicBool>,
}

fn nick_key(nick: &str) -> String {
    format!("mc:nick:{nick}")
}

/// Deletes a nick's claim only if it is still this member's.
const RELEASE_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

fn who_key(room: &str) -> String {
    format!("mc:room:{room}:who")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
        let instance = instance_id();
        let state = Run {
            client,
            hub,
            history: history.max(1),
            instance,
            up: up.clone(),
            ttl: ttl.max(Duration::from_millis(300)),
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
    history: usize,
    instance: Arc<str>,
    up: Arc<AtomicBool>,
    ttl: Duration,
}

type Conn = redis::aio::MultiplexedConnection;

async fn timed<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(COMMAND_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {COMMAND_TIMEOUT:?}")),
    }
}

impl Run {
    fn hub(&self) -> Option<Arc<Hub>> {
        self.hub.upgrade()
    }

    async fn run(self, mut rx: mpsc::Receiver<Request>) {
        let mut backoff = BACKOFF_START;
        loop {
            match self.connect().await {
                Ok((conn, stream)) => {
                    tracing::info!("redis: connected and subscribed");
                    if let Some(h) = self.hub() {
                        h.stats.redis_connects.fetch_add(1, Ordering::Relaxed);
                    }
                    self.up.store(true, Ordering::Release);
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
            // While down, queued requests are answered at once rather than left waiting.
            let until = tokio::time::Instant::now() + backoff;
            loop {
                tokio::select! {
                    r = rx.recv() => match r {
                        Some(r) => self.fail(r),
                        None => return,
                    },
                    _ = tokio::time::sleep_until(until) => break,
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn connect(&self) -> Result<(Conn, redis::aio::PubSubStream), String> {
        let conn = timed(self.client.get_multiplexed_async_connection()).await?;
        let mut ps = timed(self.client.get_async_pubsub()).await?;
        timed(ps.subscribe(CHANNEL)).await?;
        Ok((conn, ps.into_on_message()))
    }

    /// Serves until the connection fails (the reason) or the hub is gone (`None`).
    async fn serve(
        &self,
        mut conn: Conn,
        mut stream: redis::aio::PubSubStream,
        rx: &mut mpsc::Receiver<Request>,
    ) -> Option<String> {
        // The first tick is at once: members are (re-)registered on every connect.
        let mut refresh = tokio::time::interval(self.ttl / 3);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = refresh.tick() => {
                    if let Err(e) = self.refresh(&mut conn).await {
                        return Some(e);
                    }
                }
                m = stream.next() => match m {
                    Some(m) => self.inject(m.get_payload_bytes())?,
                    None => return Some("subscription closed".into()),
                },
                r = rx.recv() => {
                    let r = r?;
                    if let Err(e) = self.handle(&mut conn, r).await {
                        return Some(e);
                    }
                }
            }
        }
    }

    /// Refreshes this process's members in the rooms' presence sets, then parts the
    /// members whose listing expired (their process stopped refreshing them).
    async fn refresh(&self, conn: &mut Conn) -> Result<(), String> {
        let Some(hub) = self.hub() else {
            return Ok(());
        };
        let ttl_ms = self.ttl.as_millis() as u64;
        let nicks = hub.local_nicks();
        if !nicks.is_empty() {
            let mut p = redis::pipe();
            for (nick, member) in &nicks {
                p.cmd("SET")
                    .arg(nick_key(nick))
                    .arg(self.owner(*member))
                    .arg("PX")
                    .arg(ttl_ms)
                    .ignore();
            }
            let () = timed(p.query_async(conn)).await?;
        }
        let presence = hub.local_presence();
        if presence.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let until = now + ttl_ms;
        let mut p = redis::pipe();
        for (room, nicks) in &presence {
            let key = who_key(room);
            for n in nicks {
                p.zadd(&key, &**n, until).ignore();
            }
            // A room nobody refreshes any more disappears by itself.
            p.pexpire(&key, 2 * self.ttl.as_millis() as i64).ignore();
            p.cmd("ZRANGEBYSCORE").arg(&key).arg("-inf").arg(now);
        }
        let expired: Vec<Vec<String>> = timed(p.query_async(conn)).await?;
        for ((room, _), gone) in presence.iter().zip(expired) {
            for nick in gone {
                let removed: i64 = timed(
                    redis::cmd("ZREM")
                        .arg(who_key(room))
                        .arg(&nick)
                        .query_async(conn),
                )
                .await?;
                if removed == 1 && super::valid_nick(&nick) {
                    tracing::info!("redis: {nick} in {room} expired: parting it everywhere");
                    let v = serde_json::json!({"t": "part", "room": &**room, "nick": nick});
                    let _: i64 = timed(
                        redis::cmd("PUBLISH")
                            .arg(CHANNEL)
                            .arg(v.to_string())
                            .query_async(conn),
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// The value of a nick claim: which process and member hold it.
    fn owner(&self, member: MemberId) -> String {
        format!("{}:{}", self.instance, member.0)
    }

    /// Hands an event from the channel to this process's members.
    fn inject(&self, payload: &[u8]) -> Option<()> {
        let hub = self.hub()?;
        match parse_event(payload) {
            Some(ev) => {
                let skip = match (&ev.kind, ev.member) {
                    // The member that joined or renamed itself got its OK instead.
                    (Kind::Join { .. } | Kind::Nick { .. }, Some(m))
                        if ev.origin.as_deref() == Some(&*self.instance) =>
                    {
                        Some(m)
                    }
                    _ => None,
                };
                hub.inject(&ev.room, ev.kind, skip);
            }
            None => tracing::warn!(
                "redis: ignoring a malformed event: {}",
                String::from_utf8_lossy(payload)
            ),
        }
        Some(())
    }

    fn fail(&self, r: Request) {
        let ev = match r {
            Request::Say {
                author: Some(author),
                ..
            } => (
                author,
                ChatEvent::Answer(Answer::Failed(HubError::Unavailable)),
            ),
            Request::Say { author: None, .. } => return,
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

    async fn handle(&self, conn: &mut Conn, r: Request) -> Result<(), String> {
        match r {
            Request::Say {
                room,
                nick,
                text,
                author,
            } => {
                let (seq, hist) = keys(&room);
                let script = redis::Script::new(SAY_SCRIPT);
                let mut inv = script.key(seq);
                inv.key(hist)
                    .key(CHANNEL)
                    .arg(self.history)
                    .arg(&*room)
                    .arg(&*nick)
                    .arg(&*text)
                    .arg(&*self.instance);
                let res: Result<String, String> = timed(inv.invoke_async(conn)).await;
                if let Err(e) = res {
                    if let Some(author) = author {
                        let failed = ChatEvent::Answer(Answer::Failed(HubError::Unavailable));
                        let _ = author.send(failed, 64);
                    }
                    return Err(e);
                }
            }
            Request::Event { room, kind, member } => {
                let mut v = match &kind {
                    Kind::Join { nick } => serde_json::json!({"t": "join", "nick": &**nick}),
                    Kind::Part { nick } => serde_json::json!({"t": "part", "nick": &**nick}),
                    Kind::Nick { old, new } => {
                        serde_json::json!({"t": "nick", "old": &**old, "new": &**new})
                    }
                    Kind::Msg { .. } => return Ok(()), // Messages go through the script.
                };
                v["room"] = (&*room).into();
                v["o"] = (&*self.instance).into();
                v["m"] = member.0.into();
                let key = who_key(&room);
                let until = now_ms() + self.ttl.as_millis() as u64;
                let mut p = redis::pipe();
                p.atomic();
                match &kind {
                    Kind::Join { nick } => {
                        p.zadd(&key, &**nick, until).ignore();
                    }
                    Kind::Part { nick } => {
                        p.zrem(&key, &**nick).ignore();
                    }
                    Kind::Nick { old, new } => {
                        p.zrem(&key, &**old).ignore();
                        p.zadd(&key, &**new, until).ignore();
                    }
                    Kind::Msg { .. } => {}
                }
                p.cmd("PUBLISH").arg(CHANNEL).arg(v.to_string()).ignore();
                let () = timed(p.query_async(conn)).await?;
            }
            Request::Claim {
                nick,
                old,
                member,
                to,
            } => {
                let owner = self.owner(member);
                let set: Result<Option<String>, String> = timed(
                    redis::cmd("SET")
                        .arg(nick_key(&nick))
                        .arg(&owner)
                        .arg("NX")
                        .arg("PX")
                        .arg(self.ttl.as_millis() as u64)
                        .query_async(conn),
                )
                .await;
                let answer = match &set {
                    Ok(Some(_)) => Ok(nick),
                    Ok(None) => Err(HubError::NickTaken),
                    Err(_) => Err(HubError::Unavailable),
                };
                let claimed = answer.is_ok();
                let _ = to.send(ChatEvent::Answer(Answer::Nick(answer)), 64);
                set?;
                if claimed {
                    let _: i64 = timed(
                        redis::Script::new(RELEASE_SCRIPT)
                            .key(nick_key(&old))
                            .arg(&owner)
                            .invoke_async(conn),
                    )
                    .await?;
                }
            }
            Request::Release { nick, member } => {
                let _: i64 = timed(
                    redis::Script::new(RELEASE_SCRIPT)
                        .key(nick_key(&nick))
                        .arg(self.owner(member))
                        .invoke_async(conn),
                )
                .await?;
            }
            Request::Who { room, to } => {
                let nicks: Result<Vec<String>, String> = timed(
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(who_key(&room))
                        .arg(now_ms())
                        .arg("+inf")
                        .query_async(conn),
                )
                .await;
                let answer = match &nicks {
                    Ok(n) if n.is_empty() => Err(HubError::NoSuchRoom),
                    Ok(n) => {
                        let mut n: Vec<Arc<str>> =
                            n.iter().map(|s| Arc::from(s.as_str())).collect();
                        n.sort();
                        Ok(n)
                    }
                    Err(_) => Err(HubError::Unavailable),
                };
                let _ = to.send(
                    ChatEvent::Answer(Answer::Who {
                        room,
                        nicks: answer,
                    }),
                    64,
                );
                nicks?;
            }
            Request::Range {
                room,
                after,
                last,
                to,
            } => {
                let (_, hist) = keys(&room);
                let reply: Result<redis::streams::StreamRangeReply, String> = match after {
                    Some(after) => {
                        timed(
                            redis::cmd("XRANGE")
                                .arg(&hist)
                                .arg(format!("({after}-0"))
                                .arg("+")
                                .query_async(conn),
                        )
                        .await
                    }
                    None => {
                        timed(
                            redis::cmd("XREVRANGE")
                                .arg(&hist)
                                .arg("+")
                                .arg("-")
                                .arg("COUNT")
                                .arg(last)
                                .query_async(conn),
                        )
                        .await
                    }
                };
                let ev = match &reply {
                    Ok(r) => {
                        let mut msgs: Vec<Arc<Publication>> = r
                            .ids
                            .iter()
                            .filter_map(|e| {
                                let v: Vec<u8> = e.get("e")?;
                                let ev = parse_event(&v)?;
                                Some(Arc::new(Publication::new(ev.room, ev.kind)))
                            })
                            .collect();
                        if after.is_none() {
                            msgs.reverse();
                        }
                        range_answer(room, after, Ok(msgs))
                    }
                    Err(_) => range_answer(room, after, Err(HubError::Unavailable)),
                };
                let _ = to.send(ev, 64);
                reply?;
            }
        }
        Ok(())
    }
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

/// An event as carried on the channel.
struct Event {
    room: Arc<str>,
    kind: Kind,
    origin: Option<String>,
    member: Option<MemberId>,
}

fn parse_event(payload: &[u8]) -> Option<Event> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let s = |k: &str| v.get(k).and_then(|x| x.as_str());
    let name =
        |k: &str| -> Option<Arc<str>> { s(k).filter(|n| super::valid_nick(n)).map(Arc::from) };
    let room = s("room").filter(|r| super::valid_room(r))?;
    let kind = match s("t")? {
        "msg" => Kind::Msg {
            id: s("id")?.parse().ok()?,
            nick: name("nick")?,
            text: s("text")?.into(),
        },
        "join" => Kind::Join {
            nick: name("nick")?,
        },
        "part" => Kind::Part {
            nick: name("nick")?,
        },
        "nick" => Kind::Nick {
            old: name("old")?,
            new: name("new")?,
        },
        _ => return None,
    };
    Some(Event {
        room: room.into(),
        kind,
        origin: s("o").map(String::from),
        member: v.get("m").and_then(|m| m.as_u64()).map(MemberId),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_bad_ones_are_refused() {
        let ev = parse_event(
            br#"{"t":"msg","room":"r","id":"7","nick":"ann","text":"hi \/ there","o":"x"}"#,
        )
        .unwrap();
        assert_eq!(
            ev.kind,
            Kind::Msg {
                id: MsgId(7),
                nick: "ann".into(),
                text: "hi / there".into()
            }
        );
        assert_eq!(ev.origin.as_deref(), Some("x"));
        let ev = parse_event(br#"{"t":"join","room":"r","nick":"bob","o":"x","m":3}"#).unwrap();
        assert_eq!(ev.member, Some(MemberId(3)));
        for bad in [
            &br#"{"t":"msg","room":"r","id":"x","nick":"ann","text":"hi"}"#[..],
            br#"{"t":"join","room":"bad room","nick":"bob"}"#,
            br#"{"t":"join","room":"r","nick":"b b"}"#,
            br#"{"t":"other","room":"r"}"#,
            b"not json",
        ] {
            assert!(
                parse_event(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
