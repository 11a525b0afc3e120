//! [`FleetLimiter`]: the generator's [`RateLimiter`] seam backed by the fleet's limits in NATS KV,
//! so N replicas together stay within one provider limit.

use crate::LlmConfig;
use crate::limiter::RateLimiter;
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

/// The fleet's limits: requests and tokens per minute, each one GCRA key in KV.
pub struct FleetLimiter {
    requests: FleetRateLimit,
    tokens: Option<FleetRateLimit>,
}

impl FleetLimiter {
    /// Keys are per endpoint and model: replicas that call the same server under the same name
    /// share its limits, whatever runs they serve.
    pub fn new(bus: &Bus, config: &LlmConfig) -> Self {
        let key = format!("{}-{}", config.base_url, config.model);
        let requests = FleetRateLimit::new(
            bus.rate.clone(),
            &format!("rpm-{key}"),
            config.limits.requests_per_minute.unwrap_or(u32::MAX / 2),
            config.limits.request_burst,
        );
        let tokens = config.limits.tokens_per_minute.map(|tpm| {
            // The local limiter's default burst (a tenth of a minute), so both pace alike.
            let burst = config.limits.token_burst.unwrap_or(tpm / 10).max(1);
            FleetRateLimit::new(bus.rate.clone(), &format!("tpm-{key}"), tpm, burst)
        });
        Self { requests, tokens }
    }
}

impl RateLimiter for FleetLimiter {
    /// Tokens first and the request slot last, as the local limiter does: the moment a request
    /// is let through is the moment it is sent, so a hold-off written meanwhile still applies.
    async fn acquire(&self, tokens: u32) {
        let mut waited = Duration::ZERO;
        if let Some(t) = &self.tokens {
            if tokens > t.burst() {
                tracing::debug!(tokens, burst = t.burst(), "request heavier than the token burst; it takes the whole bucket");
            }
            waited += t.acquire(tokens).await;
        }
        waited += self.requests.acquire(1).await;
        RATE_WAIT.observe(waited.as_secs_f64());
    }

    /// Written to KV before it returns, so the retry that follows waits with everyone else.
    /// When NATS cannot take it, this replica at least waits the pause out itself.
    async fn hold_off(&self, wait: Duration) {
        if !self.requests.hold_off(wait).await {
            tracing::warn!(key = %self.requests.key(), "cannot store the 429 pause in NATS; pausing this replica only");
            tokio::time::sleep(wait.min(embedfleet_bus::ratelimit::MAX_HOLD_OFF)).await;
        }
    }
}
