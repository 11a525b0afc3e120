//! Pacing requests under the provider's limits. The trait is the seam for a fleet-wide limiter
//! (NATS KV) later; [`LocalRateLimiter`] paces one process with `governor`.
//!
//! # Quota semantics
//!
//! `governor` implements GCRA: a limit of `r` per minute with burst `b` releases one cell every
//! `60 s / r` and lets up to `b` cells through at once after an idle spell. In any window of
//! length `w` at most `b + w·r/60` requests start. The request burst defaults to 1, so requests
//! are evenly spaced: providers enforce per-minute limits over shorter windows too
//! (OpenAI documents 60 RPM being enforced as 1 per second), and a full minute's burst up front
//! would be answered with 429s.

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::time::Instant;

use governor::{DefaultDirectRateLimiter, Quota};

pub trait RateLimiter: Send + Sync {
    /// Waits until a request expected to use `tokens` tokens (prompt estimate plus `max_tokens`)
    /// may start.
    fn acquire(&self, tokens: u32) -> impl Future<Output = ()> + Send;

    /// The provider said "slow down" (a 429): no request anywhere should start within `wait`.
    /// Returns once the pause is in force, so the retry that follows cannot slip in before it.
    fn hold_off(&self, _wait: Duration) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// A finished request used `actual` tokens where `estimated` were acquired.
    fn record_usage(&self, _estimated: u32, _actual: u32) {}
}

/// Limits for [`LocalRateLimiter`]; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    pub requests_per_minute: Option<u32>,
    /// Requests allowed at once after an idle spell (see the module docs).
    pub request_burst: u32,
    pub tokens_per_minute: Option<u32>,
    /// Tokens allowed at once; `None` is a tenth of a minute's tokens. A single request larger
    /// than this waits for the whole bucket instead of failing.
    pub token_burst: Option<u32>,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self { requests_per_minute: None, request_burst: 1, tokens_per_minute: None, token_burst: None }
    }
}

#[derive(Debug)]
pub struct LocalRateLimiter {
    requests: Option<DefaultDirectRateLimiter>,
    tokens: Option<(DefaultDirectRateLimiter, NonZeroU32)>,
    /// Tokens used beyond their estimate, charged to the next acquisition.
    debt: AtomicU32,
    /// Set by a 429: every request waits for it, so the whole process backs off, not just the
    /// task that was refused.
    not_before: Mutex<Option<Instant>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate limit: {0}")]
pub struct InvalidRateLimit(String);

impl LocalRateLimiter {
    pub fn new(limits: &RateLimits) -> Result<Self, InvalidRateLimit> {
        let quota = |per_minute: u32, burst: u32, what: &str| -> Result<Quota, InvalidRateLimit> {
            if per_minute == 0 {
                return Err(InvalidRateLimit(format!("{what} per minute must be at least 1 (leave it unset for no limit)")));
            }
            let period = Duration::from_secs(60) / per_minute;
            let burst = NonZeroU32::new(burst).ok_or_else(|| InvalidRateLimit(format!("the {what} burst must be at least 1")))?;
            Quota::with_period(period)
                .map(|q| q.allow_burst(burst))
                .ok_or_else(|| InvalidRateLimit(format!("{per_minute} {what} per minute is too many to pace")))
        };
        let requests = limits
            .requests_per_minute
            .map(|rpm| quota(rpm, limits.request_burst, "requests").map(governor::RateLimiter::direct))
            .transpose()?;
        let tokens = limits
            .tokens_per_minute
            .map(|tpm| {
                let burst = limits.token_burst.unwrap_or(tpm / 10).max(1);
                let q = quota(tpm, burst, "tokens")?;
                Ok((governor::RateLimiter::direct(q), NonZeroU32::new(burst).expect("burst is at least 1")))
            })
            .transpose()?;
        Ok(Self { requests, tokens, debt: AtomicU32::new(0), not_before: Mutex::new(None) })
    }

    pub fn unlimited() -> Self {
        Self::new(&RateLimits::default()).expect("no limits are valid")
    }

    async fn wait_for_hold_off(&self) {
        loop {
            let until = *self.not_before.lock().expect("not poisoned");
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => return,
            }
        }
    }
}

impl RateLimiter for LocalRateLimiter {
    async fn acquire(&self, tokens: u32) {
        self.wait_for_hold_off().await;
        if let Some((limiter, burst)) = &self.tokens {
            let owed = self.debt.swap(0, Ordering::SeqCst);
            // More than the bucket holds can never conform; take the whole bucket instead.
            let n = tokens.saturating_add(owed).clamp(1, burst.get());
            limiter.until_n_ready(NonZeroU32::new(n).expect("n ≥ 1")).await.expect("n is within the burst");
        }
        // Requests last, so the moment a request is let through is the moment it is sent.
        if let Some(limiter) = &self.requests {
            limiter.until_ready().await;
        }
        // A 429 may have arrived while this request queued.
        self.wait_for_hold_off().await;
    }

    async fn hold_off(&self, wait: Duration) {
        // Instant + Duration panics past the clock's range; no pause needs to be longer than a day.
        let now = Instant::now();
        let until = now.checked_add(wait).unwrap_or(now + Duration::from_secs(86_400));
        let mut not_before = self.not_before.lock().expect("not poisoned");
        if not_before.is_none_or(|t| t < until) {
            *not_before = Some(until);
        }
    }

    /// Charges tokens used beyond the estimate to the next request. Unused tokens are not
    /// refunded: OpenAI counts `max_tokens` against the limit when a request arrives, whatever
    /// the answer's length, so a refund would run ahead of the provider's own count.
    fn record_usage(&self, estimated: u32, actual: u32) {
        if actual > estimated && self.tokens.is_some() {
            // Saturating: a wrapped debt would let the next request through as if nothing was owed.
            let extra = actual - estimated;
            let _ = self.debt.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| Some(d.saturating_add(extra)));
        }
    }
}

/// Exponential back-off with "equal jitter": a delay drawn from the upper half of
/// `base · 2^(attempt-1)` (capped), so tasks that failed together do not retry together.
pub fn backoff_delay(attempt: u32, base: Duration, max: Duration) -> Duration {
    use rand::Rng;
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20)).min(max);
    let half = exp / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_are_spaced_after_the_burst() {
        let limiter =
            LocalRateLimiter::new(&RateLimits { requests_per_minute: Some(600), request_burst: 2, ..Default::default() }).unwrap();
        let start = std::time::Instant::now();
        for _ in 0..5 {
            limiter.acquire(1).await;
        }
        // Two free, then three at 100 ms each.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(280), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(1000), "{elapsed:?}");
    }

    #[tokio::test]
    async fn oversized_requests_wait_for_the_whole_bucket_instead_of_failing() {
        let limiter =
            LocalRateLimiter::new(&RateLimits { tokens_per_minute: Some(60_000), token_burst: Some(100), ..Default::default() }).unwrap();
        limiter.acquire(10_000).await;
        let start = std::time::Instant::now();
        limiter.acquire(50).await;
        // 1000 tokens per second refill: 50 tokens take ~50 ms.
        assert!(start.elapsed() >= Duration::from_millis(40), "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn hold_off_delays_every_acquisition() {
        let limiter = LocalRateLimiter::unlimited();
        limiter.hold_off(Duration::from_millis(150)).await;
        limiter.hold_off(Duration::from_millis(10)).await; // a shorter pause never shortens a longer one
        let start = std::time::Instant::now();
        limiter.acquire(1).await;
        assert!(start.elapsed() >= Duration::from_millis(140));
    }

    #[tokio::test]
    async fn absurd_pauses_and_usage_do_not_panic() {
        let limiter =
            LocalRateLimiter::new(&RateLimits { tokens_per_minute: Some(60_000), token_burst: Some(100), ..Default::default() }).unwrap();
        // Instant + Duration::MAX overflows; the pause is capped instead.
        limiter.hold_off(Duration::MAX).await;
        let until = limiter.not_before.lock().unwrap().unwrap();
        assert!(until > Instant::now() + Duration::from_secs(3600));
        // A server claiming u32::MAX tokens twice leaves the debt full, not wrapped to a small number.
        limiter.record_usage(0, u32::MAX);
        limiter.record_usage(0, u32::MAX);
        assert_eq!(limiter.debt.load(Ordering::SeqCst), u32::MAX);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for _ in 0..50 {
            let d1 = backoff_delay(1, base, max);
            assert!(d1 >= Duration::from_millis(50) && d1 <= base);
            let d3 = backoff_delay(3, base, max);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            assert!(backoff_delay(30, base, max) <= max);
        }
        assert!(LocalRateLimiter::new(&RateLimits { requests_per_minute: Some(0), ..Default::default() }).is_err());
    }
}
