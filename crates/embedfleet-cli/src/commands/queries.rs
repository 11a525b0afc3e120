//! Evaluating on a query log (`evaluate --queries`, `run --queries`): the log matched against the
//! chunked corpus, every model scored on it, and the queries that matched nothing counted and listed.

use super::evaluate::compare_models;
use super::storage::StorageArgs;
use anyhow::{Context, Result};
use embedfleet_core::chunk::chunk_documents;
use embedfleet_core::ingest::{IngestOptions, load_documents};
use embedfleet_core::{ChunkConfig, QaDataset};
use embedfleet_evaluator::query_log::{QueryLog, Unmatched, match_queries, read_query_log};
use embedfleet_evaluator::round_trip::{RoundTrip, round_trip_filter};
use embedfleet_evaluator::{Comparison, EvalOptions, PreparedDataset};
use embedfleet_model::RuntimeArgs;
use embedfleet_report::RunReport;
use embedfleet_report::data::QueryLogFacts;
use std::io::Write as _;
use std::path::Path;

/// The file beside the results that lists every query that matched nothing, one JSON object a line.
pub const UNMATCHED_FILE: &str = "unmatched_queries.jsonl";

/// Unmatched queries printed before pointing at the file.
const UNMATCHED_SHOWN: usize = 5;

/// Reads the log and the corpus, chunks the corpus as `generate` would, and matches them.
pub fn load_query_log(queries: &Path, corpus: &Path, chunking: ChunkConfig, text_field: Option<String>) -> Result<QueryLog> {
    let rows = read_query_log(queries)?;
    let documents = load_documents(corpus, &IngestOptions { text_field })?;
    let chunks = chunk_documents(&documents, &chunking)?;
    let mut log = match_queries(&rows, &documents, &chunks);
    log.file = queries.display().to_string();
    println!(
        "query log {}: {} queries, {} matched, {} matched nothing; corpus {}: {} documents, {} chunks",
        queries.display(),
        log.rows,
        log.dataset.queries.len(),
        log.unmatched.len(),
        corpus.display(),
        documents.len(),
        chunks.len()
    );
    if log.dataset.queries.is_empty() {
        anyhow::bail!(
            "no query of {} matches the corpus {} ({}); check that the log's url/doc_id/answer/chunk_id name this corpus, and that it is chunked with the same --chunk-size and --chunk-overlap",
            queries.display(),
            corpus.display(),
            log.unmatched.first().map(|u| u.reason.as_str()).unwrap_or("no rows")
        );
    }
    Ok(log)
}

/// Refuses to evaluate on queries the generator saw as examples: a question written to look like
/// the very queries it is then scored on would make the evaluation look better than it is.
pub fn refuse_shared_queries(examples: &Path, log: &Path) -> Result<()> {
    use embedfleet_core::query_file::{Labels, read_queries};
    let fold = |q: &str| q.split_whitespace().map(str::to_lowercase).collect::<Vec<_>>().join(" ");
    let shown: std::collections::HashSet<String> = read_queries(examples, Labels::Ignored)?.iter().map(|r| fold(&r.query)).collect();
    let scored = read_query_log(log)?;
    let shared: Vec<&str> = scored.iter().filter(|r| shown.contains(&fold(&r.query))).map(|r| r.query.as_str()).collect();
    if let Some(first) = shared.first() {
        anyhow::bail!(
            "{} of the {} queries in --queries {} are also in --example-queries {} (e.g. {first:?}). A log used for examples must not be used for evaluation in the same run: the questions would be written to look like the very queries they are scored on. Split the log in two (e.g. every other line) and pass one part to each flag.",
            shared.len(),
            scored.len(),
            log.display(),
            examples.display()
        );
    }
    Ok(())
}

/// Writes [`UNMATCHED_FILE`] (empty when every query matched) and prints the first few.
pub fn write_unmatched(results_dir: &Path, unmatched: &[Unmatched]) -> Result<()> {
    let path = results_dir.join(UNMATCHED_FILE);
    let mut lines = Vec::new();
    for u in unmatched {
        writeln!(lines, "{}", serde_json::to_string(u)?)?;
    }
    std::fs::write(&path, lines).with_context(|| format!("writing {}", path.display()))?;
    if unmatched.is_empty() {
        return Ok(());
    }
    let n = unmatched.len();
    println!(
        "{n} {} matched nothing in the corpus and {} not scored:",
        if n == 1 { "query" } else { "queries" },
        if n == 1 { "is" } else { "are" }
    );
    for u in unmatched.iter().take(UNMATCHED_SHOWN) {
        println!("  line {}: {:?}: {}", u.line, u.query, u.reason);
    }
    println!("  every one is listed in {}", path.display());
    Ok(())
}

/// What the query-log evaluation needs besides the log.
pub struct QueryLogEvaluation<'a> {
    pub models: &'a [(String, String)],
    pub options: &'a EvalOptions,
    pub query_prompt: Option<&'a str>,
    pub runtime: &'a RuntimeArgs,
    pub storage: &'a StorageArgs,
}

/// Scores every model on the log into `results_dir` (CSVs, report.json, comparison.csv,
/// report.html, unmatched_queries.jsonl) and prints the tables and the summary.
pub async fn evaluate_query_log(log: QueryLog, title: String, eval: QueryLogEvaluation<'_>, results_dir: &Path) -> Result<Comparison> {
    let mut data = PreparedDataset::new(&log.dataset)?;
    data.documents = Some(log.documents.clone());
    let comparison = compare_models(eval.models, &data, eval.options, eval.query_prompt, eval.runtime, eval.storage, results_dir).await?;
    write_unmatched(results_dir, &log.unmatched)?;
    let query_log = QueryLogFacts {
        file: log.file.clone(),
        rows: log.rows,
        matched: log.dataset.queries.len(),
        unmatched_file: results_dir.join(UNMATCHED_FILE).display().to_string(),
    };
    let report = RunReport {
        title,
        query_log: Some(query_log),
        models: super::report::model_results(&comparison, eval.models),
        validation: log.dataset,
        files: vec![("results".into(), results_dir.display().to_string())],
        ..Default::default()
    };
    super::report::finish(results_dir, report)?;
    Ok(comparison)
}

/// `--round-trip-top-k`: keep a training question only if a retriever ranks its own chunk in the top
/// K of the training corpus (Promptagator's round-trip consistency).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RoundTripArgs {
    /// Round-trip filter: keep a training question only if the retriever ranks its own chunk in
    /// the top K of the training corpus (questions their chunk does not answer, or that another
    /// chunk answers better, are dropped).
    #[arg(long, env = "EMBEDFLEET_ROUND_TRIP_TOP_K")]
    pub round_trip_top_k: Option<usize>,
    /// The retriever of the round trip: folder, s3:// prefix or hub id (default: the base model).
    #[arg(long, env = "EMBEDFLEET_ROUND_TRIP_MODEL")]
    pub round_trip_model: Option<String>,
}

impl RoundTripArgs {
    /// The training set with the questions that fail the round trip dropped, and what was dropped;
    /// `train` unchanged when the filter is off.
    pub async fn filter(
        &self,
        train: QaDataset,
        base_model: &str,
        query_prompt: Option<&str>,
        runtime: &RuntimeArgs,
        storage: &StorageArgs,
    ) -> Result<(QaDataset, Option<RoundTrip>)> {
        let Some(k) = self.round_trip_top_k else { return Ok((train, None)) };
        if k == 0 {
            anyhow::bail!("--round-trip-top-k 0 would drop every question; use 1 or more (1: the own chunk must rank first)");
        }
        println!("\n== round trip");
        let spec = self.round_trip_model.clone().unwrap_or_else(|| base_model.to_owned());
        let model = runtime.load(&spec, &storage.options()).await.with_context(|| format!("loading the round-trip model {spec}"))?;
        let prompt = query_prompt.map(str::to_owned);
        let (kept, report) = tokio::task::spawn_blocking(move || round_trip_filter(&model, &train, k, 32, prompt.as_deref())).await??;
        println!(
            "kept {} of {} training questions whose own chunk {spec} ranks in the top {k}; dropped {}",
            report.kept,
            report.kept + report.dropped,
            report.dropped
        );
        for q in &report.examples {
            println!("  dropped: {q:?}");
        }
        if report.kept == 0 {
            anyhow::bail!("the round trip dropped every training question; raise --round-trip-top-k or leave it out");
        }
        Ok((kept, Some(report)))
    }
}
