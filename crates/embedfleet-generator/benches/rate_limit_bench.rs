//! How much of a rate limit the generator uses at each concurrency, against the local test server.
//!
//! With 300 ms per answer and 600 requests per minute (10/s) allowed, one request at a time can
//! reach only 3.3/s; about 3 in flight are needed to use the whole limit, and more must not push
//! the rate past it. Prints, per concurrency, the rate measured at the server and its ratio to
//! the limit (utilization), and chunks per second.
//!
//! With `--faults`, it checks the limit itself instead: `--llm-rpm 60` against a server that
//! answers 15 % of requests with 429 (Retry-After 1 s) and 15 % with 500, for about 100 s, and
//! prints the most requests the server saw in any sliding 60 s window (retries included).
//!
//! `cargo test -p embedfleet-generator --bench rate_limit_bench [-- --chunks 200] [-- --faults]`

use embedfleet_core::generate::generate_questions;
use embedfleet_core::progress::NoProgress;
use embedfleet_core::{Chunk, ChunkId, DocId};
use embedfleet_generator::testing::{ServerBehavior, TestServer};
use embedfleet_generator::{ApiKey, LlmConfig, LlmGenerator, RateLimits};
use std::time::{Duration, Instant};

const LATENCY: Duration = Duration::from_millis(300);
const RPM: u32 = 600;

fn chunks(n: usize) -> Vec<Chunk> {
    let doc = DocId::from("dbench0000000");
    (0..n)
        .map(|i| {
            let text = format!("Benchmark chunk {i} talks about harbors, lanterns and meadows in detail. ").repeat(12);
            let len = text.chars().count();
            Chunk { id: ChunkId::new(&doc, i), doc_id: doc.clone(), text, start: 0, end: len, own_start: 0, own_end: len }
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = args.iter().position(|a| a == "--chunks").and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(200usize);
    if args.iter().any(|a| a == "--faults") {
        return under_faults().await;
    }
    let allowed = f64::from(RPM) / 60.0;
    println!("latency {} ms, limit {RPM} requests/min ({allowed:.1}/s, burst 1), {n} chunks per setting", LATENCY.as_millis());
    println!("{:>11} {:>8} {:>9} {:>13} {:>11} {:>9}", "concurrency", "wall s", "requests", "server req/s", "utilization", "chunks/s");
    for concurrency in [1usize, 4, 16, 64] {
        let server = TestServer::start(ServerBehavior { latency: LATENCY, ..Default::default() }).await.expect("server");
        let generator = LlmGenerator::new(LlmConfig {
            base_url: server.base_url(),
            model: "bench".into(),
            api_key: Some(ApiKey::new("sk-bench", "the benchmark")),
            concurrency,
            limits: RateLimits { requests_per_minute: Some(RPM), request_burst: 1, ..Default::default() },
            ..Default::default()
        })
        .expect("generator");
        let chunks = chunks(n);
        let started = Instant::now();
        let out = generate_questions(&generator, &chunks, 2, &NoProgress).await;
        let wall = started.elapsed().as_secs_f64();
        assert_eq!(out.questions.len(), n, "every chunk answered");

        let times = server.request_times();
        let span = (*times.last().unwrap() - times[0]).as_secs_f64();
        // n arrivals span n-1 intervals.
        let rate = if span > 0.0 { (times.len() - 1) as f64 / span } else { f64::NAN };
        println!(
            "{concurrency:>11} {wall:>8.2} {:>9} {rate:>13.2} {:>10.1}% {:>9.2}",
            times.len(),
            100.0 * rate / allowed,
            n as f64 / wall
        );
    }
}

/// `--llm-rpm 60` under random 429s and 500s: the busiest sliding minute at the server.
async fn under_faults() {
    let rpm = 60;
    let behavior = ServerBehavior {
        latency: Duration::from_millis(200),
        rate_limit_fraction: 0.15,
        server_error_fraction: 0.15,
        seed: 11,
        ..Default::default()
    };
    let server = TestServer::start(behavior).await.expect("server");
    let generator = LlmGenerator::new(LlmConfig {
        base_url: server.base_url(),
        model: "bench".into(),
        api_key: Some(ApiKey::new("sk-bench", "the benchmark")),
        concurrency: 8,
        max_attempts: 20,
        limits: RateLimits { requests_per_minute: Some(rpm), request_burst: 1, ..Default::default() },
        ..Default::default()
    })
    .expect("generator");
    let started = Instant::now();
    let out = generate_questions(&generator, &chunks(70), 2, &NoProgress).await;
    let times = server.request_times();
    println!(
        "--llm-rpm {rpm}, 15 % 429 and 15 % 500: {} requests at the server in {:.1} s for {} chunks; \
         busiest sliding 60 s window: {} requests (limit {rpm}); busiest 1 s: {}",
        times.len(),
        started.elapsed().as_secs_f64(),
        out.questions.len(),
        server.max_in_window(Duration::from_secs(60)),
        server.max_in_window(Duration::from_secs(1)),
    );
}
