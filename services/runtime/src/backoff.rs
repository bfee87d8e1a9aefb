//! The one backoff policy every retry in Confab uses: exponential, capped, with jitter.
//!
//! Jitter matters after an outage: every replica (and every handed-back event) failed at about
//! the same moment, and without it they would all come back at the same moment too. The delay for
//! attempt `n` is drawn uniformly from `[ceiling(n) / 2, ceiling(n)]` ("equal jitter"): spread out,
//! yet never much shorter than the plain exponential step, so a retry loop bounded by a deadline
//! still makes progress.
//!
//! It is a pure function of the attempt number, not an iterator, because the same policy also
//! sets the redelivery delay of a handed-back JetStream message, where the only state is the
//! message's delivery count (retry crates such as `backon` wrap a future in a retry loop, which
//! fits neither that nor the deadline-bounded publish loop).

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first retry's delay.
    pub first: Duration,
    /// No delay is longer.
    pub max: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self { first, max }
    }

    /// The longest delay before retry `attempt` (1-based): `first · 2^(attempt-1)`, at most `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        self.first.saturating_mul(1 << doublings).min(self.max)
    }

    /// The delay before retry `attempt` (1-based), jittered.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        rand::rng().random_range(ceiling / 2..=ceiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

    #[test]
    fn the_ceiling_doubles_up_to_the_maximum() {
        assert_eq!(B.ceiling(0), Duration::from_millis(100));
        assert_eq!(B.ceiling(1), Duration::from_millis(100));
        assert_eq!(B.ceiling(2), Duration::from_millis(200));
        assert_eq!(B.ceiling(5), Duration::from_millis(1600));
        assert_eq!(B.ceiling(6), Duration::from_secs(2));
        assert_eq!(B.ceiling(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn delays_are_spread_between_half_and_the_whole_ceiling() {
        let delays: Vec<Duration> = (0..200).map(|_| B.delay(3)).collect();
        assert!(delays
            .iter()
            .all(|d| *d >= Duration::from_millis(200) && *d <= Duration::from_millis(400)));
        let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
        assert!(
            distinct.len() > 100,
            "jittered: {} distinct",
            distinct.len()
        );
    }
}
