//! Exponential backoff with full jitter, shared by every retry loop (SSM registration, Secret
//! writes, the launcher's key sync).

use std::time::{Duration, Instant};

/// `now + d`, saturating at about a century instead of panicking on overflow: a huge duration
/// flag must mean "a very long time", never a crash.
pub fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(d.min(CENTURY)).unwrap_or(now)
}

/// Delays that double from `initial` up to `max`, each drawn uniformly from [d/2, d] so that
/// replicas restarted together do not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    attempts: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            next: initial,
            max,
            attempts: 0,
        }
    }

    /// How many delays have been handed out.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The next delay to sleep.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next.min(self.max);
        self.next = (self.next * 2).min(self.max);
        self.attempts += 1;
        let half = base / 2;
        let jitter_nanos = (base - half).as_nanos() as u64;
        let r = if jitter_nanos == 0 {
            0
        } else {
            random_u64() % (jitter_nanos + 1)
        };
        half + Duration::from_nanos(r)
    }
}

/// A random u64 from the OS; falls back to the clock if the OS has no entropy to give, which only
/// weakens the jitter, never correctness.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if crate::random::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return t.as_nanos() as u64 ^ u64::from(std::process::id());
    }
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_within_bounds() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let expect_base = [100u64, 200, 400, 800, 1000, 1000];
        for base in expect_base {
            let d = b.next_delay();
            assert!(d >= Duration::from_millis(base / 2), "{d:?} < {base}/2");
            assert!(d <= Duration::from_millis(base), "{d:?} > {base}");
        }
        assert_eq!(b.attempts(), 6);
    }

    #[test]
    fn deadlines_saturate_instead_of_overflowing() {
        assert!(deadline_after(Duration::MAX) > Instant::now() + Duration::from_secs(3600));
        assert!(deadline_after(Duration::ZERO) <= Instant::now());
    }
}
