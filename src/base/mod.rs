//! The primitives every layer shares: the lazily read clock of one wake-up, the
//! bounded mailbox that wakes a session when something is pushed to it, the
//! process-wide budget of bytes buffered for clients, and the hand-back of freed
//! memory to the system.
//!
//! This module is the bottom layer: it imports nothing else of the crate, so the hub,
//! the services and the models can all use it without pointing at each other.

pub mod budget;
mod clock;
pub mod mailbox;
pub mod meter;
pub mod trim;

pub use budget::{Budget, Held};
pub use clock::Clock;
