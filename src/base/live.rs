//! A setting that can change while the server runs: a shared handle to its current
//! value, swapped whole by a config reload and read without a lock.
//!
//! A reader takes the value once per connection or per request ([`Live::load`] is a
//! few atomic operations, no lock, no allocation) and keeps what it read until it is
//! done, so one request never sees half of an old setting and half of a new one; the
//! reload replaces the whole value ([`Live::set`]). This is how a service's options
//! are made reloadable: hold them in a `Live`, read them per connection or request,
//! and have the reload `set` the new value (`serve::reload` does, for the limits and
//! the notification key and the HTTP options).

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;

/// A shared, swappable value (see the module documentation). Clones share it.
pub struct Live<T>(Arc<ArcSwap<T>>);

impl<T> Live<T> {
    /// A handle holding `value`.
    pub fn new(value: T) -> Live<T> {
        Live(Arc::new(ArcSwap::from_pointee(value)))
    }

    /// The current value, for the time of one request: cheap, lock-free.
    pub fn load(&self) -> arc_swap::Guard<Arc<T>> {
        self.0.load()
    }

    /// The current value, kept as long as the caller likes (a connection's limits
    /// for its whole life).
    pub fn get(&self) -> Arc<T> {
        self.0.load_full()
    }

    /// Replaces the value: every later read sees `value`; a reader holding the old
    /// one keeps it until it lets go.
    pub fn set(&self, value: T) {
        self.0.store(Arc::new(value));
    }
}

impl<T> Clone for Live<T> {
    fn clone(&self) -> Live<T> {
        Live(self.0.clone())
    }
}

impl<T: Default> Default for Live<T> {
    fn default() -> Live<T> {
        Live::new(T::default())
    }
}

impl<T> From<T> for Live<T> {
    fn from(value: T) -> Live<T> {
        Live::new(value)
    }
}

impl<T: fmt::Debug> fmt::Debug for Live<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Live").field(&**self.0.load()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_is_seen_by_every_clone_and_a_held_value_stays_as_it_was() {
        let a = Live::new(1);
        let b = a.clone();
        let held = a.get();
        b.set(2);
        assert_eq!(**a.load(), 2);
        assert_eq!(*a.get(), 2);
        assert_eq!(*held, 1, "a reader keeps what it took");
    }
}
