//! [`FleetLimiter`]: the generator's [`RateLimiter`] seam backed by the fleet's limits in NATS KV,
//! so N replicas together stay within one provider limit.

use crate::LlmConfig;
use crate::limiter::{InvalidRateLimit, RateLimiter};
use embedfleet_bus::Bus;
use embedfleet_bus::ratelimit::FleetRateLimit;
use prometheus::{Histogram, register_histogram};
use std::sync::LazyLock;
use std::time::Duration;

pub(crate) static RATE_WAIT: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "embedfleet_generator_ratelimit_wait_seconds",
        "Time a request waited for the fleet-wide rate limit",
        vec![0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
    )
    .expect("registers once")
});

/// The fleet's limits: requests and tokens per minute, granted together from one KV key.
pub struct FleetLimiter {
    limit: FleetRateLimit,
}

impl FleetLimiter {
    /// Keys are per endpoint and model: replicas that call the same server under the same name
    /// share its limits, whatever runs they serve. `config.limits` must be valid
    /// ([`crate::RateLimits::pacing`]); every binary checks it before it connects.
    pub fn new(bus: &Bus, config: &LlmConfig) -> Result<Self, InvalidRateLimit> {
        let key = format!("limit-{}-{}", config.base_url, config.model);
        Ok(Self { limit: FleetRateLimit::new(bus.rate.clone(), &key, config.limits.pacing()?) })
    }
}

impl RateLimiter for FleetLimiter {
    async fn acquire(&self, tokens: u32) {
        if let Some(t) = &self.limit.limits().tokens
            && tokens > t.burst()
        {
            tracing::debug!(tokens, burst = t.burst(), "request heavier than the token burst; it waits for a full bucket");
        }
        RATE_WAIT.observe(self.limit.acquire(tokens).await.as_secs_f64());
    }

    /// Written to KV before it returns, so the retry that follows waits with everyone else.
    /// When NATS cannot take it, this replica at least waits the pause out itself.
    async fn hold_off(&self, wait: Duration) {
        if !self.limit.hold_off(wait).await {
            tracing::warn!(key = %self.limit.key(), "cannot store the 429 pause in NATS; pausing this replica only");
            tokio::time::sleep(wait.min(embedfleet_bus::ratelimit::MAX_HOLD_OFF)).await;
        }
    }

    /// Tokens used beyond the grant are charged to the fleet's key, so every replica waits for them.
    async fn record_usage(&self, estimated: u32, actual: u32) {
        self.limit.charge_tokens(actual.saturating_sub(estimated)).await;
    }
}
