//! A room event as members receive it: what happened ([`Kind`]), and its bytes on each
//! wire ([`Wire`]), encoded once by the first member that needs them and shared by
//! every other.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::MsgId;

/// A wire format members receive events in. Each publication is encoded at most once
/// per format, whatever the number of members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// The TCP line protocol: `MSG <room> <id> <nick> <text>\n`.
    Line,
    /// One JSON object per WebSocket text frame (the payload only; the WebSocket
    /// session adds the frame header).
    Json,
}

/// What happened in a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A message said in the room.
    Msg {
        /// Its id.
        id: MsgId,
        /// Who said it.
        nick: Arc<str>,
        /// What was said (one line, UTF-8).
        text: Box<str>,
        /// When it was ordered, in milliseconds since the Unix epoch (this process's
        /// clock, or Redis's with `--redis`, so every instance shows the same time).
        /// `None` for a message kept by an older server that did not record it.
        time: Option<u64>,
    },
    /// A member joined.
    Join {
        /// The member's nick.
        nick: Arc<str>,
    },
    /// A member left (PART, QUIT or disconnect).
    Part {
        /// The member's nick.
        nick: Arc<str>,
    },
    /// A member changed nick.
    Nick {
        /// The nick before.
        old: Arc<str>,
        /// The nick after.
        new: Arc<str>,
    },
}

/// Now, in milliseconds since the Unix epoch: the time a message ordered in this
/// process carries.
pub(super) fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An event of a room as handed to members, with its encodings made on first use.
#[derive(Debug)]
pub struct Publication {
    /// The room.
    pub room: Arc<str>,
    /// What happened.
    pub kind: Kind,
    line: OnceLock<Bytes>,
    json: OnceLock<Bytes>,
}

impl Publication {
    /// A publication of `kind` in `room`.
    pub fn new(room: Arc<str>, kind: Kind) -> Publication {
        Publication {
            room,
            kind,
            line: OnceLock::new(),
            json: OnceLock::new(),
        }
    }

    /// The memory a message kept in history is counted for: its text, room and nick
    /// once for the publication and once for each encoding it may get, plus the
    /// fixed parts.
    pub fn cost(&self) -> usize {
        let text = match &self.kind {
            Kind::Msg { nick, text, .. } => nick.len() + text.len(),
            Kind::Join { nick } | Kind::Part { nick } => nick.len(),
            Kind::Nick { old, new } => old.len() + new.len(),
        };
        256 + 3 * (self.room.len() + text)
    }

    /// The message id, for a message.
    pub fn msg_id(&self) -> Option<MsgId> {
        match self.kind {
            Kind::Msg { id, .. } => Some(id),
            _ => None,
        }
    }

    /// The bytes members of `wire` receive: encoded by the first caller, shared after.
    pub fn encoded(&self, wire: Wire) -> &Bytes {
        match wire {
            Wire::Line => self.line.get_or_init(|| self.encode_line()),
            Wire::Json => self.json.get_or_init(|| self.encode_json()),
        }
    }

    fn encode_line(&self) -> Bytes {
        let room = &*self.room;
        let s = match &self.kind {
            Kind::Msg { id, nick, text, .. } => format!("MSG {room} {id} {nick} {text}\n"),
            Kind::Join { nick } => format!("JOIN {room} {nick}\n"),
            Kind::Part { nick } => format!("PART {room} {nick}\n"),
            Kind::Nick { old, new } => format!("NICK {room} {old} {new}\n"),
        };
        Bytes::from(s)
    }

    fn encode_json(&self) -> Bytes {
        let room = &*self.room;
        let v = match &self.kind {
            Kind::Msg {
                id,
                nick,
                text,
                time,
            } => serde_json::json!({
                "type": "msg", "room": room, "id": id.to_string(), "nick": &**nick, "text": &**text,
                "time": time,
            }),
            Kind::Join { nick } => {
                serde_json::json!({"type": "join", "room": room, "nick": &**nick})
            }
            Kind::Part { nick } => {
                serde_json::json!({"type": "part", "room": room, "nick": &**nick})
            }
            Kind::Nick { old, new } => serde_json::json!({
                "type": "nick", "room": room, "old": &**old, "new": &**new,
            }),
        };
        Bytes::from(v.to_string())
    }
}
