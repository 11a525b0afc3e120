//! LLM question generation: an OpenAI-compatible client with rate limits, retries, a budget and
//! a resume cache, the reference's prompt, and the filters that keep junk out of the dataset.
//!
//! [`LlmGenerator`] implements [`embedfleet_core::QuestionGenerator`], so the CLI's local run and
//! the fleet's generator worker drive it through `embedfleet_core::generate::generate_questions`.
//! No libtorch here: the generator image stays small and scales on CPU nodes.

pub mod args;
pub mod cache;
pub mod client;
pub mod cost;
pub mod failures;
pub mod filter;
pub mod fleet_budget;
pub mod fleet_limiter;
pub mod generator;
pub mod limiter;
pub mod prompt;
pub mod stats;
#[cfg(feature = "test-server")]
pub mod testing;
pub mod worker;

pub use args::LlmArgs;
pub use cache::{AnswerCache, CachedAnswer, cache_key};
pub use client::{ApiKey, CallError, DEFAULT_API_KEY_ENV, DEFAULT_BASE_URL, DEFAULT_MODEL, resolve_api_key};
pub use cost::{Budget, BudgetError, BudgetReached, LocalBudget, Pricing};
pub use failures::write_failures;
pub use filter::{FilterConfig, FilterStats, QuestionFilter};
pub use generator::LlmGenerator;
pub use limiter::{LocalRateLimiter, RateLimiter, RateLimits};
pub use prompt::{DEFAULT_TEMPLATE, ExampleQueries, PromptTemplate};
pub use stats::GeneratorStats;

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("invalid LLM settings: {0}")]
    InvalidConfig(String),
    #[error(
        "no API key for {base_url}: the environment variable {var} is not set or is empty; export it, or name the \
         variable that holds the key"
    )]
    MissingApiKey { var: String, base_url: String },
    #[error("cannot read the prompt template {path}: {source}")]
    ReadTemplate { path: PathBuf, source: std::io::Error },
    #[error("prompt template {origin}: {problem}")]
    Template { origin: String, problem: String },
    #[error("cannot set up the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    #[error(transparent)]
    RateLimit(#[from] limiter::InvalidRateLimit),
    #[error("resume cache {path}: cannot {op}: {source}")]
    Cache { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("cannot write the failures file {path}: {source}")]
    WriteFailures { path: PathBuf, source: std::io::Error },
}

/// Every knob of the LLM generator. `Default` matches the reference (gpt-3.5-turbo on OpenAI,
/// LlamaIndex's prompt) with limits that fit a new OpenAI account.
#[derive(Debug, Clone)]
pub struct LlmConfig {
    /// Up to and including `/v1`: `https://api.openai.com/v1`, `http://localhost:8000/v1` (vLLM),
    /// `http://localhost:11434/v1` (Ollama), `http://localhost:8080/v1` (llama.cpp).
    pub base_url: String,
    pub model: String,
    /// The environment variable that holds the key; `None` is `OPENAI_API_KEY`.
    pub api_key_env: Option<String>,
    /// A key obtained elsewhere (a secret store); wins over `api_key_env`.
    pub api_key: Option<ApiKey>,
    pub temperature: f32,
    /// Completion tokens per request; also the worst case the rate limit and budget plan for.
    pub max_tokens: u32,
    /// Whole request, answer included.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub prompt: PromptTemplate,
    /// Real queries shown in each prompt as examples of how users ask (`--example-queries`).
    pub examples: Option<ExampleQueries>,
    /// Requests in flight at once (and chunks the core driver runs at once).
    pub concurrency: usize,
    pub limits: RateLimits,
    /// Tries per request, the first included, for 429, 5xx, timeouts and connection errors.
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub pricing: Pricing,
    /// Stop starting requests before spending more than this many USD.
    pub max_cost_usd: Option<f64>,
    /// Where finished chunks are kept for resuming; `None` disables resume.
    pub cache_dir: Option<PathBuf>,
    pub filter: FilterConfig,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            model: DEFAULT_MODEL.to_owned(),
            api_key_env: None,
            api_key: None,
            // LlamaIndex's OpenAI default, which the reference runs with.
            temperature: 0.1,
            // Two questions take ~60 tokens; room for chatty models without paying for essays.
            max_tokens: 256,
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            prompt: PromptTemplate::default(),
            examples: None,
            concurrency: 8,
            // Below OpenAI's tier-1 limits for gpt-3.5-turbo; raise them for higher tiers or for a
            // local server, lower them for a free tier.
            limits: RateLimits { requests_per_minute: Some(500), request_burst: 1, tokens_per_minute: Some(200_000), token_burst: None },
            max_attempts: 6,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            pricing: Pricing::default(),
            max_cost_usd: None,
            cache_dir: None,
            filter: FilterConfig::default(),
        }
    }
}

impl LlmConfig {
    pub fn validate(&self) -> Result<(), LlmError> {
        let bad = |m: String| Err(LlmError::InvalidConfig(m));
        if self.model.trim().is_empty() {
            return bad("the model name is empty".into());
        }
        if self.concurrency == 0 {
            return bad("concurrency must be at least 1".into());
        }
        if self.max_attempts == 0 {
            return bad("max attempts must be at least 1".into());
        }
        if self.max_tokens == 0 {
            return bad("max tokens must be at least 1".into());
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return bad(format!("temperature {} is outside 0..=2", self.temperature));
        }
        if self.request_timeout.is_zero() {
            return bad("the request timeout must be positive".into());
        }
        let prices = [self.pricing.input_per_1k, self.pricing.output_per_1k];
        if prices.iter().any(|p| !p.is_finite() || *p < 0.0) {
            return bad(format!("prices must be non-negative numbers, got {:?}", self.pricing));
        }
        if let Some(max) = self.max_cost_usd.filter(|m| !m.is_finite() || *m < 0.0) {
            return bad(format!("the maximum cost must be a non-negative number, got {max}"));
        }
        Ok(())
    }
}
