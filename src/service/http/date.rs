//! The `Date` header (RFC 9110 §6.6.1), formatted at most once per second per thread,
//! as hyper's `common/date.rs` does: a session holds no copy of it, and a busy thread
//! formats it once for all the responses of that second.
//!
//! Wall time is derived from the session clock (`cx.now()`) and one reading of the
//! system clock taken at first use, so tests that move the clock move the date.

use std::cell::RefCell;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

/// Length of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
const DATE_LEN: usize = 29;

/// The date of one second, formatted.
struct Cached {
    /// Seconds since the epoch it was formatted for (`u64::MAX`: not yet).
    secs: u64,
    text: [u8; DATE_LEN],
}

thread_local! {
    static CACHED: RefCell<Cached> = const {
        RefCell::new(Cached {
            secs: u64::MAX,
            text: [0; DATE_LEN],
        })
    };
}

/// Appends the date at `now` to `out`.
pub(super) fn append(out: &mut Vec<u8>, now: Instant) {
    static ANCHOR: OnceLock<(Instant, SystemTime)> = OnceLock::new();
    let (i0, s0) = *ANCHOR.get_or_init(|| (Instant::now(), SystemTime::now()));
    let wall = if now >= i0 {
        s0 + (now - i0)
    } else {
        s0 - (i0 - now)
    };
    let secs = wall
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    CACHED.with(|cached| {
        let mut c = cached.borrow_mut();
        if c.secs != secs {
            let text = httpdate::fmt_http_date(wall);
            if text.len() != DATE_LEN {
                // Beyond the year 9999: not cached, still correct.
                out.extend_from_slice(text.as_bytes());
                return;
            }
            c.text.copy_from_slice(text.as_bytes());
            c.secs = secs;
        }
        out.extend_from_slice(&c.text);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_date_follows_the_clock_and_parses() {
        let t0 = Instant::now();
        let mut a = Vec::new();
        append(&mut a, t0);
        let mut b = Vec::new();
        append(&mut b, t0 + Duration::from_secs(3600));
        let a = httpdate::parse_http_date(std::str::from_utf8(&a).unwrap()).unwrap();
        let b = httpdate::parse_http_date(std::str::from_utf8(&b).unwrap()).unwrap();
        assert_eq!(b.duration_since(a).unwrap(), Duration::from_secs(3600));
    }
}
