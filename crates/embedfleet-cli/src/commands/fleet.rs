//! The fleet publisher: `submit`, `status`, `watch`, `results`, `cancel`. The work itself happens in
//! the workers; these commands only talk to NATS and the artifact store.

use super::storage::StorageArgs;
use anyhow::{Context, Result, bail};
use clap::Args;
use embedfleet_bus::layout;
use embedfleet_bus::messages::{Message, RunSpec};
use embedfleet_bus::{Bus, BusOptions, NatsArgs, Stage};
use embedfleet_coordinator::worker::load_record;
use embedfleet_coordinator::{RunRecord, RunState};
use embedfleet_core::config::defaults;
use embedfleet_core::{DatasetConfig, PrecisionSetting, RunId, TrainConfig};
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Clone, Args)]
pub struct FleetArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// The fleet's artifact store: s3://bucket[/prefix] or a shared directory.
    #[arg(long, env = "EMBEDFLEET_STORE")]
    pub store: String,
    #[command(flatten)]
    pub storage: StorageArgs,
}

impl FleetArgs {
    async fn bus(&self) -> Result<Bus> {
        let options = BusOptions::from(&self.nats).client_name("embedfleet-cli").connect_timeout(Duration::from_secs(5)).owns_layout(false);
        Ok(Bus::connect(&options).await?)
    }
}

#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    /// The corpus (a JSON or JSON Lines file).
    #[arg(long, env = "EMBEDFLEET_INPUT")]
    pub input: PathBuf,
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// The base model: a hub id, or an s3:// prefix the workers can read.
    #[arg(long, env = "EMBEDFLEET_MODEL_ID", alias = "model_id", default_value = defaults::MODEL_ID)]
    pub model_id: String,
    #[command(flatten)]
    pub dataset: DatasetConfig,
    #[command(flatten)]
    pub training: TrainConfig,
    /// Precision of training and evaluation: auto (each worker's own --precision, which defaults
    /// to auto: bf16 where its hardware runs it natively, fp32 elsewhere), fp32 or bf16.
    #[arg(long, env = "EMBEDFLEET_PRECISION", default_value = "auto")]
    pub precision: PrecisionSetting,
    /// Chunks per generate task (1 to 10,000). Left out, the coordinator chooses from the
    /// corpus's size: small tasks for an LLM, large ones for the offline generator.
    #[arg(long, env = "EMBEDFLEET_CHUNKS_PER_TASK")]
    pub chunks_per_task: Option<usize>,
    /// The run's LLM budget in USD, shared by every generator replica; the run stops asking at it
    /// and keeps what was paid for.
    #[arg(long, env = "EMBEDFLEET_MAX_COST_USD")]
    pub max_cost_usd: Option<f64>,
    /// A run id to use instead of a generated one: 1 to 64 of A-Z a-z 0-9 . _ -.
    #[arg(long, env = "EMBEDFLEET_RUN_ID")]
    pub run_id: Option<RunId>,
}

fn new_run_id() -> RunId {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    RunId::new(format!("run-{}-{:04x}", now.as_secs(), now.subsec_nanos() & 0xffff)).expect("a valid generated id")
}

pub async fn submit(args: SubmitArgs) -> Result<ExitCode> {
    // The fleet's trainer does not merge yet: a setting it would ignore is refused, not dropped.
    if args.training.merge_with_base != embedfleet_core::MergeWithBase::Off {
        anyhow::bail!(
            "--merge-with-base {} is not supported by the fleet yet; leave it out, or merge locally with `embedfleet run` or `embedfleet finetune`",
            args.training.merge_with_base
        );
    }
    let run_id = args.run_id.clone().unwrap_or_else(new_run_id);
    // The corpus keeps its file name: a document without an id or url is named after it
    // (`site.jsonl#12`), so the fleet names documents as a local run of the same file does.
    let name = args
        .input
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.starts_with('.') && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')));
    let name = match name {
        Some(name) => name.to_owned(),
        None => match args.input.extension().and_then(|e| e.to_str()) {
            Some(ext @ ("json" | "jsonl" | "ndjson")) => format!("corpus.{ext}"),
            _ => "corpus.json".to_owned(),
        },
    };
    let input_key = format!("{}/{name}", layout::input_prefix(&run_id));
    let spec = RunSpec {
        input_key,
        model_id: args.model_id.clone(),
        dataset: args.dataset.clone(),
        train: args.training.clone(),
        precision: args.precision.fixed(),
        chunks_per_task: args.chunks_per_task,
        max_cost_usd: args.max_cost_usd,
    };
    // Validate everything locally first: a bad setting or corpus publishes nothing.
    spec.validate(&run_id)?;
    if args.input.is_dir() {
        bail!(
            "{} is a directory; `submit` takes one JSON or JSON Lines file (`embedfleet run` and `generate` also read directories)",
            args.input.display()
        );
    }
    let bytes = match std::fs::metadata(&args.input) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(embedfleet_core::IngestError::NotFound { path: args.input.clone() }.into());
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read the corpus {}", args.input.display())),
    };
    if let Err(reason) = embedfleet_coordinator::worker::check_task_limit(&spec, bytes) {
        bail!("{reason}; nothing submitted");
    }
    // The corpus is read one record at a time, so a corpus of any size is checked in little memory.
    let documents = {
        let (input, options) = (args.input.clone(), embedfleet_core::IngestOptions { text_field: args.dataset.text_field.clone() });
        tokio::task::spawn_blocking(move || {
            embedfleet_core::ingest::for_each_document(&input, &options, |_| Ok::<(), embedfleet_core::IngestError>(()))
        })
        .await??
    };
    let store = args.fleet.storage.open(&args.fleet.store)?;
    let bus = args.fleet.bus().await?;
    if load_record(&bus, &run_id).await?.0.is_some() {
        bail!("run {run_id} already exists; choose another --run-id");
    }
    // Streamed up (a multipart upload for a large file), never read whole into memory.
    let bytes =
        store.put_file(&args.input, &spec.input_key).await.with_context(|| format!("uploading the corpus {}", args.input.display()))?;
    bus.publish(Stage::Coordinate, &Message::RunSubmitted { run_id: run_id.clone(), spec }).await?;
    println!("{run_id}");
    eprintln!("submitted {documents} documents ({bytes} bytes); follow with: embedfleet watch {run_id}");
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Clone, Args)]
pub struct RunArg {
    /// The run id `submit` printed.
    pub run: RunId,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// One run; all runs when left out.
    pub run: Option<RunId>,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

async fn record(bus: &Bus, run: &str) -> Result<RunRecord> {
    match load_record(bus, run).await?.0 {
        Some(r) => Ok(r),
        None => bail!("no run named {run}; `embedfleet status` lists the runs"),
    }
}

fn describe(r: &RunRecord) -> String {
    let spend = match r.spec.max_cost_usd {
        Some(budget) => format!("  ${:.4} of ${budget:.4}", r.spent_usd),
        None if r.spent_usd > 0.0 => format!("  ${:.4}", r.spent_usd),
        None => String::new(),
    };
    format!(
        "{:<28} {:<14} generate {:>4}/{:<5} questions {:>6}  train {:<5} steps {:>5}  evaluations {}/{}{spend}  {}",
        r.run_id,
        r.state.name(),
        r.tasks_done(),
        format!("{}{}", r.ingest.tasks, if r.ingest.complete { "" } else { "+" }),
        r.questions,
        if r.train_done { "done" } else { "-" },
        r.steps,
        r.evaluations.len(),
        r.checkpoints.len(),
        waiting_for(r)
    )
}

/// What a run is waiting for, or why it ended: a run never sits without saying why.
fn waiting_for(r: &RunRecord) -> String {
    use RunState::*;
    match r.state {
        Generating if !r.ingest.complete => format!(
            "reading the corpus ({} chunks so far, coordinator); {} generate task(s) out on the generators",
            r.ingest.chunks,
            r.outstanding.len()
        ),
        Generating => format!("waiting for {} generate task(s) on the generators", r.ingest.tasks - r.tasks_done()),
        Assembling => "writing the dataset (coordinator)".into(),
        Training if !r.train_done => format!("waiting for the trainer (step {} so far)", r.steps),
        Training => {
            let pending: Vec<&str> =
                r.announced.iter().chain(&r.checkpoints).filter(|c| !r.evaluations.contains_key(*c)).map(|c| c.as_str()).collect();
            let mut pending = pending;
            pending.dedup();
            format!("waiting for the evaluators: {}", pending.join(", "))
        }
        Finalizing => "copying the best checkpoint and writing the report (coordinator)".into(),
        Done => match &r.best {
            Some(best) => format!("best checkpoint {best}"),
            None => String::new(),
        },
        Cancelled => "cancelled by the user".into(),
        Failed | BudgetReached => r.error.clone().unwrap_or_default(),
    }
}

pub async fn status(args: StatusArgs) -> Result<ExitCode> {
    let bus = args.fleet.bus().await?;
    if let Some(run) = &args.run {
        let r = record(&bus, run).await?;
        println!("{}", describe(&r));
        for (label, value) in &r.evaluations {
            println!("  {label:<12} {} {value:.4}{}", r.spec.train.metric, if r.best.as_ref() == Some(label) { "  (best)" } else { "" });
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut keys = bus.runs.keys().await.map_err(|e| anyhow::anyhow!("listing runs: {e}"))?;
    let mut ids = Vec::new();
    while let Some(Ok(k)) = keys.next().await {
        ids.push(k);
    }
    ids.sort();
    if ids.is_empty() {
        println!("no runs");
    }
    for id in ids {
        if let Ok(r) = record(&bus, &id).await {
            println!("{}", describe(&r));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Live bars from the run's record, updated on every state event, until it ends.
pub async fn watch(args: RunArg) -> Result<ExitCode> {
    let bus = args.fleet.bus().await?;
    let mut events = bus
        .client
        .subscribe(embedfleet_bus::subjects::events_subject(&args.run, ">"))
        .await
        .map_err(|e| anyhow::anyhow!("subscribing to events: {e}"))?;
    let mut r = record(&bus, &args.run).await?;
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>10.bold} [{bar:30}] {pos}/{len} {msg}").expect("static").progress_chars("=> ");
    let generate = bars.add(ProgressBar::new(u64::from(r.ingest.tasks)).with_style(style.clone()).with_prefix("generate"));
    let eval = bars.add(ProgressBar::new(0).with_style(style).with_prefix("evaluate"));
    let train = bars.add(ProgressBar::new_spinner().with_prefix("train"));
    loop {
        generate.set_length(u64::from(r.ingest.tasks));
        generate.set_position(u64::from(r.tasks_done()));
        let reading = if r.ingest.complete { String::new() } else { format!(", corpus read so far: {} chunks", r.ingest.chunks) };
        generate.set_message(format!("{} questions{reading}", r.questions));
        train.set_message(format!("{} steps{}", r.steps, if r.train_done { ", done" } else { "" }));
        eval.set_length(r.checkpoints.len() as u64);
        eval.set_position(r.evaluations.len() as u64);
        if r.state.is_terminal() {
            break;
        }
        // Events wake the loop at once; the timeout re-reads the record in case one was missed.
        let _ = tokio::time::timeout(Duration::from_secs(2), events.next()).await;
        r = record(&bus, &args.run).await?;
    }
    for b in [&generate, &train, &eval] {
        b.finish();
    }
    println!("{}", describe(&r));
    match r.state {
        RunState::Done => Ok(ExitCode::SUCCESS),
        RunState::Cancelled => {
            eprintln!("run {} was cancelled", r.run_id);
            Ok(ExitCode::FAILURE)
        }
        other => {
            eprintln!("run {} ended {}: {}", r.run_id, other.name(), r.error.as_deref().unwrap_or("no reason recorded"));
            Ok(ExitCode::FAILURE)
        }
    }
}

pub async fn results(args: RunArg) -> Result<ExitCode> {
    let bus = args.fleet.bus().await?;
    let r = record(&bus, &args.run).await?;
    if r.state != RunState::Done {
        bail!("run {} is {}; results come when it is done", r.run_id, r.state.name());
    }
    let store = args.fleet.storage.open(&args.fleet.store)?;
    let report: serde_json::Value = serde_json::from_slice(&store.get(&layout::report(&r.run_id)).await?)?;
    let comparison: serde_json::Value =
        serde_json::from_slice(&store.get(&format!("{}/comparison.json", layout::results(&r.run_id))).await?)?;
    println!("{:<12} {:>10} {:>10} {:>10} {:>10}", "checkpoint", "HitRate@5", "MRR@10", "NDCG@10", "MAP@100");
    for m in comparison["models"].as_array().into_iter().flatten() {
        let metric = |n: &str| m["metrics"][n].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:<12} {:>10.4} {:>10.4} {:>10.4} {:>10.4}",
            m["name"].as_str().unwrap_or("?"),
            m["hit_rate"]["rate"].as_f64().unwrap_or(f64::NAN),
            metric("cosine-MRR@10"),
            metric("cosine-NDCG@10"),
            metric("cosine-MAP@100")
        );
    }
    println!("\n{}", report["kept"].as_str().unwrap_or(""));
    println!("{}", report["verdict"].as_str().unwrap_or(""));
    println!("model: {}", store.describe(&layout::model(&r.run_id)));
    Ok(ExitCode::SUCCESS)
}

pub async fn cancel(args: RunArg) -> Result<ExitCode> {
    let bus = args.fleet.bus().await?;
    let r = record(&bus, &args.run).await?;
    if r.state.is_terminal() {
        bail!("run {} is already {}", r.run_id, r.state.name());
    }
    bus.publish(Stage::Coordinate, &Message::CancelRun { run_id: r.run_id.clone() }).await?;
    println!("cancel requested for {}", r.run_id);
    Ok(ExitCode::SUCCESS)
}
