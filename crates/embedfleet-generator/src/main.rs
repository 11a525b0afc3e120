use clap::Parser;
use embedfleet_bus::runtime::{WorkerArgs, init_logging, shutdown_signal, start};
use embedfleet_bus::worker::run_worker;
use embedfleet_bus::Stage;
use embedfleet_generator::fleet_limiter::FleetLimiter;
use embedfleet_generator::worker::GenerateWorker;
use embedfleet_generator::{LlmArgs, LlmGenerator};
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
    let started = start(&args.worker, "embedfleet-generator").await.map_err(anyhow::Error::msg)?;
    let llm = if args.llm.configured() {
        let config = args.llm.config()?;
        let limiter = FleetLimiter::new(&started.bus, &config);
        Some(LlmGenerator::with_limiter(config, limiter)?)
    } else {
        None
    };
    let handler = Arc::new(GenerateWorker::new(started.bus.clone(), started.store.clone(), llm));
    let config = args.worker.worker_config(Stage::Generate, Duration::from_secs(30));
    run_worker(started.bus, handler, config, started.health, shutdown_signal()).await?;
    Ok(())
}
