//! The proxy's coarse monotonic clock: milliseconds since the process first read it, as one
//! `u64` that fits in an atomic (endpoint load averages, ejections, the retry budget's buckets).
//! A core module: the balancer and the retry budget both read it, neither from the other.

use std::time::Instant;

/// Milliseconds since the process's first call, on the monotonic clock.
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// `now_ms()` for an instant already read (a request's end is read once for all its uses).
pub fn ms_at(instant: Instant) -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    instant.saturating_duration_since(*START.get_or_init(Instant::now)).as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_is_monotonic_and_in_milliseconds() {
        let first = now_ms();
        let later = ms_at(Instant::now() + std::time::Duration::from_millis(1500));
        assert!(later >= first + 1500 && later <= first + 1600, "{first} {later}");
        assert!(now_ms() >= first);
    }
}
