//! The generator against a real HTTP server that speaks the OpenAI API and misbehaves on request.

mod common;

use common::{chunk, chunk_with, chunks, config};
use embedfleet_core::generate::generate_questions;
use embedfleet_core::progress::NoProgress;
use embedfleet_core::{GenerateError, QuestionGenerator};
use embedfleet_generator::testing::{AnswerStyle, Fault, ServerBehavior, TestServer};
use embedfleet_generator::{ApiKey, LlmConfig, LlmGenerator, Pricing, PromptTemplate, write_failures};
use std::time::Duration;

async fn server(behavior: ServerBehavior) -> TestServer {
    TestServer::start(behavior).await.expect("test server starts")
}

#[tokio::test]
async fn every_chunk_gets_its_questions_and_usage_is_counted() {
    let server = server(ServerBehavior::default()).await;
    let generator = LlmGenerator::new(config(&server)).unwrap();
    let chunks = chunks(10);
    let out = generate_questions(&generator, &chunks, 2, &NoProgress).await;
    assert!(out.failures.is_empty() && out.stopped.is_none());
    assert_eq!(out.questions.len(), 10);
    assert!(out.questions.values().all(|q| q.len() == 2));

    let stats = generator.stats();
    assert_eq!((stats.requests, stats.retries, stats.chunks_done, stats.questions), (10, 0, 10, 20));
    assert!(stats.prompt_tokens > 0 && stats.completion_tokens > 0);
    let expected = Pricing::default().cost(stats.prompt_tokens, stats.completion_tokens);
    assert!((stats.cost_usd - expected).abs() < 1e-9);
    assert!(server.requests().iter().all(|r| r.model == "test-model"));
}

#[tokio::test]
async fn injected_429s_and_500s_are_retried_until_every_chunk_is_done() {
    // 10% 429 (Retry-After 20 ms) and 10% 500: one request in five fails.
    let server = server(ServerBehavior {
        rate_limit_fraction: 0.1,
        server_error_fraction: 0.1,
        retry_after: Some(Duration::from_millis(20)),
        seed: 42,
        ..Default::default()
    })
    .await;
    let generator = LlmGenerator::new(LlmConfig { max_attempts: 8, ..config(&server) }).unwrap();
    let chunks = chunks(40);
    let out = generate_questions(&generator, &chunks, 2, &NoProgress).await;
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    assert_eq!(out.questions.len(), 40);
    assert!(out.questions.values().all(|q| q.len() == 2));

    let stats = generator.stats();
    assert!(stats.rate_limited > 0 && stats.server_errors > 0, "{stats:?}");
    assert_eq!(stats.retries, stats.rate_limited + stats.server_errors);
    assert_eq!(stats.requests as usize, server.request_count());
    assert_eq!(stats.requests, 40 + stats.retries);
}

#[tokio::test]
async fn hangs_past_the_timeout_and_malformed_bodies_are_retried() {
    let server = server(ServerBehavior { hang_for: Duration::from_secs(10), ..Default::default() }).await;
    server.script([Fault::Hang, Fault::Malformed]);
    let generator =
        LlmGenerator::new(LlmConfig { request_timeout: Duration::from_millis(300), concurrency: 1, ..config(&server) }).unwrap();
    let questions = generator.questions(&chunk(0), 2).await.unwrap();
    assert_eq!(questions.len(), 2);
    let stats = generator.stats();
    assert_eq!((stats.timeouts, stats.malformed, stats.requests), (1, 1, 3), "{stats:?}");
}

#[tokio::test]
async fn retry_after_pauses_every_request() {
    let server = server(ServerBehavior { retry_after: Some(Duration::from_secs(1)), ..Default::default() }).await;
    server.script([Fault::RateLimited]);
    let generator = LlmGenerator::new(LlmConfig { concurrency: 1, ..config(&server) }).unwrap();
    let out = generate_questions(&generator, &chunks(3), 2, &NoProgress).await;
    assert_eq!(out.questions.len(), 3);

    let requests = server.requests();
    assert_eq!(requests[0].status, 429);
    for later in &requests[1..] {
        let gap = later.at.duration_since(requests[0].at);
        assert!(gap >= Duration::from_secs(1), "a request came {gap:?} after a 429 that said Retry-After: 1");
    }
    assert_eq!(generator.stats().rate_limited, 1);
}

#[tokio::test]
async fn a_chunk_that_always_fails_lands_in_the_failures_file() {
    let server = server(ServerBehavior { fail_prompts_containing: Some("POISON".into()), ..Default::default() }).await;
    let generator = LlmGenerator::new(LlmConfig { max_attempts: 3, ..config(&server) }).unwrap();
    let mut chunks = chunks(5);
    chunks[3] = chunk_with(3, " POISON");
    let out = generate_questions(&generator, &chunks, 2, &NoProgress).await;
    assert_eq!(out.questions.len(), 4);
    assert!(out.stopped.is_none());
    assert_eq!(out.failures.len(), 1);
    assert_eq!(out.failures[0].chunk_id, chunks[3].id);
    assert!(out.failures[0].error.contains("gave up after 3 attempts"), "{}", out.failures[0].error);
    assert!(out.failures[0].error.contains("500"), "{}", out.failures[0].error);
    let poisoned = server.requests().iter().filter(|r| r.prompt.contains("POISON")).count();
    assert_eq!(poisoned, 3, "three attempts, no more");
    assert_eq!(generator.stats().chunks_failed, 1);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("failures.jsonl");
    write_failures(&path, &out.failures).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 1);
    let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(line["chunk_id"], chunks[3].id.as_str());
}

#[tokio::test]
async fn the_budget_stops_new_requests_before_it_is_passed() {
    let server = server(ServerBehavior::default()).await;
    let budget = 1.0;
    let generator = LlmGenerator::new(LlmConfig {
        // $1 per 1k tokens: a request costs about $0.25, so the budget covers a few.
        pricing: Pricing { input_per_1k: 1.0, output_per_1k: 1.0 },
        max_cost_usd: Some(budget),
        concurrency: 1,
        ..config(&server)
    })
    .unwrap();
    let chunks = chunks(20);
    let out = generate_questions(&generator, &chunks, 2, &NoProgress).await;
    let stop = out.stopped.expect("the run stopped");
    assert!(matches!(stop, embedfleet_core::generate::GenerationStop::BudgetReached(_)), "{stop:?}");
    let reason = stop.reason();
    assert!(reason.contains("budget") && reason.contains("reached"), "{reason}");
    let stats = generator.stats();
    assert!(stats.cost_usd <= budget, "spent {} of {budget}", stats.cost_usd);
    assert!(!out.questions.is_empty() && out.questions.len() < chunks.len());
    assert_eq!(server.request_count(), out.questions.len(), "no request was sent for the stopped chunks");
    // It did not stop early: the next request's worst case would have passed the budget.
    let prompt = PromptTemplate::default().render(&chunks[out.questions.len()].text, 2);
    let worst = (embedfleet_generator::generator::estimate_tokens(&prompt) + 64) as f64 / 1000.0;
    assert!(stats.cost_usd + worst > budget);
}

#[tokio::test]
async fn a_rerun_only_asks_for_chunks_not_done_yet() {
    let server = server(ServerBehavior::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = LlmConfig { cache_dir: Some(dir.path().join("cache")), ..config(&server) };

    let first = LlmGenerator::new(settings.clone()).unwrap();
    let done = generate_questions(&first, &chunks(6), 2, &NoProgress).await;
    assert_eq!(server.request_count(), 6);

    let second = LlmGenerator::new(settings.clone()).unwrap();
    let again = generate_questions(&second, &chunks(6), 2, &NoProgress).await;
    assert_eq!(server.request_count(), 6, "every chunk came from the cache");
    assert_eq!(again.questions, done.questions);
    assert_eq!(second.stats().chunks_cached, 6);

    let third = LlmGenerator::new(settings).unwrap();
    let more = generate_questions(&third, &chunks(8), 2, &NoProgress).await;
    assert_eq!(server.request_count(), 8, "only the two new chunks were asked");
    assert_eq!(more.questions.len(), 8);

    // A different question count is a different question: asked again.
    let fourth = LlmGenerator::new(LlmConfig { cache_dir: Some(dir.path().join("cache")), ..config(&server) }).unwrap();
    fourth.questions(&chunk(0), 3).await.unwrap();
    assert_eq!(server.request_count(), 9);
}

#[tokio::test]
async fn a_wrong_key_stops_at_once_without_retries() {
    let server = server(ServerBehavior { require_key: Some("sk-right".into()), ..Default::default() }).await;
    let generator = LlmGenerator::new(LlmConfig {
        api_key: Some(ApiKey::new("sk-wrong", "the environment variable EMBEDFLEET_TEST_KEY")),
        concurrency: 1,
        ..config(&server)
    })
    .unwrap();
    let out = generate_questions(&generator, &chunks(5), 2, &NoProgress).await;
    let stop = out.stopped.expect("a wrong key is fatal");
    assert!(matches!(stop, embedfleet_core::generate::GenerationStop::Fatal(_)), "{stop:?}");
    let reason = stop.reason();
    assert!(reason.contains("401") && reason.contains("EMBEDFLEET_TEST_KEY"), "{reason}");
    assert!(out.questions.is_empty() && out.failures.is_empty());
    assert_eq!(server.request_count(), 1, "no retry, no further chunk");
    assert_eq!(generator.stats().retries, 0);
}

#[tokio::test]
async fn an_unknown_model_is_fatal_and_named() {
    let server = server(ServerBehavior { models: Some(vec!["real-model".into()]), ..Default::default() }).await;
    let generator = LlmGenerator::new(LlmConfig { model: "no-such-model".into(), ..config(&server) }).unwrap();
    match generator.questions(&chunk(0), 2).await {
        Err(GenerateError::Fatal(reason)) => assert!(reason.contains("`no-such-model` not found"), "{reason}"),
        other => panic!("expected a fatal error, got {other:?}"),
    }
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn connection_refused_on_the_first_request_names_the_base_url() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base_url = format!("http://127.0.0.1:{port}/v1");
    let generator =
        LlmGenerator::new(LlmConfig { base_url: base_url.clone(), api_key: Some(ApiKey::new("k", "test")), ..Default::default() }).unwrap();
    // Unavailable, not fatal: a server that is still booting is worth a later try on the fleet.
    match generator.questions(&chunk(0), 2).await {
        Err(GenerateError::Unavailable(reason)) => {
            assert!(reason.contains(&base_url) && reason.contains("cannot connect"), "{reason}")
        }
        other => panic!("expected an unavailable error, got {other:?}"),
    }
    assert_eq!(generator.stats().retries, 0);
}

#[tokio::test]
async fn preambles_duplicates_and_copies_are_dropped_and_counted() {
    let server = server(ServerBehavior {
        style: AnswerStyle { preamble: true, duplicate: true, copied: true, ..Default::default() },
        ..Default::default()
    })
    .await;
    let generator = LlmGenerator::new(config(&server)).unwrap();
    let out = generate_questions(&generator, &chunks(5), 2, &NoProgress).await;
    assert_eq!(out.questions.len(), 5);
    for questions in out.questions.values() {
        assert_eq!(questions.len(), 2);
        assert!(questions.iter().all(|q| q.starts_with("What does passage ")), "{questions:?}");
    }
    let filtered = generator.stats().filtered;
    assert_eq!(filtered.preamble, 10, "'Here are…' and 'I hope…' in each answer");
    assert_eq!(filtered.duplicate_in_chunk, 10);
    assert_eq!(filtered.copied_from_chunk, 5);
    assert_eq!(filtered.total(), 25);
}

#[tokio::test]
async fn a_short_chunk_is_asked_once_more_then_recorded_as_short() {
    let server = server(ServerBehavior { style: AnswerStyle { missing: 1, ..Default::default() }, ..Default::default() }).await;
    let generator = LlmGenerator::new(config(&server)).unwrap();
    let out = generate_questions(&generator, &chunks(4), 3, &NoProgress).await;
    assert!(out.questions.values().all(|q| q.len() == 2), "{:?}", out.questions);
    let stats = generator.stats();
    assert_eq!((stats.requests, stats.chunks_short, stats.chunks_done), (8, 4, 4));
    // The second answer repeats the first: its questions count as duplicates within the chunk.
    assert_eq!(stats.filtered.duplicate_in_chunk, 8);
}

#[tokio::test]
async fn a_custom_template_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prompt.txt");
    std::fs::write(&path, "Write {num_questions_per_chunk} questions about this text:\n{context_str}\n").unwrap();
    let server = server(ServerBehavior::default()).await;
    let prompt = PromptTemplate::from_file(&path).unwrap();
    let generator = LlmGenerator::new(LlmConfig { prompt, ..config(&server) }).unwrap();
    let questions = generator.questions(&chunk(1), 3).await.unwrap();
    assert_eq!(questions.len(), 3);
    assert!(server.requests()[0].prompt.starts_with("Write 3 questions about this text:\nSection 1:"));

    std::fs::write(&path, "Write questions about {context_str}").unwrap();
    let err = PromptTemplate::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("{num_questions_per_chunk} is missing"), "{err}");
}
