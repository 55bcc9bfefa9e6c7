//! What the bridge does with a pipeline's replies: answer each request's member,
//! feed the clock estimate, log presence repairs; and the `unavailable` answer of a
//! request Redis will not serve.

use std::sync::Arc;
use std::time::Instant;

use redis::Value;

use super::clock::time_ms;
use super::error::BridgeError;
use super::run::Run;
use super::{Answer, ChatEvent, HubError, Job, MsgId, Publication, Request};

/// Most messages noted as run and not come back ([`Run::ran`]).
pub(super) const RAN_MAX: usize = 65_536;

impl Run {
    /// Answers the jobs of a pipeline from its replies. An error of the connection
    /// fails them all and ends it; an error of one command fails that job only, but
    /// a script Redis no longer knows (flushed) ends the connection too, so that the
    /// next one loads the scripts again.
    pub(super) fn finish(
        &self,
        jobs: Vec<Job>,
        res: Result<Vec<Value>, BridgeError>,
    ) -> Result<(), BridgeError> {
        let received = Instant::now();
        let res = res.and_then(|r| match r.len() == jobs.len() {
            true => Ok(r),
            false => Err(BridgeError::Replies {
                replies: r.len(),
                commands: jobs.len(),
            }),
        });
        let replies = match res {
            Ok(r) => r,
            Err(e) => {
                for job in jobs {
                    self.fail_job(job);
                }
                return Err(e);
            }
        };
        let mut lost = None;
        let mut expired = 0;
        for (job, reply) in jobs.into_iter().zip(replies) {
            if let Value::ServerError(e) = &reply {
                if e.code() == "NOTREPLICATED" {
                    // No replica had it in time: it was deleted, and nobody saw it.
                    self.fail_job(job);
                    continue;
                }
                if e.code() == "EXPIRED" {
                    // Redis ran the message too late: it sent nothing.
                    expired += 1;
                    self.fail_job(job);
                    continue;
                }
                tracing::warn!("redis: a command failed: {e:?}");
                if e.code() == "NOSCRIPT" {
                    lost = Some(BridgeError::ScriptsLost);
                }
                self.fail_job(job);
                continue;
            }
            if let Job::Clock = job {
                match time_ms(reply) {
                    Some(ms) => self.clock.borrow_mut().sample(ms, received),
                    None => tracing::warn!("redis: TIME answered no time"),
                }
                continue;
            }
            self.answer(job, reply);
        }
        if expired > 0 {
            tracing::warn!(
                "redis: {expired} messages reached Redis after their deadline: not sent, \
                 answered unavailable"
            );
        }
        lost.map_or(Ok(()), Err)
    }

    /// Hands a reply to whoever waits for it.
    fn answer(&self, job: Job, reply: Value) {
        let r = match job {
            Job::Req(r) => r,
            Job::Clock => return,
            Job::Repair(room) => return self.repaired(&room, Some(reply)),
            Job::Presence(room) => {
                let (back, gone) =
                    redis::from_owned_redis_value::<(Vec<String>, Vec<String>)>(reply)
                        .unwrap_or_default();
                for nick in back {
                    tracing::warn!(
                        "redis: {nick} in {room} was parted by expiry while still here \
                         (a late renewal, or Redis hung): listed again, JOIN published"
                    );
                }
                for nick in gone {
                    tracing::info!(
                        "redis: {nick} in {room} had left while its PART could not be \
                         published: parted everywhere now"
                    );
                }
                return;
            }
            Job::Renew(room) => {
                if redis::from_owned_redis_value::<i64>(reply).is_ok_and(|lost| lost == 1) {
                    // Listed again before any request made from now on.
                    self.relist.borrow_mut().insert(room);
                }
                return;
            }
            Job::Nicks(_) => {
                for nick in redis::from_owned_redis_value::<Vec<String>>(reply).unwrap_or_default()
                {
                    tracing::warn!("redis: {nick} is held by another member now; not renewed");
                }
                return;
            }
            Job::Expire(room) => {
                for nick in redis::from_owned_redis_value::<Vec<String>>(reply).unwrap_or_default()
                {
                    tracing::info!("redis: {nick} in {room} expired: parting it everywhere");
                }
                return;
            }
        };
        match r {
            Request::Say {
                room,
                author: Some(_),
                ..
            } => self.note_ran(room, reply),
            Request::Say { .. } | Request::Event { .. } | Request::Forget { .. } => {}
            Request::Release { renamed, .. } => renamed_answer(renamed),
            Request::Claim {
                nick,
                old,
                member,
                to,
            } => {
                let answer = match redis::from_owned_redis_value::<i64>(reply) {
                    Ok(1) if self.cluster && !old.eq_ignore_ascii_case(&nick) => {
                        // On a cluster the old nick is released now, on its own slot,
                        // and the rename is answered once it is.
                        let r = Request::Release {
                            nick: old,
                            member,
                            renamed: Some((nick, to)),
                        };
                        self.followups.borrow_mut().push(r);
                        return;
                    }
                    Ok(1) => Ok(nick),
                    Ok(_) => Err(HubError::NickTaken),
                    Err(_) => Err(HubError::Unavailable),
                };
                let _ = to.send(ChatEvent::Answer(Answer::Nick(answer)), 64);
            }
            Request::Who { room, to } => {
                let nicks = match redis::from_owned_redis_value::<Vec<String>>(reply) {
                    Ok(n) if n.is_empty() => Err(HubError::NoSuchRoom),
                    Ok(n) => {
                        let mut n: Vec<Arc<str>> = n.into_iter().map(Arc::from).collect();
                        n.sort();
                        Ok(n)
                    }
                    Err(_) => Err(HubError::Unavailable),
                };
                let _ = to.send(ChatEvent::Answer(Answer::Who { room, nicks }), 64);
            }
            Request::Range {
                room, after, to, ..
            } => {
                let msgs = match redis::from_owned_redis_value::<redis::streams::StreamRangeReply>(
                    reply,
                ) {
                    Ok(r) => {
                        let mut msgs: Vec<Arc<Publication>> = r
                            .ids
                            .iter()
                            .filter_map(|e| {
                                let v: Vec<u8> = e.get("e")?;
                                let ev = crate::hub::events::parse(&v)?;
                                Some(Arc::new(Publication::new(ev.room, ev.kind)))
                            })
                            .collect();
                        if after.is_none() {
                            msgs.reverse();
                        }
                        Ok(msgs)
                    }
                    Err(_) => Err(HubError::Unavailable),
                };
                let _ = to.send(range_answer(room, after, msgs), 64);
            }
        }
    }

    /// A member's message ran in Redis (`reply`: its id): unless its publication came
    /// back already, it is noted, so that a repair reading it back answers its `SAY`.
    fn note_ran(&self, room: Arc<str>, reply: Value) {
        let Some(id) = redis::from_owned_redis_value::<u64>(reply).ok() else {
            return;
        };
        let Some(hub) = self.hub() else {
            return;
        };
        if hub.last_msg(&room).flatten().is_some_and(|last| last >= id) {
            return;
        }
        let mut ran = self.ran.borrow_mut();
        if ran.len() >= RAN_MAX {
            // Only messages whose publication never came, and no repair read back,
            // are left here this long.
            tracing::warn!(
                "redis: {} messages that ran never came back: forgotten",
                ran.len()
            );
            ran.clear();
        }
        ran.insert((room, id));
    }

    pub(super) fn fail_job(&self, job: Job) {
        match job {
            Job::Req(r) => self.fail(r),
            Job::Repair(room) => self.repaired(&room, None),
            // Tried again with the next renewal (not at once: its slot may be down).
            Job::Presence(room) => {
                self.relist_later.borrow_mut().insert(room);
            }
            _ => {}
        }
    }

    /// Answers a request that Redis will not serve with `unavailable`.
    pub(super) fn fail(&self, r: Request) {
        let ev = match r {
            Request::Say {
                author: Some((_, author, say)),
                ..
            } => (
                author,
                ChatEvent::Answer(Answer::Failed {
                    say,
                    error: HubError::Unavailable,
                }),
            ),
            Request::Say {
                author: None, room, ..
            } => {
                // A notification: its sender was answered when it was queued.
                tracing::warn!("redis: a notification to {room} was not sent: Redis unavailable");
                return;
            }
            Request::Range {
                room, after, to, ..
            } => (to, range_answer(room, after, Err(HubError::Unavailable))),
            Request::Who { to, room } => (
                to,
                ChatEvent::Answer(Answer::Who {
                    room,
                    nicks: Err(HubError::Unavailable),
                }),
            ),
            Request::Claim { to, .. } => (
                to,
                ChatEvent::Answer(Answer::Nick(Err(HubError::Unavailable))),
            ),
            Request::Event { room, .. } => {
                // The room's set in Redis may now differ from its members here (a
                // `PART` not run): listed again.
                self.relist.borrow_mut().insert(room);
                return;
            }
            Request::Release { renamed, .. } => {
                // The new nick is claimed all the same; the old claim lapses by itself.
                renamed_answer(renamed);
                return;
            }
            Request::Forget { .. } => return,
        };
        let _ = ev.0.send(ev.1, 64);
    }
}

/// The answer of a rename whose old nick's release is done (see `Request::Release`).
fn renamed_answer(renamed: Option<(Arc<str>, crate::base::mailbox::Sender<ChatEvent>)>) {
    if let Some((nick, to)) = renamed {
        let _ = to.send(ChatEvent::Answer(Answer::Nick(Ok(nick))), 64);
    }
}

fn range_answer(
    room: Arc<str>,
    after: Option<MsgId>,
    msgs: Result<Vec<Arc<Publication>>, HubError>,
) -> ChatEvent {
    ChatEvent::Answer(match after {
        Some(_) => Answer::Replay { room, msgs },
        None => Answer::History { room, msgs },
    })
}
