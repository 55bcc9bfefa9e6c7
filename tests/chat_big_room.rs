//! A room past the presence limit (100 members), over Redis: two instances agree that
//! it is large although each holds only half of it, so neither sends the `JOIN` of its
//! 101st member, while `WHO` lists every member and a message reaches them all. The
//! test starts its own `redis-server` on a free loopback port (`tests/common/redis.rs`);
//! `.ci/chat.sh` installs it and runs this with `--ignored`.

mod common;

use std::time::{Duration, Instant};

use common::chat::{Member, Running};
use common::redis::RedisServer;

use multiclient::hub::DEFAULT_PRESENCE_LIMIT;
use multiclient::model::{Limits, Model};
use multiclient::serve::ServiceOptions;
use multiclient::service::chat::ChatOptions;

/// A chat instance on `url`, once its Redis link is up.
fn instance(url: &str) -> Running {
    let mut chat = ChatOptions::default();
    chat.redis = Some(url.to_string());
    let hub = chat.hub().unwrap();
    let opts = ServiceOptions {
        chat,
        ..ServiceOptions::default()
    };
    let running = Running::start(Model::Async { workers: 2 }, Limits::default(), &opts);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !hub.is_available() {
        assert!(Instant::now() < deadline, "the Redis link never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    running
}

#[test]
#[ignore = "needs redis-server: .ci/chat.sh installs it and runs this with --ignored"]
fn instances_agree_a_room_is_past_the_presence_limit_though_each_holds_half() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (one, two) = (instance(&url), instance(&url));
    let addrs = [one.chat.addr, two.chat.addr];
    // Members alternate between the instances: each holds about half of the room.
    let mut members: Vec<Member> = (0..=DEFAULT_PRESENCE_LIMIT)
        .map(|i| {
            let mut m = Member::connect(addrs[i % 2], &format!("m{i}"));
            m.send("JOIN big");
            m.until("OK JOIN big");
            m
        })
        .collect();
    // m1, on the second instance, heard the joins of m2..m99 (rooms of at most 100)
    // and not that of m100 (101 members, 51 of them on the first instance).
    let last = DEFAULT_PRESENCE_LIMIT;
    members[0].send("SAY big marker");
    let marker = members[0].until("MSG big ");
    let mut heard = Vec::new();
    loop {
        let l = members[1].line();
        if l == marker {
            break;
        }
        heard.push(l);
    }
    let want: Vec<String> = (2..last).map(|i| format!("JOIN big m{i}")).collect();
    assert_eq!(heard, want, "m1 heard");
    // Every member got the message, and WHO is exact on both instances.
    for m in members.iter_mut().skip(2) {
        assert_eq!(m.until("MSG big "), marker, "{}", m.nick);
    }
    for m in [0, 1] {
        members[m].send("WHO big");
        let who = members[m].until("WHO big ");
        assert_eq!(who.split(' ').count() - 2, last + 1, "{who}");
    }
    // The 101st member's part is silent too; one from a room of 100 is heard.
    members[last].send("PART big");
    members[last].expect("OK PART big");
    // `OK PART` does not wait for Redis, and the next `PART` comes from the other
    // instance: a `WHO` on the first, behind the `PART` in its bridge's one queue and
    // connection, is answered once Redis has unlisted m100 (else m99's `PART` could run
    // first, in a room of 101, and m100's in a room of 100).
    members[0].send("WHO big");
    let who = members[0].until("WHO big ");
    assert_eq!(who.split(' ').count() - 2, last, "{who}");
    members[last - 1].send("PART big");
    members[last - 1].expect("OK PART big");
    members[3].send("SAY big after");
    let after = members[3].until("MSG big ");
    assert_eq!(members[1].line(), format!("PART big m{}", last - 1));
    assert_eq!(members[1].line(), after);
}
