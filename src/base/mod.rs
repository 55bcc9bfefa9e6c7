//! The primitives every layer shares: the lazily read clock of one wake-up and the
//! bounded mailbox that wakes a session when something is pushed to it.
//!
//! This module is the bottom layer: it imports nothing else of the crate, so the hub,
//! the services and the models can all use it without pointing at each other.

mod clock;
pub mod mailbox;

pub use clock::Clock;
