use clap::Parser;
use embedfleet_bus::Stage;
use embedfleet_bus::crash_loops::watch_crash_loops;
use embedfleet_bus::runtime::{WorkerArgs, init_logging, shutdown_signal, start};
use embedfleet_bus::worker::run_worker;
use embedfleet_coordinator::worker::{Coordinator, export_run_states};
use std::sync::Arc;
use std::time::Duration;

/// The embedfleet coordinator: turns run events into tasks and decides when a run is done.
#[derive(Parser)]
#[command(name = "embedfleet-coordinator", version)]
struct Args {
    #[command(flatten)]
    worker: WorkerArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.worker.log_format);
    let started = start(&args.worker, "embedfleet-coordinator").await?;
    tokio::spawn(export_run_states(started.bus.clone()));
    // Tasks whose worker died at every delivery: dead-lettered, their runs failed.
    let crash_loops = tokio::spawn(watch_crash_loops(started.bus.clone(), std::future::pending::<()>()));
    let handler = Arc::new(Coordinator { bus: started.bus.clone(), store: started.store.clone() });
    let config = args.worker.worker_config(Stage::Coordinate, Duration::from_secs(20));
    run_worker(started.bus, handler, config, started.health, shutdown_signal()).await?;
    crash_loops.abort();
    Ok(())
}
