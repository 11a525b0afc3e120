//! Pacing requests under the provider's limits. [`RateLimiter`] is the seam; [`LocalRateLimiter`]
//! paces one process and [`crate::fleet_limiter::FleetLimiter`] the whole fleet, both with the
//! arithmetic of `embedfleet_bus::ratelimit`.
//!
//! # Quota semantics
//!
//! A limit of `r` a minute with burst `b` lets `b` requests go at once after an idle spell, and
//! spaces the rest evenly, a little over `60 s / r` apart. In any sliding window of 60 s (of 61 s,
//! in fact, to leave a second for a request to reach the provider) at most `r` requests start,
//! retries included, and at most `tpm` tokens are asked for. That is exact, not just on average
//! (see the bus module for the proof). The request burst defaults to 1, so requests are evenly
//! spaced. Providers enforce per-minute limits over shorter windows too (OpenAI documents 60 RPM
//! being enforced as 1 per second), and a full minute's burst up front would be answered with 429s.

use embedfleet_bus::ratelimit::{LimitState, Limits, Pacing};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

pub use embedfleet_bus::ratelimit::InvalidRateLimit;

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
    fn record_usage(&self, _estimated: u32, _actual: u32) -> impl Future<Output = ()> + Send {
        async {}
    }
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

impl RateLimits {
    /// The spacing of both limits, checked: a zero limit or a burst above its minute is refused.
    pub fn pacing(&self) -> Result<Limits, InvalidRateLimit> {
        let requests = match self.requests_per_minute {
            Some(rpm) => Pacing::per_minute(rpm, self.request_burst, "requests")?,
            None if self.request_burst == 0 => return Err(InvalidRateLimit("the requests burst must be at least 1".into())),
            None => Pacing::unlimited(),
        };
        let tokens =
            self.tokens_per_minute.map(|tpm| Pacing::per_minute(tpm, self.token_burst.unwrap_or(tpm / 10).max(1), "tokens")).transpose()?;
        Ok(Limits { requests, tokens })
    }
}

const IDLE_BEFORE_START: Duration = Duration::from_secs(600);

/// One process's limits, on tokio's clock (so tests can run it in paused time).
#[derive(Debug)]
pub struct LocalRateLimiter {
    limits: Limits,
    state: Mutex<LimitState>,
    /// Time zero of the state's nanoseconds.
    origin: Instant,
}

impl LocalRateLimiter {
    pub fn new(limits: &RateLimits) -> Result<Self, InvalidRateLimit> {
        Ok(Self { limits: limits.pacing()?, state: Mutex::new(LimitState::default()), origin: Instant::now() })
    }

    pub fn unlimited() -> Self {
        Self::new(&RateLimits::default()).expect("no limits are valid")
    }

    /// Nanoseconds since `origin`, plus ten minutes: a fresh limiter's TATs (zero) then lie a whole
    /// window in the past, as an idle limiter's do, and its first heavy request goes at once.
    fn now(&self) -> u64 {
        u64::try_from((self.origin.elapsed() + IDLE_BEFORE_START).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Applies `change` to the state under the lock; never held across an await.
    fn update<T>(&self, change: impl FnOnce(&Limits, &mut LimitState, u64) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        change(&self.limits, &mut state, self.now())
    }
}

impl RateLimiter for LocalRateLimiter {
    async fn acquire(&self, tokens: u32) {
        loop {
            let granted = self.update(|limits, state, now| limits.grant(*state, now, tokens).map(|next| *state = next));
            match granted {
                Ok(()) => return,
                Err(at) => {
                    let at = Duration::from_nanos(at).saturating_sub(IDLE_BEFORE_START);
                    tokio::time::sleep_until(self.origin + at).await
                }
            }
        }
    }

    async fn hold_off(&self, wait: Duration) {
        self.update(|limits, state, now| *state = limits.hold_off(*state, now, wait));
    }

    /// Charges tokens used beyond the estimate at once, so the requests after wait for them.
    /// Unused tokens are not refunded: OpenAI counts `max_tokens` against the limit when a request
    /// arrives, whatever the answer's length, so a refund would run ahead of the provider's count.
    async fn record_usage(&self, estimated: u32, actual: u32) {
        if actual > estimated {
            self.update(|limits, state, now| *state = limits.charge_tokens(*state, now, actual - estimated));
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

    #[tokio::test(start_paused = true)]
    async fn requests_are_spaced_after_the_burst() {
        let limiter =
            LocalRateLimiter::new(&RateLimits { requests_per_minute: Some(600), request_burst: 2, ..Default::default() }).unwrap();
        let start = Instant::now();
        for _ in 0..5 {
            limiter.acquire(1).await;
        }
        // Two free, then three a little over 100 ms apart (61 s / 599).
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(310), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn oversized_requests_wait_for_the_whole_bucket_instead_of_failing() {
        let limiter =
            LocalRateLimiter::new(&RateLimits { tokens_per_minute: Some(60_000), token_burst: Some(100), ..Default::default() }).unwrap();
        limiter.acquire(10_000).await;
        let start = Instant::now();
        limiter.acquire(50).await;
        // The heavy request was charged in full: about 10 s of tokens, less the 100 of the burst.
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(9_900) && waited < Duration::from_millis(10_300), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn hold_off_delays_every_acquisition() {
        let limiter = LocalRateLimiter::unlimited();
        limiter.hold_off(Duration::from_millis(150)).await;
        limiter.hold_off(Duration::from_millis(10)).await; // a shorter pause never shortens a longer one
        let start = Instant::now();
        limiter.acquire(1).await;
        assert!(start.elapsed() >= Duration::from_millis(150));
    }

    #[tokio::test(start_paused = true)]
    async fn absurd_pauses_and_usage_do_not_panic() {
        let limiter =
            LocalRateLimiter::new(&RateLimits { tokens_per_minute: Some(60_000), token_burst: Some(100), ..Default::default() }).unwrap();
        // A pause of "forever" is capped at the longest pause.
        limiter.hold_off(Duration::MAX).await;
        let held = limiter.state.lock().unwrap().requests;
        assert_eq!(held, (IDLE_BEFORE_START + embedfleet_bus::ratelimit::MAX_HOLD_OFF).as_nanos() as u64);
        // A server claiming u32::MAX tokens twice saturates the charge, it does not wrap.
        limiter.record_usage(0, u32::MAX).await;
        limiter.record_usage(0, u32::MAX).await;
        assert!(limiter.state.lock().unwrap().tokens > 1_000_000 * 1_000_000_000);
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
        let err =
            LocalRateLimiter::new(&RateLimits { requests_per_minute: Some(10), request_burst: 20, ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("at most 10"), "{err}");
    }
}
