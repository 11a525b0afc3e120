use clap::Parser;
use embedfleet_bus::runtime::{WorkerArgs, init_logging, shutdown_signal, start};
use embedfleet_bus::worker::{WorkerConfig, run_worker};
use embedfleet_bus::Stage;
use embedfleet_evaluator::worker::EvaluateWorker;
use embedfleet_model::{Precision, parse_device};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The embedfleet evaluator worker: scores checkpoints on a run's validation set.
#[derive(Parser)]
#[command(name = "embedfleet-evaluator", version)]
struct Args {
    #[command(flatten)]
    worker: WorkerArgs,
    #[arg(long, env = "EMBEDFLEET_DEVICE", default_value = "auto")]
    device: String,
    #[arg(long, env = "EMBEDFLEET_PRECISION", default_value = "fp32")]
    precision: Precision,
    #[arg(long, env = "EMBEDFLEET_THREADS")]
    threads: Option<usize>,
    #[arg(long, env = "EMBEDFLEET_WORK_DIR", default_value = "/tmp/embedfleet-evaluator")]
    work_dir: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.worker.log_format);
    embedfleet_model::set_threads(args.threads);
    let device = parse_device(&args.device)?;
    let started = start(&args.worker, "embedfleet-evaluator").await.map_err(anyhow::Error::msg)?;
    std::sync::LazyLock::force(&embedfleet_evaluator::worker::NDCG);
    let handler = Arc::new(EvaluateWorker {
        bus: started.bus.clone(),
        store: started.store.clone(),
        device,
        precision: args.precision,
        work_dir: args.work_dir,
    });
    let config = WorkerConfig {
        stage: Stage::Evaluate,
        ack_wait: Duration::from_secs(args.worker.ack_wait),
        parallel: args.worker.parallel,
        grace: Duration::from_secs(60),
    };
    run_worker(started.bus, handler, config, started.health, shutdown_signal()).await?;
    Ok(())
}
