//! The rate limit is exact: in every sliding 60 s window the provider sees at most `--llm-rpm`
//! requests and `--llm-tpm` tokens, retries included. A simulation in tokio's paused time drives
//! the process's limiter as the generator does (`generator.rs`, `ask`). Several tasks acquire,
//! send, and meet random schedules of 429s (with and without Retry-After), 500s, and answers longer
//! than planned. Each request reaches the "provider" up to `SEND_SLACK` after its grant, at a random
//! point. The test counts what arrives in every window that starts at an arrival.

use embedfleet_bus::ratelimit::SEND_SLACK;
use embedfleet_generator::limiter::backoff_delay;
use embedfleet_generator::{LocalRateLimiter, RateLimiter, RateLimits};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use tokio::time::Instant;

const MINUTE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Schedule {
    rpm: u32,
    request_burst: u32,
    tpm: Option<u32>,
    tasks: usize,
    p_429: f64,
    p_500: f64,
    seed: u64,
}

fn schedules() -> impl Strategy<Value = Schedule> {
    (5u32..400, 1u32..6, prop::option::of(2_000u32..40_000), 1usize..24, 0.0..0.3f64, 0.0..0.3f64, any::<u64>()).prop_map(
        |(rpm, burst, tpm, tasks, p_429, p_500, seed)| Schedule { rpm, request_burst: burst.min(rpm), tpm, tasks, p_429, p_500, seed },
    )
}

/// Arrivals at the provider: (time, tokens counted), over three simulated minutes.
fn simulate(s: &Schedule) -> Vec<(Instant, u32)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
    runtime.block_on(async {
        let limits =
            RateLimits { requests_per_minute: Some(s.rpm), request_burst: s.request_burst, tokens_per_minute: s.tpm, token_burst: None };
        let limiter = Rc::new(LocalRateLimiter::new(&limits).unwrap());
        let rng = Rc::new(RefCell::new(StdRng::seed_from_u64(s.seed)));
        let arrivals = Rc::new(RefCell::new(Vec::new()));
        let end = Instant::now() + 3 * MINUTE;
        let local = tokio::task::LocalSet::new();
        for _ in 0..s.tasks {
            let (limiter, rng, arrivals, s) = (limiter.clone(), rng.clone(), arrivals.clone(), s.clone());
            local.spawn_local(async move {
                let mut attempt = 0;
                while Instant::now() < end {
                    // A prompt of 50–600 tokens plus max_tokens 200: what the provider counts.
                    let planned = rng.borrow_mut().random_range(50..600) + 200;
                    limiter.acquire(planned).await;
                    attempt += 1;
                    let (delay, outcome, used) = {
                        let mut r = rng.borrow_mut();
                        let delay = SEND_SLACK.mul_f64(r.random::<f64>());
                        let roll = r.random::<f64>();
                        // Usage beyond the plan (a prompt the estimate undercounted) now and then.
                        let used = if r.random_bool(0.1) { planned + r.random_range(0..300) } else { planned - r.random_range(0..150) };
                        (delay, roll, used)
                    };
                    arrivals.borrow_mut().push((Instant::now() + delay, planned));
                    if outcome < s.p_429 {
                        let retry_after = if rng.borrow_mut().random_bool(0.5) {
                            Duration::from_millis(rng.borrow_mut().random_range(0..5_000))
                        } else {
                            backoff_delay(attempt, Duration::from_millis(500), Duration::from_secs(20))
                        };
                        limiter.hold_off(retry_after).await;
                    } else if outcome < s.p_429 + s.p_500 {
                        tokio::time::sleep(backoff_delay(attempt, Duration::from_millis(500), Duration::from_secs(20))).await;
                    } else {
                        limiter.record_usage(planned, used).await;
                        attempt = 0;
                    }
                }
            });
        }
        local.await;
        let mut arrivals = arrivals.borrow().clone();
        arrivals.sort_by_key(|a| a.0);
        arrivals
    })
}

/// The most requests and tokens any closed 60 s window holds.
fn busiest_minute(arrivals: &[(Instant, u32)]) -> (usize, u64) {
    let (mut most_requests, mut most_tokens) = (0, 0);
    let mut end = 0;
    let mut tokens: u64 = 0;
    for (i, (start, _)) in arrivals.iter().enumerate() {
        while end < arrivals.len() && arrivals[end].0 - *start <= MINUTE {
            tokens += u64::from(arrivals[end].1);
            end += 1;
        }
        most_requests = most_requests.max(end - i);
        most_tokens = most_tokens.max(tokens);
        tokens -= u64::from(arrivals[i].1);
    }
    (most_requests, most_tokens)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn no_sliding_minute_passes_the_limits(s in schedules()) {
        let arrivals = simulate(&s);
        let (requests, tokens) = busiest_minute(&arrivals);
        prop_assert!(requests <= s.rpm as usize, "{requests} requests in one minute against --llm-rpm {}: {s:?}", s.rpm);
        if let Some(tpm) = s.tpm {
            // Usage beyond the plan is charged after the request; every grant before it was exact.
            // The check is on what each request asked for (prompt + max_tokens), as providers count.
            prop_assert!(tokens <= u64::from(tpm), "{tokens} tokens in one minute against --llm-tpm {tpm}: {s:?}");
        }
        prop_assert!(!arrivals.is_empty());
    }
}

#[test]
fn the_limit_is_used_not_just_kept() {
    // No errors, plenty of tasks: the busiest minute is within 2 % of --llm-rpm 120.
    let s = Schedule { rpm: 120, request_burst: 1, tpm: None, tasks: 16, p_429: 0.0, p_500: 0.0, seed: 7 };
    let (requests, _) = busiest_minute(&simulate(&s));
    assert!((118..=120).contains(&requests), "{requests} requests in the busiest minute");
}
