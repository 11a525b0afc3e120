//! The report of a local command: its parts from the stages' outcomes, `report.html` beside the
//! results, and the summary block that ends `evaluate` and `run`.

use super::generate::BuiltDataset;
use anyhow::{Context, Result};
use embedfleet_core::{DatasetConfig, SplitBy};
use embedfleet_evaluator::Comparison;
use embedfleet_generator::LlmArgs;
use embedfleet_report::{DatasetFacts, LlmFacts, ModelResult, RunReport};
use indexmap::IndexMap;
use std::path::{Path, PathBuf};

/// Each evaluation as the report shows it, with the model as the user named it.
pub fn model_results(comparison: &Comparison, models: &[(String, String)]) -> Vec<ModelResult> {
    comparison
        .iter()
        .map(|(name, e)| {
            let source = models.iter().find(|(n, _)| n == name).map(|(_, s)| s.as_str()).unwrap_or(name);
            e.to_result(name, source)
        })
        .collect()
}

/// What the generate stage did, for the page and the card.
pub fn dataset_facts(built: &BuiltDataset, args: &DatasetConfig, llm_args: &LlmArgs) -> DatasetFacts {
    let s = &built.summary;
    let (generator, dropped, llm) = match &built.llm_stats {
        Some(stats) => {
            let f = &stats.filtered;
            let dropped = IndexMap::from([
                ("preamble".to_owned(), f.preamble),
                ("not a question".to_owned(), f.not_a_question),
                ("too short".to_owned(), f.too_short),
                ("copied from the chunk".to_owned(), f.copied_from_chunk),
                ("duplicate".to_owned(), f.duplicate_in_chunk + f.duplicate_in_corpus),
                ("beyond the number asked".to_owned(), f.over_limit),
            ]);
            let llm = LlmFacts {
                model: llm_args.llm_model.clone(),
                requests: stats.requests,
                retries: stats.retries,
                rate_limited: stats.rate_limited,
                prompt_tokens: stats.prompt_tokens,
                completion_tokens: stats.completion_tokens,
                cost_usd: stats.cost_usd,
            };
            (format!("llm ({})", llm_args.llm_model), dropped, Some(llm))
        }
        None => ("offline (pseudo-queries cropped from each chunk)".to_owned(), IndexMap::new(), None),
    };
    DatasetFacts {
        documents: Some(s.documents),
        chunks: s.chunks,
        train_chunks: s.train_chunks,
        val_chunks: s.val_chunks,
        train_questions: s.train_queries,
        val_questions: s.val_queries,
        split_by: match args.split_by {
            SplitBy::Document => "document".into(),
            SplitBy::Chunk => "chunk".into(),
        },
        generator,
        dropped,
        failed_chunks: built.failures.len(),
        round_trip_examples: Vec::new(),
        llm,
    }
}

/// Writes `report.html` (with its charts) into `results_dir` and prints the summary block: the
/// headline table, the verdict and where the model and the report are.
pub fn finish(results_dir: &Path, mut report: RunReport) -> Result<PathBuf> {
    let path = embedfleet_report::write_local_report(results_dir, &report)
        .with_context(|| format!("writing report.html to {}", results_dir.display()))?;
    report.files.push(("report".into(), path.display().to_string()));
    println!("\n== summary\n{}", embedfleet_report::summary::summary_block(&report));
    Ok(path)
}
