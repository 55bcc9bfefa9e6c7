//! The chat's line protocol. Every line of the input goes through the parser alone
//! (a command it accepts, written back as a line, parses to the same command), then
//! the bytes, cut into arbitrary reads, drive two members sharing one hub (mode bit 1:
//! the reads alternate between them, so they meet in rooms). Asserts that each member
//! gets whole lines of the protocol only, and, for one member, that the split of the
//! reads changes nothing.

#![no_main]

use libfuzzer_sys::fuzz_target;
use multiclient::service::chat::{parse, Chat, ChatOptions, ChatSession, Command};
use multiclient::service::{ConnInfo, Harness, Service};
use multiclient_fuzz::{reads, wire};

/// A command written as a client would send it.
fn line(cmd: &Command<'_>) -> String {
    match cmd {
        Command::Nick(n) => format!("NICK {n}"),
        Command::Join { room, after: None } => format!("JOIN {room}"),
        Command::Join {
            room,
            after: Some(id),
        } => format!("JOIN {room} AFTER {id}"),
        Command::Part(r) => format!("PART {r}"),
        Command::Say { room, text } => format!("SAY {room} {text}"),
        Command::Who(r) => format!("WHO {r}"),
        Command::History { room, n } => format!("HISTORY {room} {n}"),
        Command::Quit => "QUIT".into(),
        Command::Auth(t) => format!("AUTH {t}"),
    }
}

/// Hands the mailbox on until nothing more comes; returns what was written.
fn drain(h: &mut Harness<ChatSession>, out: &mut Vec<u8>) {
    // Each awaited SAY takes one round; a long pipeline needs as many.
    for _ in 0..1_000_000 {
        h.deliver();
        let more = h.take_output();
        if more.is_empty() {
            return;
        }
        out.extend_from_slice(&more);
    }
}

fn run(reads: &[&[u8]], two: bool, short_lines: bool) -> Vec<Vec<u8>> {
    let mut opts = ChatOptions::default();
    opts.max_line = if short_lines { 40 } else { 4096 };
    let chat = Chat::new(opts.hub().expect("a hub without Redis"), &opts);
    let mut members: Vec<Harness<ChatSession>> = (0..if two { 2 } else { 1 })
        .map(|i| Harness::new(chat.session(&ConnInfo::test(i))))
        .collect();
    let mut outs = vec![Vec::new(); members.len()];
    for (i, r) in reads.iter().enumerate() {
        let m = i % members.len();
        members[m].feed(r);
        for (h, out) in members.iter_mut().zip(outs.iter_mut()) {
            drain(h, out);
        }
    }
    for (h, out) in members.iter_mut().zip(outs.iter_mut()) {
        h.eof();
        drain(h, out);
    }
    outs
}

fuzz_target!(|data: &[u8]| {
    let [mode, seed, bytes @ ..] = data else {
        return;
    };
    for l in bytes.split(|&b| b == b'\n') {
        if let Ok(cmd) = parse(l) {
            let again = line(&cmd);
            assert_eq!(parse(again.as_bytes()), Ok(cmd), "{again:?}");
        }
    }
    let (two, short) = (mode & 1 != 0, mode & 2 != 0);
    let split = reads(*seed, bytes);
    let outs = run(&split, two, short);
    for out in &outs {
        if let Err(e) = wire::chat_lines(out) {
            panic!("{e}\ninput: {:?}", String::from_utf8_lossy(bytes));
        }
    }
    if !two && split.len() > 1 {
        let whole = run(&[bytes], false, short);
        assert_eq!(
            wire::chat_ids_from_zero(&outs[0]),
            wire::chat_ids_from_zero(&whole[0]),
            "a split changed the answers"
        );
    }
});
