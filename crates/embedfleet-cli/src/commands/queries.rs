//! Evaluating on a query log (`evaluate --queries`, `run --queries`): the log matched against the
//! chunked corpus, every model scored on it, and the queries that matched nothing counted and listed.

use super::evaluate::compare_models;
use super::storage::StorageArgs;
use anyhow::{Context, Result};
use embedfleet_core::ChunkConfig;
use embedfleet_core::chunk::chunk_documents;
use embedfleet_core::ingest::{IngestOptions, load_documents};
use embedfleet_evaluator::query_log::{QueryLog, Unmatched, match_queries, read_query_log};
use embedfleet_evaluator::{Comparison, EvalOptions, PreparedDataset};
use embedfleet_model::RuntimeArgs;
use embedfleet_report::RunReport;
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
    let log = match_queries(&rows, &documents, &chunks);
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
    let report = RunReport {
        title,
        models: super::report::model_results(&comparison, eval.models),
        validation: log.dataset,
        files: vec![("results".into(), results_dir.display().to_string())],
        ..Default::default()
    };
    super::report::finish(results_dir, report)?;
    Ok(comparison)
}
