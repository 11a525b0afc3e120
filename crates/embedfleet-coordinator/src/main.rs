use clap::Parser;
use embedfleet_bus::bus::StreamLimits;
use embedfleet_bus::crash_loops::watch_crash_loops;
use embedfleet_bus::runtime::{WorkerArgs, init_logging, shutdown_signal, start_with_limits};
use embedfleet_bus::worker::{WorkerConfig, run_worker};
use embedfleet_bus::{Bus, BusOptions, Stage};
use embedfleet_coordinator::worker::{Coordinator, CoordinatorConfig, Ingester, export_run_states};
use std::sync::Arc;
use std::time::Duration;

/// The embedfleet coordinator: turns run events into tasks, reads submitted corpora into task
/// shards, and decides when a run is done.
#[derive(Parser)]
#[command(name = "embedfleet-coordinator", version)]
struct Args {
    #[command(flatten)]
    worker: WorkerArgs,
    /// Generate tasks of one run sent out at once; the rest wait, so that runs share the
    /// generators. Every replica should have the same value.
    #[arg(long, env = "EMBEDFLEET_TASKS_IN_FLIGHT", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    tasks_in_flight: u32,
    /// Events held at once. The events of one run are applied together, one record write per
    /// batch, so more in hand means fewer writes on a busy run.
    #[arg(long, env = "EMBEDFLEET_EVENTS_IN_HAND", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=4096))]
    events_in_hand: u32,
    /// Copies of each JetStream stream and bucket in a NATS cluster (1 on a single server).
    #[arg(long, env = "EMBEDFLEET_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=5))]
    stream_replicas: u32,
    /// Most bytes each stream and bucket keeps (0: no limit). Past it a publish is refused and
    /// retried, never a stored task dropped.
    #[arg(long, env = "EMBEDFLEET_STREAM_MAX_BYTES", default_value_t = 0)]
    stream_max_bytes: u64,
    /// The LLM budget in USD of a run submitted without --max-cost-usd (0: none). The generators
    /// enforce it like a submitted one.
    #[arg(long, env = "EMBEDFLEET_DEFAULT_MAX_COST_USD", default_value_t = 0.0)]
    default_max_cost_usd: f64,
    /// Corpora read at once by this replica's ingest stage. More than one, so that a small run's
    /// corpus is read while a large one's still is.
    #[arg(long, env = "EMBEDFLEET_INGESTS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    ingests: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.worker.log_format);
    if !(args.default_max_cost_usd.is_finite() && args.default_max_cost_usd >= 0.0) {
        anyhow::bail!("--default-max-cost-usd must be a non-negative number of dollars, not {}", args.default_max_cost_usd);
    }
    let limits = StreamLimits {
        replicas: args.stream_replicas as usize,
        max_bytes: (args.stream_max_bytes > 0).then(|| i64::try_from(args.stream_max_bytes).unwrap_or(i64::MAX)),
    };
    let started = start_with_limits(&args.worker, "embedfleet-coordinator", limits).await?;
    tokio::spawn(export_run_states(started.bus.clone()));
    // Tasks whose worker died at every delivery: dead-lettered, their runs failed.
    let crash_loops = tokio::spawn(watch_crash_loops(started.bus.clone(), std::future::pending::<()>()));
    let config = CoordinatorConfig {
        tasks_in_flight: args.tasks_in_flight,
        model_sources: args.worker.model_sources().map_err(anyhow::Error::msg)?,
        default_max_cost_usd: (args.default_max_cost_usd > 0.0).then_some(args.default_max_cost_usd),
    };
    let coordinator = Arc::new(Coordinator::new(started.bus.clone(), started.store.clone(), config));
    // The ingest stage has a connection of its own: each loop drains its own when it stops.
    let ingest_bus = Bus::connect(&BusOptions::from(&args.worker.nats).client_name("embedfleet-coordinator-ingest")).await?;
    let ingester = Arc::new(Ingester { bus: ingest_bus.clone(), store: started.store.clone() });

    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let events =
        WorkerConfig { parallel: args.events_in_hand as usize, ..args.worker.worker_config(Stage::Coordinate, Duration::from_secs(20)) };
    let ingest = WorkerConfig { parallel: args.ingests as usize, ..args.worker.worker_config(Stage::Ingest, Duration::from_secs(20)) };
    let (a, b) = tokio::join!(
        run_worker(started.bus, coordinator, events, started.health.clone(), until_stopped(stopped.clone())),
        run_worker(ingest_bus, ingester, ingest, started.health, until_stopped(stopped)),
    );
    crash_loops.abort();
    a?;
    b?;
    Ok(())
}
