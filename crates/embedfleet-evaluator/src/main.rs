use clap::Parser;
use embedfleet_bus::Stage;
use embedfleet_bus::runtime::{WorkerArgs, init_logging, shutdown_signal, start};
use embedfleet_bus::worker::run_worker;
use embedfleet_evaluator::worker::EvaluateWorker;
use embedfleet_model::RuntimeArgs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The embedfleet evaluator worker: scores checkpoints on a run's validation set.
#[derive(Parser)]
#[command(name = "embedfleet-evaluator", version)]
struct Args {
    #[command(flatten)]
    worker: WorkerArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
    #[arg(long, env = "EMBEDFLEET_WORK_DIR", default_value = "/tmp/embedfleet-evaluator")]
    work_dir: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.worker.log_format);
    let options = args.runtime.load_options()?;
    let started = start(&args.worker, "embedfleet-evaluator").await?;
    std::sync::LazyLock::force(&embedfleet_evaluator::worker::NDCG);
    let handler = Arc::new(EvaluateWorker {
        bus: started.bus.clone(),
        store: started.store.clone(),
        device: options.device,
        precision: options.precision,
        work_dir: args.work_dir,
    });
    let config = args.worker.worker_config(Stage::Evaluate, Duration::from_secs(60));
    run_worker(started.bus, handler, config, started.health, shutdown_signal()).await?;
    Ok(())
}
