//! The chat's JSON wire format, spoken over WebSocket at `/chat/ws`: the commands and
//! events of the line protocol as JSON objects, one per text frame, `type` in lower
//! case (see `docs/chat.md`).
//!
//! In: `{"type":"join","room":"lobby"}`, `{"type":"join","room":"lobby","after":"<id>"}`,
//! `{"type":"say","room":"lobby","text":"hi"}`, `{"type":"nick","nick":"ann"}`,
//! `{"type":"part","room":"lobby"}`, `{"type":"who","room":"lobby"}`,
//! `{"type":"history","room":"lobby","n":20}`, `{"type":"auth","token":"<jwt>"}`,
//! `{"type":"quit"}`.
//!
//! Out: `welcome`, `ok` (with the command in `cmd`), `who`, `error` (with `code` and
//! `text`), and the room events `msg`, `join`, `part`, `nick`, which the hub encodes
//! once per publication for every WebSocket member ([`crate::hub::Wire::Json`]).
//!
//! Decoding yields the line protocol's own [`Command`], so both wire formats run the
//! same commands with the same checks and error codes; only `bad-json` is new. Unknown
//! fields are ignored, so clients may add their own (a request id, say).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

use super::{Command, ParseError};
use crate::hub::{valid_nick, valid_room, MsgId, MAX_HISTORY_REPLY};

const fn perr(code: &'static str, text: &'static str) -> ParseError {
    ParseError { code, text }
}

const BAD_NAME: ParseError = perr(
    "bad-name",
    "names are 1-32 (nick) or 1-64 (room) characters of A-Z a-z 0-9 _ - .",
);

/// A frame that is not one JSON object.
pub const BAD_JSON: ParseError = perr("bad-json", "a command is one JSON object in a text frame");

/// The fields of an incoming command object, borrowed from the frame where no escape
/// had to be decoded.
#[derive(Debug, Deserialize)]
struct Fields<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    room: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    nick: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    token: Option<Cow<'a, str>>,
    #[serde(default)]
    after: Option<Value>,
    #[serde(default)]
    n: Option<Value>,
}

/// A decoded command object; [`Incoming::command`] checks it into a [`Command`].
#[derive(Debug)]
pub struct Incoming<'a>(Fields<'a>);

/// Decodes one frame's payload into a command object. Anything but one JSON object is
/// `bad-json`; a field of the wrong JSON type is `bad-args`.
pub fn decode(payload: &[u8]) -> Result<Incoming<'_>, ParseError> {
    // Only an object can be a command: say so plainly rather than with serde's
    // "invalid type" wording.
    if payload.trim_ascii_start().first() != Some(&b'{') {
        return Err(BAD_JSON);
    }
    match serde_json::from_slice::<Fields<'_>>(payload) {
        Ok(f) => Ok(Incoming(f)),
        Err(e) if e.is_data() => Err(perr(
            "bad-args",
            "a field has the wrong type (room, nick, text, token and type are strings, n a number)",
        )),
        Err(_) => Err(BAD_JSON),
    }
}

fn room<'f>(f: &'f Fields<'_>, usage: &'static str) -> Result<&'f str, ParseError> {
    match f.room.as_deref() {
        None => Err(perr("bad-args", usage)),
        Some(r) if valid_room(r) => Ok(r),
        Some(_) => Err(BAD_NAME),
    }
}

impl Incoming<'_> {
    /// The command, with the line protocol's checks: valid names, a message id for
    /// `after`, a count for `n`, non-empty text.
    pub fn command(&self) -> Result<Command<'_>, ParseError> {
        let f = &self.0;
        let Some(kind) = f.kind.as_deref() else {
            return Err(perr("bad-args", "a command needs a \"type\""));
        };
        match kind {
            "nick" => match f.nick.as_deref() {
                Some(n) if valid_nick(n) => Ok(Command::Nick(n)),
                Some(_) => Err(BAD_NAME),
                None => Err(perr(
                    "bad-args",
                    "usage: {\"type\":\"nick\",\"nick\":\"<nick>\"}",
                )),
            },
            "join" => {
                let room = room(
                    f,
                    "usage: {\"type\":\"join\",\"room\":\"<room>\"[,\"after\":\"<id>\"]}",
                )?;
                let after = match &f.after {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s.parse::<MsgId>().map_err(|_| BAD_AFTER)?),
                    Some(Value::Number(n)) => Some(MsgId(n.as_u64().ok_or(BAD_AFTER)?)),
                    Some(_) => return Err(BAD_AFTER),
                };
                Ok(Command::Join { room, after })
            }
            "part" => Ok(Command::Part(room(
                f,
                "usage: {\"type\":\"part\",\"room\":\"<room>\"}",
            )?)),
            "say" => {
                const USAGE: &str =
                    "usage: {\"type\":\"say\",\"room\":\"<room>\",\"text\":\"<text>\"}";
                let room = room(f, USAGE)?;
                match f.text.as_deref() {
                    Some(t) if !t.is_empty() => Ok(Command::Say { room, text: t }),
                    _ => Err(perr("bad-args", USAGE)),
                }
            }
            "who" => Ok(Command::Who(room(
                f,
                "usage: {\"type\":\"who\",\"room\":\"<room>\"}",
            )?)),
            "history" => {
                let room = room(
                    f,
                    "usage: {\"type\":\"history\",\"room\":\"<room>\",\"n\":<count>}",
                )?;
                let n = match &f.n {
                    None | Some(Value::Null) => MAX_HISTORY_REPLY,
                    Some(Value::Number(n)) => n.as_u64().ok_or(BAD_COUNT)? as usize,
                    Some(_) => return Err(BAD_COUNT),
                };
                Ok(Command::History { room, n })
            }
            "auth" => match f.token.as_deref() {
                Some(t) => Ok(Command::Auth(t)),
                None => Err(perr(
                    "bad-args",
                    "usage: {\"type\":\"auth\",\"token\":\"<token>\"}",
                )),
            },
            "quit" => Ok(Command::Quit),
            _ => Err(perr(
                "unknown-command",
                "types are nick join part say who history auth quit",
            )),
        }
    }
}

const BAD_AFTER: ParseError = perr("bad-args", "\"after\" takes a message id");
const BAD_COUNT: ParseError = perr("bad-args", "\"n\" takes a count");

/// `{"type":"welcome","nick":...,"presence_limit":...}`: the first frame, with the
/// guest nick and `--presence-limit` (rooms larger than that get no `join` and `part`
/// objects, so the page asks `who` again now and then); with `"auth":true` when a
/// token must come first (the page then asks for one).
pub fn welcome(nick: &str, auth: bool, presence_limit: usize) -> String {
    let mut v =
        serde_json::json!({"type": "welcome", "nick": nick, "presence_limit": presence_limit});
    if auth {
        v["auth"] = true.into();
    }
    v.to_string()
}

/// `{"type":"ok","cmd":...}` with the room or nick the command was about.
pub fn ok(cmd: &str, room: Option<&str>, nick: Option<&str>) -> String {
    let mut v = serde_json::json!({"type": "ok", "cmd": cmd});
    if let Some(r) = room {
        v["room"] = r.into();
    }
    if let Some(n) = nick {
        v["nick"] = n.into();
    }
    v.to_string()
}

/// `{"type":"who","room":...,"nicks":[...]}`.
pub fn who<S: AsRef<str>>(room: &str, nicks: &[S]) -> String {
    let nicks: Vec<&str> = nicks.iter().map(|n| n.as_ref()).collect();
    serde_json::json!({"type": "who", "room": room, "nicks": nicks}).to_string()
}

/// `{"type":"error","code":...,"text":...}`.
pub fn error(code: &str, text: &str) -> String {
    serde_json::json!({"type": "error", "code": code, "text": text}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Kind, Publication, Wire};
    use proptest::prelude::*;
    use std::sync::Arc;

    fn cmd(s: &str) -> Result<Command<'static>, ParseError> {
        // Leaked so the borrowed command can be compared simply; tests only.
        let s: &'static str = Box::leak(s.to_owned().into_boxed_str());
        let inc: &'static Incoming<'static> = Box::leak(Box::new(decode(s.as_bytes())?));
        inc.command()
    }

    fn code(s: &str) -> &'static str {
        cmd(s).expect_err(s).code
    }

    #[test]
    fn every_command_decodes() {
        assert_eq!(
            cmd(r#"{"type":"nick","nick":"ann"}"#),
            Ok(Command::Nick("ann"))
        );
        assert_eq!(
            cmd(r#"{"type":"join","room":"lobby"}"#),
            Ok(Command::Join {
                room: "lobby",
                after: None
            })
        );
        assert_eq!(
            cmd(r#" {"type":"join","room":"lobby","after":"17"}"#),
            Ok(Command::Join {
                room: "lobby",
                after: Some(MsgId(17))
            })
        );
        assert_eq!(
            cmd(r#"{"type":"join","room":"lobby","after":18}"#),
            Ok(Command::Join {
                room: "lobby",
                after: Some(MsgId(18))
            })
        );
        assert_eq!(cmd(r#"{"type":"part","room":"a"}"#), Ok(Command::Part("a")));
        assert_eq!(
            cmd(r#"{"type":"say","room":"a","text":"hi \"there\" \u00e9","id":3}"#),
            Ok(Command::Say {
                room: "a",
                text: "hi \"there\" é"
            })
        );
        assert_eq!(cmd(r#"{"type":"who","room":"a"}"#), Ok(Command::Who("a")));
        assert_eq!(
            cmd(r#"{"type":"history","room":"a","n":5}"#),
            Ok(Command::History { room: "a", n: 5 })
        );
        assert_eq!(
            cmd(r#"{"type":"history","room":"a"}"#),
            Ok(Command::History {
                room: "a",
                n: MAX_HISTORY_REPLY
            })
        );
        assert_eq!(cmd(r#"{"type":"quit"}"#), Ok(Command::Quit));
        assert_eq!(
            cmd(r#"{"type":"auth","token":"a.b.c"}"#),
            Ok(Command::Auth("a.b.c"))
        );
    }

    #[test]
    fn bad_input_gets_the_right_code() {
        for s in [
            "",
            "   ",
            "nope",
            "[1]",
            "\"join\"",
            "{",
            r#"{"type":"join""#,
            "{}x",
        ] {
            assert_eq!(code(s), "bad-json", "{s:?}");
        }
        for s in [
            "{}",
            r#"{"type":5}"#,
            r#"{"type":"join"}"#,
            r#"{"type":"join","room":7}"#,
            r#"{"type":"join","room":"a","after":"x1"}"#,
            r#"{"type":"join","room":"a","after":-1}"#,
            r#"{"type":"join","room":"a","after":[]}"#,
            r#"{"type":"say","room":"a"}"#,
            r#"{"type":"say","room":"a","text":""}"#,
            r#"{"type":"history","room":"a","n":"3"}"#,
            r#"{"type":"history","room":"a","n":-3}"#,
            r#"{"type":"nick"}"#,
            r#"{"type":"auth"}"#,
            r#"{"type":"auth","token":7}"#,
            r#"{"type":"join","room":"a","room":"b"}"#,
        ] {
            assert_eq!(code(s), "bad-args", "{s:?}");
        }
        for s in [
            r#"{"type":"join","room":"a b"}"#,
            r#"{"type":"nick","nick":"ann\n"}"#,
            r#"{"type":"say","room":"","text":"x"}"#,
        ] {
            assert_eq!(code(s), "bad-name", "{s:?}");
        }
        assert_eq!(code(r#"{"type":"JOIN","room":"a"}"#), "unknown-command");
        assert_eq!(code(r#"{"type":"dance"}"#), "unknown-command");
    }

    #[test]
    fn outgoing_objects_are_the_documented_shapes() {
        let v = |s: String| serde_json::from_str::<Value>(&s).unwrap();
        assert_eq!(
            v(welcome("guest-1", false, 100)),
            serde_json::json!({"type":"welcome","nick":"guest-1","presence_limit":100})
        );
        assert_eq!(
            v(welcome("guest-1", true, 7)),
            serde_json::json!({"type":"welcome","nick":"guest-1","auth":true,"presence_limit":7})
        );
        assert_eq!(
            v(ok("auth", None, Some("ann"))),
            serde_json::json!({"type":"ok","cmd":"auth","nick":"ann"})
        );
        assert_eq!(
            v(ok("join", Some("lobby"), None)),
            serde_json::json!({"type":"ok","cmd":"join","room":"lobby"})
        );
        assert_eq!(
            v(ok("nick", None, Some("ann"))),
            serde_json::json!({"type":"ok","cmd":"nick","nick":"ann"})
        );
        assert_eq!(
            v(who("a", &["ann", "bob"])),
            serde_json::json!({"type":"who","room":"a","nicks":["ann","bob"]})
        );
        assert_eq!(
            v(error("bad-json", "a \"quote\"")),
            serde_json::json!({"type":"error","code":"bad-json","text":"a \"quote\""})
        );
        // The hub's encoding of a message, as WebSocket members receive it.
        let p = Publication::new(
            "lobby".into(),
            Kind::Msg {
                id: MsgId(42),
                nick: Arc::from("ann"),
                text: "hi </script> \"x\"".into(),
                time: None,
            },
        );
        assert_eq!(
            serde_json::from_slice::<Value>(p.encoded(Wire::Json)).unwrap(),
            serde_json::json!({"type":"msg","room":"lobby","id":"42","nick":"ann","text":"hi </script> \"x\"","time":null})
        );
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(inc) = decode(&bytes) {
                let _ = inc.command();
            }
        }

        #[test]
        fn any_json_shaped_text_never_panics(s in r#"\{("[a-z]{1,6}":("[ -~]{0,12}"|-?[0-9]{1,25}|null|\[\]|\{\}|true),?){0,6}\}"#) {
            if let Ok(inc) = decode(s.as_bytes()) {
                let _ = inc.command();
            }
        }

        #[test]
        fn say_text_round_trips(text in "\\PC{1,40}") {
            let frame = serde_json::json!({"type":"say","room":"r","text":text}).to_string();
            let inc = decode(frame.as_bytes()).unwrap();
            prop_assert_eq!(inc.command(), Ok(Command::Say { room: "r", text: &text }));
        }
    }
}
