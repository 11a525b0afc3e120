//! The round-trip filter (`--round-trip-top-k`): a generated question is kept only if a retriever
//! ranks its own chunk within the top K of the corpus. A question its chunk does not answer, or
//! that another chunk answers better, fails (Promptagator's and InPars' round-trip consistency).

use crate::EvalError;
use crate::rank::{Blocks, ScoreFunction, top_k};
use embedfleet_core::QaDataset;
use embedfleet_model::SentenceEncoder;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Dropped questions kept as examples for the report.
pub const EXAMPLES: usize = 5;

/// What the filter did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundTrip {
    pub top_k: usize,
    pub kept: usize,
    pub dropped: usize,
    /// A few dropped questions with the rank their chunk got (None: below the top K).
    pub examples: Vec<String>,
}

/// Keeps the questions of `dataset` whose relevant chunk `model` ranks in the top `k` of the
/// dataset's corpus (the query prompt before each question, cosine, as evaluation scores).
pub fn round_trip_filter(
    model: &SentenceEncoder,
    dataset: &QaDataset,
    k: usize,
    batch_size: usize,
    query_prompt: Option<&str>,
) -> Result<(QaDataset, RoundTrip), EvalError> {
    let query_ids: Vec<&String> = dataset.queries.keys().collect();
    let queries: Vec<&str> = dataset.queries.values().map(String::as_str).collect();
    let corpus_ids: Vec<&str> = dataset.corpus.keys().map(String::as_str).collect();
    let corpus: Vec<&str> = dataset.corpus.values().map(String::as_str).collect();
    if corpus.is_empty() {
        return Err(EvalError::EmptyCorpus);
    }
    let prompt = model.query_prompt(query_prompt);
    let q = model.encode(&queries, batch_size, prompt.as_deref())?;
    let c = model.encode(&corpus, batch_size, None)?;
    let hits = top_k(&q, &c, &corpus_ids, ScoreFunction::Cosine, k, Blocks::default());
    let mut kept = QaDataset { corpus: dataset.corpus.clone(), mode: dataset.mode.clone(), ..QaDataset::new() };
    let mut report = RoundTrip { top_k: k, ..Default::default() };
    for ((qid, text), hits) in query_ids.iter().zip(&queries).zip(&hits) {
        let relevant: HashSet<&str> = dataset.relevant_docs.get(*qid).into_iter().flatten().map(String::as_str).collect();
        if hits.iter().any(|h| relevant.contains(corpus_ids[h.corpus_index])) {
            kept.queries.insert((*qid).clone(), (*text).to_owned());
            if let Some(rel) = dataset.relevant_docs.get(*qid) {
                kept.relevant_docs.insert((*qid).clone(), rel.clone());
            }
            report.kept += 1;
        } else {
            report.dropped += 1;
            if report.examples.len() < EXAMPLES {
                report.examples.push((*text).to_owned());
            }
        }
    }
    Ok((kept, report))
}
