//! Counters a progress bar, a summary or a Prometheus exporter reads while a run goes on.

use crate::client::CallError;
use crate::filter::FilterStats;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of one generator's work so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GeneratorStats {
    /// HTTP requests sent, retries included.
    pub requests: u64,
    /// Requests that were re-sends of a failed one.
    pub retries: u64,
    /// 429 answers.
    pub rate_limited: u64,
    /// 5xx (and 408) answers.
    pub server_errors: u64,
    pub timeouts: u64,
    pub connection_errors: u64,
    /// 200 answers whose body was not a chat completion.
    pub malformed: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    /// Chunks answered by the LLM in this run, short ones included.
    pub chunks_done: u64,
    /// Chunks whose answer came from the resume cache (no request).
    pub chunks_cached: u64,
    /// Cached chunks by who first answered them ("model at endpoint").
    #[serde(default)]
    pub cached_from: BTreeMap<String, u64>,
    /// The resume cache, when resuming is on.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Chunks that ended with fewer questions than asked after their retry.
    pub chunks_short: u64,
    /// Chunks that failed after all their attempts.
    pub chunks_failed: u64,
    /// Questions returned, cached ones included.
    pub questions: u64,
    pub filtered: FilterStats,
}

impl GeneratorStats {
    /// Chunks this run handled: answered now, from the cache, or failed.
    pub fn chunks_seen(&self) -> u64 {
        self.chunks_done + self.chunks_cached + self.chunks_failed
    }

    /// One line on the resume cache for a summary: how many chunks it answered, where it is, and
    /// who first answered them, so a user who changed servers sees that old answers were reused.
    /// None when resuming is off.
    pub fn cache_summary(&self) -> Option<String> {
        let dir = self.cache_dir.as_ref()?.display();
        let seen = self.chunks_seen();
        if self.chunks_cached == 0 {
            return Some(format!("no chunk of {seen} came from the resume cache {dir}; every answer is new"));
        }
        let origins: Vec<String> = self.cached_from.iter().map(|(origin, n)| format!("{n} from {origin}")).collect();
        Some(format!(
            "{} of {seen} chunks answered from the resume cache {dir}, not asked again: {}",
            self.chunks_cached,
            origins.join(", ")
        ))
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub rate_limited: AtomicU64,
    pub server_errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub connection_errors: AtomicU64,
    pub malformed: AtomicU64,
    pub chunks_done: AtomicU64,
    pub chunks_cached: AtomicU64,
    pub chunks_short: AtomicU64,
    pub chunks_failed: AtomicU64,
    pub questions: AtomicU64,
    pub filtered: Mutex<FilterStats>,
    pub cached_from: Mutex<BTreeMap<String, u64>>,
}

pub(crate) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl Counters {
    pub fn record_error(&self, error: &CallError) {
        let counter = match error {
            CallError::RateLimited { .. } | CallError::QuotaExhausted { .. } => &self.rate_limited,
            CallError::Server { .. } => &self.server_errors,
            CallError::Timeout(_) => &self.timeouts,
            CallError::Connect(_) | CallError::Transport(_) => &self.connection_errors,
            CallError::Malformed(_) => &self.malformed,
            CallError::Unauthorized { .. } | CallError::ModelNotFound { .. } | CallError::Rejected { .. } => return,
        };
        bump(counter, 1);
    }

    pub fn add_cached_from(&self, origin: String) {
        *self.cached_from.lock().expect("not poisoned").entry(origin).or_default() += 1;
    }

    pub fn add_filtered(&self, stats: &FilterStats) {
        self.filtered.lock().expect("not poisoned").add(stats);
    }

    pub fn snapshot(&self, (prompt_tokens, completion_tokens, cost_usd): (u64, u64, f64)) -> GeneratorStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        GeneratorStats {
            requests: get(&self.requests),
            retries: get(&self.retries),
            rate_limited: get(&self.rate_limited),
            server_errors: get(&self.server_errors),
            timeouts: get(&self.timeouts),
            connection_errors: get(&self.connection_errors),
            malformed: get(&self.malformed),
            prompt_tokens,
            completion_tokens,
            cost_usd,
            chunks_done: get(&self.chunks_done),
            chunks_cached: get(&self.chunks_cached),
            cached_from: self.cached_from.lock().expect("not poisoned").clone(),
            cache_dir: None,
            chunks_short: get(&self.chunks_short),
            chunks_failed: get(&self.chunks_failed),
            questions: get(&self.questions),
            filtered: *self.filtered.lock().expect("not poisoned"),
        }
    }
}
