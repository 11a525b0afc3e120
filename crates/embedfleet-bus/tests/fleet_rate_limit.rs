//! The fleet rate limit against a real nats-server: replicas together stay within the limit, heavy
//! requests, 429 pauses and bad keys never make a generator wait forever, and a pause is visible to
//! every replica once `hold_off` returns.

use embedfleet_bus::ratelimit::{FleetRateLimit, Limits, MAX_HOLD_OFF, Pacing};
use embedfleet_bus::testing::NatsServer;
use embedfleet_bus::{Bus, BusOptions};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::time::timeout;

async fn bus(nats: &NatsServer) -> Bus {
    Bus::connect(&BusOptions::new(nats.url()).connect_timeout(Duration::from_secs(10))).await.unwrap()
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn requests(per_minute: u32, burst: u32) -> Limits {
    Limits { requests: Pacing::per_minute(per_minute, burst, "requests").unwrap(), tokens: None }
}

fn tokens(per_minute: u32, burst: u32) -> Limits {
    Limits { requests: Pacing::unlimited(), tokens: Some(Pacing::per_minute(per_minute, burst, "tokens").unwrap()) }
}

/// The requests TAT stored under `key`.
async fn stored_requests_tat(bus: &Bus, key: &str) -> u64 {
    let value = bus.rate.get(key).await.unwrap().expect("the key exists");
    std::str::from_utf8(&value).unwrap().split_whitespace().next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn three_replicas_together_are_spaced_as_one_limiter() {
    let nats = NatsServer::start();
    // 1,200 a minute, burst 1: one grant every 61 s / 1,200 = 50.8 ms, whoever asks.
    let limits = requests(1_200, 1);
    let interval = limits.requests.interval();
    let granted = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let limit = FleetRateLimit::new(bus(&nats).await.rate.clone(), "limit-shared", limits);
        for _ in 0..4 {
            let (limit, granted) = (limit.clone(), granted.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..5 {
                    limit.acquire(1).await;
                    granted.lock().unwrap().push(Instant::now());
                }
            }));
        }
    }
    for t in tasks {
        timeout(Duration::from_secs(30), t).await.expect("the replicas finished").unwrap();
    }
    let mut times = granted.lock().unwrap().clone();
    times.sort();
    assert_eq!(times.len(), 60);
    // 60 grants need at least 59 intervals; a KV round trip of jitter is allowed at either end.
    let span = times[59] - times[0];
    assert!(span + Duration::from_millis(40) >= interval * 59, "60 grants within {span:?}");
    // No second holds more than one second of grants (plus the jitter).
    let per_window = (Duration::from_millis(1_040).as_nanos() / interval.as_nanos()) as usize + 1;
    for (i, start) in times.iter().enumerate() {
        let inside = times[i..].iter().take_while(|t| **t - *start <= Duration::from_secs(1)).count();
        assert!(inside <= per_window, "{inside} grants in one second, at most {per_window}");
    }
}

#[tokio::test]
async fn a_request_heavier_than_the_burst_waits_for_a_full_bucket_instead_of_hanging() {
    let nats = NatsServer::start();
    let bus = bus(&nats).await;
    // 60,000 tokens a minute (about one a ms), 500 at once; every request wants 1,000.
    let limit = FleetRateLimit::new(bus.rate.clone(), "limit-heavy", tokens(60_000, 500));
    let started = Instant::now();
    for _ in 0..2 {
        timeout(Duration::from_secs(10), limit.acquire(1_000)).await.expect("a heavy request waited forever");
    }
    // The first goes at once and is charged in full; the second waits until it is paid (~1 s).
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(950), "{elapsed:?}: heavy requests were not paced");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");

    // The brief's case: --llm-tpm 5000 (burst 500) and a prompt of 2,000 tokens.
    let small = FleetRateLimit::new(bus.rate.clone(), "limit-5000", tokens(5_000, 500));
    timeout(Duration::from_secs(2), small.acquire(2_064)).await.expect("a long prompt waited forever");
}

#[tokio::test]
async fn a_pause_is_in_force_for_other_replicas_when_hold_off_returns() {
    let nats = NatsServer::start();
    let (a, b) = (bus(&nats).await, bus(&nats).await);
    // 600 a minute with a burst of 4: after an idle spell four could go at once, but not in a pause.
    let refused = FleetRateLimit::new(a.rate.clone(), "limit-shared", requests(600, 4));
    let other = FleetRateLimit::new(b.rate.clone(), "limit-shared", requests(600, 4));
    assert!(refused.hold_off(Duration::from_millis(800)).await, "the pause was stored");
    let started = Instant::now();
    other.acquire(1).await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(750), "another replica started {waited:?} into an 800 ms pause");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
}

#[tokio::test]
async fn hostile_pauses_and_keys_are_bounded() {
    let nats = NatsServer::start();
    let bus = bus(&nats).await;
    let limit = FleetRateLimit::new(bus.rate.clone(), "limit-hostile", requests(600, 1));

    // A Retry-After of "forever" becomes the longest pause, not an overflow.
    let before = now_ns();
    assert!(limit.hold_off(Duration::MAX).await);
    let tat = stored_requests_tat(&bus, "limit-hostile").await;
    let max = MAX_HOLD_OFF.as_nanos() as u64;
    assert!(tat >= before + max && tat <= now_ns() + max, "paused until {tat}, now {before}");

    // A TAT beyond anything a grant or pause can set (a hand-edited key, a clock that jumped) is
    // discarded rather than waited for; so is a value that is not a number.
    for bad in [format!("{} 0", u64::MAX), format!("{} 0", now_ns() + 2 * max), "garbage".into(), "1".into()] {
        bus.rate.put("limit-hostile", bad.clone().into_bytes().into()).await.unwrap();
        timeout(Duration::from_secs(2), limit.acquire(1)).await.unwrap_or_else(|_| panic!("stuck behind TAT {bad:?}"));
    }
    // A zero weight is charged as one.
    let tokens_limit = FleetRateLimit::new(bus.rate.clone(), "limit-zero", tokens(600, 1));
    timeout(Duration::from_secs(2), tokens_limit.acquire(0)).await.unwrap();
}
