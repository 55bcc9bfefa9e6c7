//! The `SAY`s of one member in flight: each awaits its answer (its own message, or a
//! refusal) and is answered in command order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crate::hub::HubError;

#[cfg(doc)]
use super::ANSWER_TIMEOUT;

/// A `SAY` awaiting its answer.
pub(super) struct Said {
    pub(super) tag: u64,
    pub(super) room: Arc<str>,
    /// When it went out: it is answered `unavailable` [`ANSWER_TIMEOUT`] later.
    pub(super) since: Instant,
    /// What it counts for in `queued_bytes` until it is answered.
    pub(super) cost: u32,
    pub(super) outcome: Outcome,
}

/// The `SAY`s awaiting their answer, in command order. Boxed and made at the first
/// `SAY`: a connection that never speaks pays one pointer for them.
pub(super) struct Says(pub(super) Option<Box<InFlight>>);

pub(super) struct InFlight {
    pub(super) list: VecDeque<Said>,
    /// The tag of the next `SAY` (see [`Hub::say_tagged`]).
    pub(super) next_tag: u64,
}

impl Says {
    pub(super) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |f| f.list.len())
    }

    pub(super) fn front(&self) -> Option<&Said> {
        self.0.as_ref()?.list.front()
    }

    pub(super) fn back(&self) -> Option<&Said> {
        self.0.as_ref()?.list.back()
    }

    pub(super) fn pop_front(&mut self) -> Option<Said> {
        self.0.as_mut()?.list.pop_front()
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Said> {
        self.0.iter_mut().flat_map(|f| f.list.iter_mut())
    }

    pub(super) fn push_back(&mut self, said: Said) {
        self.made().list.push_back(said);
    }

    /// A new tag: the next `SAY`'s.
    pub(super) fn next_tag(&mut self) -> u64 {
        let f = self.made();
        f.next_tag += 1;
        f.next_tag - 1
    }

    pub(super) fn made(&mut self) -> &mut InFlight {
        self.0.get_or_insert_with(|| {
            Box::new(InFlight {
                list: VecDeque::new(),
                next_tag: 0,
            })
        })
    }
}

/// Where a `SAY` in flight stands; it is answered once every one before it is.
#[derive(Clone, Copy)]
pub(super) enum Outcome {
    /// Nothing came back yet.
    Pending,
    /// Its own message was handed on: that was its answer.
    Delivered,
    /// Refused (later by Redis, or when it went out behind earlier ones): the
    /// error is said in its turn.
    Refused(&'static str, Refusal),
}

/// Why a `SAY` was refused, for its `ERR` line.
#[derive(Clone, Copy)]
pub(super) enum Refusal {
    Hub(HubError),
    RateLimited,
    /// Nothing came back within [`ANSWER_TIMEOUT`].
    NoAnswer,
}
