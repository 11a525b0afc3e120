//! One LLM rate limit for the whole fleet. Each limit is a GCRA ("virtual scheduling") kept in one
//! JetStream KV key: the theoretical arrival time (TAT) of the next request. A generator may send
//! when `TAT - burst × interval <= now`, and moves TAT on by `interval × weight` with a
//! compare-and-set on the key's revision; a lost race re-reads and tries again. However many
//! generators run, grants are spaced as one limiter would space them, so the fleet's requests in
//! any minute stay within the limit (plus the burst). A 429 pushes the TAT out for everyone.

use async_nats::jetstream::kv;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone)]
pub struct FleetRateLimit {
    kv: kv::Store,
    key: String,
    interval_us: u64,
    burst: u64,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

impl FleetRateLimit {
    /// `per_minute` units (requests or tokens) a minute, `burst` at once after an idle spell.
    pub fn new(kv: kv::Store, key: &str, per_minute: u32, burst: u32) -> Self {
        let key = key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
        Self { kv, key, interval_us: 60_000_000 / per_minute.max(1) as u64, burst: burst.max(1) as u64 }
    }

    async fn read(&self) -> (u64, Option<u64>) {
        match self.kv.entry(&self.key).await {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                let tat = std::str::from_utf8(&entry.value).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
                (tat, Some(entry.revision))
            }
            Ok(Some(entry)) => (0, Some(entry.revision)),
            _ => (0, None),
        }
    }

    async fn write(&self, tat: u64, revision: Option<u64>) -> bool {
        let value = tat.to_string().into_bytes().into();
        match revision {
            Some(rev) => self.kv.update(&self.key, value, rev).await.is_ok(),
            None => self.kv.create(&self.key, value).await.is_ok(),
        }
    }

    /// Waits until `weight` units may be spent, spends them, and returns how long it waited.
    pub async fn acquire(&self, weight: u32) -> Duration {
        let started = std::time::Instant::now();
        let cost = self.interval_us * weight.max(1) as u64;
        loop {
            let (tat, revision) = self.read().await;
            let now = now_us();
            let next = tat.max(now) + cost;
            let allowed_at = next.saturating_sub(self.interval_us * self.burst);
            if allowed_at > now {
                tokio::time::sleep(Duration::from_micros((allowed_at - now).min(5_000_000))).await;
                continue;
            }
            if self.write(next, revision).await {
                return started.elapsed();
            }
            // Another generator took the slot first: read again.
        }
    }

    /// Nobody sends before `now + pause` (a 429's Retry-After).
    pub async fn hold_off(&self, pause: Duration) {
        let until = now_us() + pause.as_micros() as u64;
        for _ in 0..20 {
            let (tat, revision) = self.read().await;
            if tat >= until || self.write(until, revision).await {
                return;
            }
        }
    }
}
