//! The fleet rate limit against a real nats-server: heavy requests, 429 pauses and bad keys never
//! make a generator wait forever, and a pause is visible to every replica once `hold_off` returns.

use embedfleet_bus::ratelimit::{FleetRateLimit, MAX_HOLD_OFF};
use embedfleet_bus::testing::NatsServer;
use embedfleet_bus::{Bus, BusOptions};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::time::timeout;

async fn bus(nats: &NatsServer) -> Bus {
    Bus::connect(&BusOptions::new(nats.url()).connect_timeout(Duration::from_secs(10))).await.unwrap()
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

async fn stored_tat(bus: &Bus, key: &str) -> u64 {
    let value = bus.rate.get(key).await.unwrap().expect("the key exists");
    std::str::from_utf8(&value).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_request_heavier_than_the_burst_takes_the_whole_bucket_instead_of_hanging() {
    let nats = NatsServer::start();
    let bus = bus(&nats).await;
    // 60,000 tokens a minute (one per ms), 500 at once; every request wants 5,000.
    let limit = FleetRateLimit::new(bus.rate.clone(), "tpm-heavy", 60_000, 500);
    let started = Instant::now();
    for _ in 0..3 {
        timeout(Duration::from_secs(10), limit.acquire(5_000)).await.expect("a heavy request waited forever");
    }
    // The first takes the full bucket at once; each later one waits for it to refill (0.5 s).
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}: heavy requests were not paced");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");

    // The brief's case: --llm-tpm 5000 (burst 500) and a prompt of 2,000 tokens.
    let small = FleetRateLimit::new(bus.rate.clone(), "tpm-5000", 5_000, 500);
    timeout(Duration::from_secs(2), small.acquire(2_064)).await.expect("a long prompt waited forever");
}

#[tokio::test]
async fn a_pause_is_in_force_for_other_replicas_when_hold_off_returns() {
    let nats = NatsServer::start();
    let (a, b) = (bus(&nats).await, bus(&nats).await);
    // 600 a minute with a burst of 4: after an idle spell four could go at once, but not in a pause.
    let refused = FleetRateLimit::new(a.rate.clone(), "rpm-shared", 600, 4);
    let other = FleetRateLimit::new(b.rate.clone(), "rpm-shared", 600, 4);
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
    let limit = FleetRateLimit::new(bus.rate.clone(), "rpm-hostile", 600, 1);

    // A Retry-After of "forever" becomes the longest pause, not an overflow.
    let before = now_us();
    assert!(limit.hold_off(Duration::MAX).await);
    let tat = stored_tat(&bus, "rpm-hostile").await;
    let max = MAX_HOLD_OFF.as_micros() as u64;
    assert!(tat >= before + max && tat <= now_us() + max, "paused until {tat}, now {before}");

    // A TAT beyond anything a grant or pause can set (a hand-edited key, a clock that jumped) is
    // discarded rather than waited for; so is a value that is not a number.
    for bad in [u64::MAX.to_string(), (now_us() + 2 * max).to_string(), "garbage".into()] {
        bus.rate.put("rpm-hostile", bad.clone().into_bytes().into()).await.unwrap();
        timeout(Duration::from_secs(2), limit.acquire(1)).await.unwrap_or_else(|_| panic!("stuck behind TAT {bad:?}"));
    }
    // And a zero weight or a zero limit are treated as one.
    let odd = FleetRateLimit::new(bus.rate.clone(), "rpm-zero", 0, 0);
    timeout(Duration::from_secs(2), odd.acquire(0)).await.unwrap();
}
