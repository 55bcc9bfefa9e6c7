//! The chat session on plain buffers: several harnesses sharing one hub.

use super::*;
use crate::service::Harness;
use proptest::prelude::*;

fn service(opts: &ChatOptions) -> Chat {
    Chat::new(opts.hub().unwrap(), opts)
}

fn client(chat: &Chat) -> (Harness<ChatSession>, String) {
    let mut h = Harness::new(chat.session(&crate::service::ConnInfo::test(1)));
    let welcome = out(&mut h);
    let nick = welcome
        .strip_prefix("WELCOME ")
        .and_then(|s| s.strip_suffix('\n'))
        .expect("a welcome line")
        .to_string();
    (h, nick)
}

/// Delivers the mailbox until it is empty (a `SAY`'s own message lets the commands
/// after it run, which may say more) and returns everything written since the last
/// call.
fn out(h: &mut Harness<ChatSession>) -> String {
    let mut all = Vec::new();
    loop {
        h.deliver();
        let more = h.take_output();
        if more.is_empty() {
            break;
        }
        all.extend_from_slice(&more);
    }
    String::from_utf8(all).unwrap()
}

#[test]
fn two_members_chat_in_one_room() {
    let chat = service(&ChatOptions::default());
    let (mut a, _) = client(&chat);
    let (mut b, _) = client(&chat);
    a.feed(b"NICK ann\n");
    assert_eq!(out(&mut a), "OK NICK ann\n");
    b.feed(b"NICK bob\r\n");
    assert_eq!(out(&mut b), "OK NICK bob\n");
    a.feed(b"JOIN lobby\n");
    assert_eq!(out(&mut a), "OK JOIN lobby\n");
    b.feed(b"JOIN lobby\n");
    assert_eq!(out(&mut b), "OK JOIN lobby\n");
    assert_eq!(out(&mut a), "JOIN lobby bob\n");
    a.feed(b"SAY lobby hello  bob \n");
    let a_got = out(&mut a);
    assert!(a_got.starts_with("MSG lobby "), "{a_got}");
    assert!(a_got.ends_with(" ann hello  bob \n"), "{a_got}");
    assert_eq!(out(&mut b), a_got);
    b.feed(b"WHO lobby\n");
    assert_eq!(out(&mut b), "WHO lobby ann bob\n");
    b.feed(b"NICK bobby\n");
    assert_eq!(out(&mut b), "OK NICK bobby\n");
    assert_eq!(out(&mut a), "NICK lobby bob bobby\n");
    b.feed(b"HISTORY lobby 10\n");
    assert_eq!(out(&mut b), format!("{a_got}OK HISTORY lobby\n"));
    b.feed(b"PART lobby\n");
    assert_eq!(out(&mut b), "OK PART lobby\n");
    assert_eq!(out(&mut a), "PART lobby bobby\n");
    b.feed(b"QUIT\n");
    assert_eq!(out(&mut b), "OK QUIT\n");
    assert!(b.is_closing());
}

#[test]
fn a_dropped_session_parts_everywhere() {
    let chat = service(&ChatOptions::default());
    let (mut a, _) = client(&chat);
    let (mut b, bn) = client(&chat);
    a.feed(b"JOIN r1\nJOIN r2\n");
    b.feed(b"JOIN r1\nJOIN r2\n");
    assert_eq!(
        out(&mut a),
        format!("OK JOIN r1\nOK JOIN r2\nJOIN r1 {bn}\nJOIN r2 {bn}\n")
    );
    drop(b);
    let got = out(&mut a);
    let mut lines: Vec<&str> = got.lines().collect();
    lines.sort();
    assert_eq!(lines, [format!("PART r1 {bn}"), format!("PART r2 {bn}")]);
    // The nick is free again.
    a.feed(format!("NICK {bn}\n").as_bytes());
    assert_eq!(out(&mut a), format!("OK NICK {bn}\n"));
}

#[test]
fn join_after_replays_then_goes_live() {
    let chat = service(&ChatOptions::default());
    let (mut a, _) = client(&chat);
    a.feed(b"JOIN r\nSAY r one\nSAY r two\nSAY r three\n");
    let said = out(&mut a);
    let msgs: Vec<&str> = said.lines().filter(|l| l.starts_with("MSG")).collect();
    assert_eq!(msgs.len(), 3);
    let first_id = msgs[0].split(' ').nth(2).unwrap();
    let (mut b, _) = client(&chat);
    b.feed(format!("JOIN r AFTER {first_id}\n").as_bytes());
    assert_eq!(
        out(&mut b),
        format!("OK JOIN r\n{}\n{}\n", msgs[1], msgs[2])
    );
    a.feed(b"SAY r four\n");
    let four = out(&mut a);
    assert!(four.contains(" four\n"));
    assert_eq!(out(&mut b), four.lines().last().unwrap().to_string() + "\n");
}

#[test]
fn bad_input_gets_an_error_and_the_connection_stays_usable() {
    let chat = service(&ChatOptions::default());
    let (mut a, _) = client(&chat);
    let (mut b, _) = client(&chat);
    b.feed(b"JOIN r\n");
    out(&mut b);
    for (line, code) in [
        (&b"FOO\n"[..], "unknown-command"),
        (b"JOIN\n", "bad-args"),
        (b"JOIN a b\n", "bad-args"),
        (b"JOIN r AFTER x\n", "bad-args"),
        (b"JOIN bad/room\n", "bad-name"),
        (b"NICK \xff\n", "bad-text"),
        (b"NICK way-too-long-nick-way-too-long-nick\n", "bad-name"),
        (b"SAY r\n", "bad-args"),
        (b"SAY r hi\n", "not-member"),
        (b"PART r\n", "not-member"),
        (b"WHO nowhere\n", "no-such-room"),
        (b"HISTORY r many\n", "bad-args"),
        (b"QUIT now\n", "bad-args"),
        (b"\x00\x01\x02\n", "unknown-command"),
    ] {
        a.feed(line);
        let got = out(&mut a);
        assert!(
            got.starts_with(&format!("ERR {code} "))
                && got.ends_with('\n')
                && got.lines().count() == 1,
            "{:?} -> {got:?}",
            String::from_utf8_lossy(line)
        );
        assert!(!a.is_closing());
    }
    a.feed(b"\n\r\n   \n");
    assert_eq!(out(&mut a), "", "blank lines are ignored");
    a.feed(b"NICK taken\n");
    out(&mut a);
    b.feed(b"NICK taken\n");
    assert!(out(&mut b).starts_with("ERR nick-taken "));
    a.feed(b"JOIN r\n");
    a.feed(b"JOIN r\n");
    assert!(out(&mut a).ends_with("ERR already-member you are in that room already\n"));
    assert_eq!(out(&mut b), "JOIN r taken\n", "b saw only a's join");
}

#[test]
fn an_over_long_line_is_refused_once_and_skipped() {
    let opts = ChatOptions {
        max_line: 16,
        ..ChatOptions::default()
    };
    let chat = service(&opts);
    let (mut a, _) = client(&chat);
    a.feed(b"SAY lobby 0123456789\n");
    assert!(out(&mut a).starts_with("ERR line-too-long "));
    // In pieces, with no newline for a while: one error, the rest skipped.
    a.feed(&[b'x'; 10]);
    assert_eq!(out(&mut a), "");
    a.feed(&[b'x'; 100]);
    assert!(out(&mut a).starts_with("ERR line-too-long "));
    a.feed(&[b'x'; 1000]);
    assert_eq!(out(&mut a), "");
    a.feed(b"xx\nJOIN r\n");
    assert_eq!(out(&mut a), "OK JOIN r\n");
    // Exactly the limit, with \r\n, is fine.
    a.feed(b"SAY r 1234567890");
    a.feed(b"\r\n");
    assert!(out(&mut a).ends_with(" 1234567890\n"));
}

#[test]
fn max_rate_answers_rate_limited() {
    let opts = ChatOptions {
        max_rate: Some(3),
        ..ChatOptions::default()
    };
    let chat = service(&opts);
    let (mut a, _) = client(&chat);
    a.feed(b"JOIN r\nWHO r\nWHO r\nWHO r\n");
    let got = out(&mut a);
    assert_eq!(
        got.lines().last(),
        Some("ERR rate-limited too many commands per second")
    );
    a.advance_to(a.now + std::time::Duration::from_secs(1));
    a.feed(b"WHO r\n");
    assert!(out(&mut a).starts_with("WHO r "));
}

#[test]
fn goodbyes_are_err_lines() {
    let chat = service(&ChatOptions::default());
    for (why, line) in [
        (Goodbye::Busy, "ERR server busy\n"),
        (Goodbye::Idle, "ERR idle timeout\n"),
        (Goodbye::SlowConsumer, "ERR slow-consumer\n"),
        (Goodbye::Shutdown, "ERR server shutting down\n"),
    ] {
        let mut h = Harness::new(chat.session(&crate::service::ConnInfo::test(1)));
        if why != Goodbye::Busy {
            out(&mut h);
        }
        h.goodbye(why);
        assert_eq!(out(&mut h), line, "a refused client gets no welcome");
        assert!(h.is_closing());
    }
}

#[test]
fn events_after_part_are_not_handed_on() {
    let chat = service(&ChatOptions::default());
    let (mut a, _) = client(&chat);
    let (mut b, _) = client(&chat);
    a.feed(b"JOIN r\n");
    b.feed(b"JOIN r\n");
    out(&mut b);
    a.feed(b"SAY r queued\n");
    // b parts before its mailbox is read: the queued message is not shown after OK PART.
    b.feed(b"PART r\n");
    assert_eq!(out(&mut b), "OK PART r\n");
}

proptest! {
    /// No input panics, every answer is whole lines, and the session never holds more
    /// than one line of input.
    #[test]
    fn any_bytes_get_line_answers(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..20)) {
        let opts = ChatOptions { max_line: 32, ..ChatOptions::default() };
        let chat = service(&opts);
        let (mut a, _) = client(&chat);
        for c in &chunks {
            a.feed(c);
        }
        let got = a.take_output();
        prop_assert!(got.is_empty() || got.ends_with(b"\n"));
        for line in got.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let ok = [&b"ERR "[..], b"OK ", b"WHO ", b"MSG ", b"JOIN ", b"PART ", b"NICK "]
                .iter()
                .any(|p| line.starts_with(p));
            prop_assert!(ok, "{:?}", String::from_utf8_lossy(line));
        }
    }

    /// The parser accepts every well-formed command it is given.
    #[test]
    fn well_formed_commands_parse(room in "[A-Za-z0-9_.-]{1,64}", nick in "[A-Za-z0-9_.-]{1,32}", text in "[^\n\r]{1,50}", id in any::<u64>(), n in 0usize..1000) {
        let l = format!("JOIN {room}");
        prop_assert_eq!(parse(l.as_bytes()), Ok(Command::Join { room: &room, after: None }));
        let l = format!("join {room} after {id}");
        prop_assert_eq!(parse(l.as_bytes()), Ok(Command::Join { room: &room, after: Some(MsgId(id)) }));
        let l = format!("NICK {nick}");
        prop_assert_eq!(parse(l.as_bytes()), Ok(Command::Nick(&nick)));
        let l = format!("SAY {room} {text}");
        prop_assert_eq!(parse(l.as_bytes()), Ok(Command::Say { room: &room, text: &text }));
        let l = format!("HISTORY {room} {n}");
        prop_assert_eq!(parse(l.as_bytes()), Ok(Command::History { room: &room, n }));
        let l = format!("PART {room}");
        prop_assert_eq!(parse(l.as_bytes()), Ok(Command::Part(&room)));
        let l = format!("WHO {room}");
        prop_assert_eq!(parse(l.as_bytes()), Ok(Command::Who(&room)));
    }
}

#[test]
fn control_characters_are_refused_and_nicks_are_one_whatever_their_case() {
    let chat = service(&ChatOptions::default());
    let (mut a, _) = client(&chat);
    let (mut b, _) = client(&chat);
    a.feed(b"JOIN r\nSAY r \x1b[2Jgone\nSAY r ring\x07\nSAY r nul\0\nSAY r del\x7f\n");
    let got = out(&mut a);
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines[0], "OK JOIN r");
    assert_eq!(lines.len(), 5, "{got:?}");
    assert!(
        lines[1..].iter().all(|l| l.starts_with("ERR bad-text ")),
        "{got:?}"
    );
    a.feed(b"NICK a\x1bb\nNICK ann\n");
    let got = out(&mut a);
    assert!(got.starts_with("ERR bad-name "), "{got:?}");
    assert!(got.ends_with("OK NICK ann\n"), "{got:?}");
    b.feed(b"NICK ANN\nNICK Server\nNICK SERVER\n");
    let got = out(&mut b);
    assert_eq!(got.lines().count(), 3);
    assert!(
        got.lines().all(|l| l.starts_with("ERR nick-taken ")),
        "{got:?}"
    );
}
