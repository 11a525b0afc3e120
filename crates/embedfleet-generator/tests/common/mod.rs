//! Shared helpers: chunks with distinct text, and a config aimed at a test server.

#![allow(dead_code)]

use embedfleet_core::{Chunk, ChunkId, DocId};
use embedfleet_generator::testing::TestServer;
use embedfleet_generator::{ApiKey, LlmConfig, RateLimits};
use std::time::Duration;

const WORDS: &[&str] = &[
    "harbor", "lantern", "meadow", "granite", "orchard", "falcon", "compass", "willow", "thunder", "marble", "cedar", "voyage", "ember",
    "glacier", "saffron", "quarry", "beacon", "tundra", "copper", "jasmine", "rivet", "summit", "pebble", "canyon", "velvet", "prairie",
    "anchor", "blossom", "cobalt", "delta",
];

/// A chunk of about 60 words whose text no other index produces.
pub fn chunk(index: usize) -> Chunk {
    chunk_with(index, "")
}

/// Like [`chunk`] with `extra` appended (a marker a test server reacts to).
pub fn chunk_with(index: usize, extra: &str) -> Chunk {
    let mut words = Vec::new();
    for k in 0..60 {
        words.push(WORDS[(index * 7 + k * 13 + k / WORDS.len()) % WORDS.len()].to_owned());
        if k % 10 == 9 {
            words.push(format!("number{index}x{k}."));
        }
    }
    let mut text = format!("Section {index}: {}", words.join(" "));
    text.push_str(extra);
    let doc = DocId::from("d000000000000");
    let len = text.chars().count();
    Chunk { id: ChunkId::new(&doc, index), doc_id: doc, text, start: 0, end: len, own_start: 0, own_end: len }
}

pub fn chunks(n: usize) -> Vec<Chunk> {
    (0..n).map(chunk).collect()
}

/// Unlimited rate, quick back-off: tests that are not about pacing should not wait for it.
pub fn config(server: &TestServer) -> LlmConfig {
    LlmConfig {
        base_url: server.base_url(),
        model: "test-model".into(),
        api_key: Some(ApiKey::new("sk-test", "the test")),
        max_tokens: 64,
        request_timeout: Duration::from_secs(5),
        concurrency: 8,
        limits: RateLimits::default(),
        backoff_base: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
        ..Default::default()
    }
}
