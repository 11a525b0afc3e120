//! The LLM question generator's flags, shared by `embedfleet generate`/`run` and the generator worker.

use crate::{LlmConfig, Pricing, PromptTemplate, RateLimits};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Args)]
pub struct LlmArgs {
    /// OpenAI-compatible API root, up to /v1 (vLLM, Ollama and llama.cpp's server work too).
    #[arg(long, env = "EMBEDFLEET_LLM_BASE_URL", alias = "llm_base_url")]
    pub llm_base_url: Option<String>,
    #[arg(long, env = "EMBEDFLEET_LLM_MODEL", alias = "llm_model", default_value = "gpt-3.5-turbo")]
    pub llm_model: String,
    /// The environment variable holding the API key.
    #[arg(long, env = "EMBEDFLEET_LLM_API_KEY_ENV", alias = "llm_api_key_env", default_value = "OPENAI_API_KEY")]
    pub llm_api_key_env: String,
    #[arg(long, env = "EMBEDFLEET_LLM_TEMPERATURE", default_value_t = 0.1)]
    pub llm_temperature: f32,
    #[arg(long, env = "EMBEDFLEET_LLM_MAX_TOKENS", default_value_t = 256)]
    pub llm_max_tokens: u32,
    /// Seconds for one request, answer included.
    #[arg(long, env = "EMBEDFLEET_LLM_TIMEOUT", default_value_t = 60.0)]
    pub llm_timeout: f64,
    /// Requests per minute.
    #[arg(long, env = "EMBEDFLEET_LLM_RPM", alias = "llm_rpm", default_value_t = 500)]
    pub llm_rpm: u32,
    /// Tokens per minute (prompt + completion).
    #[arg(long, env = "EMBEDFLEET_LLM_TPM", alias = "llm_tpm", default_value_t = 200_000)]
    pub llm_tpm: u32,
    /// Requests in flight at once.
    #[arg(long, env = "EMBEDFLEET_LLM_CONCURRENCY", alias = "llm_concurrency", default_value_t = 8)]
    pub llm_concurrency: usize,
    /// Tries per request for 429, 5xx, timeouts and connection errors.
    #[arg(long, env = "EMBEDFLEET_LLM_MAX_ATTEMPTS", default_value_t = 6)]
    pub llm_max_attempts: u32,
    /// USD per 1,000 prompt tokens (default: gpt-3.5-turbo's).
    #[arg(long, env = "EMBEDFLEET_PRICE_INPUT_PER_1K", default_value_t = 0.0005)]
    pub price_input_per_1k: f64,
    /// USD per 1,000 completion tokens.
    #[arg(long, env = "EMBEDFLEET_PRICE_OUTPUT_PER_1K", default_value_t = 0.0015)]
    pub price_output_per_1k: f64,
    /// Stop starting requests before the cost would pass this.
    #[arg(long, env = "EMBEDFLEET_MAX_COST_USD")]
    pub max_cost_usd: Option<f64>,
    /// A prompt file with {context_str} and {num_questions_per_chunk}.
    #[arg(long, env = "EMBEDFLEET_PROMPT_TEMPLATE", alias = "prompt_template")]
    pub prompt_template: Option<PathBuf>,
    /// Real queries (CSV or JSON Lines with a `query` column) shown in each prompt as examples of
    /// how users ask, so the questions read like theirs. Never evaluate on the same queries.
    #[arg(long, env = "EMBEDFLEET_EXAMPLE_QUERIES", alias = "example_queries")]
    pub example_queries: Option<PathBuf>,
    /// How many example queries each prompt shows.
    #[arg(long, env = "EMBEDFLEET_EXAMPLES_PER_PROMPT", default_value_t = 5)]
    pub examples_per_prompt: usize,
    /// Seed of the sample of examples each chunk sees.
    #[arg(long, env = "EMBEDFLEET_EXAMPLES_SEED", default_value_t = 0)]
    pub examples_seed: u64,
    /// Where answered chunks are kept, so a re-run only asks for the rest.
    #[arg(long, env = "EMBEDFLEET_LLM_CACHE_DIR")]
    pub llm_cache_dir: Option<PathBuf>,
}

impl LlmArgs {
    /// Whether `--generator auto` should use the LLM: a base URL or a key is configured.
    pub fn configured(&self) -> bool {
        self.llm_base_url.is_some() || std::env::var(&self.llm_api_key_env).is_ok_and(|v| !v.is_empty())
    }

    pub fn config(&self) -> Result<LlmConfig, crate::LlmError> {
        let defaults = LlmConfig::default();
        let prompt = match &self.prompt_template {
            Some(path) => PromptTemplate::from_file(path)?,
            None => PromptTemplate::default(),
        };
        let examples = match &self.example_queries {
            Some(path) => Some(crate::ExampleQueries::from_file(path, self.examples_per_prompt, self.examples_seed)?),
            None => None,
        };
        let cache_dir = Some(self.llm_cache_dir.clone().unwrap_or_else(|| embedfleet_core::cache::cache_subdir("llm-answers")));
        Ok(LlmConfig {
            base_url: self.llm_base_url.clone().unwrap_or(defaults.base_url),
            model: self.llm_model.clone(),
            // The default variable is optional for local servers; a named one must be set.
            api_key_env: (self.llm_api_key_env != "OPENAI_API_KEY").then(|| self.llm_api_key_env.clone()),
            api_key: None,
            temperature: self.llm_temperature,
            max_tokens: self.llm_max_tokens,
            // try_: from_secs_f64 panics on a negative, NaN or infinite --llm-timeout.
            request_timeout: Duration::try_from_secs_f64(self.llm_timeout).map_err(|_| {
                crate::LlmError::InvalidConfig(format!("--llm-timeout must be a positive number of seconds, got {}", self.llm_timeout))
            })?,
            prompt,
            examples,
            concurrency: self.llm_concurrency,
            limits: RateLimits { requests_per_minute: Some(self.llm_rpm), tokens_per_minute: Some(self.llm_tpm), ..defaults.limits },
            max_attempts: self.llm_max_attempts,
            pricing: Pricing { input_per_1k: self.price_input_per_1k, output_per_1k: self.price_output_per_1k },
            max_cost_usd: self.max_cost_usd,
            cache_dir,
            ..defaults
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        llm: LlmArgs,
    }

    #[test]
    fn a_timeout_that_is_not_a_duration_is_an_error_not_a_panic() {
        for bad in ["-1", "NaN", "inf", "1e300"] {
            let cli = Cli::try_parse_from(["x", &format!("--llm-timeout={bad}")]).unwrap();
            let err = cli.llm.config().unwrap_err().to_string();
            assert!(err.contains("--llm-timeout"), "{bad}: {err}");
        }
        let cli = Cli::try_parse_from(["x", "--llm-timeout", "2.5"]).unwrap();
        assert_eq!(cli.llm.config().unwrap().request_timeout, Duration::from_millis(2500));
    }
}
