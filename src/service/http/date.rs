//! The `Date` header (RFC 9110 §6.6.1), formatted at most once per second per thread,
//! as hyper's `common/date.rs` does: a session holds no copy of it, and a busy thread
//! formats it once for all the responses of that second.
//!
//! Wall time is derived from the session clock (`cx.now()`) and one reading of the
//! system clock taken at first use, so tests that move the clock move the date.

use std::cell::RefCell;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// Length of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub(super) const DATE_LEN: usize = 29;

/// The date of one second, formatted, and the instants that second spans: a request
/// checks that its `now` falls inside with two comparisons, and reads no other clock.
#[derive(Clone, Copy)]
struct Cached {
    from: Instant,
    until: Instant,
    text: [u8; DATE_LEN],
}

thread_local! {
    // Borrowed in place: a `Cell` would copy the whole entry out to read it.
    static CACHED: RefCell<Option<Cached>> = const { RefCell::new(None) };
}

/// The wall time at `now`: one reading of the system clock, at first use, and the
/// session clock's distance from it.
fn wall(now: Instant) -> SystemTime {
    static ANCHOR: OnceLock<(Instant, SystemTime)> = OnceLock::new();
    let (i0, s0) = *ANCHOR.get_or_init(|| (Instant::now(), SystemTime::now()));
    if now >= i0 {
        s0 + (now - i0)
    } else {
        s0 - (i0 - now)
    }
}

/// The date at `now`, if it is the usual 29 bytes (it is not past the year 9999, nor
/// before 1970, where it is formatted each time instead).
pub(super) fn imf(now: Instant) -> Option<[u8; DATE_LEN]> {
    let mut text = [0; DATE_LEN];
    imf_into(now, &mut text).then_some(text)
}

/// Writes the date at `now` into `dst`, if it is the usual 29 bytes ([`imf`]); the
/// hot path of a prebuilt response, which leaves room for it in place.
/// `dst` is [`DATE_LEN`] bytes long.
pub(super) fn imf_into(now: Instant, dst: &mut [u8]) -> bool {
    let hit = CACHED.with_borrow(|c| match c {
        Some(c) if now >= c.from && now < c.until => {
            dst.copy_from_slice(&c.text);
            true
        }
        _ => false,
    });
    hit || format(now).map(|text| dst.copy_from_slice(&text)).is_some()
}

/// Formats the date at `now` and caches it for the rest of its second.
#[cold]
fn format(now: Instant) -> Option<[u8; DATE_LEN]> {
    let wall = wall(now);
    let into_second = wall
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?
        .subsec_nanos();
    let formatted = httpdate::fmt_http_date(wall);
    let text: [u8; DATE_LEN] = formatted.as_bytes().try_into().ok()?;
    if let Some(from) = now.checked_sub(Duration::from_nanos(into_second.into())) {
        CACHED.set(Some(Cached {
            from,
            until: from + Duration::from_secs(1),
            text,
        }));
    }
    Some(text)
}

/// Appends the date at `now` to `out`.
pub(super) fn append(out: &mut Vec<u8>, now: Instant) {
    match imf(now) {
        Some(text) => out.extend_from_slice(&text),
        None => out.extend_from_slice(httpdate::fmt_http_date(wall(now)).as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_cached_date_is_the_formatted_one_across_second_boundaries() {
        // Steps of 0.3 s cross a second boundary every few steps, in both directions:
        // each answer equals the date formatted afresh for that instant.
        let t0 = Instant::now() + Duration::from_secs(7200);
        for i in 0..40u64 {
            for now in [
                t0 + Duration::from_millis(300 * i),
                t0 - Duration::from_millis(300 * i),
            ] {
                let want = httpdate::fmt_http_date(wall(now));
                assert_eq!(imf(now).unwrap(), want.as_bytes(), "step {i}");
            }
        }
    }
}
