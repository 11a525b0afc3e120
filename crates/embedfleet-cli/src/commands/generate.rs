//! `embedfleet generate`: documents → chunks → questions → train/val split → the 8 dataset files.

use super::storage::StorageArgs;
use anyhow::{Context, Result, bail};
use clap::Args;
use embedfleet_core::assemble::AssembleError;
use embedfleet_core::generate::{ChunkFailure, DatasetSummary, GenerateDatasetError, GenerateDatasetOptions, generate_dataset};
use embedfleet_core::{ArtifactStore, DatasetConfig, GeneratorKind, OfflineGenerator, Progress};
use embedfleet_generator::{GeneratorStats, LlmArgs, LlmGenerator, write_failures};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// The corpus: a JSON array of objects, JSON Lines, or a directory of .txt/.md/.html files.
    #[arg(long, env = "EMBEDFLEET_INPUT")]
    pub input: PathBuf,
    /// Where the 8 dataset files go: a directory or s3://bucket/prefix.
    #[arg(long, env = "EMBEDFLEET_OUTPUT_DIR", alias = "output_dir", default_value = "data")]
    pub output_dir: String,
    #[command(flatten)]
    pub dataset: DatasetConfig,
    #[command(flatten)]
    pub llm: LlmArgs,
    /// Replace a different dataset already in the output directory.
    #[arg(long, env = "EMBEDFLEET_OVERWRITE")]
    pub overwrite: bool,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// What `generate` did: the dataset is in the output store.
pub struct BuiltDataset {
    pub summary: DatasetSummary,
    /// Chunks the LLM could not answer; the dataset holds the others.
    pub failures: Vec<ChunkFailure>,
    pub llm_stats: Option<GeneratorStats>,
}

/// Everything of `generate`, so `run` shares it: the corpus is streamed through chunking,
/// question generation and the split into the 8 dataset files, a shard at a time (scratch space
/// in a temporary directory), so memory does not grow with the corpus. Then the output store is
/// opened (`out`: nothing is created for input that fails) and the files go there; a different
/// dataset already there is kept unless `overwrite`.
pub async fn build_dataset(
    input: &Path,
    args: &DatasetConfig,
    llm: &LlmArgs,
    out: impl FnOnce() -> Result<ArtifactStore>,
    overwrite: bool,
    progress: Arc<dyn Progress>,
) -> Result<(BuiltDataset, ArtifactStore)> {
    args.validate()?;
    let scratch =
        tempfile::Builder::new().prefix("embedfleet-generate-").tempdir().context("creating a scratch directory for the shards")?;
    let work = ArtifactStore::local(scratch.path())?;
    let options = GenerateDatasetOptions { input, config: args, work: &work };
    let use_llm = match args.generator {
        GeneratorKind::Llm => true,
        GeneratorKind::Offline => false,
        GeneratorKind::Auto => llm.configured(),
    };
    let (generated, llm_stats) = if use_llm {
        let generator = Arc::new(LlmGenerator::new(llm.config()?)?);
        let ticker = llm_ticker(generator.clone(), progress.clone());
        let generated = generate_dataset(generator.as_ref(), &options, progress.as_ref()).await;
        ticker.abort();
        (generated, Some(generator.stats()))
    } else {
        (generate_dataset(&OfflineGenerator::new(args.seed), &options, progress.as_ref()).await, None)
    };
    let generated = match generated {
        Err(GenerateDatasetError::Assemble(AssembleError::OneSided { train, val })) => {
            bail!("the split left {train} training and {val} validation questions; both need some. Add documents or change --train-ratio")
        }
        other => other?,
    };
    let summary = generated.staged.summary.clone();
    // The output is touched only now, with the whole dataset in hand.
    let out = out()?;
    generated.staged.commit_into(&out, "", overwrite).await.with_context(|| format!("writing the dataset to {}", out.describe("")))?;
    Ok((BuiltDataset { summary, failures: generated.failures, llm_stats }, out))
}

/// A live line of requests, 429s and cost on the progress bar while the LLM works.
fn llm_ticker(generator: Arc<LlmGenerator>, progress: Arc<dyn Progress>) -> tokio::task::JoinHandle<()> {
    let started = Instant::now();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let s = generator.stats();
            progress.message(&format!(
                "{:.1} req/s, {} x 429, ${:.4}",
                s.requests as f64 / started.elapsed().as_secs_f64().max(1e-3),
                s.rate_limited,
                s.cost_usd
            ));
        }
    })
}

pub async fn run(args: GenerateArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let progress = crate::progress::for_terminal();
    let open = || Ok(args.storage.open(&args.output_dir)?);
    let (built, store) = build_dataset(&args.input, &args.dataset, &args.llm, open, args.overwrite, progress).await?;
    print_summary(&built.summary, &store.describe(""), started.elapsed().as_secs_f64());
    if let Some(stats) = &built.llm_stats {
        print_llm_stats(stats);
    }
    report_failures(&built.failures)
}

/// Failed chunks go to a file next to where the command runs; the exit status counts them.
pub fn report_failures(failures: &[ChunkFailure]) -> Result<ExitCode> {
    if failures.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let path = PathBuf::from("generation_failures.jsonl");
    write_failures(&path, failures)?;
    eprintln!(
        "error: {} chunk(s) got no questions (first: {}: {}); listed in {}. Run again to retry only those",
        failures.len(),
        failures[0].chunk_id,
        failures[0].error,
        path.display()
    );
    Ok(ExitCode::from(failures.len().min(100) as u8 + 1))
}

pub fn print_llm_stats(s: &GeneratorStats) {
    println!(
        "  llm        {} requests ({} retries, {} x 429, {} x 5xx, {} timeouts)",
        s.requests, s.retries, s.rate_limited, s.server_errors, s.timeouts
    );
    if let Some(cache) = s.cache_summary() {
        println!("  cache      {cache}");
    }
    println!("  tokens     {} prompt + {} completion = ${:.4}", s.prompt_tokens, s.completion_tokens, s.cost_usd);
    println!(
        "  filtered   {} questions dropped (preamble {}, not a question {}, copied {}, duplicate {}), {} short chunks",
        s.filtered.total(),
        s.filtered.preamble,
        s.filtered.not_a_question,
        s.filtered.copied_from_chunk,
        s.filtered.duplicate_in_chunk + s.filtered.duplicate_in_corpus,
        s.chunks_short
    );
}

pub fn print_summary(s: &DatasetSummary, location: &str, seconds: f64) {
    println!("dataset written to {}", location.trim_end_matches('/'));
    println!("  documents  {:>7}", s.documents);
    println!("  chunks     {:>7}   train {:>6}   val {:>6}", s.chunks, s.train_chunks, s.val_chunks);
    println!("  questions  {:>7}   train {:>6}   val {:>6}", s.questions, s.train_queries, s.val_queries);
    println!("  wall time  {seconds:>7.2} s");
}
