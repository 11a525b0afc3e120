//! `embedfleet generate`: documents → chunks → questions → train/val split → the 8 dataset files.

use super::storage::StorageArgs;
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use embedfleet_core::chunk::chunk_documents;
use embedfleet_core::dataset::write_dataset;
use embedfleet_core::generate::{DatasetSummary, assemble_dataset, generate_questions};
use embedfleet_core::ingest::load_documents;
use embedfleet_core::{ChunkConfig, IngestOptions, OfflineGenerator, Progress, QaDataset, SplitBy, SplitConfig};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GeneratorKind {
    /// An LLM when one is configured, else offline.
    Auto,
    /// Pseudo-queries cropped from each chunk's own text; needs nothing.
    Offline,
}

#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// The corpus: a JSON array of objects, JSON Lines, or a directory of .txt/.md/.html files.
    #[arg(long, env = "EMBEDFLEET_INPUT")]
    pub input: PathBuf,
    /// Where the 8 dataset files go: a directory or s3://bucket/prefix.
    #[arg(long, env = "EMBEDFLEET_OUTPUT_DIR", alias = "output_dir", default_value = "data")]
    pub output_dir: String,
    #[command(flatten)]
    pub dataset: DatasetArgs,
    /// Replace a different dataset already in the output directory.
    #[arg(long, env = "EMBEDFLEET_OVERWRITE")]
    pub overwrite: bool,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// How a corpus becomes a dataset; shared by `generate` and `run`.
#[derive(Debug, Clone, Args)]
pub struct DatasetArgs {
    /// Which question generator to use.
    #[arg(long, env = "EMBEDFLEET_GENERATOR", value_enum, default_value = "auto")]
    pub generator: GeneratorKind,
    /// The field holding the text in JSON records (default: content, text, page_content or body).
    #[arg(long, env = "EMBEDFLEET_TEXT_FIELD", alias = "text_field")]
    pub text_field: Option<String>,
    /// Characters per chunk.
    #[arg(long, env = "EMBEDFLEET_CHUNK_SIZE", alias = "chunk_size", default_value_t = 1000)]
    pub chunk_size: usize,
    /// Characters shared by consecutive chunks.
    #[arg(long, env = "EMBEDFLEET_CHUNK_OVERLAP", alias = "chunk_overlap", default_value_t = 200)]
    pub chunk_overlap: usize,
    /// Questions to write for each chunk.
    #[arg(
        long,
        env = "EMBEDFLEET_QUESTIONS_PER_CHUNK",
        aliases = ["questions_per_chunk", "num_questions_per_chunk"],
        default_value_t = 2
    )]
    pub questions_per_chunk: usize,
    /// Share of chunks for training; the rest validates.
    #[arg(long, env = "EMBEDFLEET_TRAIN_RATIO", alias = "train_ratio", default_value_t = 0.8)]
    pub train_ratio: f64,
    /// Keep each document on one side (no leakage), or split chunks like the reference.
    #[arg(long, env = "EMBEDFLEET_SPLIT_BY", alias = "split_by", value_enum, default_value = "document")]
    pub split_by: SplitByArg,
    /// Seed for the split and the offline generator.
    #[arg(long, env = "EMBEDFLEET_SEED", default_value_t = 42)]
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SplitByArg {
    Document,
    Chunk,
}

impl DatasetArgs {
    fn chunk_config(&self) -> ChunkConfig {
        ChunkConfig { size: self.chunk_size, overlap: self.chunk_overlap }
    }

    fn split_config(&self) -> SplitConfig {
        let by = match self.split_by {
            SplitByArg::Document => SplitBy::Document,
            SplitByArg::Chunk => SplitBy::Chunk,
        };
        SplitConfig { train_ratio: self.train_ratio, seed: self.seed, by }
    }
}

pub struct BuiltDataset {
    pub train: QaDataset,
    pub val: QaDataset,
    pub summary: DatasetSummary,
}

/// Everything of `generate` short of writing files, so `run` shares it.
pub async fn build_dataset(input: &PathBuf, args: &DatasetArgs, progress: &dyn Progress) -> Result<BuiltDataset> {
    if args.questions_per_chunk == 0 {
        bail!("--questions-per-chunk must be at least 1");
    }
    let docs = load_documents(input, &IngestOptions { text_field: args.text_field.clone() })?;
    let chunks = chunk_documents(&docs, &args.chunk_config())?;
    tracing::info!(documents = docs.len(), chunks = chunks.len(), "chunked");
    let outcome = match args.generator {
        GeneratorKind::Auto | GeneratorKind::Offline => {
            generate_questions(&OfflineGenerator::new(args.seed), &chunks, args.questions_per_chunk, progress).await
        }
    };
    if let Some(reason) = &outcome.stopped {
        bail!("question generation stopped: {reason}");
    }
    if !outcome.failures.is_empty() {
        bail!("{} chunk(s) got no questions; first: {}: {}", outcome.failures.len(), outcome.failures[0].chunk_id, outcome.failures[0].error);
    }
    let (train, val, summary) = assemble_dataset(&chunks, &outcome.questions, &args.split_config())?;
    if train.queries.is_empty() || val.queries.is_empty() {
        bail!(
            "the split left {} training and {} validation questions; both need some. Add documents or change --train-ratio",
            train.queries.len(),
            val.queries.len()
        );
    }
    Ok(BuiltDataset { train, val, summary })
}

pub async fn run(args: GenerateArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let progress = crate::progress::for_terminal();
    let built = build_dataset(&args.input, &args.dataset, progress.as_ref()).await?;
    // Opened only now, so bad input leaves no empty output directory behind.
    let store = args.storage.open(&args.output_dir)?;
    write_dataset(&store, "", &built.train, &built.val, args.overwrite)
        .await
        .with_context(|| format!("writing the dataset to {}", args.output_dir))?;
    print_summary(&built.summary, &store.describe(""), started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

pub fn print_summary(s: &DatasetSummary, location: &str, seconds: f64) {
    println!("dataset written to {}", location.trim_end_matches('/'));
    println!("  documents  {:>7}", s.documents);
    println!("  chunks     {:>7}   train {:>6}   val {:>6}", s.chunks, s.train_chunks, s.val_chunks);
    println!("  questions  {:>7}   train {:>6}   val {:>6}", s.questions, s.train_queries, s.val_queries);
    println!("  wall time  {seconds:>7.2} s");
}
