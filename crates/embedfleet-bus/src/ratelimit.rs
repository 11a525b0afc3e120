//! One LLM rate limit for the whole fleet. Each limit is a GCRA ("virtual scheduling") kept in one
//! JetStream KV key: the theoretical arrival time (TAT) of the next request. A generator may send
//! when `TAT - burst × interval <= now`, and moves TAT on by `interval × weight` with a
//! compare-and-set on the key's revision; a lost race re-reads and tries again. However many
//! generators run, grants are spaced as one limiter would space them, so the fleet's requests in
//! any minute stay within the limit (plus the burst). A 429 pushes the TAT out for everyone.
//!
//! Nothing here waits forever: a request heavier than the burst takes the whole bucket (it could
//! never conform otherwise), pauses are capped at [`MAX_HOLD_OFF`], and a TAT further out than any
//! grant or pause could have put it (a clock that jumped, a hand-edited key) is discarded.

use async_nats::jetstream::kv;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest pause a 429 can impose on the fleet.
pub const MAX_HOLD_OFF: Duration = Duration::from_secs(600);

/// How long to wait before reading the key again when NATS does not answer.
const UNREACHABLE_RETRY: Duration = Duration::from_millis(200);

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

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl FleetRateLimit {
    /// `per_minute` units (requests or tokens) a minute, `burst` at once after an idle spell.
    pub fn new(kv: kv::Store, key: &str, per_minute: u32, burst: u32) -> Self {
        let key = key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
        Self { kv, key, interval_us: 60_000_000 / per_minute.max(1) as u64, burst: burst.max(1) as u64 }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The units one acquisition may take at most: the burst.
    pub fn burst(&self) -> u32 {
        u32::try_from(self.burst).unwrap_or(u32::MAX)
    }

    /// The TAT and the revision to compare-and-set against; `Err` when NATS did not answer.
    async fn read(&self) -> Result<(u64, Option<u64>), kv::EntryError> {
        Ok(match self.kv.entry(&self.key).await? {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let tat = std::str::from_utf8(&entry.value).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
                (tat, Some(entry.revision))
            }
            Some(entry) => (0, Some(entry.revision)),
            None => (0, None),
        })
    }

    async fn write(&self, tat: u64, revision: Option<u64>) -> bool {
        let value = tat.to_string().into_bytes().into();
        match revision {
            Some(rev) => self.kv.update(&self.key, value, rev).await.is_ok(),
            None => self.kv.create(&self.key, value).await.is_ok(),
        }
    }

    /// The furthest a TAT can legitimately be from `now`: a full bucket plus the longest pause.
    fn horizon(&self, now: u64) -> u64 {
        now.saturating_add(self.interval_us.saturating_mul(self.burst)).saturating_add(micros(MAX_HOLD_OFF))
    }

    /// Waits until `weight` units may be spent, spends them, and returns how long it waited. A
    /// weight above the burst is charged as the burst: like the local limiter, it waits for the
    /// whole bucket instead of forever (`TAT + weight × interval` would never come within
    /// `burst × interval` of now).
    pub async fn acquire(&self, weight: u32) -> Duration {
        let started = std::time::Instant::now();
        let cost = self.interval_us.saturating_mul(u64::from(weight).clamp(1, self.burst));
        loop {
            let (tat, revision) = match self.read().await {
                Ok(state) => state,
                Err(e) => {
                    tracing::warn!(key = %self.key, error = %e, "fleet rate limit unreadable; retrying");
                    tokio::time::sleep(UNREACHABLE_RETRY).await;
                    continue;
                }
            };
            let now = now_us();
            let tat = if tat > self.horizon(now) {
                tracing::warn!(key = %self.key, tat, now, "fleet rate limit further out than any grant or pause; resetting it");
                0
            } else {
                tat
            };
            let next = tat.max(now).saturating_add(cost);
            let allowed_at = next.saturating_sub(self.interval_us.saturating_mul(self.burst));
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

    /// Nobody starts a request before `now + pause` (a 429's Retry-After, at most
    /// [`MAX_HOLD_OFF`]). Returns true once the pause is stored in KV, so a caller that retries
    /// after this returns is held back with everyone else; false when NATS could not be reached
    /// (the caller should then wait out the pause itself).
    pub async fn hold_off(&self, pause: Duration) -> bool {
        let pause = micros(pause.min(MAX_HOLD_OFF));
        // The TAT that makes the next unit-weight grant fall exactly at `now + pause`, burst or not.
        let held = |now: u64| now.saturating_add(pause).saturating_add(self.interval_us.saturating_mul(self.burst - 1));
        for _ in 0..20 {
            let Ok((tat, revision)) = self.read().await else {
                tokio::time::sleep(UNREACHABLE_RETRY / 4).await;
                continue;
            };
            let until = held(now_us());
            if tat >= until || self.write(until, revision).await {
                return true;
            }
        }
        false
    }
}
