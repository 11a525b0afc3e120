//! `embedfleet generate`: documents → chunks → questions → train/val split → the 8 dataset files.

use super::storage::StorageArgs;
use anyhow::{Context, Result, bail};
use clap::Args;
use embedfleet_core::Chunk;
use embedfleet_core::chunk::chunk_documents;
use embedfleet_core::dataset::write_dataset;
use embedfleet_core::generate::{ChunkFailure, GenerationOutcome};
use embedfleet_core::generate::{DatasetSummary, assemble_dataset, generate_questions};
use embedfleet_core::ingest::load_documents;
use embedfleet_core::{DatasetConfig, GeneratorKind, IngestOptions, OfflineGenerator, Progress, QaDataset};
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

pub struct BuiltDataset {
    pub train: QaDataset,
    pub val: QaDataset,
    pub summary: DatasetSummary,
    /// Chunks the LLM could not answer; the dataset holds the others.
    pub failures: Vec<ChunkFailure>,
    pub llm_stats: Option<GeneratorStats>,
}

/// Everything of `generate` short of writing files, so `run` shares it.
pub async fn build_dataset(input: &Path, args: &DatasetConfig, llm: &LlmArgs, progress: Arc<dyn Progress>) -> Result<BuiltDataset> {
    args.validate()?;
    let docs = load_documents(input, &IngestOptions { text_field: args.text_field.clone() })?;
    let chunks = chunk_documents(&docs, &args.chunk_config())?;
    tracing::info!(documents = docs.len(), chunks = chunks.len(), "chunked");
    let use_llm = match args.generator {
        GeneratorKind::Llm => true,
        GeneratorKind::Offline => false,
        GeneratorKind::Auto => llm.configured(),
    };
    let (outcome, llm_stats) = if use_llm {
        let (outcome, stats) = ask_llm(&chunks, args, llm, progress).await?;
        (outcome, Some(stats))
    } else {
        let offline = OfflineGenerator::new(args.seed);
        (generate_questions(&offline, &chunks, args.questions_per_chunk, progress.as_ref()).await, None)
    };
    if let Some(reason) = &outcome.stopped {
        bail!("question generation stopped: {reason}. Answers so far are kept in the resume cache; fix the cause and run again");
    }
    let (train, val, summary) = assemble_dataset(&chunks, &outcome.questions, &args.split_config())?;
    if train.queries.is_empty() || val.queries.is_empty() {
        bail!(
            "the split left {} training and {} validation questions; both need some. Add documents or change --train-ratio",
            train.queries.len(),
            val.queries.len()
        );
    }
    Ok(BuiltDataset { train, val, summary, failures: outcome.failures, llm_stats })
}

/// Runs the LLM generator with a live line of requests, 429s and cost on the progress bar.
async fn ask_llm(
    chunks: &[Chunk],
    args: &DatasetConfig,
    llm: &LlmArgs,
    progress: Arc<dyn Progress>,
) -> Result<(GenerationOutcome, GeneratorStats)> {
    let generator = Arc::new(LlmGenerator::new(llm.config()?)?);
    let ticker = {
        let (generator, progress) = (generator.clone(), progress.clone());
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
    };
    let outcome = generate_questions(generator.as_ref(), chunks, args.questions_per_chunk, progress.as_ref()).await;
    ticker.abort();
    Ok((outcome, generator.stats()))
}

pub async fn run(args: GenerateArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let progress = crate::progress::for_terminal();
    let built = build_dataset(&args.input, &args.dataset, &args.llm, progress).await?;
    // Opened only now, so bad input leaves no empty output directory behind.
    let store = args.storage.open(&args.output_dir)?;
    write_dataset(&store, "", &built.train, &built.val, args.overwrite)
        .await
        .with_context(|| format!("writing the dataset to {}", args.output_dir))?;
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
