//! The core on its own, with an encoder that records what it is told: the deferred
//! answers of a Redis hub are played by hand, in every order they can come in.

use super::*;
use crate::base::mailbox::{Mailbox, WakeKind};
use crate::hub::MsgId;
use crate::hub::{HubConfig, Kind};

/// Records what a member is told, one short line per thing.
struct Rec {
    now: Instant,
    closing: bool,
    said: Vec<String>,
    /// The human text of every error said.
    texts: Vec<String>,
    mailbox: Arc<Mailbox<ChatEvent>>,
}

impl Rec {
    fn new() -> Rec {
        Rec {
            now: Instant::now(),
            closing: false,
            said: Vec::new(),
            texts: Vec::new(),
            mailbox: Arc::new(Mailbox::new(1 << 20, WakeKind::None).unwrap()),
        }
    }

    fn take(&mut self) -> Vec<String> {
        std::mem::take(&mut self.said)
    }

    /// Hands what the member's mailbox holds to `m`, as a model would.
    fn deliver(&mut self, m: &mut Member<Lines>) {
        let mut batch = VecDeque::new();
        self.mailbox.take(&mut batch);
        for ev in batch {
            m.event(ev, self);
        }
    }
}

impl Encoder for Rec {
    const WIRE: Wire = Wire::Line;
    fn now(&mut self) -> Instant {
        self.now
    }
    fn is_closing(&mut self) -> bool {
        self.closing
    }
    fn mailbox(&mut self) -> std::io::Result<Sender<ChatEvent>> {
        Ok(Sender::new(self.mailbox.clone()))
    }
    fn reply(&mut self, reply: Reply<'_>) {
        self.said.push(match reply {
            Reply::Welcome { nick, .. } => format!("welcome {nick}"),
            Reply::Ok(done) => format!("ok {done:?}"),
            Reply::Who(room, nicks) => format!("who {room} {}", nicks.join(" ")),
            Reply::Error(code, text) => {
                self.texts.push(text.to_string());
                format!("error {code}")
            }
        });
    }
    fn publication(&mut self, p: &Publication) {
        let s = String::from_utf8(p.encoded(Wire::Line).to_vec()).unwrap();
        self.said.push(s.trim_end().to_string());
    }
    fn end(&mut self, why: End) {
        self.said.push(format!("end {why:?}"));
        self.closing = true;
    }
}

/// The line protocol's commands.
struct Lines;

impl Decoder for Lines {
    fn decode<R>(&self, raw: &[u8], run: impl FnOnce(Result<Command<'_>, ParseError>) -> R) -> R {
        run(super::super::parse(raw))
    }
}

fn member(max_rate: Option<u32>) -> (Member<Lines>, Rec) {
    let hub = Hub::new(HubConfig::default());
    let mut m = Member::new(hub, Lines, max_rate);
    let mut rec = Rec::new();
    m.open(&mut rec);
    assert!(rec.take()[0].starts_with("welcome guest-"));
    (m, rec)
}

/// Joins `room` in the hub, then puts the member where a Redis hub leaves it: the
/// join not yet in effect (`Answer::Joined` to come), and with `replay`, a replay
/// on its way (`Answer::Replay` to come).
fn join_deferred(m: &mut Member<Lines>, rec: &mut Rec, room: &str, replay: bool) {
    m.input(Ok(format!("JOIN {room}").as_bytes()), rec);
    assert_eq!(rec.take(), ["ok Join(\"r\")"], "the local join itself");
    let st = m.s.rooms.get_mut(room).unwrap();
    st.since = 0; // A Redis hub starts the membership at its own JOIN.
    st.confirmed = false;
    st.awaiting_replay = replay;
    m.s.waiting += 1;
    m.s.waiting_since = Some(rec.now);
}

/// Puts the member where a Redis hub leaves it after a `SAY` in `r` with `tag`: its
/// own message (or its failure) to come.
fn say_in_flight(m: &mut Member<Lines>, rec: &Rec, tag: u64) {
    m.s.says.push_back(Said {
        tag,
        room: "r".into(),
        since: rec.now,
        cost: 0,
        outcome: Outcome::Pending,
    });
    m.s.waiting += 1;
}

fn msg(id: u64, text: &str) -> Arc<Publication> {
    Arc::new(Publication::new(
        "r".into(),
        Kind::Msg {
            id: MsgId(id),
            nick: "ann".into(),
            text: text.into(),
            time: None,
        },
    ))
}

fn live(seq: u64, p: &Arc<Publication>) -> ChatEvent {
    ChatEvent::Room {
        seq,
        publication: p.clone(),
        own: false,
    }
}

fn answer(a: Answer) -> ChatEvent {
    ChatEvent::Answer(a)
}

fn joined() -> ChatEvent {
    answer(Answer::Joined { room: "r".into() })
}

fn replay(msgs: &[&Arc<Publication>]) -> ChatEvent {
    answer(Answer::Replay {
        room: "r".into(),
        msgs: Ok(msgs.iter().map(|p| Arc::clone(p)).collect()),
    })
}

#[test]
fn ok_join_waits_for_the_hub_and_replay_has_no_gap_and_no_duplicate() {
    let (m5, m6, m7, m8) = (
        msg(5, "five"),
        msg(6, "six"),
        msg(7, "seven"),
        msg(8, "eight"),
    );
    let want = [
        "ok Join(\"r\")",
        "MSG r 5 ann five",
        "MSG r 6 ann six",
        "MSG r 7 ann seven",
    ];
    // Live first, then the replay, then the confirmation.
    let (mut m, mut rec) = member(None);
    join_deferred(&mut m, &mut rec, "r", true);
    m.event(live(1, &m7), &mut rec);
    m.event(replay(&[&m5, &m6, &m7]), &mut rec);
    assert_eq!(
        rec.take(),
        Vec::<String>::new(),
        "nothing before the join is in effect"
    );
    m.event(joined(), &mut rec);
    assert_eq!(rec.take(), want);
    m.event(live(2, &m8), &mut rec);
    assert_eq!(rec.take(), ["MSG r 8 ann eight"]);

    // The confirmation first, then live events, then the replay.
    let (mut m, mut rec) = member(None);
    join_deferred(&mut m, &mut rec, "r", true);
    m.event(joined(), &mut rec);
    assert_eq!(rec.take(), ["ok Join(\"r\")"]);
    m.event(live(1, &m7), &mut rec);
    assert_eq!(
        rec.take(),
        Vec::<String>::new(),
        "held until the replay is in"
    );
    m.event(replay(&[&m5, &m6]), &mut rec);
    assert_eq!(rec.take(), want[1..]);

    // No replay asked for: held only until the confirmation.
    let (mut m, mut rec) = member(None);
    join_deferred(&mut m, &mut rec, "r", false);
    m.event(live(1, &m7), &mut rec);
    assert_eq!(rec.take(), Vec::<String>::new());
    m.event(joined(), &mut rec);
    assert_eq!(rec.take(), [want[0], want[3]]);
}

#[test]
fn commands_after_a_deferred_join_wait_for_its_ok() {
    let (mut m, mut rec) = member(None);
    join_deferred(&mut m, &mut rec, "r", false);
    m.input(Ok(b"SAY r hello"), &mut rec);
    m.input(
        Err(ParseError {
            code: "line-too-long",
            text: "x",
        }),
        &mut rec,
    );
    m.input(Ok(b"WHO r"), &mut rec);
    rec.deliver(&mut m);
    assert_eq!(rec.take(), Vec::<String>::new(), "all three wait, in order");
    m.event(joined(), &mut rec);
    let nick = m.s.me.as_ref().unwrap().nick.to_string();
    assert_eq!(rec.take(), ["ok Join(\"r\")"], "the rest waits for the SAY");
    rec.deliver(&mut m);
    let said = rec.take();
    assert_eq!(said.len(), 3);
    assert!(said[0].ends_with(&format!(" {nick} hello")), "{said:?}");
    assert_eq!(
        said[1..],
        ["error line-too-long".to_string(), format!("who r {nick}")]
    );
}

#[test]
fn the_queue_behind_an_answer_is_bounded_even_for_empty_inputs() {
    let (mut m, mut rec) = member(None);
    join_deferred(&mut m, &mut rec, "r", false);
    let refused = ParseError {
        code: "bad-json",
        text: "x",
    };
    let room = MAX_QUEUED / QUEUED_ENTRY_COST;
    for i in 0..room + 10 {
        m.input(if i % 2 == 0 { Ok(b"") } else { Err(refused) }, &mut rec);
    }
    assert_eq!(m.s.queued.len(), room);
    assert_eq!(m.s.queued_bytes as usize, room * QUEUED_ENTRY_COST);
    // Beyond the bound, inputs are not kept, only counted, and answered in their turn.
    assert_eq!(rec.take().len(), 0);
    m.event(joined(), &mut rec);
    let said = rec.take();
    assert_eq!(said.len(), 1 + room + 10);
    assert!(
        said[1 + room..].iter().all(|s| s == "error queue-full"),
        "{said:?}"
    );
    assert_eq!(
        (m.s.queued.len(), m.s.queued_bytes, m.s.overflow),
        (0, 0, 0)
    );
}

#[test]
fn an_unanswered_join_times_out_unavailable_and_is_undone() {
    let (mut m, mut rec) = member(None);
    join_deferred(&mut m, &mut rec, "r", true);
    m.input(Ok(b"WHO r"), &mut rec);
    let deadline = m.deadline().expect("a timer while waiting");
    assert_eq!(deadline, rec.now + ANSWER_TIMEOUT);
    rec.now = deadline;
    m.timeout(&mut rec);
    // The queued WHO goes on: the room is gone with its only member.
    assert_eq!(rec.take(), ["error unavailable", "error no-such-room"]);
    assert!(!m.in_a_room());
    assert_eq!(m.deadline(), None);
    // A late confirmation finds no room: nothing is said.
    m.event(joined(), &mut rec);
    assert_eq!(rec.take(), Vec::<String>::new());
}

#[test]
fn a_say_is_answered_by_its_own_message_and_the_commands_after_it_wait() {
    let (mut m, mut rec) = member(None);
    m.input(Ok(b"JOIN r"), &mut rec);
    assert_eq!(rec.take(), ["ok Join(\"r\")"]);
    let nick = m.s.me.as_ref().unwrap().nick.to_string();
    m.input(Ok(b"SAY r hi"), &mut rec);
    m.input(Ok(b"WHO r"), &mut rec);
    m.input(Ok(b"QUIT"), &mut rec);
    assert_eq!(rec.take(), Vec::<String>::new(), "WHO and QUIT wait");
    assert!(m.is_waiting(), "an EOF now must not close");
    rec.deliver(&mut m);
    let said = rec.take();
    assert_eq!(said.len(), 4, "{said:?}");
    assert!(said[0].ends_with(&format!(" {nick} hi")), "{said:?}");
    assert_eq!(
        said[1..],
        [format!("who r {nick}"), "ok Quit".into(), "end Quit".into()]
    );
}

#[test]
fn another_members_message_does_not_answer_a_say() {
    let (mut m, mut rec) = member(None);
    m.input(Ok(b"JOIN r"), &mut rec);
    rec.take();
    // Joined in the hub only, so the room's event reaches the member as it would.
    say_in_flight(&mut m, &rec, 0);
    m.input(Ok(b"WHO r"), &mut rec);
    m.event(live(5, &msg(9, "from ann")), &mut rec);
    assert_eq!(rec.take(), ["MSG r 9 ann from ann"], "WHO still waits");
    let own = ChatEvent::Room {
        seq: 6,
        publication: msg(10, "mine"),
        own: true,
    };
    m.event(own, &mut rec);
    let said = rec.take();
    assert_eq!(said[0], "MSG r 10 ann mine");
    assert!(said[1].starts_with("who r "), "{said:?}");
}

#[test]
fn a_failed_say_is_answered_unavailable_and_the_commands_after_it_go_on() {
    let (mut m, mut rec) = member(None);
    m.input(Ok(b"JOIN r"), &mut rec);
    rec.take();
    say_in_flight(&mut m, &rec, 0);
    m.input(Ok(b"PART r"), &mut rec);
    assert_eq!(rec.take(), Vec::<String>::new());
    let failed = Answer::Failed {
        say: 0,
        error: HubError::Unavailable,
    };
    m.event(answer(failed), &mut rec);
    assert_eq!(rec.take(), ["error unavailable", "ok Part(\"r\")"]);
    assert!(!m.is_waiting());
    // A say never answered at all times out the same way.
    m.input(Ok(b"JOIN r"), &mut rec);
    rec.take();
    say_in_flight(&mut m, &rec, 0);
    m.input(Ok(b"PART r"), &mut rec);
    rec.now += ANSWER_TIMEOUT;
    m.timeout(&mut rec);
    assert_eq!(rec.take(), ["error unavailable", "ok Part(\"r\")"]);
}

#[test]
fn says_beyond_the_queue_bound_are_refused_in_their_turn_and_none_is_left_waiting() {
    let (mut m, mut rec) = member(None);
    m.input(Ok(b"JOIN r"), &mut rec);
    rec.take();
    let text = "x".repeat(4000);
    let n = MAX_QUEUED / (QUEUED_ENTRY_COST + 6 + text.len()) + 5;
    for _ in 0..n {
        m.input(Ok(format!("SAY r {text}").as_bytes()), &mut rec);
    }
    assert!(
        m.s.says.len() <= MAX_IN_FLIGHT,
        "no more in flight than the bound"
    );
    // An input after the overflow waits behind it too (it is not run out of turn).
    m.input(Ok(b"WHO r"), &mut rec);
    for _ in 0..2 * n {
        rec.deliver(&mut m);
    }
    let said = rec.take();
    assert_eq!(said.len(), n + 1, "every input answered once: {said:?}");
    let refused = said
        .iter()
        .position(|s| s == "error queue-full")
        .expect("a refusal");
    assert!(
        said[..refused].iter().all(|s| s.starts_with("MSG ")),
        "{said:?}"
    );
    assert!(
        said[refused..].iter().all(|s| s == "error queue-full"),
        "{said:?}"
    );
    assert!(!m.is_waiting(), "nothing left waiting for an answer");
    assert_eq!(m.deadline(), None);
    // Once all is answered, commands are carried out again.
    m.input(Ok(b"WHO r"), &mut rec);
    assert_eq!(rec.take().len(), 1);
}

#[test]
fn a_quit_that_finds_the_queue_full_is_carried_out_after_the_refusals() {
    let (mut m, mut rec) = member(None);
    join_deferred(&mut m, &mut rec, "r", false);
    let n = MAX_QUEUED / QUEUED_ENTRY_COST;
    for _ in 0..n + 3 {
        m.input(Ok(b""), &mut rec);
    }
    assert_eq!(m.s.overflow, 3);
    let quit_after = 3 | QUIT_AFTER;
    m.input(Ok(b"QUIT"), &mut rec);
    m.input(Ok(b"WHO r"), &mut rec); // After the QUIT: never answered.
    assert_eq!(m.s.overflow, quit_after);
    m.event(joined(), &mut rec);
    let said = rec.take();
    let tail: Vec<&str> = said[said.len() - 5..].iter().map(String::as_str).collect();
    assert_eq!(
        tail,
        [
            "error queue-full",
            "error queue-full",
            "error queue-full",
            "ok Quit",
            "end Quit"
        ]
    );
}

#[test]
fn the_rate_limit_counts_commands_not_refused_framing() {
    let (mut m, mut rec) = member(Some(2));
    let refused = ParseError {
        code: "bad-json",
        text: "x",
    };
    m.input(Err(refused), &mut rec);
    m.input(Ok(b"JOIN r"), &mut rec);
    m.input(Ok(b"PART r"), &mut rec);
    m.input(Ok(b"JOIN r"), &mut rec);
    assert_eq!(
        rec.take(),
        [
            "error bad-json",
            "ok Join(\"r\")",
            "ok Part(\"r\")",
            "error rate-limited"
        ]
    );
    rec.now += Duration::from_millis(500);
    m.input(Ok(b"JOIN r"), &mut rec);
    assert_eq!(rec.take(), ["ok Join(\"r\")"], "refilled at 2 a second");
}

/// The member's mailbox, taken whole: the events a hub sent it, to be played by hand.
fn mailbox(rec: &mut Rec) -> Vec<ChatEvent> {
    let mut batch = VecDeque::new();
    rec.mailbox.take(&mut batch);
    batch.into()
}

/// Whether `line` is `nick`'s message `text` in `r`.
fn is_msg(line: &str, nick: &str, text: &str) -> bool {
    line.starts_with("MSG r ") && line.ends_with(&format!(" {nick} {text}"))
}

#[test]
fn pipelined_says_go_out_together_and_are_answered_in_order_before_quit() {
    let (mut m, mut rec) = member(None);
    m.input(Ok(b"JOIN r"), &mut rec);
    rec.take();
    let nick = m.s.me.as_ref().unwrap().nick.to_string();
    for i in 0..200 {
        m.input(Ok(format!("SAY r m{i}").as_bytes()), &mut rec);
    }
    m.input(Ok(b"QUIT"), &mut rec);
    // Sent on without waiting for the first one's message: the hub has published
    // as many as may be in flight.
    let first = mailbox(&mut rec);
    assert_eq!(first.len(), MAX_IN_FLIGHT, "SAYs in flight at once");
    for ev in first {
        m.event(ev, &mut rec);
    }
    for _ in 0..200 {
        rec.deliver(&mut m);
    }
    let said = rec.take();
    assert_eq!(said.len(), 202, "{said:?}");
    for (i, line) in said[..200].iter().enumerate() {
        assert!(is_msg(line, &nick, &format!("m{i}")), "{i}: {line}");
    }
    assert_eq!(said[200..], ["ok Quit", "end Quit"]);
    assert!(!m.is_waiting());
    assert_eq!(m.s.queued_bytes, 0, "nothing left charged");
}

#[test]
fn says_interleaved_with_who_and_a_bad_command_are_answered_in_command_order() {
    let (mut m, mut rec) = member(None);
    m.input(Ok(b"JOIN r"), &mut rec);
    rec.take();
    let nick = m.s.me.as_ref().unwrap().nick.to_string();
    for line in [
        "SAY r one",
        "SAY r two",
        "WHO r",
        "SAY r three",
        "BOGUS",
        "SAY r four",
        "QUIT",
    ] {
        m.input(Ok(line.as_bytes()), &mut rec);
    }
    assert_eq!(
        rec.take(),
        Vec::<String>::new(),
        "all wait for the first SAY"
    );
    for _ in 0..10 {
        rec.deliver(&mut m);
    }
    let said = rec.take();
    assert_eq!(said.len(), 8, "{said:?}");
    assert!(is_msg(&said[0], &nick, "one"), "{said:?}");
    assert!(is_msg(&said[1], &nick, "two"), "{said:?}");
    assert_eq!(said[2], format!("who r {nick}"));
    assert!(is_msg(&said[3], &nick, "three"), "{said:?}");
    assert_eq!(said[4], "error unknown-command");
    assert!(is_msg(&said[5], &nick, "four"), "{said:?}");
    assert_eq!(said[6..], ["ok Quit", "end Quit"]);
}

#[test]
fn a_say_refused_in_flight_is_answered_in_its_turn_and_the_later_ones_go_on() {
    let (mut m, mut rec) = member(None);
    m.input(Ok(b"JOIN r"), &mut rec);
    rec.take();
    let nick = m.s.me.as_ref().unwrap().nick.to_string();
    for line in ["SAY r a", "SAY r b", "SAY r c", "WHO r"] {
        m.input(Ok(line.as_bytes()), &mut rec);
    }
    let mut sent = mailbox(&mut rec);
    assert_eq!(sent.len(), 3, "three SAYs in flight");
    // As from Redis: `b` refused (its message never comes), and its failure comes
    // back before `a`'s message (which rides another connection).
    let c = sent.pop().unwrap();
    sent.pop();
    let a = sent.pop().unwrap();
    let failed = Answer::Failed {
        say: 1,
        error: HubError::Unavailable,
    };
    m.event(answer(failed), &mut rec);
    assert_eq!(rec.take(), Vec::<String>::new(), "b waits for a's answer");
    m.event(a, &mut rec);
    let said = rec.take();
    assert!(is_msg(&said[0], &nick, "a"), "{said:?}");
    assert_eq!(said[1..], ["error unavailable"]);
    m.event(c, &mut rec);
    let said = rec.take();
    assert!(is_msg(&said[0], &nick, "c"), "{said:?}");
    assert_eq!(said[1..], [format!("who r {nick}")]);
    // A failure of a SAY answered already says nothing more.
    let late = Answer::Failed {
        say: 0,
        error: HubError::Unavailable,
    };
    m.event(answer(late), &mut rec);
    assert_eq!(rec.take(), Vec::<String>::new());
}

#[test]
fn a_say_rate_limited_behind_others_is_refused_in_its_turn() {
    let (mut m, mut rec) = member(Some(3));
    m.input(Ok(b"JOIN r"), &mut rec);
    rec.take();
    let nick = m.s.me.as_ref().unwrap().nick.to_string();
    for line in ["SAY r a", "SAY r b", "SAY r c"] {
        m.input(Ok(line.as_bytes()), &mut rec);
    }
    for _ in 0..3 {
        rec.deliver(&mut m);
    }
    let said = rec.take();
    assert_eq!(said.len(), 3, "{said:?}");
    assert!(is_msg(&said[0], &nick, "a"), "{said:?}");
    assert!(is_msg(&said[1], &nick, "b"), "{said:?}");
    assert_eq!(said[2], "error rate-limited", "JOIN took the third token");
}

#[test]
fn a_say_in_another_room_waits_for_those_in_flight() {
    let (mut m, mut rec) = member(None);
    for line in ["JOIN r", "JOIN s"] {
        m.input(Ok(line.as_bytes()), &mut rec);
    }
    rec.take();
    for line in ["SAY r a", "SAY s b", "SAY r c"] {
        m.input(Ok(line.as_bytes()), &mut rec);
    }
    assert_eq!(mailbox(&mut rec).len(), 1, "only the first is in flight");
    assert_eq!(m.s.says.len(), 1);
}

#[test]
fn pipelined_says_never_answered_time_out_once_each_in_order() {
    let (mut m, mut rec) = member(None);
    m.input(Ok(b"JOIN r"), &mut rec);
    rec.take();
    for line in ["SAY r a", "SAY r b", "WHO r"] {
        m.input(Ok(line.as_bytes()), &mut rec);
    }
    let nick = m.s.me.as_ref().unwrap().nick.to_string();
    let sent = mailbox(&mut rec); // Lost on the way.
    assert_eq!(sent.len(), 2);
    assert_eq!(m.deadline(), Some(rec.now + ANSWER_TIMEOUT));
    rec.now += ANSWER_TIMEOUT;
    m.timeout(&mut rec);
    assert_eq!(
        rec.take(),
        [
            "error unavailable".to_string(),
            "error unavailable".to_string(),
            format!("who r {nick}")
        ]
    );
    // Told as any command is whose answer never came, not as a refusal by Redis.
    assert_eq!(rec.texts, [NO_ANSWER, NO_ANSWER]);
    assert!(!m.is_waiting());
    assert_eq!(m.deadline(), None);
}

/// The member lends its socket only while every room's events would be handed on as
/// they come: not while a `SAY` awaits its own message, not while a join awaits its
/// confirmation, and not after leaving a room whose events a deliverer may still be
/// handing out (it may hold a list of members from before the `PART`).
#[test]
fn the_socket_is_lent_only_while_events_go_on_as_they_come() {
    let (mut m, mut rec) = member(None);
    assert!(m.may_lend(), "a member in no room");
    m.input(Ok(b"JOIN r"), &mut rec);
    m.input(Ok(b"JOIN s"), &mut rec);
    assert!(m.may_lend());
    m.input(Ok(b"SAY r hi"), &mut rec);
    assert!(!m.may_lend(), "its SAY awaits its own message");
    rec.deliver(&mut m);
    assert!(m.may_lend());
    // Another member keeps s, whose events are being handed out.
    let hub = m.s.hub.clone();
    let other = hub.connect();
    let tx = rec.mailbox().unwrap();
    hub.join(other.0, &other.1, &tx, Wire::Line, "s", None)
        .unwrap();
    hub.set_delivering("s", true);
    m.input(Ok(b"PART s"), &mut rec);
    assert!(!m.may_lend(), "a deliverer of s may still hold the member");
    assert!(!m.may_lend());
    hub.set_delivering("s", false);
    assert!(
        m.may_lend(),
        "s handed out: nobody holds the member any more"
    );
    m.s.rooms.get_mut("r").unwrap().confirmed = false;
    assert!(!m.may_lend(), "a join awaiting its confirmation");
    m.s.rooms.get_mut("r").unwrap().confirmed = true;
    m.s.rooms.get_mut("r").unwrap().replayed = true;
    assert!(!m.may_lend(), "a live message may still be a replayed one");
}
