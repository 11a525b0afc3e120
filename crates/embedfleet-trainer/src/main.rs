use clap::Parser;
use embedfleet_bus::Stage;
use embedfleet_bus::runtime::{WorkerArgs, init_logging, shutdown_signal, start};
use embedfleet_bus::worker::{WorkerConfig, run_worker};
use embedfleet_model::RuntimeArgs;
use embedfleet_trainer::worker::TrainWorker;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The embedfleet trainer worker: fine-tunes a run's model and hands checkpoints to the evaluators.
#[derive(Parser)]
#[command(name = "embedfleet-trainer", version)]
struct Args {
    #[command(flatten)]
    worker: WorkerArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Local scratch space for checkpoints.
    #[arg(long, env = "EMBEDFLEET_WORK_DIR", default_value = "/tmp/embedfleet-trainer")]
    work_dir: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.worker.log_format);
    let options = args.runtime.load_options()?;
    args.worker.model_sources().map_err(anyhow::Error::msg)?;
    let started = start(&args.worker, "embedfleet-trainer").await?;
    TrainWorker::init_metrics();
    let handler = Arc::new(TrainWorker {
        bus: started.bus.clone(),
        store: started.store.clone(),
        store_options: args.worker.store_options(),
        model_sources: args.worker.model_sources().map_err(anyhow::Error::msg)?,
        device: options.device,
        precision: options.precision,
        work_dir: args.work_dir,
    });
    // One training at a time: it takes every core (or the GPU) it is given.
    let config = WorkerConfig { parallel: 1, ..args.worker.worker_config(Stage::Train, Duration::from_secs(60)) };
    run_worker(started.bus, handler, config, started.health, shutdown_signal()).await?;
    Ok(())
}
