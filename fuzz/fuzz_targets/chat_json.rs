//! The chat's JSON wire (`/chat/ws`): one frame's payload decoded into a command.
//! Asserts: no panic; a command it accepts, written back as the JSON a client would
//! send, decodes to the same command; a payload that is not an object is `bad-json`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use multiclient::service::chat::json::decode;
use multiclient::service::chat::Command;

fn object(cmd: &Command<'_>) -> String {
    let s = |v: &str| format!("{v:?}").replace("\\'", "'");
    match cmd {
        Command::Nick(n) => format!(r#"{{"type":"nick","nick":{}}}"#, s(n)),
        Command::Join { room, after: None } => format!(r#"{{"type":"join","room":{}}}"#, s(room)),
        Command::Join {
            room,
            after: Some(id),
        } => format!(r#"{{"type":"join","room":{},"after":"{id}"}}"#, s(room)),
        Command::Part(r) => format!(r#"{{"type":"part","room":{}}}"#, s(r)),
        Command::Say { room, text } => {
            format!(
                r#"{{"type":"say","room":{},"text":{}}}"#,
                s(room),
                json_string(text)
            )
        }
        Command::Who(r) => format!(r#"{{"type":"who","room":{}}}"#, s(r)),
        Command::History { room, n } => {
            format!(r#"{{"type":"history","room":{},"n":{n}}}"#, s(room))
        }
        Command::Quit => r#"{"type":"quit"}"#.into(),
        Command::Auth(t) => format!(r#"{{"type":"auth","token":{}}}"#, json_string(t)),
    }
}

/// A JSON string literal of any text (names are plain ASCII; a text may be anything).
fn json_string(t: &str) -> String {
    let mut o = String::from("\"");
    for c in t.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(incoming) => {
            if let Ok(cmd) = incoming.command() {
                let again = object(&cmd);
                let back = decode(again.as_bytes()).expect("its own JSON decodes");
                assert_eq!(back.command(), Ok(cmd), "{again}");
            }
        }
        Err(e) => {
            if data.trim_ascii_start().first() != Some(&b'{') {
                assert_eq!(e.code, "bad-json");
            }
        }
    }
});
