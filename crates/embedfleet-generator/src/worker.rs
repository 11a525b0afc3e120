//! The generator worker's stage: one generate task is a slice of a run's chunks; its questions go
//! to a deterministic key and the coordinator is told. With several replicas, the LLM rate limit is
//! the fleet's (one GCRA in NATS KV), not each process's.

use crate::cost::{Budget, LocalBudget};
use crate::fleet_budget::FleetBudget;
use crate::fleet_limiter::{FleetLimiter, RATE_WAIT};
use crate::{GeneratorStats, LlmGenerator};
use embedfleet_bus::layout::{self, TaskQuestions};
use embedfleet_bus::messages::{Message, RunSpec};
use embedfleet_bus::worker::{TaskError, TaskHandler};
use embedfleet_bus::{Bus, Stage};
use embedfleet_core::generate::{GenerationStop, generate_questions};
use embedfleet_core::progress::NoProgress;
use embedfleet_core::{ArtifactStore, Chunk, GenerateError, GeneratorKind, OfflineGenerator, QuestionGenerator, RunId};
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
static LLM_COST: LazyLock<Counter> =
    LazyLock::new(|| register_counter!("embedfleet_generator_llm_cost_usd_total", "LLM spend in USD").expect("registers once"));
static CHUNKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("embedfleet_generator_chunks_total", "Chunks handled, by outcome", &["outcome"]).expect("registers once")
});
static QUESTIONS: LazyLock<IntCounter> =
    LazyLock::new(|| register_int_counter!("embedfleet_generator_questions_total", "Questions written").expect("registers once"));
static SKIPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("embedfleet_generator_tasks_skipped_total", "Tasks of cancelled, failed or budget-spent runs skipped")
        .expect("registers once")
});

pub struct GenerateWorker {
    pub bus: Bus,
    pub store: ArtifactStore,
    pub llm: Option<Arc<LlmGenerator<FleetLimiter>>>,
    /// Per run: its spec, read once (tasks of one run come in bursts). A task reads only its own
    /// shard of the run's chunks.
    runs: Mutex<HashMap<String, RunSpec>>,
    exported: Mutex<GeneratorStats>,
    /// Why LLM runs are refused when there is no `llm`.
    no_llm: String,
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
        LazyLock::force(&SKIPPED);
        Self {
            bus,
            store,
            llm: llm.map(Arc::new),
            runs: Mutex::new(HashMap::new()),
            exported: Mutex::new(GeneratorStats::default()),
            no_llm: "the generator worker has no LLM configured (--llm-base-url or OPENAI_API_KEY)".into(),
        }
    }

    pub fn with_no_llm_reason(mut self, reason: String) -> Self {
        if !reason.is_empty() {
            self.no_llm = reason;
        }
        self
    }

    async fn spec(&self, run_id: &RunId) -> Result<RunSpec, TaskError> {
        if let Some(spec) = self.runs.lock().expect("not poisoned").get(run_id.as_str()) {
            return Ok(spec.clone());
        }
        let spec: RunSpec = serde_json::from_slice(&self.store.get(&layout::spec(run_id)).await?)
            .map_err(|e| TaskError::fatal(format!("run spec of {run_id}: {e}")))?;
        let mut cache = self.runs.lock().expect("not poisoned");
        if cache.len() > 64 {
            cache.clear();
        }
        cache.insert(run_id.to_string(), spec.clone());
        Ok(spec)
    }

    /// The chunks of one task: its shard, written by the coordinator's ingest stage.
    async fn shard(&self, run_id: &RunId, task: u32, first: u32, count: u32) -> Result<Vec<Chunk>, TaskError> {
        let key = layout::shards(run_id).chunks(task);
        let bytes = match self.store.get(&key).await {
            Ok(bytes) => bytes,
            // Shards are written before their tasks are sent: a missing one is a task that never was.
            Err(embedfleet_core::StoreError::NotFound { location }) => {
                return Err(TaskError::fatal(format!("run {run_id} has no task {task}: its shard {location} is not in the store")));
            }
            Err(e) => return Err(e.into()),
        };
        let chunks: Vec<Chunk> =
            serde_json::from_slice(&bytes).map_err(|e| TaskError::fatal(format!("{}: {e}", self.store.describe(&key))))?;
        if chunks.len() != count as usize {
            return Err(TaskError::fatal(format!(
                "{} holds {} chunks, but task {task} is chunks {first}..{} ({count})",
                self.store.describe(&key),
                chunks.len(),
                u64::from(first) + u64::from(count)
            )));
        }
        Ok(chunks)
    }

    /// Adds what the LLM client counted since the last export to the Prometheus counters.
    fn export_llm_stats(&self) {
        let Some(llm) = &self.llm else { return };
        let now = llm.stats();
        let mut last = self.exported.lock().expect("not poisoned");
        let d = |a: u64, b: u64| a.saturating_sub(b);
        let ok = d(now.requests, last.requests).saturating_sub(
            d(now.rate_limited, last.rate_limited) + d(now.server_errors, last.server_errors) + d(now.timeouts, last.timeouts),
        );
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
            return Err(TaskError::fatal("the generator only handles generate tasks"));
        };
        // A cancelled, failed or budget-spent run's queued tasks are skipped, not worked on.
        match self.bus.run_state(&run_id).await? {
            Some(state) if state.is_terminal() => {
                tracing::info!(run_id = run_id.as_str(), task, state = state.name(), "skipping a task of an ended run");
                SKIPPED.inc();
                return Ok(());
            }
            _ => {}
        }
        let spec = self.spec(&run_id).await?;
        let chunks = self.shard(&run_id, task, first, count).await?;
        let slice = chunks.as_slice();
        let n = spec.dataset.questions_per_chunk;
        let use_llm = match spec.dataset.generator {
            GeneratorKind::Llm => true,
            GeneratorKind::Offline => false,
            GeneratorKind::Auto => self.llm.is_some(),
        };
        let mut spent_usd = 0.0;
        let outcome = if use_llm {
            let llm = self.llm.as_ref().ok_or_else(|| TaskError::fatal(format!("this run asks for LLM questions, but {}", self.no_llm)))?;
            // This task's spend, counted by the budget it spends from: the run's shared ledger, or an
            // unlimited one of its own.
            let outcome = match spec.max_cost_usd {
                Some(limit) => {
                    let budget = FleetBudget::new(self.bus.budgets.clone(), &run_id, limit);
                    let outcome = generate_questions(&WithBudget { llm: llm.as_ref(), budget: &budget }, slice, n, &NoProgress).await;
                    spent_usd = budget.spent_here();
                    outcome
                }
                None => {
                    let budget = LocalBudget::new(None);
                    let outcome = generate_questions(&WithBudget { llm: llm.as_ref(), budget: &budget }, slice, n, &NoProgress).await;
                    spent_usd = budget.spent();
                    outcome
                }
            };
            self.export_llm_stats();
            outcome
        } else {
            generate_questions(&OfflineGenerator::new(spec.dataset.seed), slice, n, &NoProgress).await
        };
        let budget_reached = match &outcome.stopped {
            None => false,
            Some(GenerationStop::BudgetReached(reason)) => {
                tracing::warn!(run_id = run_id.as_str(), task, reason, "the run's budget is spent; keeping what was paid for");
                true
            }
            Some(GenerationStop::Unavailable(reason)) => return Err(TaskError::transient(reason.clone())),
            Some(GenerationStop::Fatal(reason)) => return Err(TaskError::fatal(reason.clone())),
        };
        let questions: u32 = outcome.questions.values().map(|q| q.len() as u32).sum();
        CHUNKS.with_label_values(&["ok"]).inc_by(outcome.questions.len() as u64);
        CHUNKS.with_label_values(&["failed"]).inc_by(outcome.failures.len() as u64);
        QUESTIONS.inc_by(questions as u64);
        let failed_chunks = outcome.failures.len() as u32;
        let part = TaskQuestions {
            questions: outcome.questions.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            failures: outcome.failures,
        };
        self.store.put(&layout::questions(&run_id, task), serde_json::to_vec(&part).expect("serializes")).await?;
        let done = Message::GenerateDone { run_id: run_id.clone(), task, questions, failed_chunks, spent_usd, budget_reached };
        self.bus.publish(Stage::Coordinate, &done).await?;
        self.bus.event(&run_id, "generate", &serde_json::json!({"task": task, "questions": questions})).await;
        Ok(())
    }
}

/// The LLM generator spending from one task's budget.
struct WithBudget<'a, B: Budget> {
    llm: &'a LlmGenerator<FleetLimiter>,
    budget: &'a B,
}

impl<B: Budget> QuestionGenerator for WithBudget<'_, B> {
    fn concurrency(&self) -> usize {
        self.llm.concurrency()
    }

    async fn questions(&self, chunk: &Chunk, n: usize) -> Result<Vec<String>, GenerateError> {
        self.llm.generate_with(chunk, n, self.budget).await
    }
}
