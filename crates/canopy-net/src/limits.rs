//! Per-link bounds on what a peer sends us (frame rates) and on what we queue for it (bytes).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::NetConfig;
use crate::stats::{bump, Counters};

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u64, now: Instant) -> Self {
        let burst = (burst.max(1)) as f64;
        TokenBucket {
            rate: f64::from(rate.max(1)),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// What one link's readers enforce on the frames the peer sends.
#[derive(Debug)]
pub(crate) struct ReadLimits {
    pub max_frame_len: usize,
    pub control_rate: u32,
    data: Mutex<TokenBucket>,
    control: Mutex<TokenBucket>,
    counters: Arc<Counters>,
}

/// The shortest throttling sleep: coarser than the timer wheel's resolution, so a throttled
/// reader takes a batch of tokens per wake-up instead of spinning on sub-millisecond sleeps.
const MIN_THROTTLE_SLEEP: Duration = Duration::from_millis(1);

impl ReadLimits {
    /// Fresh (full) buckets for a new link.
    pub fn new(config: &NetConfig, counters: Arc<Counters>) -> Self {
        let now = Instant::now();
        ReadLimits {
            max_frame_len: config.max_frame_len,
            control_rate: config.control_rate_per_link,
            data: Mutex::new(TokenBucket::new(
                config.data_rate_per_link,
                u64::from(config.data_rate_per_link),
                now,
            )),
            control: Mutex::new(TokenBucket::new(
                config.control_rate_per_link,
                2 * u64::from(config.control_rate_per_link),
                now,
            )),
            counters,
        }
    }

    /// Waits until the peer may deliver another multicast frame.
    pub async fn admit_data(&self) {
        loop {
            let wait = match lock(&self.data).take(Instant::now()) {
                Ok(()) => return,
                Err(wait) => wait,
            };
            bump(&self.counters.data_throttled);
            tokio::time::sleep(wait.max(MIN_THROTTLE_SLEEP)).await;
        }
    }

    /// Whether the peer may deliver another control frame now.
    pub fn admit_control(&self) -> bool {
        lock(&self.control).take(Instant::now()).is_ok()
    }
}

fn lock(bucket: &Mutex<TokenBucket>) -> std::sync::MutexGuard<'_, TokenBucket> {
    // The bucket is a few numbers updated together; a panic cannot leave it unusable.
    bucket
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The bytes queued on one link and not yet taken by its writer, against a budget.
#[derive(Debug, Clone)]
pub(crate) struct ByteBudget {
    queued: Arc<AtomicUsize>,
    max: usize,
}

impl ByteBudget {
    /// An empty budget of `max` bytes.
    pub fn new(max: usize) -> Self {
        ByteBudget {
            queued: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// Reserves `len` bytes; `false` (nothing reserved) if that would exceed the budget.
    pub fn reserve(&self, len: usize) -> bool {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                queued.checked_add(len).filter(|total| *total <= self.max)
            })
            .is_ok()
    }

    /// Returns `len` bytes (a frame left the queue).
    pub fn release(&self, len: usize) {
        // Saturating: never below zero even if a release were doubled by mistake.
        let _ = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                Some(queued.saturating_sub(len))
            });
    }

    /// Bytes queued now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// The budget in bytes.
    pub fn max(&self) -> usize {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 20, start);
        for _ in 0..20 {
            assert!(bucket.take(start).is_ok());
        }
        let wait = bucket.take(start).expect_err("empty");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Half a second refills five tokens.
        let later = start + Duration::from_millis(500);
        for _ in 0..5 {
            assert!(bucket.take(later).is_ok());
        }
        assert!(bucket.take(later).is_err());
        // Never more than the burst, however long it was idle.
        let much_later = later + Duration::from_secs(3600);
        for _ in 0..20 {
            assert!(bucket.take(much_later).is_ok());
        }
        assert!(bucket.take(much_later).is_err());
    }

    #[test]
    fn byte_budget_refuses_over_the_bound() {
        let budget = ByteBudget::new(100);
        assert!(budget.reserve(60));
        assert!(!budget.reserve(41));
        assert!(budget.reserve(40));
        assert!(!budget.reserve(1));
        budget.release(60);
        assert!(budget.reserve(60));
        assert!(!budget.reserve(usize::MAX));
    }
}
