//! The room events every process publishes on the Redis channel, and reads back: one
//! JSON object each, as serde types on the Rust side. The Lua scripts publish some of
//! them too (a message with its id, an expiry's `PART`, a rejoin after an expiry), with
//! the same field names.
//!
//! `t` is the kind (`msg`, `join`, `part`, `nick`); `o` is the publishing process and
//! `m` its member the event is about, so a process recognises its own members' events
//! coming back (a member's own `JOIN` confirms its join; its own `MSG` answers its
//! `SAY`); `ms` is when Redis ordered a message (Unix milliseconds); `x` marks a `PART` an expiry scan published and `r` a `JOIN` a renewal
//! published for a member that never left; `n`, added by the scripts to a `JOIN` or
//! `PART`, is the room's size on every process counting that member (what decides
//! whether presence lines are sent there).

use std::sync::Arc;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use super::{valid_nick, valid_room, Kind, MemberId};

/// A join, part or nick change of a member of this process, as published.
#[derive(Serialize)]
#[serde(tag = "t", rename_all = "lowercase")]
enum Outgoing<'a> {
    Join {
        room: &'a str,
        nick: &'a str,
        o: &'a str,
        m: u64,
    },
    Part {
        room: &'a str,
        nick: &'a str,
        o: &'a str,
        m: u64,
    },
    Nick {
        room: &'a str,
        old: &'a str,
        new: &'a str,
        o: &'a str,
        m: u64,
    },
}

/// The JSON of a join, part or nick change in `room` about `member` of process
/// `origin`; `None` for a message (the say script makes those, with their id).
pub(super) fn encode(room: &str, kind: &Kind, origin: &str, member: MemberId) -> Option<String> {
    let m = member.0;
    let ev = match kind {
        Kind::Join { nick } => Outgoing::Join {
            room,
            nick,
            o: origin,
            m,
        },
        Kind::Part { nick } => Outgoing::Part {
            room,
            nick,
            o: origin,
            m,
        },
        Kind::Nick { old, new } => Outgoing::Nick {
            room,
            old,
            new,
            o: origin,
            m,
        },
        Kind::Msg { .. } => return None,
    };
    serde_json::to_string(&ev).ok()
}

/// Any event as read from the channel, before its names are checked.
#[derive(Deserialize)]
struct Incoming {
    t: String,
    room: String,
    id: Option<String>,
    nick: Option<String>,
    text: Option<String>,
    old: Option<String>,
    new: Option<String>,
    o: Option<String>,
    m: Option<u64>,
    ms: Option<u64>,
    x: Option<IgnoredAny>,
    r: Option<IgnoredAny>,
    n: Option<u64>,
}

/// An event as carried on the channel.
pub(super) struct Event {
    pub(super) room: Arc<str>,
    pub(super) kind: Kind,
    pub(super) origin: Option<String>,
    pub(super) member: Option<MemberId>,
    /// A `PART` published by an expiry scan (`x`), not by the member.
    pub(super) expired: bool,
    /// A `JOIN` published by a renewal that found its member parted by an expiry
    /// (`r`): the member never left.
    pub(super) rejoin: bool,
    /// The room's members on every process, counting the one joining or leaving
    /// (`n`), when the script that published the event counted them.
    pub(super) size: Option<usize>,
}

/// The event in `payload`, or `None` for anything malformed (not JSON, an unknown
/// kind, a name outside the alphabet, an id that is not a number).
pub(super) fn parse(payload: &[u8]) -> Option<Event> {
    let v: Incoming = serde_json::from_slice(payload).ok()?;
    let name = |n: Option<String>| -> Option<Arc<str>> {
        n.filter(|n| valid_nick(n)).map(|n| Arc::from(n.as_str()))
    };
    if !valid_room(&v.room) {
        return None;
    }
    let kind = match v.t.as_str() {
        "msg" => Kind::Msg {
            id: v.id?.parse().ok()?,
            nick: name(v.nick)?,
            text: v.text?.into(),
            time: v.ms,
        },
        "join" => Kind::Join {
            nick: name(v.nick)?,
        },
        "part" => Kind::Part {
            nick: name(v.nick)?,
        },
        "nick" => Kind::Nick {
            old: name(v.old)?,
            new: name(v.new)?,
        },
        _ => return None,
    };
    Some(Event {
        room: v.room.as_str().into(),
        kind,
        origin: v.o,
        member: v.m.map(MemberId),
        expired: v.x.is_some(),
        rejoin: v.r.is_some(),
        size: v.n.map(|n| n as usize),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::MsgId;

    #[test]
    fn events_round_trip_and_bad_ones_are_refused() {
        let ev =
            parse(br#"{"t":"msg","room":"r","id":"7","nick":"ann","text":"hi \/ there","o":"x","ms":1764720000123}"#)
                .unwrap();
        assert_eq!(
            ev.kind,
            Kind::Msg {
                id: MsgId(7),
                nick: "ann".into(),
                text: "hi / there".into(),
                time: Some(1_764_720_000_123),
            }
        );
        assert_eq!(ev.origin.as_deref(), Some("x"));
        let ev = parse(br#"{"t":"join","room":"r","nick":"bob","o":"x","m":3}"#).unwrap();
        assert_eq!(ev.member, Some(MemberId(3)));
        assert!(!ev.rejoin && !ev.expired);
        // What the presence scripts publish: a rejoin (r) and an expiry's PART (x).
        let ev = parse(br#"{"t":"join","room":"r","nick":"bob","o":"x","m":3,"r":1}"#);
        assert!(ev.unwrap().rejoin);
        let ev = parse(br#"{"t":"part","room":"r","nick":"bob","x":1}"#).unwrap();
        assert!(ev.expired && ev.origin.is_none());
        assert_eq!(ev.size, None);
        // The room's size the scripts add to a JOIN or PART.
        let ev = parse(br#"{"t":"join","room":"r","nick":"bob","o":"x","m":3,"n":100001}"#);
        assert_eq!(ev.unwrap().size, Some(100_001));
        for bad in [
            &br#"{"t":"msg","room":"r","id":"x","nick":"ann","text":"hi"}"#[..],
            br#"{"t":"join","room":"bad room","nick":"bob"}"#,
            br#"{"t":"join","room":"r","nick":"b b"}"#,
            br#"{"t":"other","room":"r"}"#,
            b"not json",
        ] {
            assert!(parse(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn what_this_process_publishes_it_reads_back() {
        let kinds = [
            Kind::Join { nick: "ann".into() },
            Kind::Part { nick: "ann".into() },
            Kind::Nick {
                old: "ann".into(),
                new: "bob".into(),
            },
        ];
        for kind in kinds {
            let json = encode("lobby", &kind, "p1", MemberId(9)).unwrap();
            let ev = parse(json.as_bytes()).unwrap();
            assert_eq!((&*ev.room, &ev.kind), ("lobby", &kind), "{json}");
            assert_eq!(
                (ev.origin.as_deref(), ev.member),
                (Some("p1"), Some(MemberId(9)))
            );
            assert!(!ev.expired && !ev.rejoin);
        }
        let msg = Kind::Msg {
            id: MsgId(1),
            nick: "ann".into(),
            text: "hi".into(),
            time: None,
        };
        assert_eq!(encode("lobby", &msg, "p1", MemberId(9)), None);
    }
}
