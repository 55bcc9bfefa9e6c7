//! Unit and property tests of the hub, with mailboxes read by hand.

use super::*;
use crate::base::mailbox::{Mailbox, WakeKind};
use proptest::prelude::*;
use std::collections::VecDeque;

struct M {
    id: MemberId,
    nick: Arc<str>,
    tx: Sender<ChatEvent>,
    mb: Arc<Mailbox<ChatEvent>>,
}

fn member(hub: &Hub, limit: usize) -> M {
    let (id, nick) = hub.connect();
    let mb = Arc::new(Mailbox::new(limit, WakeKind::None).unwrap());
    M {
        id,
        nick,
        tx: Sender::new(mb.clone()),
        mb,
    }
}

impl M {
    fn join(&self, hub: &Hub, room: &str, after: Option<MsgId>) -> Joined {
        hub.join(self.id, &self.nick, &self.tx, Wire::Line, room, after)
            .unwrap()
    }
    /// The line bytes of every event waiting, as strings.
    fn lines(&self) -> Vec<String> {
        let mut q = VecDeque::new();
        assert!(!self.mb.take(&mut q), "mailbox overflowed");
        q.into_iter()
            .map(|ev| match ev {
                ChatEvent::Room { publication, .. } => {
                    String::from_utf8(publication.encoded(Wire::Line).to_vec()).unwrap()
                }
                ChatEvent::Rest { publication, from } => {
                    String::from_utf8(publication.encoded(Wire::Line)[from..].to_vec()).unwrap()
                }
                ChatEvent::Answer(a) => panic!("unexpected answer {a:?}"),
            })
            .collect()
    }
    fn msg_ids(&self) -> Vec<MsgId> {
        let mut q = VecDeque::new();
        self.mb.take(&mut q);
        q.into_iter()
            .filter_map(|ev| match ev {
                ChatEvent::Room { publication, .. } => publication.msg_id(),
                ChatEvent::Rest { .. } => panic!("no socket is lent here"),
                ChatEvent::Answer(_) => None,
            })
            .collect()
    }
}

#[test]
fn members_see_each_other_and_the_author_gets_its_own_message() {
    let hub = Hub::new(HubConfig::default());
    let a = member(&hub, 1 << 20);
    let b = member(&hub, 1 << 20);
    a.join(&hub, "lobby", None);
    b.join(&hub, "lobby", None);
    assert_eq!(a.lines(), [format!("JOIN lobby {}\n", b.nick)]);
    assert!(b.lines().is_empty(), "a joiner is not told of its own join");
    let id = hub.say(a.id, "lobby", "hi there").unwrap().now().unwrap();
    let want = format!("MSG lobby {id} {} hi there\n", a.nick);
    assert_eq!(a.lines(), std::slice::from_ref(&want));
    assert_eq!(b.lines(), [want]);
    hub.part(b.id, "lobby").unwrap();
    assert_eq!(a.lines(), [format!("PART lobby {}\n", b.nick)]);
    assert_eq!(hub.say(b.id, "lobby", "x"), Err(HubError::NotMember));
    assert_eq!(hub.part(b.id, "lobby"), Err(HubError::NotMember));
}

/// A member that lent its socket gets its rooms' events written on it by the
/// deliverer, nothing in its mailbox; its own message still comes through the
/// mailbox (it answers the `SAY`); once it takes its socket back, events queue again.
#[test]
fn room_events_are_written_on_a_lent_socket_and_own_messages_are_queued() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    let hub = Hub::new(HubConfig::default());
    let a = member(&hub, 1 << 20);
    let b = member(&hub, 1 << 20);
    a.join(&hub, "lobby", None);
    b.join(&hub, "lobby", None);
    a.lines();
    let (a_sock, mut a_peer) = UnixStream::pair().unwrap();
    let (b_sock, mut b_peer) = UnixStream::pair().unwrap();
    a_peer.set_nonblocking(true).unwrap();
    let window = std::time::Duration::ZERO;
    // SAFETY: both sockets outlive their loans (reclaimed or closed below).
    unsafe {
        assert!(a.mb.lend(a_sock.as_raw_fd(), window, None));
        assert!(b.mb.lend(b_sock.as_raw_fd(), window, None));
    }
    // The join's fan-out a moment ago must not make the room look busy.
    lock(hub.shard("lobby"))
        .get_mut("lobby")
        .unwrap()
        .lent_fanout = None;
    let id = hub.say(a.id, "lobby", "hi").unwrap().now().unwrap();
    let want = format!("MSG lobby {id} {} hi\n", a.nick);
    assert_eq!(a.lines(), std::slice::from_ref(&want));
    assert!(b.lines().is_empty(), "nothing queued for b");
    let mut got = vec![0u8; want.len()];
    b_peer.read_exact(&mut got).unwrap();
    assert_eq!(got, want.as_bytes());
    assert!(
        a_peer.read(&mut [0u8; 64]).is_err(),
        "nothing on a's socket"
    );
    let used = b.mb.reclaim().expect("written on b's socket");
    assert_eq!((used.bytes, used.writes), (want.len() as u64, 1));
    assert_eq!(hub.stats.deliveries.load(Ordering::Relaxed), 3);
    let id = hub.say(a.id, "lobby", "again").unwrap().now().unwrap();
    assert_eq!(b.lines(), [format!("MSG lobby {id} {} again\n", a.nick)]);
    a.mb.close();
}

/// A room writes on lent sockets one event at a time, for at most what its writers
/// write in the budget (10 ms for the publisher's thread alone, 50 ms with the other
/// workers' help) at the last measured time per member, and only while such fan-outs
/// hold them at most a tenth of the time; the rest of its members, and a busy room's,
/// get their events through their mailboxes.
#[test]
fn a_room_writes_a_bounded_share_on_lent_sockets_and_none_when_busy() {
    use std::time::{Duration, Instant};
    let mut r = room::Room::new("r".into());
    let t0 = Instant::now();
    for shared in [false, true] {
        assert_eq!(
            r.lent_share(1, 100, t0, shared),
            100,
            "a room's first event"
        );
        assert_eq!(
            r.lent_share(1, 10_000, t0, shared),
            256,
            "before any cost is measured"
        );
        assert_eq!(r.lent_share(2, 100, t0, shared), 0, "events piled up");
    }
    // 1,000 members in 5 ms: 5 µs each, so 2,000 fit in 10 ms, 10,000 in 50 ms.
    r.lent_fanout = Some(room::LentFanout {
        start: t0,
        took: Duration::from_millis(5),
        members: 1_000,
    });
    for shared in [false, true] {
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(r.lent_share(1, 1_000, ms(10), shared), 0);
        assert_eq!(r.lent_share(1, 1_000, ms(49), shared), 0);
        assert_eq!(r.lent_share(1, 1_000, ms(50), shared), 1_000);
    }
    let share = r.lent_share(1, 20_000, t0 + Duration::from_millis(50), false);
    assert!((1_990..=2_010).contains(&share), "{share}");
    let share = r.lent_share(1, 20_000, t0 + Duration::from_millis(50), true);
    assert!((9_990..=10_010).contains(&share), "{share}");
    // At 10 µs a member: help writes 3,000 in 50 ms; a share of 2,000 is below
    // `SHARED_FROM`, so one thread writes it, in 10 ms: 1,000.
    r.lent_fanout = Some(room::LentFanout {
        start: t0,
        took: Duration::from_millis(10),
        members: 1_000,
    });
    let later = t0 + Duration::from_millis(100);
    assert_eq!(r.lent_share(1, 3_000, later, true), 3_000);
    let one_thread = 999..=1_000; // 10 ms over 10 µs, in floating point
    assert!(one_thread.contains(&r.lent_share(1, 3_000, later, false)));
    assert!(one_thread.contains(&r.lent_share(1, 2_000, later, true)));
}

#[test]
fn a_large_room_s_lent_writes_are_shared_by_the_workers_in_order() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;
    const MEMBERS: usize = 2_100;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let hub = Hub::new(HubConfig::default());
    let members: Vec<M> = (0..MEMBERS).map(|_| member(&hub, 1 << 20)).collect();
    for m in &members {
        m.join(&hub, "big", None);
    }
    let mut socks = Vec::new();
    for m in &members[1..] {
        m.mb.take(&mut VecDeque::new()); // the first members' JOIN lines
        let (ours, peer) = UnixStream::pair().unwrap();
        // SAFETY: `ours` outlives the loan: it is kept in `socks` until the end.
        assert!(unsafe { m.mb.lend(ours.as_raw_fd(), Duration::ZERO, None) });
        socks.push((ours, peer));
    }
    members[0].lines();
    let before = hub.stats.deliveries.load(Ordering::Relaxed);
    let author = (members[0].id, members[0].nick.clone());
    let say = |text: String| {
        let (speaker, said) = (hub.clone(), text.clone());
        let id = rt
            .block_on(rt.spawn(async move { speaker.say(author.0, "big", &said) }))
            .unwrap()
            .unwrap()
            .now()
            .unwrap();
        format!("MSG big {id} {} {text}\n", author.1)
    };
    // A helper may still be writing after the `SAY` returned, and then goes on with
    // the room: done once the room is no longer being handed out.
    let settle = || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while hub.delivering("big") {
            assert!(
                std::time::Instant::now() < deadline,
                "the fan-out never ended"
            );
            std::thread::yield_now();
        }
    };
    // The next event is written on every lent socket: the last such fan-out, long
    // ago, was quick.
    let quiet = || {
        lock(hub.shard("big")).get_mut("big").unwrap().lent_fanout = Some(room::LentFanout {
            start: std::time::Instant::now() - Duration::from_secs(1),
            took: Duration::from_millis(1),
            members: MEMBERS,
        });
    };
    let mut said = Vec::new();
    // One event at a time until a fan-out was shared (the other worker may be slow to
    // start), at most 50.
    while said.len() < 50 && (said.is_empty() || hub.stats.helped.load(Ordering::Relaxed) == 0) {
        quiet();
        said.push(say(format!("line {}", said.len())));
        settle();
    }
    let helped = hub.stats.helped.load(Ordering::Relaxed);
    assert!(helped > 0, "no fan-out of {} was shared", said.len());
    // Helpers may write every chunk (the publisher's thread can lose its CPU to the
    // helper it woke), never more than every delivery.
    assert!(helped <= (said.len() * MEMBERS) as u64, "{helped}");
    assert_eq!(
        hub.stats.deliveries.load(Ordering::Relaxed) - before,
        (said.len() * MEMBERS) as u64
    );
    assert_eq!(members[0].lines(), said, "the author's own, in its mailbox");
    let want = said.concat();
    for (m, (_, peer)) in members[1..].iter().zip(&mut socks) {
        assert!(m.lines().is_empty(), "nothing queued for {}", m.nick);
        peer.set_nonblocking(true).unwrap();
        let mut got = vec![0u8; want.len() + 1];
        let n = peer.read(&mut got).unwrap();
        assert_eq!(std::str::from_utf8(&got[..n]).unwrap(), want, "{}", m.nick);
    }
    // Events said while a helper may still be writing the one before: each member
    // gets them all in order, the first ones on its socket and the rest, once the
    // room looks busy, queued behind them.
    quiet();
    let burst: Vec<String> = (0..5).map(|i| say(format!("burst {i}"))).collect();
    settle();
    assert_eq!(members[0].lines(), burst);
    for (m, (_, peer)) in members[1..].iter().zip(&mut socks) {
        let mut got = vec![0u8; 4096];
        let n = peer.read(&mut got).unwrap_or(0);
        let mut seen = String::from_utf8(got[..n].to_vec()).unwrap();
        seen.extend(m.lines());
        assert_eq!(seen, burst.concat(), "{}", m.nick);
    }
}

#[test]
fn guest_nicks_are_unique_and_nick_changes_are_announced() {
    let hub = Hub::new(HubConfig::default());
    let a = member(&hub, 1 << 20);
    let b = member(&hub, 1 << 20);
    assert_ne!(a.nick, b.nick);
    assert!(a.nick.starts_with("guest-"));
    let ann = hub
        .set_nick(a.id, &a.nick, "ann", &[], &a.tx)
        .unwrap()
        .now()
        .unwrap();
    assert_eq!(
        hub.set_nick(b.id, &b.nick, "ann", &[], &b.tx),
        Err(HubError::NickTaken)
    );
    assert_eq!(
        hub.set_nick(b.id, &b.nick, "a b", &[], &b.tx),
        Err(HubError::BadName)
    );
    // The guest nick a gave up is free again.
    hub.set_nick(b.id, &b.nick, &a.nick, &[], &b.tx).unwrap();
    // A later guest never collides with a nick taken by hand.
    hub.set_nick(b.id, &a.nick, "guest-3", &[], &b.tx).unwrap();
    let c = member(&hub, 1 << 20);
    assert_ne!(&*c.nick, "guest-3");
    let joined = hub.join(a.id, &ann, &a.tx, Wire::Line, "r", None).unwrap();
    assert_eq!(joined.since, 1);
    c.join(&hub, "r", None);
    a.lines();
    hub.set_nick(
        a.id,
        &ann,
        "anna",
        std::slice::from_ref(&joined.room),
        &a.tx,
    )
    .unwrap();
    assert_eq!(c.lines(), ["NICK r ann anna\n"]);
    assert!(
        a.lines().is_empty(),
        "the author gets OK NICK, not the event"
    );
    assert_eq!(&*hub.who("r").unwrap()[0], "anna");
}

#[test]
fn who_and_history_and_rooms_vanish_when_empty() {
    let hub = Hub::new(HubConfig {
        history: 3,
        ..HubConfig::default()
    });
    let a = member(&hub, 1 << 20);
    let b = member(&hub, 1 << 20);
    a.join(&hub, "r", None);
    b.join(&hub, "r", None);
    let mut who = vec![a.nick.clone(), b.nick.clone()];
    who.sort();
    assert_eq!(hub.who("r").unwrap(), who);
    let ids: Vec<MsgId> = (0..5)
        .map(|i| hub.say(a.id, "r", &format!("m{i}")).unwrap().now().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let h = hub.history("r", 10, &a.tx).unwrap().now().unwrap();
    assert_eq!(
        h.iter().map(|p| p.msg_id().unwrap()).collect::<Vec<_>>(),
        ids[2..]
    );
    assert_eq!(
        hub.history("r", 1, &a.tx).unwrap().now().unwrap()[0].msg_id(),
        Some(ids[4])
    );
    assert_eq!(hub.who("nowhere"), Err(HubError::NoSuchRoom));
    assert_eq!(
        hub.history("bad name", 1, &a.tx).err(),
        Some(HubError::BadName)
    );
    hub.disconnect(a.id, &a.nick, &[Arc::from("r")]);
    hub.disconnect(b.id, &b.nick, &[Arc::from("r")]);
    assert_eq!(hub.who("r"), Err(HubError::NoSuchRoom));
    // The nicks are free again.
    let c = member(&hub, 1 << 20);
    hub.set_nick(c.id, &c.nick, &a.nick, &[], &c.tx).unwrap();
}

#[test]
fn history_messages_carry_the_time_they_were_said() {
    let hub = Hub::new(HubConfig::default());
    let a = member(&hub, 1 << 20);
    a.join(&hub, "r", None);
    let before = publication::unix_millis();
    hub.say(a.id, "r", "hi").unwrap();
    hub.announce("r", "notice").unwrap();
    let after = publication::unix_millis();
    let h = hub.history("r", 10, &a.tx).unwrap().now().unwrap();
    assert_eq!(h.len(), 2);
    for p in &h {
        let Kind::Msg { time, .. } = &p.kind else {
            panic!("not a message: {p:?}");
        };
        let t = time.expect("a message said here has a time");
        assert!((before..=after).contains(&t), "{before} <= {t} <= {after}");
        let v: serde_json::Value = serde_json::from_slice(p.encoded(Wire::Json)).unwrap();
        assert_eq!(v["time"], t, "the JSON wire carries it");
    }
}

#[test]
fn join_after_replays_exactly_what_follows() {
    let hub = Hub::new(HubConfig::default());
    let a = member(&hub, 1 << 20);
    a.join(&hub, "r", None);
    let ids: Vec<MsgId> = (0..5)
        .map(|i| hub.say(a.id, "r", &i.to_string()).unwrap().now().unwrap())
        .collect();
    let b = member(&hub, 1 << 20);
    let j = b.join(&hub, "r", Some(ids[1]));
    assert_eq!(
        j.replay
            .iter()
            .map(|p| p.msg_id().unwrap())
            .collect::<Vec<_>>(),
        ids[2..]
    );
    let next = hub.say(a.id, "r", "live").unwrap().now().unwrap();
    assert_eq!(b.msg_ids(), [next]);
}

#[test]
fn a_second_join_is_refused() {
    let hub = Hub::new(HubConfig::default());
    let a = member(&hub, 1 << 20);
    a.join(&hub, "r", None);
    assert_eq!(
        hub.join(a.id, &a.nick, &a.tx, Wire::Line, "r", None).err(),
        Some(HubError::AlreadyMember)
    );
    assert_eq!(
        hub.join(a.id, &a.nick, &a.tx, Wire::Line, "r:x", None)
            .err(),
        Some(HubError::BadName)
    );
}

#[test]
fn an_overflowing_member_does_not_cost_the_others_a_message() {
    let hub = Hub::new(HubConfig::default());
    let slow = member(&hub, 200);
    let fast = member(&hub, 1 << 20);
    slow.join(&hub, "r", None);
    fast.join(&hub, "r", None);
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(
            hub.say(fast.id, "r", &format!("message {i}"))
                .unwrap()
                .now()
                .unwrap(),
        );
    }
    assert_eq!(fast.msg_ids(), ids);
    let mut q = VecDeque::new();
    assert!(slow.mb.take(&mut q), "the slow member's mailbox overflowed");
    assert!(hub.stats.overflows.load(Ordering::Relaxed) > 0);
}

#[test]
fn announcements_reach_members_and_history_as_server() {
    let hub = Hub::new(HubConfig::default());
    let a = member(&hub, 1 << 20);
    assert_eq!(hub.announce("r", "deploy done"), Err(HubError::NoSuchRoom));
    a.join(&hub, "r", None);
    hub.announce("r", "deploy done").unwrap();
    let got = a.lines();
    assert_eq!(got.len(), 1);
    assert!(got[0].starts_with("MSG r ") && got[0].ends_with(" server deploy done\n"));
    assert_eq!(hub.history("r", 5, &a.tx).unwrap().now().unwrap().len(), 1);
    assert_eq!(hub.announce("r", "two\nlines"), Err(HubError::BadText));
    assert_eq!(hub.say(a.id, "r", "x\ry"), Err(HubError::BadText));
    assert_eq!(hub.announce("bad room", "x"), Err(HubError::BadName));
    assert!(a.lines().is_empty(), "nothing half-delivered");
    assert_eq!(
        hub.set_nick(a.id, &a.nick, SERVER_NICK, &[], &a.tx),
        Err(HubError::NickTaken)
    );
}

#[test]
fn json_encoding_is_one_object() {
    let p = Publication::new(
        "lobby".into(),
        Kind::Msg {
            id: MsgId(7),
            nick: "ann".into(),
            text: "say \"hi\"".into(),
            time: Some(1_764_720_000_123),
        },
    );
    let v: serde_json::Value = serde_json::from_slice(p.encoded(Wire::Json)).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"type":"msg","room":"lobby","id":"7","nick":"ann","text":"say \"hi\"","time":1_764_720_000_123_u64})
    );
    // Encoded once: the same bytes every time.
    assert_eq!(
        p.encoded(Wire::Line).as_ptr(),
        p.encoded(Wire::Line).as_ptr()
    );
}

#[test]
fn concurrent_publishers_and_a_joiner_meet_without_gap_or_duplicate() {
    let hub = Hub::new(HubConfig {
        history: 100_000,
        ..HubConfig::default()
    });
    let writers: Vec<M> = (0..4).map(|_| member(&hub, 1 << 30)).collect();
    for w in &writers {
        w.join(&hub, "r", None);
    }
    let watcher = member(&hub, 1 << 30);
    watcher.join(&hub, "r", None);
    let writers: Vec<(MemberId, Arc<Hub>)> = writers.iter().map(|w| (w.id, hub.clone())).collect();
    let handles: Vec<_> = writers
        .into_iter()
        .map(|(id, hub)| {
            std::thread::spawn(move || {
                for i in 0..2000 {
                    hub.say(id, "r", &i.to_string()).unwrap().now().unwrap();
                }
            })
        })
        .collect();
    // Join in the middle of the traffic, after an id seen so far.
    let mut seen = Vec::new();
    while seen.len() < 100 {
        seen.extend(watcher.msg_ids());
    }
    let after = seen[50];
    let late = member(&hub, 1 << 30);
    let j = late.join(&hub, "r", Some(after));
    for h in handles {
        h.join().unwrap();
    }
    seen.extend(watcher.msg_ids());
    assert_eq!(seen.len(), 8000, "the watcher got every message once");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in id order");
    let mut got: Vec<MsgId> = j.replay.iter().map(|p| p.msg_id().unwrap()).collect();
    got.extend(late.msg_ids());
    let want: Vec<MsgId> = seen.iter().copied().filter(|&m| m > after).collect();
    assert_eq!(got, want, "replay then live: no gap, no duplicate");
}

proptest! {
    /// Whatever the interleaving of messages, joins and parts, a member joining with
    /// `AFTER` gets every message after that id exactly once, in order.
    #[test]
    fn after_is_exact(ops in proptest::collection::vec(0u8..4, 1..60), cut in 0usize..40) {
        let hub = Hub::new(HubConfig { history: 1000, ..HubConfig::default() });
        let a = member(&hub, 1 << 20);
        let b = member(&hub, 1 << 20);
        a.join(&hub, "r", None);
        let mut all = Vec::new();
        let mut b_in = false;
        for op in ops {
            match op {
                0 | 1 => all.push(hub.say(a.id, "r", "x").unwrap().now().unwrap()),
                2 if !b_in => { b.join(&hub, "r", None); b_in = true; }
                _ if b_in => { hub.part(b.id, "r").unwrap(); b_in = false; }
                _ => {}
            }
        }
        let after = all.get(cut).copied().unwrap_or(MsgId(0));
        let c = member(&hub, 1 << 20);
        let j = c.join(&hub, "r", Some(after));
        let more = hub.say(a.id, "r", "y").unwrap().now().unwrap();
        let mut got: Vec<MsgId> = j.replay.iter().map(|p| p.msg_id().unwrap()).collect();
        got.extend(c.msg_ids());
        let mut want: Vec<MsgId> = all.into_iter().filter(|&m| m > after).collect();
        want.push(more);
        prop_assert_eq!(got, want);
    }

    /// The member list WHO reports always matches the joins and parts made.
    #[test]
    fn who_tracks_membership(ops in proptest::collection::vec((0usize..5, any::<bool>()), 1..80)) {
        let hub = Hub::new(HubConfig::default());
        let ms: Vec<M> = (0..5).map(|_| member(&hub, 1 << 20)).collect();
        let mut inside = [false; 5];
        for (i, join) in ops {
            let r = if join {
                hub.join(ms[i].id, &ms[i].nick, &ms[i].tx, Wire::Line, "r", None).map(|_| ())
            } else {
                hub.part(ms[i].id, "r")
            };
            prop_assert_eq!(r.is_ok(), join != inside[i]);
            inside[i] = join;
            let mut want: Vec<Arc<str>> = (0..5).filter(|&k| inside[k]).map(|k| ms[k].nick.clone()).collect();
            want.sort();
            match hub.who("r") {
                Ok(who) => prop_assert_eq!(who, want),
                Err(e) => { prop_assert_eq!(e, HubError::NoSuchRoom); prop_assert!(want.is_empty()); }
            }
        }
    }
}

#[test]
fn history_over_the_process_budget_drops_the_oldest_of_any_room_first() {
    let probe = Publication::new(
        "r0".into(),
        Kind::Msg {
            id: MsgId(1),
            nick: "guest-1".into(),
            text: "x".repeat(1000).into(),
            time: None,
        },
    );
    // Room for ten such messages in all, while each room may keep 100.
    let hub = Hub::new(HubConfig {
        history_bytes: 10 * probe.cost(),
        ..HubConfig::default()
    });
    let a = member(&hub, 1 << 24);
    let text = "x".repeat(1000);
    let mut said = Vec::new();
    for i in 0..30 {
        let room = format!("r{}", i % 3);
        if i < 3 {
            a.join(&hub, &room, None);
        }
        said.push((
            room.clone(),
            hub.say(a.id, &room, &text).unwrap().now().unwrap(),
        ));
    }
    assert!(
        hub.history_held() <= 10 * probe.cost(),
        "{}",
        hub.history_held()
    );
    let mut kept: Vec<MsgId> = (0..3)
        .flat_map(|i| {
            let h = hub
                .history(&format!("r{i}"), 100, &a.tx)
                .unwrap()
                .now()
                .unwrap();
            h.iter().filter_map(|p| p.msg_id()).collect::<Vec<_>>()
        })
        .collect();
    kept.sort();
    let newest: Vec<MsgId> = said[20..].iter().map(|(_, id)| *id).collect();
    assert_eq!(kept, newest, "the ten newest, from every room");
    // Rooms forgotten with their last member give their history's bytes back.
    hub.disconnect(a.id, &a.nick, &["r0".into(), "r1".into(), "r2".into()]);
    assert_eq!(hub.history_held(), 0);
}

#[test]
fn a_room_keeps_at_most_its_history_count_and_counts_what_it_drops() {
    let hub = Hub::new(HubConfig {
        history: 5,
        ..HubConfig::default()
    });
    let a = member(&hub, 1 << 24);
    a.join(&hub, "r", None);
    for i in 0..50 {
        hub.say(a.id, "r", &format!("m{i}")).unwrap();
    }
    let h = hub.history("r", 100, &a.tx).unwrap().now().unwrap();
    assert_eq!(h.len(), 5);
    assert_eq!(
        hub.history_held(),
        h.iter().map(|p| p.cost()).sum::<usize>()
    );
    // The budget's order queue stays bounded by its clean-ups.
    assert!(lock(&memory::MemoryBroker::of(&hub).order).queue.len() <= 2 * 1024 + 1);
}

#[test]
fn control_characters_are_refused_in_text_and_printable_text_passes() {
    let hub = Hub::new(HubConfig::default());
    let a = member(&hub, 1 << 20);
    a.join(&hub, "r", None);
    for bad in [
        "\x1b[31mred",
        "bell\x07",
        "nul\0",
        "del\x7f",
        "tab\there",
        "c1\u{9b}x",
        "a\rb",
    ] {
        assert_eq!(hub.say(a.id, "r", bad), Err(HubError::BadText), "{bad:?}");
        assert_eq!(hub.announce("r", bad), Err(HubError::BadText), "{bad:?}");
    }
    assert!(hub.say(a.id, "r", "héllo – ünïcode ✓").is_ok());
}

#[test]
fn nicks_are_unique_whatever_their_case_and_server_cannot_be_taken() {
    let hub = Hub::new(HubConfig::default());
    let a = member(&hub, 1 << 20);
    let b = member(&hub, 1 << 20);
    let ann = hub
        .set_nick(a.id, &a.nick, "ann", &[], &a.tx)
        .unwrap()
        .now()
        .unwrap();
    for taken in ["ANN", "Ann", "aNN"] {
        assert_eq!(
            hub.set_nick(b.id, &b.nick, taken, &[], &b.tx),
            Err(HubError::NickTaken),
            "{taken}"
        );
    }
    for reserved in ["server", "SERVER", "Server"] {
        assert_eq!(
            hub.set_nick(b.id, &b.nick, reserved, &[], &b.tx),
            Err(HubError::NickTaken),
            "{reserved}"
        );
    }
    // Its owner may change its case; the nick stays held.
    let big = hub
        .set_nick(a.id, &ann, "ANN", &[], &a.tx)
        .unwrap()
        .now()
        .unwrap();
    assert_eq!(&*big, "ANN");
    assert_eq!(
        hub.set_nick(b.id, &b.nick, "ann", &[], &b.tx),
        Err(HubError::NickTaken)
    );
    // Freed on disconnect, under any case.
    hub.disconnect(a.id, &big, &[]);
    assert!(hub.set_nick(b.id, &b.nick, "Ann", &[], &b.tx).is_ok());
}

#[test]
fn once_every_room_is_forgotten_no_message_is_pinned_by_the_history_order() {
    let hub = Hub::new(HubConfig::default());
    let a = member(&hub, 1 << 24);
    for r in 0..3 {
        let room = format!("r{r}");
        a.join(&hub, &room, None);
        for i in 0..20 {
            hub.say(a.id, &room, &format!("m{i}")).unwrap();
        }
    }
    let kept = lock(&memory::MemoryBroker::of(&hub).order).queue.len();
    assert_eq!(kept, 60, "every message kept is in the order");
    drop(a.lines());
    hub.disconnect(a.id, &a.nick, &["r0".into(), "r1".into(), "r2".into()]);
    assert_eq!(hub.history_held(), 0);
    let order = lock(&memory::MemoryBroker::of(&hub).order);
    assert_eq!(
        (order.queue.len(), order.queue.capacity()),
        (0, 0),
        "a Weak left in the order keeps its message's allocation alive"
    );
}

#[test]
fn a_room_made_again_never_replays_a_log_its_broker_has_not_dropped_yet() {
    let hub = Hub::new(HubConfig::default());
    let a = member(&hub, 1 << 20);
    a.join(&hub, "r", None);
    hub.say(a.id, "r", "old").unwrap().now().unwrap();
    // The hub forgets the room, and its broker's `room_gone` has not run yet when a
    // join makes the room again: the old log is still there then.
    let broker = memory::MemoryBroker::of(&hub);
    let stale = lock(broker.shard("r")).remove("r").expect("the room's log");
    hub.disconnect(a.id, &a.nick, &[Arc::from("r")]);
    assert!(!hub.has_room("r"));
    lock(broker.shard("r")).insert(Arc::from("r"), stale);
    let b = member(&hub, 1 << 20);
    let j = b.join(&hub, "r", Some(MsgId(0)));
    assert!(j.replay.is_empty(), "{:?}", j.replay);
    assert!(hub
        .history("r", 10, &b.tx)
        .unwrap()
        .now()
        .unwrap()
        .is_empty());
    assert_eq!(hub.history_held(), 0, "the old log is counted out");
}

/// Members in one room, each with a mailbox large enough for what the test sends.
fn fill(hub: &Hub, room: &str, n: usize) -> Vec<M> {
    (0..n)
        .map(|_| {
            let m = member(hub, 1 << 20);
            m.join(hub, room, None);
            m
        })
        .collect()
}

#[test]
fn filling_a_room_costs_a_bounded_number_of_events_per_join_not_one_per_member() {
    // Every JOIN went to each member already there: filling a room of n cost
    // n(n-1)/2 events (1,999,000 for 2,000). Past the presence limit a join costs none.
    for n in [1_000, 2_000] {
        let hub = Hub::new(HubConfig::default());
        let members = fill(&hub, "big", n);
        let limit = DEFAULT_PRESENCE_LIMIT as u64;
        let joins = hub.stats.deliveries.load(Ordering::Relaxed);
        assert_eq!(joins, limit * (limit - 1) / 2, "filling a room of {n}");
        // The 101st member onwards was told nothing but its own join.
        assert!(members[DEFAULT_PRESENCE_LIMIT].lines().is_empty());
        assert_eq!(members[0].lines().len(), DEFAULT_PRESENCE_LIMIT - 1);
        members.iter().for_each(|m| drop(m.lines()));
        // WHO is still exact, and a message still reaches every member.
        assert_eq!(hub.who("big").unwrap().len(), n);
        hub.say(members[7].id, "big", "hello all").unwrap();
        assert!(members.iter().all(|m| m.lines().len() == 1));
    }
}

#[test]
fn presence_lines_stop_above_the_limit_and_come_back_below_it() {
    let hub = Hub::new(HubConfig {
        presence_limit: 3,
        ..HubConfig::default()
    });
    let members = fill(&hub, "r", 4);
    let lines = |m: &M| m.lines();
    assert_eq!(lines(&members[0]).len(), 2, "joins 2 and 3 of a room of 3");
    assert!(lines(&members[2]).is_empty(), "the 4th join is not a line");
    // A PART counts the member leaving: from 4 members, silent; from 3, a line.
    hub.part(members[3].id, "r").unwrap();
    assert!(lines(&members[0]).is_empty());
    hub.part(members[2].id, "r").unwrap();
    assert_eq!(
        lines(&members[0]),
        [format!("PART r {}\n", members[2].nick)]
    );
    // Nick changes are not presence: always a line.
    hub.set_nick(
        members[1].id,
        &members[1].nick,
        "bo",
        &["r".into()],
        &members[1].tx,
    )
    .unwrap();
    assert_eq!(
        lines(&members[0]),
        ["NICK r ".to_string() + &members[1].nick + " bo\n"]
    );
}

#[test]
fn a_room_the_broker_reports_large_gets_no_presence_lines_from_it() {
    // With Redis each process sees its own members only; the size the scripts count
    // over every process decides, so every process agrees.
    let hub = Hub::new(HubConfig::default());
    let members = fill(&hub, "r", 2);
    members[0].lines();
    let join = || Kind::Join { nick: "far".into() };
    let part = || Kind::Part { nick: "far".into() };
    hub.report_size("r", 5_000);
    assert_eq!(hub.push("r", join(), None), None);
    assert_eq!(hub.inject("r", part(), None, None), None);
    assert!(members[0].lines().is_empty() && members[1].lines().is_empty());
    let text = Kind::Msg {
        id: MsgId(1),
        nick: "far".into(),
        text: "still heard".into(),
        time: None,
    };
    let room = hub
        .inject("r", text, None, None)
        .expect("a message is delivered");
    hub.deliver(&room);
    assert_eq!(members[1].lines(), ["MSG r 1 far still heard\n"]);
    hub.report_size("r", DEFAULT_PRESENCE_LIMIT);
    let room = hub
        .push("r", join(), None)
        .expect("a small room hears joins");
    hub.deliver(&room);
    assert_eq!(members[1].lines(), ["JOIN r far\n"]);
}
