use clap::Parser;
use embedfleet_bus::runtime::{WorkerArgs, init_logging, shutdown_signal, start};
use embedfleet_bus::worker::{WorkerConfig, run_worker};
use embedfleet_bus::Stage;
use embedfleet_core::StoreOptions;
use embedfleet_model::{Precision, parse_device};
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
    #[arg(long, env = "EMBEDFLEET_DEVICE", default_value = "auto")]
    device: String,
    #[arg(long, env = "EMBEDFLEET_PRECISION", default_value = "fp32")]
    precision: Precision,
    #[arg(long, env = "EMBEDFLEET_THREADS")]
    threads: Option<usize>,
    /// Local scratch space for checkpoints.
    #[arg(long, env = "EMBEDFLEET_WORK_DIR", default_value = "/tmp/embedfleet-trainer")]
    work_dir: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.worker.log_format);
    embedfleet_model::set_threads(args.threads);
    let device = parse_device(&args.device)?;
    let started = start(&args.worker, "embedfleet-trainer").await.map_err(anyhow::Error::msg)?;
    TrainWorker::init_metrics();
    let handler = Arc::new(TrainWorker {
        bus: started.bus.clone(),
        store: started.store.clone(),
        store_options: StoreOptions { endpoint: args.worker.s3_endpoint.clone(), region: args.worker.s3_region.clone(), ..Default::default() },
        device,
        precision: args.precision,
        work_dir: args.work_dir,
    });
    let config = WorkerConfig { stage: Stage::Train, ack_wait: Duration::from_secs(args.worker.ack_wait), parallel: 1, grace: Duration::from_secs(60) };
    run_worker(started.bus, handler, config, started.health, shutdown_signal()).await?;
    Ok(())
}
