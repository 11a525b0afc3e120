use clap::Parser;
use embedfleet_bus::Stage;
use embedfleet_bus::runtime::{WorkerArgs, init_logging, shutdown_signal, start};
use embedfleet_bus::worker::run_worker;
use embedfleet_generator::fleet_limiter::FleetLimiter;
use embedfleet_generator::worker::GenerateWorker;
use embedfleet_generator::{LlmArgs, LlmError, LlmGenerator};
use std::sync::Arc;
use std::time::Duration;

/// The embedfleet generator worker: writes questions for chunks, offline or with an LLM.
#[derive(Parser)]
#[command(name = "embedfleet-generator", version)]
struct Args {
    #[command(flatten)]
    worker: WorkerArgs,
    #[command(flatten)]
    llm: LlmArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.worker.log_format);
    let mut config = if args.llm.configured() { Some(args.llm.config()?) } else { None };
    if let Some(c) = config.as_mut() {
        // The fleet keeps every task's questions in the store; a local answer cache is opt-in, so a
        // pod with a read-only root and no writable $HOME starts.
        c.cache_dir = args.llm.llm_cache_dir.clone();
        // A limit that cannot be kept is refused before anything connects.
        c.limits.pacing()?;
    }
    let started = start(&args.worker, "embedfleet-generator").await?;
    let (llm, no_llm) = match config {
        None => (None, "the generator worker has no LLM configured (--llm-base-url or OPENAI_API_KEY)".to_owned()),
        Some(config) => {
            let limiter = FleetLimiter::new(&started.bus, &config)?;
            match LlmGenerator::with_limiter(config, limiter) {
                Ok(llm) => (Some(llm), String::new()),
                // The deploy files name the OpenAI endpoint by default; without a key this replica
                // serves offline runs and says why it refuses LLM ones.
                Err(e @ LlmError::MissingApiKey { .. }) => {
                    tracing::warn!(error = %e, "no LLM key: serving offline runs only");
                    (None, format!("this generator worker cannot call the LLM: {e}"))
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let handler = Arc::new(GenerateWorker::new(started.bus.clone(), started.store.clone(), llm).with_no_llm_reason(no_llm));
    let config = args.worker.worker_config(Stage::Generate, Duration::from_secs(30));
    run_worker(started.bus, handler, config, started.health, shutdown_signal()).await?;
    Ok(())
}
