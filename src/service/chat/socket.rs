//! A chat member on a WebSocket (`/chat/ws`): the line protocol's session, spoken in
//! JSON objects (see [`super::json`]), on the RFC 6455 engine of [`crate::service::ws`].
//!
//! The member is the same to the [`Hub`] as a TCP one: it joins with
//! [`Wire::Json`], so each publication is encoded to JSON once for all WebSocket
//! members and the same bytes become every member's text frame. A bad frame gets an
//! `error` object and the connection stays usable; only the model's goodbyes close it
//! (1008 slow consumer, 1013 busy, 1001 shutdown or idle), or `quit` (1000).

use std::collections::HashMap;
use std::sync::Arc;

use tungstenite::protocol::frame::coding::CloseCode;

use super::json;
use super::Command;
use crate::hub::{Answer, ChatEvent, Hub, MemberId, MsgId, Publication, Wire};
use crate::model::mailbox::Sender;
use crate::service::ws::{Handler, Message, Utf8Bytes, WsCx};

type Ws<'a, 'b, 'c, 'd> = &'a mut WsCx<'b, 'c, 'd, ChatEvent>;

/// A session's view of one room it is in (as in the line protocol's session).
struct RoomState {
    /// Events up to this room sequence number belong to an earlier membership.
    since: u64,
    /// The last message id handed on: one at or before it is a duplicate (a replayed
    /// message that also arrived live).
    last: Option<MsgId>,
    /// Live events held while a replay is on its way (with `--redis`).
    held: Option<Vec<Arc<Publication>>>,
}

impl RoomState {
    fn hand_on(&mut self, p: &Publication, ws: Ws<'_, '_, '_, '_>) {
        if let Some(id) = p.msg_id() {
            if self.last.is_some_and(|last| id <= last) {
                return;
            }
            self.last = Some(id);
        }
        send_encoded(p, ws);
    }
}

/// Sends the hub's shared JSON encoding of `p` as a text frame, without copying it
/// into a new string.
fn send_encoded(p: &Publication, ws: Ws<'_, '_, '_, '_>) {
    match Utf8Bytes::try_from(p.encoded(Wire::Json).clone()) {
        Ok(text) => ws.send(Message::Text(text)),
        // serde_json writes UTF-8; this would be a bug in the hub's encoder.
        Err(e) => tracing::error!("chat: a JSON publication is not UTF-8: {e}"),
    }
}

fn send(ws: Ws<'_, '_, '_, '_>, s: String) {
    ws.send(Message::text(s));
}

fn error(ws: Ws<'_, '_, '_, '_>, code: &str, text: &str) {
    send(ws, json::error(code, text));
}

struct Me {
    id: MemberId,
    nick: Arc<str>,
    tx: Sender<ChatEvent>,
}

/// One chat member on a WebSocket: its identity, its rooms.
pub struct ChatSocket {
    hub: Arc<Hub>,
    me: Option<Me>,
    rooms: HashMap<Arc<str>, RoomState>,
    /// Longest `say` text in bytes (the line protocol's `--max-line`).
    max_text: usize,
}

impl ChatSocket {
    /// A member of `hub` whose messages are at most `max_text` bytes.
    pub fn new(hub: Arc<Hub>, max_text: usize) -> ChatSocket {
        ChatSocket {
            hub,
            me: None,
            rooms: HashMap::new(),
            max_text: max_text.max(1),
        }
    }

    fn room_list(&self) -> Vec<Arc<str>> {
        self.rooms.keys().cloned().collect()
    }

    fn leave(&mut self) {
        if let Some(me) = &self.me {
            let rooms = self.room_list();
            self.hub.disconnect(me.id, &me.nick, &rooms);
            self.rooms.clear();
        }
    }

    fn command(&mut self, cmd: Command<'_>, ws: Ws<'_, '_, '_, '_>) {
        if cmd == Command::Quit {
            send(ws, json::ok("quit", None, None));
            self.leave();
            self.me = None;
            ws.close(CloseCode::Normal, "bye");
            return;
        }
        let Some(me) = &mut self.me else {
            error(ws, "unavailable", "this connection has no chat membership");
            return;
        };
        let hub = &self.hub;
        let res = match cmd {
            Command::Nick(nick) => {
                let rooms: Vec<Arc<str>> = self.rooms.keys().cloned().collect();
                hub.set_nick(me.id, &me.nick, nick, &rooms, &me.tx)
                    .map(|new| {
                        if let Some(new) = new {
                            send(ws, json::ok("nick", None, Some(&new)));
                            me.nick = new;
                        }
                    })
            }
            Command::Join { room, after } => hub
                .join(me.id, &me.nick, &me.tx, Wire::Json, room, after)
                .map(|j| {
                    send(ws, json::ok("join", Some(&j.room), None));
                    let mut st = RoomState {
                        since: j.since,
                        last: None,
                        held: j.replay_pending.then(Vec::new),
                    };
                    for p in &j.replay {
                        st.hand_on(p, ws);
                    }
                    self.rooms.insert(j.room, st);
                }),
            Command::Part(room) => hub.part(me.id, room).map(|()| {
                self.rooms.remove(room);
                send(ws, json::ok("part", Some(room), None));
            }),
            Command::Say { text, .. } if text.len() > self.max_text => {
                error(ws, "text-too-long", "message text is limited in length");
                Ok(())
            }
            // The author's own `msg` arrives through its mailbox like everyone's, so
            // it is in the room's order.
            Command::Say { room, text } => hub.say(me.id, room, text).map(|_| ()),
            Command::History { room, n } => hub.history(room, n, &me.tx).map(|msgs| {
                if let Some(msgs) = msgs {
                    history(room, &msgs, ws);
                }
            }),
            Command::Who(room) => hub.who_all(room, &me.tx).map(|nicks| {
                if let Some(nicks) = nicks {
                    send(ws, json::who(room, &nicks));
                }
            }),
            Command::Quit => Ok(()), // Answered above.
        };
        if let Err(e) = res {
            error(ws, e.code(), &e.to_string());
        }
    }
}

fn history(room: &str, msgs: &[Arc<Publication>], ws: Ws<'_, '_, '_, '_>) {
    for p in msgs {
        send_encoded(p, ws);
    }
    send(ws, json::ok("history", Some(room), None));
}

impl Handler for ChatSocket {
    type Event = ChatEvent;

    fn open(&mut self, ws: &mut WsCx<'_, '_, '_, ChatEvent>) {
        match ws.cx().mailbox() {
            Ok(tx) => {
                let (id, nick) = self.hub.connect();
                send(ws, json::welcome(&nick));
                self.me = Some(Me { id, nick, tx });
            }
            Err(e) => {
                tracing::error!("chat: cannot make a mailbox: {e}");
                error(ws, "unavailable", "the server cannot take members now");
                ws.close(CloseCode::Error, "no mailbox");
            }
        }
    }

    fn message(&mut self, msg: Message, ws: &mut WsCx<'_, '_, '_, ChatEvent>) {
        let Message::Text(text) = msg else {
            error(ws, json::BAD_JSON.code, json::BAD_JSON.text);
            return;
        };
        crate::service::log_received(text.as_bytes());
        let incoming = match json::decode(text.as_bytes()) {
            Ok(i) => i,
            Err(e) => return error(ws, e.code, e.text),
        };
        match incoming.command() {
            Ok(cmd) => self.command(cmd, ws),
            Err(e) => error(ws, e.code, e.text),
        }
    }

    fn event(&mut self, event: ChatEvent, ws: &mut WsCx<'_, '_, '_, ChatEvent>) {
        match event {
            ChatEvent::Room { seq, publication } => {
                let Some(st) = self.rooms.get_mut(&publication.room) else {
                    return;
                };
                if seq <= st.since {
                    return;
                }
                match &mut st.held {
                    Some(held) => held.push(publication),
                    None => st.hand_on(&publication, ws),
                }
            }
            ChatEvent::Answer(Answer::History { room, msgs }) => match msgs {
                Ok(msgs) => history(&room, &msgs, ws),
                Err(e) => error(ws, e.code(), &e.to_string()),
            },
            ChatEvent::Answer(Answer::Replay { room, msgs }) => {
                let Some(st) = self.rooms.get_mut(&room) else {
                    return; // Parted meanwhile.
                };
                match msgs {
                    Ok(msgs) => {
                        for p in &msgs {
                            st.hand_on(p, ws);
                        }
                    }
                    Err(e) => error(ws, e.code(), "the replay of missed messages failed"),
                }
                for p in st.held.take().unwrap_or_default() {
                    st.hand_on(&p, ws);
                }
            }
            ChatEvent::Answer(Answer::Who { room, nicks }) => match nicks {
                Ok(nicks) => send(ws, json::who(&room, &nicks)),
                Err(e) => error(ws, e.code(), &e.to_string()),
            },
            ChatEvent::Answer(Answer::Nick(Ok(new))) => {
                let rooms = self.room_list();
                let Some(me) = &mut self.me else {
                    return;
                };
                match self.hub.apply_nick(me.id, &me.nick, &new, &rooms) {
                    Ok(()) => {
                        send(ws, json::ok("nick", None, Some(&new)));
                        me.nick = new;
                    }
                    Err(e) => error(ws, e.code(), &e.to_string()),
                }
            }
            ChatEvent::Answer(other) => failed(other, ws),
        }
    }
}

/// A refused request's answer becomes an `error`; an answer this member has no use for
/// (one a newer hub may add) is logged, never a panic.
fn failed(answer: Answer, ws: Ws<'_, '_, '_, '_>) {
    match answer {
        Answer::Nick(Err(e)) | Answer::Failed(e) => error(ws, e.code(), &e.to_string()),
        other => tracing::debug!("chat: websocket member ignores {other:?}"),
    }
}

impl Drop for ChatSocket {
    /// However the connection ended, its member parts from every room and frees its
    /// nick.
    fn drop(&mut self) {
        self.leave();
    }
}
