//! Retry budgets: retries may add at most a fraction of the requests' load, plus a small floor,
//! over a sliding window, so that retries cannot multiply load during an outage (Linkerd's
//! approach, rather than a fixed per-request multiplier).
//!
//! The caller passes the time, in milliseconds on a monotonic clock, so the budget reads no clock
//! of its own and its tests choose the time.

use std::sync::atomic::{AtomicU64, Ordering};

const BUCKETS: usize = 10;
const BUCKET_MS: u64 = 1_000;

/// A sliding-window retry budget, lock-free.
#[derive(Debug)]
pub struct RetryBudget {
    /// Retries allowed per request seen (e.g. 0.2 = 20 % extra load).
    ratio: f64,
    /// Retries per second always allowed, so low-traffic routes can still retry.
    min_per_second: u64,
    /// Per bucket: (bucket epoch, requests, retries) packed as three atomics.
    epochs: [AtomicU64; BUCKETS],
    requests: [AtomicU64; BUCKETS],
    retries: [AtomicU64; BUCKETS],
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new(0.2, 10)
    }
}

impl RetryBudget {
    /// A budget of `ratio` retries per request plus `min_per_second`.
    pub fn new(ratio: f64, min_per_second: u64) -> Self {
        Self {
            ratio,
            min_per_second,
            epochs: Default::default(),
            requests: Default::default(),
            retries: Default::default(),
        }
    }

    fn bucket(&self, now: u64) -> usize {
        let epoch = now / BUCKET_MS;
        let index = (epoch % BUCKETS as u64) as usize;
        let seen = self.epochs[index].load(Ordering::Relaxed);
        if seen != epoch
            && self.epochs[index].compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        {
            self.requests[index].store(0, Ordering::Relaxed);
            self.retries[index].store(0, Ordering::Relaxed);
        }
        index
    }

    fn window_totals(&self, now: u64) -> (u64, u64) {
        let current = now / BUCKET_MS;
        (0..BUCKETS).fold((0, 0), |(requests, retries), i| {
            let epoch = self.epochs[i].load(Ordering::Relaxed);
            if current.saturating_sub(epoch) < BUCKETS as u64 {
                (requests + self.requests[i].load(Ordering::Relaxed), retries + self.retries[i].load(Ordering::Relaxed))
            } else {
                (requests, retries)
            }
        })
    }

    /// Counts an original request, made at `now_ms`.
    pub fn deposit(&self, now_ms: u64) {
        let index = self.bucket(now_ms);
        self.requests[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry, made at `now_ms`, from the budget; false when it is spent.
    pub fn try_withdraw(&self, now_ms: u64) -> bool {
        let now = now_ms;
        let (requests, retries) = self.window_totals(now);
        let window_seconds = (BUCKETS as u64 * BUCKET_MS) / 1_000;
        let allowed = (requests as f64 * self.ratio) as u64 + self.min_per_second * window_seconds;
        if retries >= allowed {
            return false;
        }
        let index = self.bucket(now);
        self.retries[index].fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_by_ratio_plus_floor() {
        let budget = RetryBudget::new(0.2, 1);
        for _ in 0..100 {
            budget.deposit(5_000);
        }
        // 100 requests × 0.2 + 1/s × 10 s = 30 retries in the window.
        let granted = (0..100).filter(|_| budget.try_withdraw(5_000)).count();
        assert_eq!(granted, 30);
    }

    #[test]
    fn idle_route_still_gets_the_floor() {
        let budget = RetryBudget::new(0.2, 2);
        assert_eq!((0..50).filter(|_| budget.try_withdraw(0)).count(), 20);
    }

    #[test]
    fn the_window_slides_so_old_requests_and_retries_stop_counting() {
        let budget = RetryBudget::new(0.5, 0);
        for _ in 0..10 {
            budget.deposit(1_000);
        }
        assert_eq!((0..10).filter(|_| budget.try_withdraw(1_000)).count(), 5);
        // Still inside the 10 s window: spent.
        assert!(!budget.try_withdraw(10_999));
        // The bucket of 1 s has left the window: its requests no longer earn retries.
        assert!(!budget.try_withdraw(11_000));
        for _ in 0..4 {
            budget.deposit(11_000);
        }
        assert_eq!((0..4).filter(|_| budget.try_withdraw(11_000)).count(), 2);
    }
}
