//! Chat instances on a Redis Cluster (3 masters, 3 replicas, made by the test on
//! loopback ports: `tests/common/redis.rs`): one chat, rooms spread over the masters,
//! and a master killed while messages flow loses none that was acknowledged. Ignored
//! by a plain `cargo test`; `.ci/cluster.sh` installs redis-server and runs them.
//! Without `redis-server` they fail with a clear message rather than pass.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::chat::Member as Client;
use common::redis::{ChatInstance as Instance, RedisCluster};

use multiclient::model::Model;
use multiclient::service::chat::ChatOptions;

/// A chat instance on the cluster at `url` under `model`, once its link is up.
fn start(model: Model, url: &str) -> Instance {
    let mut chat = ChatOptions::default();
    chat.redis = Some(url.to_string());
    chat.presence_ttl = Duration::from_secs(3);
    chat.history = 10_000;
    Instance::serve(model, chat)
}

/// The node serving `room` now, as node `ask` sees it.
fn master(cluster: &RedisCluster, room: &str, ask: usize) -> usize {
    cluster
        .master_of(room, ask)
        .expect("a master serves the room")
}

/// Room names served by three different masters now: `[a, b, c]`.
fn rooms_on_three_masters(cluster: &RedisCluster) -> Vec<String> {
    let mut by_master = std::collections::BTreeMap::new();
    for i in 0..1000 {
        let room = format!("room{i}");
        by_master.entry(master(cluster, &room, 0)).or_insert(room);
        if by_master.len() == 3 {
            break;
        }
    }
    assert_eq!(by_master.len(), 3, "no rooms on three masters");
    by_master.into_values().collect()
}

/// The message id of a `MSG <room> <id> ...` line.
fn id(line: &str) -> u64 {
    line.split(' ').nth(2).unwrap().parse().unwrap()
}

/// Every `MSG` of `room` in its history, as `(id, text)`, asked on `addr`: the replay
/// of a `JOIN ... AFTER 0` (which `HISTORY`, at most 100, would cut), up to the answer
/// of a `HISTORY` sent behind it (answers come in command order).
fn history(addr: SocketAddr, room: &str) -> Vec<(u64, String)> {
    let mut c = Client::connect(addr, "auditor");
    c.send(&format!("JOIN {room} AFTER 0"));
    c.send(&format!("HISTORY {room} 1"));
    let mut out: Vec<(u64, String)> = Vec::new();
    loop {
        let l = c.line();
        if l == format!("OK HISTORY {room}") {
            return out;
        }
        if !l.starts_with("MSG ") {
            continue;
        }
        let text = l.splitn(5, ' ').nth(4).unwrap_or_default().to_string();
        // The one message of the HISTORY answer is the replay's last.
        if out.last().is_none_or(|(last, _)| *last != id(&l)) {
            out.push((id(&l), text));
        }
    }
}

/// Two instances (async and threads) on one cluster are one chat in rooms on every
/// master: both see each room's messages in one order, a `JOIN ... AFTER` misses
/// nothing and repeats nothing, `WHO` lists both instances' members, and a nick held
/// on one instance cannot be taken on the other in any case, until it is let go.
#[test]
#[ignore = "needs redis-server: .ci/cluster.sh installs it and runs this with --ignored"]
fn instances_on_a_cluster_are_one_chat_on_every_master() {
    let cluster = RedisCluster::start();
    let one = start(Model::Async { workers: 2 }, &cluster.url());
    let two = start(Model::Threads, &cluster.url());
    let mut ann = Client::connect(one.addr, "ann");
    let mut bob = Client::connect(two.addr, "bob");
    for room in rooms_on_three_masters(&cluster) {
        // Lines of the room before are skipped by `until`.
        ann.send(&format!("JOIN {room}"));
        ann.until(&format!("OK JOIN {room}"));
        bob.send(&format!("JOIN {room}"));
        bob.until(&format!("OK JOIN {room}"));
        ann.until(&format!("JOIN {room} bob"));
        // Both send, pipelined, then each reads all: one order on both instances.
        for i in 0..20 {
            ann.send(&format!("SAY {room} a{i}"));
            bob.send(&format!("SAY {room} b{i}"));
        }
        let msg = format!("MSG {room} ");
        let read = |c: &mut Client| -> Vec<String> { (0..40).map(|_| c.until(&msg)).collect() };
        let (seen_ann, seen_bob) = (read(&mut ann), read(&mut bob));
        assert_eq!(seen_ann, seen_bob, "{room}: one order on both instances");
        let ids: Vec<u64> = seen_ann.iter().map(|l| id(l)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{room}: {ids:?}");
        // Each author's own messages in the order sent.
        let own = |who: &str| -> Vec<String> {
            let mut v = Vec::new();
            for l in &seen_ann {
                let text = l.rsplit(' ').next().unwrap();
                if text.starts_with(who) {
                    v.push(text.to_string());
                }
            }
            v
        };
        assert_eq!(
            own("a"),
            (0..20).map(|i| format!("a{i}")).collect::<Vec<_>>()
        );
        assert_eq!(
            own("b"),
            (0..20).map(|i| format!("b{i}")).collect::<Vec<_>>()
        );

        // A member joining after the 10th message, on the other instance, while more
        // come: the replay and the live messages meet with no gap and no duplicate.
        let mut cid = Client::connect(two.addr, &format!("c{room}"));
        cid.send(&format!("JOIN {room} AFTER {}", ids[9]));
        for i in 20..30 {
            ann.send(&format!("SAY {room} a{i}"));
        }
        let mut got = Vec::new();
        while got.len() < 30 + 10 {
            let l = cid.line();
            if l.starts_with("MSG ") {
                got.push(id(&l));
            }
        }
        let mut want: Vec<u64> = ids[10..].to_vec();
        let more: Vec<u64> = (0..10).map(|_| id(&ann.until(&msg))).collect();
        want.extend(more);
        assert_eq!(got, want, "{room}: the replay then the live messages");
        cid.send("QUIT");
        cid.expect("OK QUIT");
        ann.until(&format!("PART {room} c{room}"));

        ann.send(&format!("WHO {room}"));
        assert_eq!(ann.until("WHO "), format!("WHO {room} ann bob"));
    }
    // Owned nicks across instances, whatever the case; let go by a rename.
    bob.send("NICK ANN");
    assert!(bob.until("ERR ").starts_with("ERR nick-taken "));
    ann.send("NICK anna");
    ann.until("OK NICK anna");
    bob.send("NICK Ann");
    bob.until("OK NICK Ann");
    let mut eve = Client::connect(one.addr, "eve");
    eve.send("NICK ann");
    assert!(eve.until("ERR ").starts_with("ERR nick-taken "));
}

/// What a member sending `SAY`s one at a time was answered.
#[derive(Default)]
struct Answers {
    /// Texts acknowledged (its own `MSG` came back), with when.
    acked: Vec<(String, Instant)>,
    /// `ERR unavailable` answers, with when.
    refused: Vec<(String, Instant)>,
}

/// Sends `SAY`s in `room` one at a time, each waiting for its answer, until `stop`.
fn writer(addr: SocketAddr, nick: &str, room: &str, stop: Arc<AtomicBool>) -> Answers {
    let mut c = Client::connect(addr, nick);
    c.send(&format!("JOIN {room}"));
    c.expect(&format!("OK JOIN {room}"));
    let mut a = Answers::default();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let text = format!("{nick}-{i}");
        c.send(&format!("SAY {room} {text}"));
        loop {
            let l = c.line();
            if l.starts_with("MSG ") && l.ends_with(&format!(" {nick} {text}")) {
                a.acked.push((text, Instant::now()));
                break;
            }
            if l.starts_with("ERR unavailable") {
                a.refused.push((l, Instant::now()));
                break;
            }
            assert!(!l.starts_with("ERR "), "{nick}: {l}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    a
}

/// A master is killed (SIGKILL) while messages flow in a room it serves and in rooms
/// the other masters serve. Every message its author saw acknowledged, and every one
/// a member on the other instance saw, is in the room's history after the failover;
/// the rooms on the other masters were answered throughout; the room on the failed
/// master was answered `unavailable` meanwhile, then took messages again on the same
/// connections once its replica had taken over and the old master had come back as
/// its replica.
#[test]
#[ignore = "needs redis-server: .ci/cluster.sh installs it and runs this with --ignored"]
fn killing_a_master_loses_no_acknowledged_message() {
    let mut cluster = RedisCluster::start();
    let one = start(Model::Async { workers: 2 }, &cluster.url());
    let two = start(Model::Async { workers: 2 }, &cluster.url());
    let rooms = rooms_on_three_masters(&cluster);
    let (hot, calm) = (rooms[0].clone(), rooms[1].clone());
    let victim = master(&cluster, &hot, 0);
    assert_ne!(victim, master(&cluster, &calm, 0));

    // A member of the hot room on the other instance records every message it sees.
    let mut watcher = Client::connect(two.addr, "watcher");
    watcher.send(&format!("JOIN {hot}"));
    watcher.expect(&format!("OK JOIN {hot}"));
    // In the order seen, until the last message of the test.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let watching = {
        let seen = seen.clone();
        let prefix = format!("MSG {hot} ");
        std::thread::spawn(move || loop {
            let l = watcher.line();
            if let Some(rest) = l.strip_prefix(&prefix) {
                let text = rest.rsplit(' ').next().unwrap().to_string();
                if text == "the-end" {
                    return;
                }
                seen.lock().unwrap().push((id(&l), text));
            }
        })
    };
    let spawn = |addr, nick: &'static str, room: String| {
        let stop = stop.clone();
        std::thread::spawn(move || writer(addr, nick, &room, stop))
    };
    let hot_writer = spawn(one.addr, "hotw", hot.clone());
    let calm_writer = spawn(two.addr, "calmw", calm.clone());
    std::thread::sleep(Duration::from_secs(1));

    let killed = Instant::now();
    cluster.kill(victim);
    // Over when a live node names another master for the room, and sees every slot
    // served.
    let live = (victim + 1) % 6;
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.master_of(&hot, live).is_none_or(|m| m == victim) {
        assert!(Instant::now() < deadline, "no replica took over");
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster.wait_ok(&[victim]);
    let failed_over = Instant::now();
    // The old master comes back as the new one's replica: messages can be
    // acknowledged by a replica again.
    cluster.restart(victim);
    cluster.wait_replicated(3);
    let healed = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let hot_answers = hot_writer.join().unwrap();
    let calm_answers = calm_writer.join().unwrap();
    // The watcher reads up to a last message sent after every other.
    let mut last = Client::connect(one.addr, "closer");
    last.send(&format!("JOIN {hot}"));
    last.expect(&format!("OK JOIN {hot}"));
    last.send(&format!("SAY {hot} the-end"));
    watching.join().unwrap();

    // The hot room was refused during the failover, and healed on the same
    // connections.
    assert!(
        !hot_answers.refused.is_empty(),
        "the hot room was never refused"
    );
    let after_heal = hot_answers
        .acked
        .iter()
        .filter(|(_, t)| *t > healed)
        .count();
    assert!(
        after_heal > 0,
        "the hot room took no message after the failover"
    );
    // The calm room was answered throughout, and acknowledged during the failover.
    let since = |t: &Instant| t.saturating_duration_since(killed);
    let calm_refused: Vec<_> = calm_answers
        .refused
        .iter()
        .map(|(l, t)| (l, since(t)))
        .collect();
    // Never refused, nor left without its answer: a message whose publication the
    // author's own subscription missed (the client library drops the sharded
    // subscriptions of a node it reconnects to) is read back from the room's history.
    assert!(
        calm_refused.is_empty(),
        "the calm room was refused: {calm_refused:?}"
    );
    let during = calm_answers
        .acked
        .iter()
        .filter(|(_, t)| *t > killed && *t < failed_over)
        .count();
    assert!(during > 0, "the calm room took nothing during the failover");

    // Nothing acknowledged or seen is lost; nothing is in twice.
    let kept = history(two.addr, &hot);
    let texts: BTreeSet<String> = kept.iter().map(|(_, t)| t.clone()).collect();
    assert_eq!(texts.len(), kept.len(), "a message is in the history twice");
    for (text, _) in &hot_answers.acked {
        assert!(
            texts.contains(text),
            "acknowledged {text} lost in the failover"
        );
    }
    let seen = seen.lock().unwrap();
    for (_, text) in seen.iter() {
        assert!(
            texts.contains(text),
            "{text} was seen, then lost in the failover"
        );
    }
    // The member on the other instance saw every message its author saw
    // acknowledged, once each and in the room's order, though its subscription to
    // the failed master broke.
    let seen_texts: BTreeSet<&String> = seen.iter().map(|(_, t)| t).collect();
    assert_eq!(seen_texts.len(), seen.len(), "a message was seen twice");
    for (text, _) in &hot_answers.acked {
        assert!(
            seen_texts.contains(text),
            "acknowledged {text} never reached the other instance's member"
        );
    }
    let seen_ids: Vec<u64> = seen.iter().map(|(id, _)| *id).collect();
    assert!(seen_ids.windows(2).all(|w| w[0] < w[1]), "{seen_ids:?}");
    let ids: Vec<u64> = kept.iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    eprintln!(
        "hot: {} acknowledged, {} refused; calm: {} acknowledged ({} during the \
         failover of {:?}), not answered {:?}; history {}",
        hot_answers.acked.len(),
        hot_answers.refused.len(),
        calm_answers.acked.len(),
        during,
        failed_over - killed,
        calm_refused,
        kept.len()
    );
}

/// A message no replica has is not acknowledged: with its master's replica frozen
/// (SIGSTOP), a `SAY` is answered `ERR unavailable`, no member on the other instance
/// sees it, and the history never has it; with the replica back, the next one is
/// acknowledged. (Published at once, as before `WAIT`, it would be acknowledged and
/// then lost if the master died before the replica copied it.)
#[test]
#[ignore = "needs redis-server: .ci/cluster.sh installs it and runs this with --ignored"]
fn a_message_no_replica_has_is_refused_and_seen_by_nobody() {
    let cluster = RedisCluster::start();
    let one = start(Model::Async { workers: 2 }, &cluster.url());
    let two = start(Model::Threads, &cluster.url());
    let room = rooms_on_three_masters(&cluster).remove(0);
    let replica = cluster.replica_of(master(&cluster, &room, 0));
    let mut ann = Client::connect(one.addr, "ann");
    let mut bob = Client::connect(two.addr, "bob");
    ann.send(&format!("JOIN {room}"));
    ann.expect(&format!("OK JOIN {room}"));
    bob.send(&format!("JOIN {room}"));
    bob.expect(&format!("OK JOIN {room}"));
    ann.expect(&format!("JOIN {room} bob"));

    cluster.pause(replica);
    ann.send(&format!("SAY {room} unreplicated"));
    let l = ann.line();
    cluster.resume(replica);
    assert!(l.starts_with("ERR unavailable "), "{l}");
    ann.send(&format!("SAY {room} replicated"));
    assert!(ann.line().ends_with(" ann replicated"));
    // Bob's next message is the replicated one: the refused one reached nobody.
    let l = bob.until("MSG ");
    assert!(l.ends_with(" ann replicated"), "{l}");
    let kept: Vec<String> = history(two.addr, &room)
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(kept, ["replicated"]);
}

/// Messages of rooms on several slots of one master, pipelined together, wait for a
/// replica once per pipeline (one `WAIT` per master covers every write made on its
/// connection), not once per slot; and every one is acknowledged, in order.
#[test]
#[ignore = "needs redis-server: .ci/cluster.sh installs it and runs this with --ignored"]
fn messages_of_many_slots_of_one_master_wait_once_per_pipeline() {
    const ROOMS: usize = 8;
    const SAYS: usize = 20;
    let cluster = RedisCluster::start();
    cluster.wait_replicated(3);
    let one = start(Model::Async { workers: 2 }, &cluster.url());
    let m = master(&cluster, "room0", 0);
    let rooms: Vec<String> = (0..1000)
        .map(|i| format!("room{i}"))
        .filter(|r| master(&cluster, r, 0) == m)
        .take(ROOMS)
        .collect();
    let mut clients: Vec<Client> = rooms
        .iter()
        .enumerate()
        .map(|(k, room)| {
            let mut c = Client::connect(one.addr, &format!("w{k}"));
            c.send(&format!("JOIN {room}"));
            c.expect(&format!("OK JOIN {room}"));
            c
        })
        .collect();
    let trips = || one.hub.stats.redis_round_trips.load(Ordering::Relaxed);
    let (waits, batches) = (cluster.calls(m, "wait"), trips());
    for (c, room) in clients.iter_mut().zip(&rooms) {
        let burst: String = (0..SAYS).map(|i| format!("SAY {room} m{i}\n")).collect();
        std::io::Write::write_all(&mut c.w, burst.as_bytes()).unwrap();
    }
    for (c, room) in clients.iter_mut().zip(&rooms) {
        for i in 0..SAYS {
            let l = c.line();
            assert!(
                l.starts_with(&format!("MSG {room} ")) && l.ends_with(&format!(" m{i}")),
                "{i}: {l}"
            );
        }
    }
    let (waits, batches) = (cluster.calls(m, "wait") - waits, trips() - batches);
    eprintln!(
        "{} messages in {ROOMS} slots: {batches} pipelines, {waits} WAITs",
        ROOMS * SAYS
    );
    assert!(waits >= 1, "the messages were acknowledged by a replica");
    assert!(
        waits <= batches,
        "{waits} WAITs for {batches} pipelines: one per slot"
    );
}
