//! `embedfleet results RUN` and what it takes home: `--download DIR` copies the kept model and the
//! results folder (report included) from the fleet's store, `--open` prints where the report is
//! on this machine.

use super::fleet::RunArg;
use anyhow::{Context, Result, bail};
use clap::Args;
use embedfleet_bus::layout;
use embedfleet_bus::{Bus, BusOptions};
use embedfleet_coordinator::RunState;
use embedfleet_coordinator::worker::load_record;
use embedfleet_core::ArtifactStore;
use embedfleet_report::write::write_atomic;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Clone, Args)]
pub struct ResultsArgs {
    #[command(flatten)]
    pub run: RunArg,
    /// Copy the kept model to DIR/model and the results, report.html included, to DIR/results.
    #[arg(long, env = "EMBEDFLEET_DOWNLOAD", value_name = "DIR")]
    pub download: Option<PathBuf>,
    /// Print only the local path of the run's report.html, fetching it first from an s3:// store
    /// (into DIR with --download, else into the cache), e.g. `xdg-open "$(embedfleet results RUN --open)"`.
    #[arg(long, env = "EMBEDFLEET_OPEN")]
    pub open: bool,
}

/// Names the run a folder was downloaded from, so downloading the same run again may overwrite it.
const MARKER: &str = ".embedfleet-run";

pub async fn results(args: ResultsArgs) -> Result<ExitCode> {
    if args.download.is_none() && !args.open {
        return super::fleet::results(args.run).await;
    }
    let run = args.run.run.as_str();
    let fleet = &args.run.fleet;
    let options = BusOptions::from(&fleet.nats).client_name("embedfleet-cli").connect_timeout(Duration::from_secs(5)).owns_layout(false);
    let bus = Bus::connect(&options).await?;
    let record = match load_record(&bus, run).await.map_err(anyhow::Error::msg)?.0 {
        Some(r) => r,
        None => bail!("no run named {run}; `embedfleet status` lists the runs"),
    };
    if record.state != RunState::Done {
        bail!("run {run} is {}; its results come when it is done", record.state.name());
    }
    let store = fleet.storage.open(&fleet.store)?;
    let report_key = format!("{}/report.html", layout::results(run));
    if !store.exists(&report_key).await? {
        bail!(
            "run {run} has no report.html (it was finished by a coordinator older than the report); its results are in {}",
            store.describe(&layout::results(run))
        );
    }
    let report = match &args.download {
        Some(dir) => {
            let (files, bytes) = download(&store, run, dir).await?;
            if !args.open {
                println!("downloaded {files} files ({:.1} MB) of run {run} to {}", bytes as f64 / 1e6, dir.display());
                println!("model   {}", dir.join("model").display());
                println!("report  {}", dir.join("results/report.html").display());
            }
            dir.join("results/report.html")
        }
        // A store on this machine's disk already holds the report where it can be opened.
        None if !fleet.store.starts_with("s3://") => PathBuf::from(store.describe(&report_key)),
        None => {
            let dir = cache_dir().join(run);
            let mut counter = Counter::new(&store, &[layout::results(run)]).await?;
            copy_prefix(&store, &layout::results(run), &dir.join("results"), &mut counter).await?;
            counter.progress.finish();
            dir.join("results/report.html")
        }
    };
    if args.open {
        println!("{}", report.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn cache_dir() -> PathBuf {
    embedfleet_core::cache::cache_subdir("results")
}

/// Progress over every file of some prefixes.
struct Counter {
    progress: std::sync::Arc<dyn embedfleet_core::Progress>,
    files: usize,
    bytes: u64,
}

impl Counter {
    async fn new(store: &ArtifactStore, prefixes: &[String]) -> Result<Self> {
        let mut total = 0;
        for p in prefixes {
            total += store.list(p).await?.len();
        }
        let progress = crate::progress::for_terminal();
        progress.start("download", Some(total as u64));
        Ok(Counter { progress, files: 0, bytes: 0 })
    }
}

/// Copies `DIR/model` and `DIR/results`; returns the files and bytes copied.
async fn download(store: &ArtifactStore, run: &str, dir: &Path) -> Result<(usize, u64)> {
    for part in ["model", "results"] {
        let target = dir.join(part);
        let occupied = std::fs::read_dir(&target).map(|mut d| d.next().is_some()).unwrap_or(false);
        let same_run = std::fs::read_to_string(dir.join(MARKER)).is_ok_and(|m| m.trim() == run);
        if occupied && !same_run {
            bail!(
                "{} already holds files that are not from run {run}; choose another --download directory or move them away",
                target.display()
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), format!("{run}\n")).with_context(|| format!("cannot write in {}", dir.display()))?;
    let mut counter = Counter::new(store, &[layout::model(run), layout::results(run)]).await?;
    copy_prefix(store, &layout::model(run), &dir.join("model"), &mut counter).await?;
    copy_prefix(store, &layout::results(run), &dir.join("results"), &mut counter).await?;
    counter.progress.finish();
    verify_model(store, run, &dir.join("model")).await?;
    Ok((counter.files, counter.bytes))
}

/// Checks every downloaded model file against the SHA-256 the coordinator recorded in the run's
/// report.json when it finalized the run.
async fn verify_model(store: &ArtifactStore, run: &str, model: &Path) -> Result<()> {
    use sha2::{Digest, Sha256};
    let report: serde_json::Value = serde_json::from_slice(&store.get(&layout::report(run)).await?)?;
    let Some(sums) = report["model_sha256"].as_object().filter(|s| !s.is_empty()) else {
        eprintln!("warning: report.json of run {run} holds no checksums (a coordinator older than them finalized it); not verified");
        return Ok(());
    };
    for (file, want) in sums {
        let path = model.join(file);
        let bytes = std::fs::read(&path).with_context(|| format!("{} is listed in report.json but was not downloaded", path.display()))?;
        let got = hex::encode(Sha256::digest(&bytes));
        if Some(got.as_str()) != want.as_str() {
            bail!(
                "{} does not match its checksum in report.json (expected {}, got {got}): the download or the store is corrupt; download again",
                path.display(),
                want.as_str().unwrap_or("?")
            );
        }
    }
    eprintln!("checksums: the {} model files match report.json", sums.len());
    Ok(())
}

async fn copy_prefix(store: &ArtifactStore, prefix: &str, target: &Path, counter: &mut Counter) -> Result<()> {
    let root = format!("{}/", prefix.trim_end_matches('/'));
    for key in store.list(prefix).await? {
        let rel = key.strip_prefix(&root).unwrap_or(&key);
        counter.progress.message(rel);
        let bytes = store.get(&key).await?;
        write_atomic(&target.join(rel), &bytes)?;
        counter.files += 1;
        counter.bytes += bytes.len() as u64;
        counter.progress.advance(1);
    }
    Ok(())
}
