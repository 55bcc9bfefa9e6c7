//! The primitives every layer shares: the lazily read clock of one wake-up, the
//! bounded mailbox that wakes a session when something is pushed to it, the
//! process-wide budget of bytes buffered for clients, the count of connections per
//! client address, the hand-back of freed memory to the system, a server's limits and
//! a listener's counters, the swappable setting a config reload changes ([`Live`]), and
//! a cache hint for loops through the kernel ([`prefetch`]).
//!
//! This module is the bottom layer: it imports nothing else of the crate, so the hub,
//! the services and the models can all use it without pointing at each other.

pub mod aligned;
pub mod budget;
mod clock;
pub mod limits;
pub mod live;
pub mod mailbox;
pub mod meter;
pub mod per_ip;
pub mod prefetch;
pub mod stats;
pub mod trim;

pub use budget::{Budget, Held};
pub use clock::Clock;
pub use limits::Limits;
pub use live::Live;
pub use stats::{Stats, CLOSE_REASONS};
