//! The primitives every layer shares: the lazily read clock of one wake-up, the
//! bounded mailbox that wakes a session when something is pushed to it, the
//! process-wide budget of bytes buffered for clients, the hand-back of freed memory to
//! the system, and the swappable setting a config reload changes ([`Live`]).
//!
//! This module is the bottom layer: it imports nothing else of the crate, so the hub,
//! the services and the models can all use it without pointing at each other.

pub mod budget;
mod clock;
pub mod live;
pub mod mailbox;
pub mod trim;

pub use budget::{Budget, Held};
pub use clock::Clock;
pub use live::Live;
