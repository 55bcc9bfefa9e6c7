//! A member's token authentication: `AUTH`, refreshes, bad tokens, and what an
//! accepted token allows (see [`crate::service::chat::auth`]).

use std::sync::Arc;
use std::time::Instant;

use super::{Command, Deferred, Done, Encoder, End, HubError, Reply, State};
use crate::service::chat::auth::{Grant, Rooms, Verifier, MAX_FAILURES};

/// A member's token authentication (see [`super::auth`]).
pub(super) struct Auth {
    pub(super) verifier: Arc<Verifier>,
    /// Bad tokens presented so far.
    pub(super) failures: u32,
    /// What the accepted token grants, once one was.
    pub(super) granted: Option<Granted>,
    /// A first token whose nick claim is awaited (from Redis).
    pub(super) claiming: Option<Granted>,
    /// A token to present when the member opens.
    pub(super) on_open: Option<Box<str>>,
}

/// An accepted token, as the member keeps it.
pub(super) struct Granted {
    pub(super) sub: Arc<str>,
    /// When the connection ends unless a fresh token came.
    pub(super) expires: Option<Instant>,
    pub(super) rooms: Option<Rooms>,
}

impl Granted {
    pub(super) fn new(g: Grant, now: Instant) -> Granted {
        Granted {
            sub: g.sub,
            expires: g.expires_in.map(|d| now + d),
            rooms: g.rooms,
        }
    }
}

impl State {
    /// When the accepted token expires.
    pub(super) fn expires(&self) -> Option<Instant> {
        self.auth.as_ref()?.granted.as_ref()?.expires
    }

    /// `AUTH <token>`: a first token takes its `sub` as the nick; a later one for the
    /// same `sub` refreshes the expiry and rooms. Each bad token counts; at
    /// [`MAX_FAILURES`] the connection is closed.
    pub(super) fn authenticate<E: Encoder>(&mut self, token: &str, out: &mut E) -> bool {
        let Some(auth) = &mut self.auth else {
            out.error(
                "auth-off",
                "this server does not use tokens: no AUTH is needed",
            );
            return false;
        };
        let grant = match auth.verifier.verify(token) {
            Ok(g) => match &auth.granted {
                Some(cur) if !cur.sub.eq_ignore_ascii_case(&g.sub) => {
                    Err("a fresh token must be for the same sub".to_owned())
                }
                _ => Ok(Granted::new(g, out.now())),
            },
            Err(e) => Err(e.to_string()),
        };
        let g = match grant {
            Ok(g) => g,
            Err(why) => {
                self.refuse_token(&why, out);
                return false;
            }
        };
        let Some(me) = &mut self.me else {
            out.error("unavailable", "this connection has no chat membership");
            return false;
        };
        if auth.granted.is_some() || auth.claiming.is_some() {
            // A refresh (or a second token while the first's nick is being claimed).
            out.reply(Reply::Ok(Done::Auth(&me.nick)));
            match &mut auth.claiming {
                Some(c) => *c = g,
                None => auth.granted = Some(g),
            }
            return false;
        }
        let rooms = self.rooms.keys().cloned().collect::<Vec<_>>();
        match self.hub.set_nick(me.id, &me.nick, &g.sub, &rooms, &me.tx) {
            Ok(Deferred::Now(new)) => {
                out.reply(Reply::Ok(Done::Auth(&new)));
                me.nick = new;
                auth.granted = Some(g);
                false
            }
            Ok(Deferred::Later) => {
                auth.claiming = Some(g);
                true
            }
            Err(e) => {
                let text = match e {
                    HubError::NickTaken => "the token's nick is in use by another connection",
                    _ => "the token's nick cannot be taken now",
                };
                out.error(e.code(), text);
                false
            }
        }
    }

    /// A bad token: `bad-token`, and at [`MAX_FAILURES`] of them the connection ends
    /// with a last line saying why.
    pub(super) fn refuse_token<E: Encoder>(&mut self, why: &str, out: &mut E) {
        out.error("bad-token", why);
        self.hub
            .stats
            .auth_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(auth) = &mut self.auth else {
            return;
        };
        auth.failures += 1;
        if auth.failures >= MAX_FAILURES {
            out.error("auth-failed", "too many bad tokens: closing the connection");
            self.leave();
            self.me = None;
            out.end(End::AuthFailed);
        }
    }

    /// Whether `cmd` may run under the chat's authentication; if not, says why.
    pub(super) fn allowed<E: Encoder>(&self, cmd: &Command<'_>, out: &mut E) -> bool {
        let Some(auth) = &self.auth else {
            return true;
        };
        let Some(g) = &auth.granted else {
            if matches!(cmd, Command::Auth(_) | Command::Quit) {
                return true;
            }
            out.error("auth-required", "send AUTH <token> first");
            return false;
        };
        match cmd {
            Command::Nick(_) => {
                out.error("nick-fixed", "the nick is the token's sub");
                false
            }
            Command::Join { room, .. }
                if g.rooms.as_ref().is_some_and(|r| !r.allows(room))
                    && !self.rooms.contains_key(room) =>
            {
                out.error("forbidden", "the token does not allow this room");
                false
            }
            _ => true,
        }
    }
}
