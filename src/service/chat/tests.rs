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
fn an_over_long_unfinished_line_is_answered_after_the_say_before_it() {
    let opts = ChatOptions {
        max_line: 16,
        ..ChatOptions::default()
    };
    let chat = service(&opts);
    let (mut a, nick) = client(&chat);
    a.feed(
        b"JOIN r
",
    );
    assert_eq!(
        out(&mut a),
        "OK JOIN r
"
    );
    // The SAY awaits its own MSG (through the mailbox); the over-long line after it,
    // not yet ended, waits its turn like a complete one.
    a.feed(
        b"SAY r hi
",
    );
    a.feed(&[b'x'; 100]);
    let got = out(&mut a);
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines.len(), 2, "{got}");
    assert!(lines[0].ends_with(&format!(" {nick} hi")), "{got}");
    assert!(lines[1].starts_with("ERR line-too-long "), "{got}");
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

/// Token authentication on the line protocol (see `auth.rs` for the tokens
/// themselves).
mod tokens {
    use super::*;
    use crate::service::chat::auth::testing::{hs256, in_secs, SECRET};
    use crate::service::chat::auth::{Verifier, MAX_TOKEN};
    use serde_json::json;
    use std::time::Duration;

    fn auth_chat() -> Chat {
        let opts = ChatOptions::default();
        opts.auth.set(Some(Verifier::hs256(SECRET).unwrap()));
        service(&opts)
    }

    fn auth_line(claims: serde_json::Value) -> Vec<u8> {
        format!("AUTH {}\n", hs256(claims)).into_bytes()
    }

    #[test]
    fn before_auth_every_command_but_auth_and_quit_is_refused() {
        let chat = auth_chat();
        let (mut a, guest) = client(&chat);
        assert!(
            guest.starts_with("guest-"),
            "the welcome is as without auth"
        );
        for cmd in [
            "NICK ann",
            "JOIN lobby",
            "PART lobby",
            "SAY lobby hi",
            "WHO lobby",
            "HISTORY lobby 5",
        ] {
            a.feed(format!("{cmd}\n").as_bytes());
            assert_eq!(
                out(&mut a),
                "ERR auth-required send AUTH <token> first\n",
                "{cmd}"
            );
        }
        a.feed(&auth_line(json!({"sub": "ann"})));
        assert_eq!(out(&mut a), "OK AUTH ann\n");
        a.feed(b"JOIN lobby\nSAY lobby hi\nWHO lobby\n");
        let got = out(&mut a);
        assert!(got.starts_with("OK JOIN lobby\nMSG lobby "), "{got}");
        assert!(got.ends_with(" ann hi\nWHO lobby ann\n"), "{got}");
        // QUIT needs no token.
        let (mut b, _) = client(&chat);
        b.feed(b"QUIT\n");
        assert_eq!(out(&mut b), "OK QUIT\n");
        assert!(b.is_closing());
    }

    #[test]
    fn the_sub_is_the_nick_and_it_is_owned() {
        let chat = auth_chat();
        let (mut a, _) = client(&chat);
        a.feed(&auth_line(json!({"sub": "ann"})));
        assert_eq!(out(&mut a), "OK AUTH ann\n");
        a.feed(b"NICK bob\nNICK ann\n");
        assert_eq!(
            out(&mut a),
            "ERR nick-fixed the nick is the token's sub\n".repeat(2)
        );
        // Another connection with a token for the same sub (in any case) cannot appear
        // under it while the first holds it: a nick is one member's in the hub.
        let (mut b, _) = client(&chat);
        b.feed(&auth_line(json!({"sub": "ANN"})));
        assert_eq!(
            out(&mut b),
            "ERR nick-taken the token's nick is in use by another connection\n"
        );
        b.feed(b"JOIN lobby\n");
        assert_eq!(out(&mut b), "ERR auth-required send AUTH <token> first\n");
        // Once it is gone, the nick is free for the next holder.
        a.feed(b"QUIT\n");
        out(&mut a);
        drop(a);
        b.feed(&auth_line(json!({"sub": "ann"})));
        assert_eq!(out(&mut b), "OK AUTH ann\n");
    }

    #[test]
    fn bad_tokens_are_refused_and_the_third_closes_the_connection() {
        let chat = auth_chat();
        let (mut a, _) = client(&chat);
        let wrong_key = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({"sub": "ann"}),
            &jsonwebtoken::EncodingKey::from_secret(b"not the server's"),
        )
        .unwrap();
        a.feed(format!("AUTH {wrong_key}\n").as_bytes());
        assert_eq!(
            out(&mut a),
            "ERR bad-token the token's signature does not verify\n"
        );
        a.feed(&auth_line(json!({"sub": "ann", "exp": in_secs(-5)})));
        assert_eq!(out(&mut a), "ERR bad-token the token has expired\n");
        assert!(!a.is_closing());
        a.feed(b"AUTH not-base64!.%%%.&&&\n");
        assert_eq!(
            out(&mut a),
            "ERR bad-token the token is malformed\n\
             ERR auth-failed too many bad tokens: closing the connection\n"
        );
        assert!(a.is_closing());
    }

    #[test]
    fn alg_none_and_oversized_tokens_are_bad_tokens_never_a_panic() {
        use data_encoding::BASE64URL_NOPAD;
        let chat = auth_chat();
        let (mut a, _) = client(&chat);
        let none = format!(
            "{}.{}.",
            BASE64URL_NOPAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
            BASE64URL_NOPAD.encode(br#"{"sub":"ann"}"#)
        );
        a.feed(format!("AUTH {none}\n").as_bytes());
        let got = out(&mut a);
        assert!(got.starts_with("ERR bad-token "), "{got}");
        // Longer than --max-line (4096) but framed whole: judged as a token.
        a.feed(format!("AUTH {}\n", "a".repeat(MAX_TOKEN + 1)).as_bytes());
        assert_eq!(out(&mut a), "ERR bad-token tokens are limited to 8 KiB\n");
        // Longer still, in pieces: refused once, as a bad token, and skipped.
        a.feed(b"AUTH ");
        for _ in 0..4 {
            a.feed(&[b'x'; 8192]);
        }
        a.feed(b"\n");
        assert_eq!(
            out(&mut a),
            "ERR bad-token tokens are limited to 8 KiB\n\
             ERR auth-failed too many bad tokens: closing the connection\n"
        );
        assert!(a.is_closing());
        // A token of up to 8 KiB is a token: a valid one with padding claims passes.
        let (mut b, _) = client(&chat);
        let big = auth_line(json!({"sub": "ann", "pad": "p".repeat(5000)}));
        assert!(big.len() > DEFAULT_MAX_LINE && big.len() < MAX_TOKEN);
        b.feed(&big);
        assert_eq!(out(&mut b), "OK AUTH ann\n");
        // Other over-long lines are still line-too-long.
        b.feed(format!("SAY lobby {}\n", "x".repeat(DEFAULT_MAX_LINE)).as_bytes());
        assert!(out(&mut b).starts_with("ERR line-too-long"));
    }

    #[test]
    fn at_expiry_the_connection_ends_unless_a_fresh_token_came() {
        let chat = auth_chat();
        let (mut a, _) = client(&chat);
        let (mut watcher, _) = client(&chat);
        watcher.feed(&auth_line(json!({"sub": "watcher"})));
        watcher.feed(b"JOIN lobby\n");
        out(&mut watcher);
        a.feed(&auth_line(json!({"sub": "ann", "exp": in_secs(60)})));
        a.feed(b"JOIN lobby\n");
        assert_eq!(out(&mut a), "OK AUTH ann\nOK JOIN lobby\n");
        let start = a.now;
        let deadline = a.session().deadline().expect("the expiry is a deadline");
        assert!(
            deadline > start + Duration::from_secs(55)
                && deadline <= start + Duration::from_secs(60)
        );
        // A refresh for the same sub moves the expiry.
        a.now = start + Duration::from_secs(30);
        a.feed(&auth_line(json!({"sub": "ann", "exp": in_secs(600)})));
        assert_eq!(out(&mut a), "OK AUTH ann\n");
        a.advance_to(start + Duration::from_secs(61));
        assert!(!a.is_closing(), "refreshed");
        assert_eq!(out(&mut a), "");
        // A token for another sub is no refresh.
        a.feed(&auth_line(json!({"sub": "bob", "exp": in_secs(6000)})));
        assert_eq!(
            out(&mut a),
            "ERR bad-token a fresh token must be for the same sub\n"
        );
        a.advance_to(start + Duration::from_secs(631));
        assert_eq!(
            out(&mut a),
            "ERR token-expired the token has expired; connect again with a fresh one\n"
        );
        assert!(a.is_closing());
        assert_eq!(out(&mut watcher), "JOIN lobby ann\nPART lobby ann\n");
    }

    #[test]
    fn the_rooms_claim_limits_joins() {
        let chat = auth_chat();
        let (mut a, _) = client(&chat);
        a.feed(&auth_line(
            json!({"sub": "ann", "rooms": ["lobby", "team-*"]}),
        ));
        assert_eq!(out(&mut a), "OK AUTH ann\n");
        a.feed(b"JOIN lobby\nJOIN team-red\nJOIN secret\nJOIN lobby2\nJOIN team\n");
        assert_eq!(
            out(&mut a),
            "OK JOIN lobby\nOK JOIN team-red\n\
             ERR forbidden the token does not allow this room\n\
             ERR forbidden the token does not allow this room\n\
             ERR forbidden the token does not allow this room\n"
        );
    }

    proptest! {
        /// Whatever follows `AUTH`, however it is split into reads, never panics and
        /// gets one `bad-token` line (or `OK AUTH`, or the usage), then the close on
        /// the third bad token; a token-shaped input is decoded every time.
        #[test]
        fn any_token_bytes_in_any_split_get_one_answer_each(
            tokens in proptest::collection::vec(
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..40),
                    "[A-Za-z0-9_-]{0,30}\\.[A-Za-z0-9_-]{0,30}\\.[A-Za-z0-9_-]{0,30}"
                        .prop_map(String::into_bytes),
                ],
                1..4,
            ),
            cut in 1usize..50,
        ) {
            let chat = auth_chat();
            let (mut a, _) = client(&chat);
            let mut input = Vec::new();
            for t in &tokens {
                input.extend_from_slice(b"AUTH ");
                input.extend(t.iter().map(|&b| if b == b'\n' { b'.' } else { b }));
                input.push(b'\n');
            }
            for chunk in input.chunks(cut) {
                a.feed(chunk);
            }
            let got = out(&mut a);
            let lines: Vec<&str> = got.lines().collect();
            let bad = lines.iter().filter(|l| l.starts_with("ERR bad-token ")).count();
            prop_assert!(bad <= 3, "{got}");
            for l in &lines {
                prop_assert!(
                    ["ERR bad-token ", "ERR bad-args ", "ERR bad-text ", "ERR auth-failed ", "OK AUTH "]
                        .iter()
                        .any(|p| l.starts_with(p)),
                    "{got}"
                );
            }
            prop_assert_eq!(a.is_closing(), bad == 3, "{}", got);
            if !a.is_closing() {
                prop_assert_eq!(lines.len(), tokens.len(), "{}", got);
            }
        }
    }

    #[test]
    fn without_a_key_auth_is_told_it_is_not_needed_and_nothing_else_changes() {
        let chat = service(&ChatOptions::default());
        let (mut a, _) = client(&chat);
        a.feed(&auth_line(json!({"sub": "ann"})));
        assert_eq!(
            out(&mut a),
            "ERR auth-off this server does not use tokens: no AUTH is needed\n"
        );
        a.feed(b"NICK ann\nJOIN lobby\n");
        assert_eq!(out(&mut a), "OK NICK ann\nOK JOIN lobby\n");
    }
}
