//! A chat member on a WebSocket (`/chat/ws`): the line protocol's member (see
//! [`super::member`]), spoken in JSON objects (see [`super::json`]), on the RFC 6455
//! engine of [`crate::service::ws`].
//!
//! The member is the same to the [`Hub`] as a TCP one, and runs the same core: it
//! joins with [`Wire::Json`], so each publication is encoded to JSON once for all
//! WebSocket members and the same bytes become every member's text frame. A bad frame
//! gets an `error` object and the connection stays usable; only the model's goodbyes
//! close it (1008 slow consumer, 1013 busy, 1001 shutdown or idle), or `quit` (1000).

use std::sync::Arc;
use std::time::Instant;

use tungstenite::protocol::frame::coding::CloseCode;

use super::auth::Verifier;
use super::member::{Decoder, Done, Encoder, End, Member, Reply};
use super::{json, Command, ParseError};
use crate::base::mailbox::Sender;
use crate::hub::{ChatEvent, Hub, Publication, Wire};
use crate::service::ws::{Handler, Message, Utf8Bytes, WsCx};

const TEXT_TOO_LONG: ParseError = ParseError {
    code: "text-too-long",
    text: "message text is limited in length",
};

/// The JSON commands ([`json::decode`]), with `say` texts limited to `max_text` bytes
/// (the line protocol's `--max-line`).
struct JsonDecoder {
    max_text: usize,
}

impl Decoder for JsonDecoder {
    fn decode<R>(&self, raw: &[u8], run: impl FnOnce(Result<Command<'_>, ParseError>) -> R) -> R {
        let incoming = match json::decode(raw) {
            Ok(i) => i,
            Err(e) => return run(Err(e)),
        };
        match incoming.command() {
            Ok(Command::Say { text, .. }) if text.len() > self.max_text => run(Err(TEXT_TOO_LONG)),
            cmd => run(cmd),
        }
    }
}

/// The JSON answers: one text frame per object.
struct JsonOut<'a, 'b, 'c, 'd>(&'a mut WsCx<'b, 'c, 'd, ChatEvent>);

impl JsonOut<'_, '_, '_, '_> {
    fn send(&mut self, s: String) {
        self.0.send_text(&[&s]);
    }
}

impl Encoder for JsonOut<'_, '_, '_, '_> {
    const WIRE: Wire = Wire::Json;

    fn now(&mut self) -> Instant {
        self.0.cx().now()
    }

    fn is_closing(&mut self) -> bool {
        self.0.cx().is_closing()
    }

    fn answered(&mut self) {
        self.0.cx().answered(crate::service::Answer::Command);
    }

    fn mailbox(&mut self) -> std::io::Result<Sender<ChatEvent>> {
        self.0.cx().mailbox()
    }

    fn reply(&mut self, reply: Reply<'_>) {
        let s = match reply {
            Reply::Welcome {
                nick,
                auth,
                presence_limit,
            } => json::welcome(nick, auth, presence_limit),
            Reply::Ok(Done::Nick(nick)) => json::ok("nick", None, Some(nick)),
            Reply::Ok(Done::Join(room)) => json::ok("join", Some(room), None),
            Reply::Ok(Done::Part(room)) => json::ok("part", Some(room), None),
            Reply::Ok(Done::History(room)) => json::ok("history", Some(room), None),
            Reply::Ok(Done::Quit) => json::ok("quit", None, None),
            Reply::Ok(Done::Auth(nick)) => json::ok("auth", None, Some(nick)),
            Reply::Who(room, nicks) => json::who(room, nicks),
            Reply::Error(code, text) => json::error(code, text),
        };
        self.send(s);
    }

    /// Sends the hub's shared JSON encoding of `p` as a text frame, without copying
    /// it into a new string.
    fn publication(&mut self, p: &Publication) {
        match Utf8Bytes::try_from(p.encoded(Wire::Json).clone()) {
            Ok(text) => self.0.send(Message::Text(text)),
            // serde_json writes UTF-8; this would be a bug in the hub's encoder.
            Err(e) => tracing::error!("chat: a JSON publication is not UTF-8: {e}"),
        }
    }

    fn end(&mut self, why: End) {
        match why {
            End::Quit => self.0.close(CloseCode::Normal, "bye"),
            End::Refused => self.0.close(CloseCode::Error, "no mailbox"),
            End::AuthFailed => {
                self.0.cx().refuse_auth();
                self.0.close(CloseCode::Policy, "too many bad tokens")
            }
            End::Expired => self.0.close(CloseCode::Policy, "token expired"),
        }
    }
}

/// One chat member on a WebSocket: the framing of JSON frames around a [`Member`].
pub struct ChatSocket {
    member: Member<JsonDecoder>,
}

impl ChatSocket {
    /// A member of `hub` whose messages are at most `max_text` bytes, sending at most
    /// `max_rate` commands a second (`--max-rate`; `None`, unlimited).
    pub fn new(hub: Arc<Hub>, max_text: usize, max_rate: Option<u32>) -> ChatSocket {
        let decoder = JsonDecoder {
            max_text: max_text.max(1),
        };
        ChatSocket {
            member: Member::new(hub, decoder, max_rate),
        }
    }

    /// Requires a token checked by `verifier` (none: no authentication), and
    /// authenticates at once with `token` (the upgrade URL's `?token=`) if given.
    pub fn with_auth(mut self, verifier: Option<Arc<Verifier>>, token: Option<&str>) -> ChatSocket {
        self.member = self.member.with_auth(verifier).with_token(token);
        self
    }

    /// Whether the member is in at least one room (and may only listen).
    pub fn in_a_room(&self) -> bool {
        self.member.in_a_room()
    }
}

impl Handler for ChatSocket {
    type Event = ChatEvent;

    fn open(&mut self, ws: &mut WsCx<'_, '_, '_, ChatEvent>) {
        self.member.open(&mut JsonOut(ws));
    }

    fn message(&mut self, msg: Message, ws: &mut WsCx<'_, '_, '_, ChatEvent>) {
        let input = match &msg {
            Message::Text(text) => {
                // A token is a credential: `-v` logs every frame but never one.
                if text.contains("\"token\"") {
                    crate::service::log_received(b"(a frame with a token, not logged)");
                } else {
                    crate::service::log_received(text.as_bytes());
                }
                Ok(text.as_bytes())
            }
            _ => Err(json::BAD_JSON),
        };
        self.member.input(input, &mut JsonOut(ws));
    }

    fn event(&mut self, event: ChatEvent, ws: &mut WsCx<'_, '_, '_, ChatEvent>) {
        self.member.event(event, &mut JsonOut(ws));
    }

    fn deadline(&self) -> Option<Instant> {
        self.member.deadline()
    }

    fn timeout(&mut self, ws: &mut WsCx<'_, '_, '_, ChatEvent>) {
        self.member.timeout(&mut JsonOut(ws));
    }

    fn owes_answers(&self) -> bool {
        self.member.is_waiting()
    }
}
