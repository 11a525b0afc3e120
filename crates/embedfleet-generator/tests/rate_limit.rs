//! The pace measured where the provider measures it: request arrival times at the server.
//!
//! The limiter's GCRA with `r` per minute and burst `b` lets at most `b + w·r/60` requests start in
//! any window of length `w` (see `embedfleet_bus::ratelimit`). Arrivals can only be later than
//! starts, never earlier by more than scheduling noise, so the same bound holds at the server. The
//! exact per-minute bound, over random faults, is `rate_limit_exact.rs`.

mod common;

use common::{chunks, config};
use embedfleet_core::generate::generate_questions;
use embedfleet_core::progress::NoProgress;
use embedfleet_generator::generator::estimate_tokens;
use embedfleet_generator::testing::{ServerBehavior, TestServer};
use embedfleet_generator::{LlmConfig, LlmGenerator, PromptTemplate, RateLimits};
use std::time::Duration;

#[tokio::test]
async fn requests_per_minute_is_never_exceeded() {
    let server = TestServer::start(ServerBehavior { latency: Duration::from_millis(20), ..Default::default() }).await.unwrap();
    let (rpm, burst) = (120, 2);
    let generator = LlmGenerator::new(LlmConfig {
        limits: RateLimits { requests_per_minute: Some(rpm), request_burst: burst, ..Default::default() },
        // Far more concurrency than the limit allows, so only the limiter holds requests back.
        concurrency: 16,
        ..config(&server)
    })
    .unwrap();
    let n = 8;
    let out = generate_questions(&generator, &chunks(n), 2, &NoProgress).await;
    assert_eq!(out.questions.len(), n);

    // 2 per second after a burst of 2: no 1 s window may hold more than 2 + 2.
    let per_second = rpm as usize / 60;
    let worst = server.max_in_window(Duration::from_secs(1));
    assert!(worst <= burst as usize + per_second, "{worst} requests in one second");
    // And the limiter really held them back: 8 requests at 2/s after a burst of 2 span ≥ 3 s.
    let times = server.request_times();
    let span = *times.last().unwrap() - times[0];
    let least = Duration::from_millis(500) * (n as u32 - burst);
    assert!(span + Duration::from_millis(20) >= least, "{n} requests within {span:?}");
}

#[tokio::test]
async fn tokens_per_minute_is_never_exceeded() {
    let server = TestServer::start(ServerBehavior::default()).await.unwrap();
    // 1000 tokens a second, 400 at once; each request plans for its prompt plus max_tokens.
    let (tpm, token_burst) = (60_000u32, 400u32);
    let max_tokens = 64;
    let generator = LlmGenerator::new(LlmConfig {
        limits: RateLimits { tokens_per_minute: Some(tpm), token_burst: Some(token_burst), ..Default::default() },
        max_tokens,
        concurrency: 16,
        ..config(&server)
    })
    .unwrap();
    let chunks = chunks(10);
    let planned: Vec<u32> = chunks.iter().map(|c| estimate_tokens(&PromptTemplate::default().render(&c.text, 2)) + max_tokens).collect();
    let out = generate_questions(&generator, &chunks, 2, &NoProgress).await;
    assert_eq!(out.questions.len(), chunks.len());

    let smallest = *planned.iter().min().unwrap();
    let allowed = (token_burst + tpm / 60) / smallest;
    let worst = server.max_in_window(Duration::from_secs(1)) as u32;
    assert!(worst <= allowed, "{worst} requests of ≥{smallest} tokens in one second; the bound allows {allowed}");
    let total: u32 = planned.iter().sum();
    let times = server.request_times();
    let span = (*times.last().unwrap() - times[0]).as_secs_f64();
    // Everything beyond the burst (less the last request's own share) had to wait for refill.
    let least = f64::from(total - token_burst - planned.iter().max().unwrap()) / f64::from(tpm / 60);
    assert!(span + 0.02 >= least, "{total} tokens within {span:.2} s");
}
