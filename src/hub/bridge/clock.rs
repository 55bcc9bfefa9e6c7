//! This process's estimate of Redis's clock: the deadlines of messages are set on it.

use std::collections::VecDeque;
use std::time::Instant;

use redis::Value;

use super::CLOCK_SAMPLES;

/// This process's estimate of Redis's clock, which the deadlines of messages are set
/// on.
///
/// A sample is a `TIME` read by Redis and the moment its reply arrived here, on this
/// process's monotonic clock: Redis read its clock no later than that, so Redis's
/// reading minus the local time of arrival is a lower bound of the offset between the
/// two clocks (a slow reply only makes the bound lower). The estimate is the highest of
/// the last [`CLOCK_SAMPLES`] bounds: one late reply does not pull it down, and a step
/// of Redis's clock is followed within that many samples. An estimate below the truth
/// only makes deadlines earlier (a message refused that Redis could have run in time),
/// never later. The samples are dropped at each reconnection: the Redis behind the
/// URL may be another host now.
#[derive(Debug)]
pub(super) struct Clock {
    base: Instant,
    bounds: VecDeque<i64>,
}

impl Clock {
    pub(super) fn new() -> Clock {
        Clock {
            base: Instant::now(),
            bounds: VecDeque::with_capacity(CLOCK_SAMPLES),
        }
    }

    fn local_ms(&self, at: Instant) -> i64 {
        at.saturating_duration_since(self.base).as_millis() as i64
    }

    /// Forgets every sample (a new connection).
    pub(super) fn reset(&mut self) {
        self.bounds.clear();
    }

    /// Redis read `redis_ms` on its clock; the reply arrived at `received`.
    pub(super) fn sample(&mut self, redis_ms: i64, received: Instant) {
        if self.bounds.len() == CLOCK_SAMPLES {
            self.bounds.pop_front();
        }
        self.bounds.push_back(redis_ms - self.local_ms(received));
    }

    /// Redis's clock at local time `at`, in milliseconds, or at most the reply delay
    /// of the best recent sample less; `None` before the first sample.
    pub(super) fn redis_ms(&self, at: Instant) -> Option<i64> {
        self.bounds
            .iter()
            .max()
            .map(|offset| offset + self.local_ms(at))
    }
}

/// The milliseconds of a `TIME` reply.
pub(super) fn time_ms(v: Value) -> Option<i64> {
    let (secs, micros): (i64, i64) = redis::from_owned_redis_value(v).ok()?;
    Some(secs * 1000 + micros / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_clock_estimate_errs_low_and_ignores_a_late_reply() {
        let mut c = Clock::new();
        let t0 = c.base;
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(c.redis_ms(at(0)), None);
        // Redis's clock is 5,000 ms ahead. Read at local 100 ms, answered at 103.
        c.sample(5_100, at(103));
        assert_eq!(c.redis_ms(at(1_000)), Some(5_997)); // 3 ms low: the reply's way.
                                                        // A reply held up 700 ms after the reading does not pull the estimate down.
        c.sample(5_200, at(900));
        assert_eq!(c.redis_ms(at(1_000)), Some(5_997));
        // A tighter one raises it; never above the truth (5,000 ahead).
        c.sample(5_500, at(500));
        assert_eq!(c.redis_ms(at(1_000)), Some(6_000));
        // Redis's clock steps back 2 s: followed once the older samples are out.
        for i in 0..CLOCK_SAMPLES as u64 {
            assert!(c.redis_ms(at(2_000 + i)).unwrap() >= 7_000);
            c.sample(3_000 + 2_000 + i as i64, at(2_000 + i));
        }
        assert_eq!(c.redis_ms(at(3_000)), Some(6_000));
        // A new connection forgets everything.
        c.reset();
        assert_eq!(c.redis_ms(at(3_000)), None);
        // The reading of a TIME reply.
        let reply = Value::Array(vec![
            Value::BulkString(b"1700000000".to_vec()),
            Value::BulkString(b"123456".to_vec()),
        ]);
        assert_eq!(time_ms(reply), Some(1_700_000_000_123));
        assert_eq!(time_ms(Value::Nil), None);
    }
}
