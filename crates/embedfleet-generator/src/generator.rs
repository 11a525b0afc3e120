//! [`LlmGenerator`]: one chunk in, filtered questions out, with the cache, the budget, the rate
//! limit and the retries in between.

use crate::cache::{AnswerCache, CachedAnswer, cache_key};
use crate::client::{CallError, ChatClient, ClientSettings, Completion, Usage, auth_failure_message, resolve_api_key};
use crate::cost::{Budget, BudgetError, CostMeter, LocalBudget};
use crate::filter::QuestionFilter;
use crate::limiter::{LocalRateLimiter, RateLimiter, backoff_delay};
use crate::prompt::PromptTemplate;
use crate::stats::{Counters, GeneratorStats, bump};
use crate::{LlmConfig, LlmError};
use embedfleet_core::{Chunk, GenerateError, QuestionGenerator};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Semaphore;

pub struct LlmGenerator<L: RateLimiter = LocalRateLimiter> {
    config: LlmConfig,
    client: ChatClient,
    limiter: L,
    in_flight: Semaphore,
    cost: CostMeter,
    /// `max_cost_usd` for this process; the fleet passes each run's own ledger instead.
    budget: LocalBudget,
    cache: Option<AnswerCache>,
    filter: QuestionFilter,
    counters: Counters,
    /// Whether the server has ever answered; until it has, "connection refused" means a wrong
    /// base URL or a server that is not running, not a blip worth retrying.
    reached_server: AtomicBool,
}

/// The chars/4 rule of thumb for English text with OpenAI's tokenizers; the answer's `usage`
/// corrects the books afterwards.
pub fn estimate_tokens(text: &str) -> u32 {
    u32::try_from(text.chars().count().div_ceil(4)).unwrap_or(u32::MAX)
}

impl LlmGenerator<LocalRateLimiter> {
    /// A generator paced by a [`LocalRateLimiter`] built from `config.limits`.
    pub fn new(config: LlmConfig) -> Result<Self, LlmError> {
        let limiter = LocalRateLimiter::new(&config.limits)?;
        Self::with_limiter(config, limiter)
    }
}

impl<L: RateLimiter> LlmGenerator<L> {
    /// A generator paced by `limiter` (a fleet-wide limiter shared by many replicas).
    pub fn with_limiter(config: LlmConfig, limiter: L) -> Result<Self, LlmError> {
        config.validate()?;
        let key = match &config.api_key {
            Some(key) => key.clone(),
            None => resolve_api_key(config.api_key_env.as_deref(), &config.base_url)?,
        };
        let client = ChatClient::new(
            ClientSettings {
                base_url: config.base_url.clone(),
                model: config.model.clone(),
                temperature: config.temperature,
                max_tokens: config.max_tokens,
                request_timeout: config.request_timeout,
                connect_timeout: config.connect_timeout,
            },
            key,
        )?;
        let cache = config.cache_dir.as_deref().map(AnswerCache::open).transpose()?;
        Ok(Self {
            client,
            limiter,
            in_flight: Semaphore::new(config.concurrency),
            cost: CostMeter::new(config.pricing),
            budget: LocalBudget::new(config.max_cost_usd),
            cache,
            filter: QuestionFilter::new(config.filter),
            counters: Counters::default(),
            reached_server: AtomicBool::new(false),
            config,
        })
    }

    pub fn config(&self) -> &LlmConfig {
        &self.config
    }

    pub fn limiter(&self) -> &L {
        &self.limiter
    }

    pub fn stats(&self) -> GeneratorStats {
        let mut stats = self.counters.snapshot(self.cost.totals());
        stats.cache_dir = self.cache_dir().map(|d| d.to_owned());
        stats
    }

    fn template(&self) -> &PromptTemplate {
        &self.config.prompt
    }

    /// The resume-cache key of `chunk` asked for `n` questions of this endpoint and model.
    pub fn cache_key(&self, chunk: &Chunk, n: usize) -> String {
        // The examples a chunk sees are part of its prompt, so of the key.
        let template = match &self.config.examples {
            Some(examples) => format!("{}{}", self.template().source(), examples.block(chunk.id.as_str())),
            None => self.template().source().to_owned(),
        };
        cache_key(&chunk.text, &template, &self.config.model, self.client.endpoint().as_str(), n)
    }

    /// The prompt for `chunk`: the template, and the chunk's examples of how users ask, if any.
    pub fn prompt(&self, chunk: &Chunk, n: usize) -> String {
        let mut prompt = self.template().render(&chunk.text, n);
        if let Some(examples) = &self.config.examples {
            prompt.push_str(&examples.block(chunk.id.as_str()));
        }
        prompt
    }

    /// Where answered chunks are kept, when resuming is on.
    pub fn cache_dir(&self) -> Option<&std::path::Path> {
        self.cache.as_ref().map(|c| c.dir())
    }

    async fn cached(&self, key: &str) -> Option<CachedAnswer> {
        let cache = self.cache.as_ref()?;
        match cache.get(key).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::warn!(error = %e, "resume cache unreadable; asking the LLM again");
                None
            }
        }
    }

    /// Up to `n` questions for `chunk`: from the cache, else from the LLM with one extra request
    /// when the first answer leaves the chunk short.
    pub async fn generate(&self, chunk: &Chunk, n: usize) -> Result<Vec<String>, GenerateError> {
        self.generate_with(chunk, n, &self.budget).await
    }

    /// [`Self::generate`], spending from `budget` (a fleet run's shared ledger).
    pub async fn generate_with<B: Budget>(&self, chunk: &Chunk, n: usize, budget: &B) -> Result<Vec<String>, GenerateError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let key = self.cache_key(chunk, n);
        if let Some(answer) = self.cached(&key).await {
            tracing::debug!(chunk = %chunk.id, origin = %answer.origin(), "answer from the resume cache");
            self.filter.remember(&answer.questions);
            bump(&self.counters.chunks_cached, 1);
            self.counters.add_cached_from(answer.origin());
            bump(&self.counters.questions, answer.questions.len() as u64);
            return Ok(answer.questions);
        }

        let prompt = self.prompt(chunk, n);
        let mut questions: Vec<String> = Vec::new();
        // A retry that errors keeps what the first answer gave but is not cached, so a rerun (with
        // a higher budget, a fixed key) tries the chunk again.
        let mut complete = true;
        for round in 0..2 {
            let completion = match self.ask(&prompt, budget).await {
                Ok(completion) => completion,
                Err(e) if round == 0 || questions.is_empty() => {
                    if matches!(e, GenerateError::ChunkFailed(_)) {
                        bump(&self.counters.chunks_failed, 1);
                        tracing::warn!(chunk = %chunk.id, error = %e, "chunk failed");
                    }
                    return Err(e);
                }
                Err(e) => {
                    tracing::warn!(chunk = %chunk.id, error = %e, "retry for a short chunk failed; keeping its questions");
                    complete = false;
                    break;
                }
            };
            if completion.finish_reason.as_deref() == Some("length") {
                tracing::debug!(chunk = %chunk.id, "answer cut at max_tokens");
            }
            let selection = self.filter.select(&completion.content, &chunk.text, n, &questions);
            self.counters.add_filtered(&selection.stats);
            questions.extend(selection.questions);
            if questions.len() >= n {
                break;
            }
            if round == 0 {
                tracing::debug!(chunk = %chunk.id, got = questions.len(), want = n, "short answer; asking once more");
            }
        }

        let short = questions.len() < n;
        bump(&self.counters.chunks_done, 1);
        bump(&self.counters.questions, questions.len() as u64);
        if short {
            bump(&self.counters.chunks_short, 1);
            tracing::info!(chunk = %chunk.id, got = questions.len(), want = n, "chunk is short of questions");
        }
        if let (Some(cache), true) = (&self.cache, complete) {
            let answer = CachedAnswer {
                chunk_id: chunk.id.to_string(),
                model: self.config.model.clone(),
                endpoint: self.client.endpoint().to_string(),
                questions: questions.clone(),
                short,
            };
            if let Err(e) = cache.put(&key, &answer).await {
                tracing::warn!(chunk = %chunk.id, error = %e, "cannot store the answer; a rerun will ask again");
            }
        }
        Ok(questions)
    }

    /// One completion, retried on 429, 5xx, timeouts, connection errors and malformed bodies.
    async fn ask<B: Budget>(&self, prompt: &str, budget: &B) -> Result<Completion, GenerateError> {
        let estimate = estimate_tokens(prompt);
        let max_tokens = self.config.max_tokens;
        let planned = estimate.saturating_add(max_tokens);
        let attempts = self.config.max_attempts.max(1);
        let mut last_error = None;
        for attempt in 1..=attempts {
            let worst = self.cost.pricing().cost(u64::from(estimate), u64::from(max_tokens));
            match budget.reserve(worst).await {
                Ok(()) => {}
                Err(BudgetError::Reached(e)) => return Err(GenerateError::BudgetReached(e.to_string())),
                Err(e @ BudgetError::Unavailable(_)) => return Err(GenerateError::Unavailable(e.to_string())),
            }
            let result = {
                let _permit = self.in_flight.acquire().await.expect("the semaphore is never closed");
                self.limiter.acquire(planned).await;
                bump(&self.counters.requests, 1);
                if attempt > 1 {
                    bump(&self.counters.retries, 1);
                }
                self.client.complete(prompt).await
            };
            let error = match result {
                Ok(completion) => {
                    self.reached_server.store(true, Ordering::Relaxed);
                    let usage = completion.usage.unwrap_or_else(|| Usage {
                        prompt_tokens: u64::from(estimate),
                        completion_tokens: u64::from(estimate_tokens(&completion.content)),
                        total_tokens: 0,
                    });
                    let spent = self.cost.record(usage.prompt_tokens, usage.completion_tokens);
                    budget.settle(worst, spent).await;
                    let used = usage.prompt_tokens.saturating_add(usage.completion_tokens);
                    self.limiter.record_usage(planned, u32::try_from(used).unwrap_or(u32::MAX)).await;
                    return Ok(completion);
                }
                Err(error) => error,
            };
            budget.settle(worst, 0.0).await;
            if !matches!(error, CallError::Timeout(_) | CallError::Connect(_) | CallError::Transport(_)) {
                self.reached_server.store(true, Ordering::Relaxed);
            }
            self.counters.record_error(&error);
            if let Some(stop) = self.stop_reason(&error) {
                tracing::error!(error = %stop, "stopping: no request can succeed");
                return Err(stop);
            }
            if !error.is_retryable() {
                return Err(GenerateError::ChunkFailed(error.to_string()));
            }
            let last = attempt == attempts;
            match &error {
                CallError::RateLimited { retry_after, .. } => {
                    // Everyone pauses, not just this task: the limit is shared by all of them.
                    let wait = retry_after
                        .filter(|d| !d.is_zero())
                        .unwrap_or_else(|| backoff_delay(attempt, self.config.backoff_base, self.config.backoff_max));
                    tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, "rate limited; pausing all requests");
                    self.limiter.hold_off(wait).await;
                }
                _ if !last => {
                    let wait = backoff_delay(attempt, self.config.backoff_base, self.config.backoff_max);
                    tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, error = %error, "request failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                _ => {}
            }
            last_error = Some(error);
        }
        let last = last_error.map(|e| e.to_string()).unwrap_or_default();
        Err(GenerateError::ChunkFailed(format!("gave up after {attempts} attempts; last error: {last}")))
    }

    /// The errors no retry of this request can fix: a setting to change (fatal), or a server that
    /// has never answered (unavailable: the fleet retries the task later, a local run stops).
    fn stop_reason(&self, error: &CallError) -> Option<GenerateError> {
        let base_url = &self.config.base_url;
        let model = &self.config.model;
        let fatal = |m: String| Some(GenerateError::Fatal(m));
        match error {
            CallError::Unauthorized { .. } => fatal(auth_failure_message(self.client.key(), base_url, error)),
            CallError::ModelNotFound { .. } => fatal(format!(
                "model `{model}` not found at {base_url} ({error}); check the model name (the server's /models \
                 endpoint lists what it serves) and that the base URL ends with /v1"
            )),
            CallError::QuotaExhausted { .. } => {
                fatal(format!("the account behind the API key has no quota left at {base_url} ({error}); add credit or use another key"))
            }
            CallError::Connect(cause) if !self.reached_server.load(Ordering::Relaxed) => Some(GenerateError::Unavailable(format!(
                "cannot connect to the LLM API at {base_url} ({cause}); check that the server is running and that \
                 the base URL is right"
            ))),
            _ => None,
        }
    }
}

impl<L: RateLimiter> QuestionGenerator for LlmGenerator<L> {
    fn concurrency(&self) -> usize {
        self.config.concurrency
    }

    async fn questions(&self, chunk: &Chunk, n: usize) -> Result<Vec<String>, GenerateError> {
        self.generate(chunk, n).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ApiKey;

    #[test]
    fn construction_validates_settings() {
        let key = Some(ApiKey::new("k", "test"));
        assert!(LlmGenerator::new(LlmConfig { api_key: key.clone(), ..Default::default() }).is_ok());
        let err = LlmGenerator::new(LlmConfig { api_key: key.clone(), concurrency: 0, ..Default::default() });
        assert!(matches!(err, Err(LlmError::InvalidConfig(_))));
        let err = LlmGenerator::new(LlmConfig { api_key: key, base_url: "not a url".into(), ..Default::default() });
        assert!(err.err().unwrap().to_string().contains("not a url"));
    }

    #[test]
    fn token_estimate_is_chars_over_four() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_tokens("日本語テ"), 1);
    }
}
