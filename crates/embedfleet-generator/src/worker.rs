//! The generator worker's stage: one generate task is a slice of a run's chunks; its questions go
//! to a deterministic key and the coordinator is told. With several replicas, the LLM rate limit is
//! the fleet's (one GCRA in NATS KV), not each process's.

use crate::fleet_limiter::{FleetLimiter, RATE_WAIT};
use crate::{GeneratorStats, LlmGenerator};
use embedfleet_bus::layout::{self, TaskQuestions};
use embedfleet_bus::messages::{Message, RunSpec};
use embedfleet_bus::worker::{TaskError, TaskHandler};
use embedfleet_bus::{Bus, Stage};
use embedfleet_core::generate::generate_questions;
use embedfleet_core::progress::NoProgress;
use embedfleet_core::{ArtifactStore, Chunk, OfflineGenerator};
use prometheus::{Counter, IntCounter, IntCounterVec, register_counter, register_int_counter, register_int_counter_vec};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

static LLM_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("embedfleet_generator_llm_requests_total", "LLM requests by outcome", &["outcome"]).expect("registers once")
});
static LLM_429: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("embedfleet_generator_llm_rate_limited_total", "429 answers from the LLM").expect("registers once")
});
static LLM_TOKENS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("embedfleet_generator_llm_tokens_total", "Tokens billed, by kind", &["kind"]).expect("registers once")
});
static LLM_COST: LazyLock<Counter> = LazyLock::new(|| {
    register_counter!("embedfleet_generator_llm_cost_usd_total", "LLM spend in USD").expect("registers once")
});
static CHUNKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("embedfleet_generator_chunks_total", "Chunks handled, by outcome", &["outcome"]).expect("registers once")
});
static QUESTIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("embedfleet_generator_questions_total", "Questions written").expect("registers once")
});

pub struct GenerateWorker {
    pub bus: Bus,
    pub store: ArtifactStore,
    pub llm: Option<Arc<LlmGenerator<FleetLimiter>>>,
    /// Per run: its spec and chunk list, read once (tasks of one run come in bursts).
    runs: Mutex<HashMap<String, (RunSpec, Arc<Vec<Chunk>>)>>,
    exported: Mutex<GeneratorStats>,
}

impl GenerateWorker {
    pub fn new(bus: Bus, store: ArtifactStore, llm: Option<LlmGenerator<FleetLimiter>>) -> Self {
        for outcome in ["ok", "failed"] {
            CHUNKS.with_label_values(&[outcome]);
        }
        for outcome in ["ok", "rate_limited", "server_error", "timeout"] {
            LLM_REQUESTS.with_label_values(&[outcome]);
        }
        for kind in ["prompt", "completion"] {
            LLM_TOKENS.with_label_values(&[kind]);
        }
        LazyLock::force(&LLM_429);
        LazyLock::force(&LLM_COST);
        LazyLock::force(&RATE_WAIT);
        LazyLock::force(&QUESTIONS);
        Self { bus, store, llm: llm.map(Arc::new), runs: Mutex::new(HashMap::new()), exported: Mutex::new(GeneratorStats::default()) }
    }

    async fn run(&self, run_id: &str) -> Result<(RunSpec, Arc<Vec<Chunk>>), TaskError> {
        if let Some(run) = self.runs.lock().expect("not poisoned").get(run_id) {
            return Ok(run.clone());
        }
        let spec: RunSpec = serde_json::from_slice(&self.store.get(&layout::spec(run_id)).await.map_err(|e| TaskError::Retry(e.to_string()))?)
            .map_err(|e| TaskError::Fatal(format!("run spec: {e}")))?;
        let bytes = self.store.get(&layout::chunks(run_id)).await.map_err(|e| TaskError::Retry(e.to_string()))?;
        let chunks: Arc<Vec<Chunk>> = Arc::new(serde_json::from_slice(&bytes).map_err(|e| TaskError::Fatal(format!("chunk list: {e}")))?);
        let mut cache = self.runs.lock().expect("not poisoned");
        if cache.len() > 4 {
            cache.clear();
        }
        cache.insert(run_id.to_owned(), (spec.clone(), chunks.clone()));
        Ok((spec, chunks))
    }

    /// Adds what the LLM client counted since the last export to the Prometheus counters.
    fn export_llm_stats(&self) {
        let Some(llm) = &self.llm else { return };
        let now = llm.stats();
        let mut last = self.exported.lock().expect("not poisoned");
        let d = |a: u64, b: u64| a.saturating_sub(b);
        let ok = d(now.requests, last.requests).saturating_sub(d(now.rate_limited, last.rate_limited) + d(now.server_errors, last.server_errors) + d(now.timeouts, last.timeouts));
        LLM_REQUESTS.with_label_values(&["ok"]).inc_by(ok);
        LLM_REQUESTS.with_label_values(&["rate_limited"]).inc_by(d(now.rate_limited, last.rate_limited));
        LLM_REQUESTS.with_label_values(&["server_error"]).inc_by(d(now.server_errors, last.server_errors));
        LLM_REQUESTS.with_label_values(&["timeout"]).inc_by(d(now.timeouts, last.timeouts));
        LLM_429.inc_by(d(now.rate_limited, last.rate_limited));
        LLM_TOKENS.with_label_values(&["prompt"]).inc_by(d(now.prompt_tokens, last.prompt_tokens));
        LLM_TOKENS.with_label_values(&["completion"]).inc_by(d(now.completion_tokens, last.completion_tokens));
        LLM_COST.inc_by((now.cost_usd - last.cost_usd).max(0.0));
        *last = now;
    }
}

impl TaskHandler for GenerateWorker {
    async fn handle(&self, message: Message, _deliveries: i64) -> Result<(), TaskError> {
        let Message::GenerateTask { run_id, task, first, count } = message else {
            return Err(TaskError::Fatal("the generator only handles generate tasks".into()));
        };
        let (spec, chunks) = self.run(&run_id).await?;
        let (first, count) = (first as usize, count as usize);
        let slice = chunks.get(first..first + count).ok_or_else(|| TaskError::Fatal(format!("chunks {first}..{} out of range", first + count)))?;
        let outcome = if spec.generator == "llm" {
            let llm = self.llm.as_ref().ok_or_else(|| TaskError::Fatal("this run wants an LLM, but the generator worker has no --llm-base-url or key".into()))?;
            let outcome = generate_questions(llm.as_ref(), slice, spec.questions_per_chunk, &NoProgress).await;
            self.export_llm_stats();
            outcome
        } else {
            generate_questions(&OfflineGenerator::new(spec.seed), slice, spec.questions_per_chunk, &NoProgress).await
        };
        if let Some(reason) = outcome.stopped {
            return Err(TaskError::Fatal(reason));
        }
        let questions: u32 = outcome.questions.values().map(|q| q.len() as u32).sum();
        CHUNKS.with_label_values(&["ok"]).inc_by(outcome.questions.len() as u64);
        CHUNKS.with_label_values(&["failed"]).inc_by(outcome.failures.len() as u64);
        QUESTIONS.inc_by(questions as u64);
        let failed_chunks = outcome.failures.len() as u32;
        let part = TaskQuestions {
            questions: outcome.questions.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            failures: outcome.failures,
        };
        self.store
            .put(&layout::questions(&run_id, task), serde_json::to_vec(&part).expect("serializes"))
            .await
            .map_err(|e| TaskError::Retry(e.to_string()))?;
        let done = Message::GenerateDone { run_id: run_id.clone(), task, questions, failed_chunks };
        self.bus.publish(Stage::Coordinate, &done).await.map_err(|e| TaskError::Retry(e.to_string()))?;
        self.bus.event(&run_id, "generate", &serde_json::json!({"task": task, "questions": questions})).await;
        Ok(())
    }
}
