//! The bridge's queue: one order for every request, and a bound on those that may be
//! refused.
//!
//! A `SAY`, a `JOIN`, a `WHO` can be refused when too many wait: their sender is told
//! `unavailable` and tries again. A departure cannot: a member that parts, renames or
//! leaves has done so here already, and its event is owed to every other process (a
//! `PART` dropped would leave it listed and its nick claimed until the listing
//! expires). So departures always go in, behind whatever their member asked before
//! (a `PART` stays behind the member's last `SAY`s), and are not counted against the
//! bound. They are bounded all the same: at most one `PART` per membership, one
//! release per member, one `Forget` per room, and a member's renames follow a claim it
//! waits for, which is counted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::Request;
use crate::hub::Kind;

/// Whether `r` is owed to the other processes: taken whatever the queue holds.
fn owed(r: &Request) -> bool {
    match r {
        Request::Event { kind, .. } => !matches!(kind, Kind::Join { .. }),
        Request::Release { .. } | Request::Forget { .. } => true,
        Request::Say { .. }
        | Request::Who { .. }
        | Request::Claim { .. }
        | Request::Range { .. } => false,
    }
}

/// The hub's end.
pub(super) struct Queue {
    tx: mpsc::UnboundedSender<Request>,
    /// Requests that may be refused, queued and not yet taken.
    bounded: Arc<AtomicUsize>,
    cap: usize,
}

/// The bridge's end.
pub(super) struct Inbox {
    rx: mpsc::UnboundedReceiver<Request>,
    bounded: Arc<AtomicUsize>,
}

/// A queue holding up to `cap` requests that may be refused.
pub(super) fn queue(cap: usize) -> (Queue, Inbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let bounded = Arc::new(AtomicUsize::new(0));
    let inbox = Inbox {
        rx,
        bounded: bounded.clone(),
    };
    (Queue { tx, bounded, cap }, inbox)
}

/// The request was not queued: too many wait, or the bridge is gone.
#[derive(Debug)]
pub(super) struct Full;

impl Queue {
    /// Queues `r`: a departure always, any other only while fewer than the bound wait.
    pub(super) fn send(&self, r: Request) -> Result<(), Full> {
        let counted = !owed(&r);
        if counted && self.bounded.fetch_add(1, Ordering::AcqRel) >= self.cap {
            self.bounded.fetch_sub(1, Ordering::AcqRel);
            return Err(Full);
        }
        self.tx.send(r).map_err(|_| {
            if counted {
                self.bounded.fetch_sub(1, Ordering::AcqRel);
            }
            Full
        })
    }
}

impl Inbox {
    fn took(&self, r: Request) -> Request {
        if !owed(&r) {
            self.bounded.fetch_sub(1, Ordering::AcqRel);
        }
        r
    }

    /// The next request; `None` once the hub is gone.
    pub(super) async fn recv(&mut self) -> Option<Request> {
        let r = self.rx.recv().await?;
        Some(self.took(r))
    }

    /// The next request if one is queued.
    pub(super) fn try_recv(&mut self) -> Result<Request, mpsc::error::TryRecvError> {
        let r = self.rx.try_recv()?;
        Ok(self.took(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::MemberId;

    fn say(i: usize) -> Request {
        Request::Say {
            room: "r".into(),
            nick: "ann".into(),
            text: i.to_string().into(),
            author: None,
        }
    }

    fn part(i: usize) -> Request {
        Request::Event {
            room: format!("r{i}").into(),
            kind: Kind::Part { nick: "ann".into() },
            member: MemberId(1),
        }
    }

    fn label(r: &Request) -> String {
        match r {
            Request::Say { text, .. } => format!("say {text}"),
            Request::Event { room, .. } => format!("part {room}"),
            _ => "other".into(),
        }
    }

    #[test]
    fn departures_go_in_past_the_bound_and_keep_their_place() {
        let (q, mut inbox) = queue(2);
        q.send(say(0)).unwrap();
        q.send(say(1)).unwrap();
        assert!(q.send(say(2)).is_err(), "the bound holds for messages");
        for i in 0..5 {
            q.send(part(i)).unwrap();
        }
        assert!(
            q.send(say(3)).is_err(),
            "departures take no room from messages"
        );
        let first = inbox.try_recv().unwrap();
        assert_eq!(label(&first), "say 0");
        // One message taken: one more fits, behind the departures.
        q.send(say(4)).unwrap();
        assert!(q.send(say(5)).is_err());
        let mut rest = Vec::new();
        while let Ok(r) = inbox.try_recv() {
            rest.push(label(&r));
        }
        let want = [
            "say 1", "part r0", "part r1", "part r2", "part r3", "part r4", "say 4",
        ];
        assert_eq!(rest, want);
        // All taken: the whole bound is free again.
        q.send(say(6)).unwrap();
        q.send(say(7)).unwrap();
        assert!(q.send(say(8)).is_err());
    }

    #[test]
    fn a_gone_bridge_refuses_and_leaves_the_count_as_it_was() {
        let (q, inbox) = queue(1);
        drop(inbox);
        assert!(q.send(say(0)).is_err());
        assert!(q.send(part(0)).is_err());
        assert_eq!(q.bounded.load(Ordering::Acquire), 0);
    }
}
