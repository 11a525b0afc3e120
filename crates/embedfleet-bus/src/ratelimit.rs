//! The LLM rate limit: exact over every sliding minute, for one process or the whole fleet.
//!
//! Each limit is a GCRA ("virtual scheduling"): the theoretical arrival time (TAT) of the next unit
//! (a request, or a token). A grant of `w` units at `now` is allowed when
//! `max(TAT, now) + w × interval − burst × interval <= now`, and moves TAT to
//! `max(TAT, now) + w × interval`. After any grant, TAT is at most its time plus
//! `burst × interval`, and at least the start of any window plus the units granted in it times the
//! interval. So a window of length `W` holds at most `burst + W / interval` units. [`Pacing`]
//! chooses the interval for a window one [`SEND_SLACK`] longer than the provider's minute:
//! `burst + floor((60 s + SEND_SLACK) / interval) <= per_minute`. A provider that counts requests (or
//! tokens) in any 60 s then never sees more than the limit, retries included, even when a request
//! reaches it up to `SEND_SLACK` after its grant. Even spacing costs 1/61 of the rate at burst 1.
//!
//! Requests and tokens are granted together, in one step ([`Limits::grant`]). A request that got
//! its tokens and then queued for a request slot would be counted by the provider later than it was
//! granted, and the bound above would not hold. A 429 pushes the requests' TAT out, so no grant falls
//! inside the pause: no grant is made and then held back. Held-back grants would all go out together
//! when the pause ended.
//!
//! The arithmetic here is shared by the generator's process-local limiter and by [`FleetRateLimit`].
//! The fleet's limiter keeps both TATs in one JetStream KV key and moves them with a compare-and-set.
//! However many generators run, their grants are spaced as one limiter would space them. Their
//! clocks must agree to within `SEND_SLACK`, which NTP gives.
//!
//! Nothing here waits forever. A request heavier than the token burst could never conform to the
//! burst. It goes once the minute before it has room for it, and is charged in full, so later
//! requests wait for it. Pauses are capped at [`MAX_HOLD_OFF`]. A TAT further out than any grant or pause could
//! have put it (a clock that jumped, a hand-edited key) is discarded.

use async_nats::jetstream::kv;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest pause a 429 can impose on the fleet.
pub const MAX_HOLD_OFF: Duration = Duration::from_secs(600);

/// How late after its grant a request may reach the provider and still be within the limit: the
/// time to send it (a KV round trip, the HTTP connection) and the skew between generators' clocks.
pub const SEND_SLACK: Duration = Duration::from_secs(1);

/// The window the spacing is computed for, in nanoseconds: a minute plus [`SEND_SLACK`].
const WINDOW_NS: u64 = 60_000_000_000 + SEND_SLACK.as_nanos() as u64;

/// How long to wait before reading the key again when NATS does not answer.
const UNREACHABLE_RETRY: Duration = Duration::from_millis(200);

/// A limit that is not one: `per_minute` below `burst`, or zero.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate limit: {0}")]
pub struct InvalidRateLimit(pub String);

/// The GCRA spacing of one limit, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    interval_ns: u64,
    burst: u64,
    /// The most units one grant is charged: a minute's worth.
    per_minute: u64,
}

impl Pacing {
    /// `per_minute` units in any minute, `burst` of them at once after an idle spell. `what` names
    /// the limit in errors ("requests", "tokens").
    pub fn per_minute(per_minute: u32, burst: u32, what: &str) -> Result<Self, InvalidRateLimit> {
        if per_minute == 0 {
            return Err(InvalidRateLimit(format!("{what} per minute must be at least 1 (leave it unset for no limit)")));
        }
        if burst == 0 {
            return Err(InvalidRateLimit(format!("the {what} burst must be at least 1")));
        }
        if burst > per_minute {
            return Err(InvalidRateLimit(format!(
                "a {what} burst of {burst} is more than the {per_minute} a minute allows; use at most {per_minute}"
            )));
        }
        // The smallest interval with burst + floor(WINDOW / interval) <= per_minute.
        let slots = u64::from(per_minute - burst) + 1;
        Ok(Self { interval_ns: WINDOW_NS / slots + 1, burst: u64::from(burst), per_minute: u64::from(per_minute) })
    }

    /// No limit: every grant is allowed, but a pause ([`Pacing::held_until`]) still holds.
    pub fn unlimited() -> Self {
        Self { interval_ns: 0, burst: 1, per_minute: u64::MAX }
    }

    /// The time between two units once the burst is spent.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval_ns)
    }

    pub fn burst(&self) -> u32 {
        u32::try_from(self.burst).unwrap_or(u32::MAX)
    }

    /// `Ok(new TAT)` when `weight` units may go at `now`, `Err(time)` when not before `time`.
    ///
    /// A weight above the burst could never conform to `TAT - burst × interval <= now`. It is
    /// charged in full, and goes once the window that ends with it has room for it. The units
    /// granted since any time `t` are at most `(TAT - t) / interval`, so the window before `now`
    /// holds at most `(TAT - now + WINDOW) / interval`. That plus the weight must stay within the
    /// minute's units. Above a minute's worth it is charged as a minute's worth.
    pub fn grant(&self, tat: u64, now: u64, weight: u32) -> Result<u64, u64> {
        let weight = u64::from(weight).clamp(1, self.per_minute);
        let next = tat.max(now).saturating_add(self.interval_ns.saturating_mul(weight));
        let allowed_at = if weight <= self.burst {
            next.saturating_sub(self.interval_ns.saturating_mul(self.burst))
        } else {
            tat.saturating_add(WINDOW_NS).saturating_sub(self.interval_ns.saturating_mul(self.per_minute - weight))
        };
        if allowed_at <= now { Ok(next) } else { Err(allowed_at) }
    }

    /// The TAT that makes the next unit-weight grant fall exactly at `until`, whatever the burst.
    pub fn held_until(&self, until: u64) -> u64 {
        until.saturating_add(self.interval_ns.saturating_mul(self.burst - 1))
    }

    /// The TAT after `extra` units are charged at `now` that no grant paid for (a request that used
    /// more tokens than it asked for).
    pub fn charge(&self, tat: u64, now: u64, extra: u32) -> u64 {
        tat.max(now).saturating_add(self.interval_ns.saturating_mul(u64::from(extra)))
    }

    /// The furthest a TAT can legitimately be from `now`: a minute's grants plus the longest pause.
    fn horizon(&self, now: u64) -> u64 {
        now.saturating_add(2 * WINDOW_NS).saturating_add(MAX_HOLD_OFF.as_nanos() as u64)
    }
}

/// Both TATs of a limit, in nanoseconds on the limiter's clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitState {
    pub requests: u64,
    pub tokens: u64,
}

/// The requests and tokens limits of one provider, granted together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub requests: Pacing,
    pub tokens: Option<Pacing>,
}

impl Limits {
    /// `Ok(new state)` when a request of `tokens` tokens may be sent at `now`, `Err(time)` when not
    /// before `time`.
    pub fn grant(&self, state: LimitState, now: u64, tokens: u32) -> Result<LimitState, u64> {
        let requests = self.requests.grant(state.requests, now, 1);
        let token_grant = match &self.tokens {
            Some(t) => t.grant(state.tokens, now, tokens),
            None => Ok(state.tokens),
        };
        match (requests, token_grant) {
            (Ok(requests), Ok(tokens)) => Ok(LimitState { requests, tokens }),
            (Err(a), Err(b)) => Err(a.max(b)),
            (Err(a), Ok(_)) | (Ok(_), Err(a)) => Err(a),
        }
    }

    /// The state after a 429 at `now` that asked for `pause`: no request is granted before it ends.
    pub fn hold_off(&self, state: LimitState, now: u64, pause: Duration) -> LimitState {
        let pause = u64::try_from(pause.min(MAX_HOLD_OFF).as_nanos()).unwrap_or(u64::MAX);
        let held = self.requests.held_until(now.saturating_add(pause));
        LimitState { requests: state.requests.max(held), ..state }
    }

    /// The state after a request used `extra` tokens more than its grant was charged.
    pub fn charge_tokens(&self, state: LimitState, now: u64, extra: u32) -> LimitState {
        match &self.tokens {
            Some(t) if extra > 0 => LimitState { tokens: t.charge(state.tokens, now, extra), ..state },
            _ => state,
        }
    }

    /// The state with any TAT further out than a grant or pause could have put it reset.
    fn sane(&self, state: LimitState, now: u64) -> LimitState {
        let requests = if state.requests > self.requests.horizon(now) { 0 } else { state.requests };
        let tokens = match &self.tokens {
            Some(t) if state.tokens > t.horizon(now) => 0,
            _ => state.tokens,
        };
        if (requests, tokens) != (state.requests, state.tokens) {
            tracing::warn!(?state, now, "rate limit further out than any grant or pause; resetting it");
        }
        LimitState { requests, tokens }
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// One provider's limits for the whole fleet, in one KV key: `"<requests TAT> <tokens TAT>"`, in
/// nanoseconds since the Unix epoch.
#[derive(Clone)]
pub struct FleetRateLimit {
    kv: kv::Store,
    key: String,
    limits: Limits,
}

impl FleetRateLimit {
    pub fn new(kv: kv::Store, key: &str, limits: Limits) -> Self {
        let key = key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
        Self { kv, key, limits }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The state and the revision to compare-and-set against; `Err` when NATS did not answer. A
    /// value that does not parse counts as an idle limit.
    async fn read(&self) -> Result<(LimitState, Option<u64>), kv::EntryError> {
        Ok(match self.kv.entry(&self.key).await? {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let text = std::str::from_utf8(&entry.value).unwrap_or("");
                let mut parts = text.split_whitespace().map(|p| p.parse::<u64>().ok());
                let state = match (parts.next().flatten(), parts.next().flatten()) {
                    (Some(requests), Some(tokens)) => LimitState { requests, tokens },
                    _ => LimitState::default(),
                };
                (state, Some(entry.revision))
            }
            Some(entry) => (LimitState::default(), Some(entry.revision)),
            None => (LimitState::default(), None),
        })
    }

    async fn write(&self, state: LimitState, revision: Option<u64>) -> bool {
        let value = format!("{} {}", state.requests, state.tokens).into_bytes().into();
        match revision {
            Some(rev) => self.kv.update(&self.key, value, rev).await.is_ok(),
            None => self.kv.create(&self.key, value).await.is_ok(),
        }
    }

    /// Moves the state with `change` (given the state read and now) by compare-and-set; `Ok(None)`
    /// from `change` means wait until the time it gives and try again. Returns once written.
    async fn update(&self, mut change: impl FnMut(LimitState, u64) -> Result<LimitState, u64>) {
        loop {
            let (state, revision) = match self.read().await {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(key = %self.key, error = %e, "fleet rate limit unreadable; retrying");
                    tokio::time::sleep(UNREACHABLE_RETRY).await;
                    continue;
                }
            };
            let now = now_ns();
            match change(self.limits.sane(state, now), now) {
                Ok(next) if next == state && revision.is_some() => return,
                Ok(next) => {
                    if self.write(next, revision).await {
                        return;
                    }
                    // Another generator moved the key first: read again.
                }
                // Wake at most every 5 s: a pause another replica shortens is seen soon enough.
                Err(at) => tokio::time::sleep(Duration::from_nanos(at.saturating_sub(now).min(5_000_000_000))).await,
            }
        }
    }

    /// Waits until a request of `tokens` tokens may be sent, takes its grant, and returns how long
    /// it waited.
    pub async fn acquire(&self, tokens: u32) -> Duration {
        let started = std::time::Instant::now();
        let limits = self.limits;
        self.update(|state, now| limits.grant(state, now, tokens)).await;
        started.elapsed()
    }

    /// Nobody starts a request before `now + pause` (a 429's Retry-After, at most
    /// [`MAX_HOLD_OFF`]). Returns true once the pause is stored in KV, so a caller that retries
    /// after this returns is held back with everyone else; false when NATS could not be reached
    /// (the caller should then wait out the pause itself).
    pub async fn hold_off(&self, pause: Duration) -> bool {
        for _ in 0..20 {
            let Ok((state, revision)) = self.read().await else {
                tokio::time::sleep(UNREACHABLE_RETRY / 4).await;
                continue;
            };
            let now = now_ns();
            let state = self.limits.sane(state, now);
            let held = self.limits.hold_off(state, now, pause);
            if (held == state && revision.is_some()) || self.write(held, revision).await {
                return true;
            }
        }
        false
    }

    /// Charges `extra` tokens a request used beyond its grant, so the requests after it wait for
    /// them. Best effort: when NATS cannot take it, the grant stays as it was.
    pub async fn charge_tokens(&self, extra: u32) {
        if extra == 0 || self.limits.tokens.is_none() {
            return;
        }
        for _ in 0..20 {
            let Ok((state, revision)) = self.read().await else { return };
            let now = now_ns();
            if self.write(self.limits.charge_tokens(self.limits.sane(state, now), now, extra), revision).await {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    /// Grants every unit as soon as it is allowed, from `start`, and returns their times.
    fn greedy(pacing: &Pacing, count: usize) -> Vec<u64> {
        let (mut tat, mut now, mut times) = (0, 10 * SECOND, Vec::new());
        while times.len() < count {
            match pacing.grant(tat, now, 1) {
                Ok(next) => {
                    tat = next;
                    times.push(now);
                }
                Err(at) => now = at,
            }
        }
        times
    }

    #[test]
    fn no_sliding_minute_plus_the_slack_holds_more_than_the_limit() {
        for (per_minute, burst) in [(60, 1), (61, 1), (600, 4), (3, 3), (1, 1), (10_000, 1_000), (59, 2)] {
            let pacing = Pacing::per_minute(per_minute, burst, "requests").unwrap();
            let n = per_minute as usize * 3;
            let times = greedy(&pacing, n);
            // per_minute + 1 grants never fit in a closed window of WINDOW_NS.
            for w in times.windows(per_minute as usize + 1) {
                assert!(
                    w[per_minute as usize] - w[0] > WINDOW_NS,
                    "{per_minute}/{burst}: {} grants within {} ns",
                    per_minute + 1,
                    w[per_minute as usize] - w[0]
                );
            }
            // And the limit is used: the first minute's grants are within one of it.
            let in_first = times.iter().filter(|&&t| t < times[0] + WINDOW_NS).count();
            assert!(in_first + 1 >= per_minute as usize, "{per_minute}/{burst}: only {in_first} in the first window");
        }
    }

    #[test]
    fn bursts_larger_than_the_limit_and_zeros_are_refused() {
        assert!(Pacing::per_minute(0, 1, "requests").is_err());
        assert!(Pacing::per_minute(10, 0, "requests").is_err());
        let err = Pacing::per_minute(10, 11, "tokens").unwrap_err().to_string();
        assert!(err.contains("at most 10"), "{err}");
    }

    #[test]
    fn a_heavy_grant_waits_for_room_in_its_minute_and_is_charged_in_full() {
        let p = Pacing::per_minute(6_000, 100, "tokens").unwrap();
        let now = 100 * SECOND;
        let after = p.grant(0, now, 1_000).expect("an idle minute takes it");
        assert_eq!(after, now + 1_000 * p.interval_ns);
        // A unit waits until only the burst is left of the heavy grant.
        assert_eq!(p.grant(after, now, 1), Err(after + p.interval_ns - 100 * p.interval_ns));
        // Another heavy one waits until the minute before it has room for it.
        assert_eq!(p.grant(after, now + 1, 1_000), Err(after + WINDOW_NS - 5_000 * p.interval_ns));
    }

    #[test]
    fn a_pause_holds_every_grant_and_the_unlimited_too() {
        let limits = Limits { requests: Pacing::unlimited(), tokens: None };
        let now = 50 * SECOND;
        let held = limits.hold_off(LimitState::default(), now, Duration::from_secs(3));
        assert_eq!(limits.grant(held, now + SECOND, 1), Err(now + 3 * SECOND));
        assert!(limits.grant(held, now + 3 * SECOND, 1).is_ok());
        // Hostile pauses are capped, never overflow.
        let far = limits.hold_off(LimitState::default(), u64::MAX - 5, Duration::MAX);
        assert_eq!(far.requests, u64::MAX);
    }
}
