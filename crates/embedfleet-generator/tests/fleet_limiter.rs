//! The generator paced by the fleet's limits in a real nats-server, against the local
//! OpenAI-compatible server: a long prompt under a small token limit is sent, and a 429's pause is
//! in KV before the retry goes out.

mod common;

use common::{chunk_with, config};
use embedfleet_bus::testing::NatsServer;
use embedfleet_bus::{Bus, BusOptions};
use embedfleet_core::generate::generate_questions;
use embedfleet_core::progress::NoProgress;
use embedfleet_generator::fleet_limiter::FleetLimiter;
use embedfleet_generator::testing::{Fault, ServerBehavior, TestServer};
use embedfleet_generator::{LlmConfig, LlmGenerator, RateLimits};
use std::time::Duration;

async fn bus(nats: &NatsServer) -> Bus {
    Bus::connect(&BusOptions::new(nats.url()).connect_timeout(Duration::from_secs(10))).await.unwrap()
}

#[tokio::test]
async fn a_long_prompt_under_a_small_token_limit_is_sent() {
    let nats = NatsServer::start();
    let server = TestServer::start(ServerBehavior::default()).await.unwrap();
    // --llm-tpm 5000: a bucket of 500 tokens, and a chunk of about 2,000.
    let config = LlmConfig {
        limits: RateLimits { requests_per_minute: Some(500), tokens_per_minute: Some(5_000), ..Default::default() },
        ..config(&server)
    };
    let limiter = FleetLimiter::new(&bus(&nats).await, &config).unwrap();
    let generator = LlmGenerator::with_limiter(config, limiter).unwrap();
    let long = chunk_with(0, &" and a long tail of words".repeat(320));
    assert!(long.text.chars().count() / 4 > 500 * 3, "the prompt is heavier than the burst");
    let out = tokio::time::timeout(Duration::from_secs(20), generate_questions(&generator, &[long], 2, &NoProgress))
        .await
        .expect("the request waited for a token bucket it can never fit in");
    assert_eq!(out.questions.values().map(Vec::len).sum::<usize>(), 2, "{out:?}");
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn the_retry_after_a_429_waits_for_the_pause() {
    let nats = NatsServer::start();
    let server = TestServer::start(ServerBehavior { retry_after: Some(Duration::from_secs(1)), ..Default::default() }).await.unwrap();
    server.script([Fault::RateLimited]);
    let config =
        LlmConfig { limits: RateLimits { requests_per_minute: Some(6_000), request_burst: 4, ..Default::default() }, ..config(&server) };
    let limiter = FleetLimiter::new(&bus(&nats).await, &config).unwrap();
    let generator = LlmGenerator::with_limiter(config, limiter).unwrap();
    let out = generate_questions(&generator, &[chunk_with(1, "")], 2, &NoProgress).await;
    assert_eq!(out.questions.len(), 1, "{out:?}");
    let requests = server.requests();
    assert_eq!(requests.iter().map(|r| r.status).collect::<Vec<_>>(), [429, 200]);
    let gap = requests[1].at.duration_since(requests[0].at);
    // The pause was stored before the retry asked the limiter, so the retry waited the full second.
    assert!(gap >= Duration::from_millis(950), "retried {gap:?} after a 429 that said 1 s");
    assert_eq!(generator.stats().rate_limited, 1);
}
