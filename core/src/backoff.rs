//! Retry delays: exponential backoff with jitter. Randomness is an argument, so a test can
//! reproduce any delay exactly.

/// How long to wait before retrying.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the first retry, before jitter.
    pub base_seconds: f64,
    /// Upper bound of any delay.
    pub max_seconds: f64,
    /// Fraction of the delay that is random: 0 = none, 1 = anywhere in `[0, delay)`.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { base_seconds: 2.0, max_seconds: 600.0, jitter: 0.5 }
    }
}

impl Backoff {
    /// The delay before retry number `retry` (1 for the first), given `random` in `[0, 1)`:
    /// `min(max, base × 2^(retry−1)) × (1 − jitter + jitter × random)`.
    pub fn delay_seconds(&self, retry: u32, random: f64) -> f64 {
        let exponent = retry.saturating_sub(1).min(62) as i32;
        let ceiling = (self.base_seconds * 2f64.powi(exponent)).min(self.max_seconds);
        let jitter = self.jitter.clamp(0.0, 1.0);
        ceiling * (1.0 - jitter + jitter * random.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_failing_together_get_their_own_jitter_reproducibly() {
        let fractions: Vec<f64> = (0..1000u128).map(|job| jitter_for(0.5, job << 64 | job, 1)).collect();
        assert!(fractions.iter().all(|f| (0.0..1.0).contains(f)));
        let mut distinct = fractions.clone();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        assert_eq!(distinct.len(), fractions.len(), "every job its own delay");
        let spread_low = fractions.iter().filter(|f| **f < 0.5).count();
        assert!((400..600).contains(&spread_low), "spread over the range: {spread_low} of 1000 below 0.5");
        assert_eq!(jitter_for(0.5, 7, 1), jitter_for(0.5, 7, 1), "the same inputs, the same jitter");
        assert_ne!(jitter_for(0.5, 7, 1), jitter_for(0.5, 7, 2), "another attempt, another jitter");
    }
    use proptest::prelude::*;

    #[test]
    fn doubles_until_the_cap() {
        let backoff = Backoff { base_seconds: 1.0, max_seconds: 10.0, jitter: 0.0 };
        let delays: Vec<f64> = (1..=6).map(|retry| backoff.delay_seconds(retry, 0.7)).collect();
        assert_eq!(delays, [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]);
    }

    #[test]
    fn jitter_spreads_within_its_fraction() {
        let backoff = Backoff { base_seconds: 8.0, max_seconds: 100.0, jitter: 0.5 };
        assert_eq!(backoff.delay_seconds(1, 0.0), 4.0);
        assert_eq!(backoff.delay_seconds(1, 0.5), 6.0);
    }

    proptest! {
        #[test]
        fn delays_stay_within_bounds(retry in 1u32..200, random in 0.0f64..1.0, jitter in 0.0f64..=1.0) {
            let backoff = Backoff { base_seconds: 2.0, max_seconds: 600.0, jitter };
            let delay = backoff.delay_seconds(retry, random);
            let ceiling = (2.0 * 2f64.powi((retry - 1).min(62) as i32)).min(600.0);
            prop_assert!(delay <= ceiling + 1e-9);
            prop_assert!(delay >= ceiling * (1.0 - jitter) - 1e-9);
        }
    }
}

/// What happens after an attempt fails.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FailureDecision {
    /// Try again after this many seconds.
    RetryAfter(f64),
    /// Give up: the job goes to the dead-letter queue.
    DeadLetter(DeadLetterReason),
}

/// A job's own jitter, in `[0, 1)`: `seed` mixed with the job's id and attempt. Failures
/// recorded together (a dead worker's jobs) share one seed but still spread their retries
/// out, and the same inputs always give the same fraction.
pub fn jitter_for(seed: f64, job: u128, attempt: i32) -> f64 {
    let seed_bits = (seed.clamp(0.0, 1.0) * (1u64 << 53) as f64) as u64;
    let mut x = seed_bits ^ (job as u64) ^ ((job >> 64) as u64).rotate_left(29) ^ (attempt as u64).rotate_left(47);
    // SplitMix64's finaliser: every input bit reaches every output bit.
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Why a job ended in the dead-letter queue (`jobs.dead_letter_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterReason {
    AttemptsExhausted,
    /// The failure was classified as not worth retrying.
    #[serde(rename = "fatal_error")]
    Fatal,
    /// Dead-lettered to make room in a full queue (`overflow: evict_lowest`).
    Evicted,
    /// Its deadline passed while it was queued (`expired_deadline: dead_letter`).
    DeadlineExpired,
    /// Its queue was deleted while it waited.
    QueueDeleted,
}

impl DeadLetterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::AttemptsExhausted => "attempts_exhausted",
            DeadLetterReason::Fatal => "fatal_error",
            DeadLetterReason::Evicted => "evicted",
            DeadLetterReason::DeadlineExpired => "deadline_expired",
            DeadLetterReason::QueueDeleted => "queue_deleted",
        }
    }
}

/// Decides a failed attempt's fate: retry with backoff while attempts remain and the
/// failure is retryable, else dead-letter.
pub fn decide_failure(
    backoff: &Backoff,
    attempt: i32,
    max_attempts: i32,
    retryable: bool,
    random: f64,
) -> FailureDecision {
    if !retryable {
        FailureDecision::DeadLetter(DeadLetterReason::Fatal)
    } else if attempt >= max_attempts {
        FailureDecision::DeadLetter(DeadLetterReason::AttemptsExhausted)
    } else {
        FailureDecision::RetryAfter(backoff.delay_seconds(attempt.max(1) as u32, random))
    }
}

#[cfg(test)]
mod decision_tests {
    use super::*;

    #[test]
    fn retries_until_attempts_run_out_then_dead_letters() {
        let backoff = Backoff { base_seconds: 1.0, max_seconds: 60.0, jitter: 0.0 };
        assert_eq!(decide_failure(&backoff, 1, 3, true, 0.0), FailureDecision::RetryAfter(1.0));
        assert_eq!(decide_failure(&backoff, 2, 3, true, 0.0), FailureDecision::RetryAfter(2.0));
        assert_eq!(
            decide_failure(&backoff, 3, 3, true, 0.0),
            FailureDecision::DeadLetter(DeadLetterReason::AttemptsExhausted)
        );
        assert_eq!(decide_failure(&backoff, 1, 3, false, 0.0), FailureDecision::DeadLetter(DeadLetterReason::Fatal));
    }
}
