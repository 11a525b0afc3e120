//! What every worker binary does before and around its loop: flags, logs, the store, NATS (with
//! retries and readiness false until connected), the metrics server, and SIGTERM.

use crate::health::{self, Health};
use crate::options::{BusOptions, NatsArgs};
use crate::{Bus, metrics};
use clap::Args;
use embedfleet_core::{ArtifactStore, StoreOptions};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Artifact store: s3://bucket[/prefix] or a directory shared by the fleet.
    #[arg(long, env = "EMBEDFLEET_STORE")]
    pub store: String,
    /// S3-compatible endpoint (MinIO, SeaweedFS, R2); keys from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
    #[arg(long, env = "EMBEDFLEET_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    #[arg(long, env = "EMBEDFLEET_S3_REGION")]
    pub s3_region: Option<String>,
    /// A PEM file of the CA that signed the S3 endpoint's certificate. Plain HTTP is used only
    /// when the endpoint says `http://`.
    #[arg(long, env = "EMBEDFLEET_S3_CA")]
    pub s3_ca: Option<std::path::PathBuf>,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, env = "EMBEDFLEET_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
    #[arg(long, env = "EMBEDFLEET_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// Messages handled at once by this worker.
    #[arg(long, env = "EMBEDFLEET_PARALLEL", default_value_t = 1)]
    pub parallel: usize,
    /// Seconds without an in-progress ack before a message goes to another worker.
    #[arg(long, env = "EMBEDFLEET_ACK_WAIT", default_value_t = 30)]
    pub ack_wait: u64,
    /// Where the fleet may load base and mining models from: `hub` (Hugging Face hub ids) and
    /// `s3://bucket/prefix/` prefixes, comma-separated. Local folders are never allowed. Default:
    /// hub ids and the store's own `models/` folder.
    #[arg(long, env = "EMBEDFLEET_ALLOWED_MODEL_SOURCES")]
    pub allowed_model_sources: Option<String>,
    /// The longest one task may take, in seconds (0: no limit). Past it the task is stopped and
    /// retried. Default per stage: 1 h for events and generate tasks, 6 h for ingest and
    /// evaluation, 72 h for training.
    #[arg(long, env = "EMBEDFLEET_MAX_TASK_SECONDS")]
    pub max_task_seconds: Option<u64>,
}

impl WorkerArgs {
    /// The loop's settings for `stage`; `grace` is how long shutdown waits for messages in hand.
    pub fn worker_config(&self, stage: crate::Stage, grace: Duration) -> crate::worker::WorkerConfig {
        let mut config = crate::worker::WorkerConfig::new(stage, Duration::from_secs(self.ack_wait), self.parallel, grace);
        if let Some(seconds) = self.max_task_seconds {
            config.max_task_time = (seconds > 0).then(|| Duration::from_secs(seconds));
        }
        config
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EMBEDFLEET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,async_nats=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub struct Started {
    pub bus: Bus,
    pub store: ArtifactStore,
    pub health: Arc<Health>,
    pub metrics_addr: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot serve metrics on {addr}: {source}; choose another --metrics-addr")]
    Metrics { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] embedfleet_core::StoreError),
    #[error(transparent)]
    Bus(#[from] crate::BusError),
}

impl WorkerArgs {
    /// The model sources this fleet allows (see `--allowed-model-sources`).
    pub fn model_sources(&self) -> Result<embedfleet_core::model_source::ModelSources, String> {
        match &self.allowed_model_sources {
            Some(list) => embedfleet_core::model_source::ModelSources::parse(list).map_err(|e| format!("--allowed-model-sources: {e}")),
            None => Ok(embedfleet_core::model_source::ModelSources::default_for_store(&self.store)),
        }
    }

    pub fn store_options(&self) -> StoreOptions {
        StoreOptions { endpoint: self.s3_endpoint.clone(), region: self.s3_region.clone(), ca: self.s3_ca.clone(), ..Default::default() }
    }
}

/// Serves health at once (not ready), then connects to the store and NATS, retrying with back-off
/// and saying what is wrong, so an orchestrator sees a live but unready pod rather than a crash loop.
pub async fn start(args: &WorkerArgs, name: &str) -> Result<Started, StartError> {
    start_with_limits(args, name, crate::bus::StreamLimits::default()).await
}

/// [`start`], setting the streams up with `limits` (the coordinator, which owns the layout).
pub async fn start_with_limits(args: &WorkerArgs, name: &str, limits: crate::bus::StreamLimits) -> Result<Started, StartError> {
    let health = Arc::new(Health::default());
    let metrics_addr =
        health::serve(args.metrics_addr, health.clone()).await.map_err(|source| StartError::Metrics { addr: args.metrics_addr, source })?;
    let store = ArtifactStore::open(&args.store, &args.store_options())?.with_observer(Arc::new(metrics::StoreMetrics));
    let mut delay = Duration::from_millis(500);
    loop {
        match store.exists(".embedfleet-probe").await {
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "artifact store unreachable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
    // The coordinator owns the JetStream layout; the other workers bind to it.
    let owns_layout = name == "embedfleet-coordinator";
    let mut options = BusOptions::from(&args.nats).client_name(name).owns_layout(owns_layout);
    options.stream_limits = limits;
    let bus = Bus::connect(&options).await?;
    tracing::info!(%metrics_addr, store = %args.store, "worker started");
    Ok(Started { bus, store, health, metrics_addr })
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
}
