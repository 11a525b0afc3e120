//! Retrieval evaluation: embed the validation queries and corpus, rank exactly, and score with the
//! metrics of sentence-transformers' InformationRetrievalEvaluator.

pub mod csv;
pub mod metrics;
pub mod query_log;
pub mod rank;
pub mod report;
pub mod round_trip;
pub mod worker;

use embedfleet_core::QaDataset;
use embedfleet_model::{ModelError, SentenceEncoder};
use embedfleet_report::{ModelResult, QuestionResult, Retrieved};
use indexmap::IndexMap;
use metrics::{HitRate, MetricsConfig, RetrievalMetrics, compute_metrics, hit_rate};
use rank::{Blocks, ScoreFunction, top_k};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::time::Instant;
use tch::Tensor;

impl embedfleet_core::Transient for EvalError {
    fn is_transient(&self) -> bool {
        match self {
            EvalError::Model(e) => e.is_transient(),
            EvalError::Write { .. } => true,
            EvalError::NoQueries | EvalError::EmptyCorpus | EvalError::TruncateDim { .. } => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("the validation set has no query with a relevant document; nothing to evaluate")]
    NoQueries,
    #[error("the validation corpus is empty")]
    EmptyCorpus,
    #[error("{flag} {dim}: the model's embeddings have {model_dim} dimensions; use a dimension from 1 to {model_dim}")]
    TruncateDim { flag: &'static str, dim: usize, model_dim: usize },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("cannot write results to {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub metrics: MetricsConfig,
    pub functions: Vec<ScoreFunction>,
    /// The k of the hit-rate table (the reference scripts' `--top_k`).
    pub hit_rate_k: usize,
    pub batch_size: usize,
    pub blocks: Blocks,
    /// `--query-prompt`: which prompt goes before every query ([`SentenceEncoder::query_prompt`]:
    /// a prompt name, its text or `none`; None means the model's own `query` prompt, if any).
    /// Passages get none.
    pub query_prompt: Option<String>,
    /// Score embeddings cut to their first D dimensions (sentence-transformers' `truncate_dim`).
    pub truncate_dim: Option<usize>,
    /// Also score at each of these dimensions ([`Evaluation::dims`]), from one encoding.
    pub matryoshka_dims: Vec<usize>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            metrics: MetricsConfig::default(),
            functions: vec![ScoreFunction::Cosine],
            hit_rate_k: 5,
            batch_size: 32,
            blocks: Blocks::default(),
            query_prompt: None,
            truncate_dim: None,
            matryoshka_dims: Vec::new(),
        }
    }
}

impl EvalOptions {
    /// The defaults, plus the score function `metric` (`dot-NDCG@10`) needs.
    pub fn for_metric(metric: &embedfleet_core::Metric) -> Self {
        let mut options = Self::default();
        if let Ok(f) = metric.score.name().parse::<ScoreFunction>()
            && !options.functions.contains(&f)
        {
            options.functions.push(f);
        }
        options
    }

    /// What validation during training computes: the metric `config` selects by, and every metric
    /// at each of its Matryoshka dimensions.
    pub fn for_training(config: &embedfleet_core::TrainConfig) -> Self {
        Self {
            matryoshka_dims: config.matryoshka_dims_descending(),
            query_prompt: config.prompt.query_prompt.clone(),
            ..Self::for_metric(&config.metric)
        }
    }

    /// Refuses a dimension the model does not have, before any encoding.
    pub fn check_dims(&self, model_dim: usize) -> Result<(), EvalError> {
        let named = self.truncate_dim.map(|d| ("--truncate-dim", d));
        let matryoshka = self.matryoshka_dims.iter().map(|&d| ("--matryoshka-dims", d));
        match named.into_iter().chain(matryoshka).find(|&(_, d)| d == 0 || d > model_dim) {
            Some((flag, dim)) => Err(EvalError::TruncateDim { flag, dim, model_dim }),
            None => Ok(()),
        }
    }
}

/// The validation set in the evaluator's order: queries with at least one relevant document, in
/// file order; the corpus in file order.
#[derive(Debug, Clone)]
pub struct PreparedDataset {
    pub query_ids: Vec<String>,
    pub queries: Vec<String>,
    pub corpus_ids: Vec<String>,
    pub corpus: Vec<String>,
    pub relevant: Vec<HashSet<String>>,
    /// Queries dropped for having no relevant document, as the reference drops them.
    pub dropped_queries: usize,
    /// Which document each chunk is from and which documents answer each query, for the
    /// document-level hit rate of a query log.
    pub documents: Option<DocumentLabels>,
}

/// Document-level relevance: a query log names the page that answered, not the chunk.
#[derive(Debug, Clone, Default)]
pub struct DocumentLabels {
    /// Corpus id → document id.
    pub of_chunk: std::collections::HashMap<String, String>,
    /// Per query, in [`PreparedDataset::query_ids`] order.
    pub relevant: Vec<HashSet<String>>,
}

impl PreparedDataset {
    pub fn new(dataset: &QaDataset) -> Result<Self, EvalError> {
        let mut p = PreparedDataset {
            query_ids: Vec::new(),
            queries: Vec::new(),
            corpus_ids: dataset.corpus.keys().cloned().collect(),
            corpus: dataset.corpus.values().cloned().collect(),
            relevant: Vec::new(),
            dropped_queries: 0,
            documents: None,
        };
        for (qid, text) in &dataset.queries {
            match dataset.relevant_docs.get(qid).filter(|r| !r.is_empty()) {
                Some(rel) => {
                    p.query_ids.push(qid.clone());
                    p.queries.push(text.clone());
                    p.relevant.push(rel.iter().cloned().collect());
                }
                None => p.dropped_queries += 1,
            }
        }
        if p.query_ids.is_empty() {
            return Err(EvalError::NoQueries);
        }
        if p.corpus_ids.is_empty() {
            return Err(EvalError::EmptyCorpus);
        }
        Ok(p)
    }
}

/// Where the right chunk landed for one query, for `per_query.jsonl` and the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryOutcome {
    pub query_id: String,
    /// 1-based rank of the first relevant document within the top `max_k`, else None.
    pub rank: Option<usize>,
    /// The best few passages, for the report's questions (absent in results written before it).
    #[serde(default)]
    pub top: Vec<Retrieved>,
    /// This query's NDCG@10 under the first score function, for the paired bootstrap.
    #[serde(default)]
    pub ndcg: Option<f64>,
}

/// Passages kept per query for the report.
pub const TOP_PASSAGES: usize = embedfleet_report::html::PASSAGES_SHOWN;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Timings {
    pub encode_s: f64,
    pub rank_s: f64,
    pub metrics_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evaluation {
    pub metrics: Vec<(ScoreFunction, RetrievalMetrics)>,
    pub hit_rate: HitRate,
    pub per_query: Vec<QueryOutcome>,
    pub dropped_queries: usize,
    pub timings: Timings,
    /// How deep each query's ranking went (ranks beyond it are unknown).
    #[serde(default)]
    pub depth: usize,
    /// The embeddings' dimensions as scored: all of them, or `truncate_dim`.
    #[serde(default)]
    pub dim: Option<usize>,
    /// At each of `matryoshka_dims`, largest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dims: Vec<DimEvaluation>,
    /// SHA-256 of the query and corpus embeddings (see [`embeddings_digest`]).
    #[serde(default)]
    pub embeddings_digest: Option<String>,
    /// Document-level hit rate@k: a query counts when any of its top k chunks comes from a
    /// document that answers it. Only for sets that say which document each chunk is from.
    #[serde(default)]
    pub doc_hit_rate: Option<HitRate>,
}

/// The metrics with the embeddings cut to their first `dim` dimensions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DimEvaluation {
    pub dim: usize,
    pub metrics: Vec<(ScoreFunction, RetrievalMetrics)>,
    pub hit_rate: HitRate,
}

impl DimEvaluation {
    pub fn to_result(&self) -> embedfleet_report::DimResult {
        embedfleet_report::DimResult { dim: self.dim, hit_rate: self.hit_rate, metrics: named_metrics(&self.metrics) }
    }

    /// A metric such as `cosine-NDCG@10`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        metric_of(&self.metrics, name)
    }
}

fn metric_of(metrics: &[(ScoreFunction, RetrievalMetrics)], name: &str) -> Option<f64> {
    let (function, metric) = match name.split_once('-') {
        Some((f, m)) => (f.parse::<ScoreFunction>().ok()?, m),
        None => (metrics.first()?.0, name),
    };
    metrics.iter().find(|(f, _)| *f == function)?.1.get(metric)
}

/// Every metric by its CSV name (`cosine-NDCG@10`), in column order.
pub fn named_metrics(metrics: &[(ScoreFunction, RetrievalMetrics)]) -> IndexMap<String, f64> {
    metrics.iter().flat_map(|(f, m)| m.named().into_iter().map(move |(n, v)| (format!("{}-{n}", f.name()), v))).collect()
}

impl Evaluation {
    /// A metric such as `cosine-NDCG@10` (or `NDCG@10` for the first score function).
    pub fn metric(&self, name: &str) -> Option<f64> {
        metric_of(&self.metrics, name)
    }

    /// The report's view of this evaluation: `name` in tables, `source` where the model came from.
    pub fn to_result(&self, name: &str, source: &str) -> ModelResult {
        ModelResult {
            name: name.to_owned(),
            source: source.to_owned(),
            hit_rate: self.hit_rate,
            metrics: named_metrics(&self.metrics),
            questions: self
                .per_query
                .iter()
                .map(|q| QuestionResult { query_id: q.query_id.clone(), rank: q.rank, top: q.top.clone(), ndcg: q.ndcg })
                .collect(),
            depth: self.depth,
            step: None,
            dims: self.dims.iter().map(DimEvaluation::to_result).collect(),
            embeddings_digest: self.embeddings_digest.clone(),
            selection: None,
        }
    }
}

/// The first `dim` dimensions of each row (all when `dim` is None or not smaller).
fn cut(embeddings: &Tensor, dim: Option<usize>) -> Tensor {
    let full = embeddings.size().get(1).copied().unwrap_or(0);
    match dim {
        Some(d) if (d as i64) < full => embeddings.narrow(1, 0, d as i64),
        _ => embeddings.shallow_clone(),
    }
}

/// Scores fixed embeddings, cut to `truncate_dim` and to each Matryoshka dimension;
/// `evaluate_model` embeds and calls this.
pub fn evaluate_embeddings(data: &PreparedDataset, queries: &Tensor, corpus: &Tensor, options: &EvalOptions) -> Evaluation {
    let mut evaluation = score(data, &cut(queries, options.truncate_dim), &cut(corpus, options.truncate_dim), options);
    evaluation.dim = options.truncate_dim.or_else(|| queries.size().get(1).map(|&d| d as usize));
    let mut dims = options.matryoshka_dims.clone();
    dims.sort_unstable_by(|a, b| b.cmp(a));
    dims.dedup();
    for dim in dims {
        let at = score(data, &cut(queries, Some(dim)), &cut(corpus, Some(dim)), options);
        evaluation.timings.rank_s += at.timings.rank_s;
        evaluation.timings.metrics_s += at.timings.metrics_s;
        evaluation.dims.push(DimEvaluation { dim, metrics: at.metrics, hit_rate: at.hit_rate });
    }
    evaluation
}

/// Each query's ranked corpus ids and the hits behind them, for one score function.
type Ranking<'a> = (Vec<Vec<&'a str>>, Vec<Vec<rank::Hit>>);

fn score(data: &PreparedDataset, queries: &Tensor, corpus: &Tensor, options: &EvalOptions) -> Evaluation {
    let ids: Vec<&str> = data.corpus_ids.iter().map(String::as_str).collect();
    let relevant: Vec<HashSet<&str>> = data.relevant.iter().map(|r| r.iter().map(String::as_str).collect()).collect();
    let max_k = options.metrics.max_k().max(options.hit_rate_k);
    let mut metrics = Vec::new();
    let mut timings = Timings::default();
    let mut primary: Option<Ranking> = None;
    // The reference orders score functions by name (CSV columns, and which one leads).
    let mut functions = options.functions.clone();
    functions.sort_by_key(|f| f.name());
    functions.dedup();
    for function in functions {
        let started = Instant::now();
        let hits = top_k(queries, corpus, &ids, function, max_k, options.blocks);
        timings.rank_s += started.elapsed().as_secs_f64();
        let started = Instant::now();
        let ranked: Vec<Vec<&str>> = hits.iter().map(|h| h.iter().map(|hit| ids[hit.corpus_index]).collect()).collect();
        metrics.push((function, compute_metrics(&ranked, &relevant, &options.metrics)));
        timings.metrics_s += started.elapsed().as_secs_f64();
        primary.get_or_insert((ranked, hits));
    }
    let (ranked, hits) = primary.expect("at least one score function");
    let per_query = data
        .query_ids
        .iter()
        .zip(&ranked)
        .zip(&relevant)
        .zip(&hits)
        .map(|(((qid, ids), rel), hits)| QueryOutcome {
            query_id: qid.clone(),
            rank: ids.iter().position(|id| rel.contains(id)).map(|r| r + 1),
            ndcg: Some(metrics::ndcg_at(ids, rel, PRIMARY_NDCG_K)),
            top: hits
                .iter()
                .take(TOP_PASSAGES)
                .map(|h| Retrieved { corpus_id: data.corpus_ids[h.corpus_index].clone(), score: h.score })
                .collect(),
        })
        .collect();
    let doc_hit_rate = data.documents.as_ref().map(|docs| {
        let hits = ranked
            .iter()
            .zip(&docs.relevant)
            .filter(|(ids, wanted)| {
                ids.iter().take(options.hit_rate_k).any(|id| docs.of_chunk.get(*id).is_some_and(|d| wanted.contains(d)))
            })
            .count();
        let total = ranked.len();
        HitRate { k: options.hit_rate_k, hits, total, rate: if total == 0 { 0.0 } else { hits as f64 / total as f64 } }
    });
    Evaluation {
        hit_rate: hit_rate(&ranked, &relevant, options.hit_rate_k),
        metrics,
        per_query,
        dropped_queries: data.dropped_queries,
        timings,
        depth: max_k,
        dim: None,
        dims: Vec::new(),
        embeddings_digest: None,
        doc_hit_rate,
    }
}

/// Embeds the queries (with the query prompt) and the corpus with `model`, then scores.
pub fn evaluate_model(model: &SentenceEncoder, data: &PreparedDataset, options: &EvalOptions) -> Result<Evaluation, EvalError> {
    evaluate_model_with_progress(model, data, options, &mut |_| {})
}

/// [`evaluate_model`], calling `on_texts` with the number of texts (queries, then passages) each
/// encoded batch covered: `data.queries.len() + data.corpus.len()` in all.
pub fn evaluate_model_with_progress(
    model: &SentenceEncoder,
    data: &PreparedDataset,
    options: &EvalOptions,
    on_texts: &mut dyn FnMut(usize),
) -> Result<Evaluation, EvalError> {
    options.check_dims(model.dimension().max(0) as usize)?;
    let started = Instant::now();
    let q: Vec<&str> = data.queries.iter().map(String::as_str).collect();
    let c: Vec<&str> = data.corpus.iter().map(String::as_str).collect();
    let prompt = model.query_prompt(options.query_prompt.as_deref());
    let queries = model.encode_with_progress(&q, options.batch_size, prompt.as_deref(), on_texts)?;
    let corpus = model.encode_with_progress(&c, options.batch_size, None, on_texts)?;
    let encode_s = started.elapsed().as_secs_f64();
    let mut evaluation = evaluate_embeddings(data, &queries, &corpus, options);
    evaluation.timings.encode_s = encode_s;
    evaluation.embeddings_digest = Some(embeddings_digest(&[&queries, &corpus]));
    Ok(evaluation)
}

/// SHA-256 over the float32 values of `tensors`, in order: two models with the same digest on the
/// same texts embed them identically, bit for bit (the change check).
pub fn embeddings_digest(tensors: &[&Tensor]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for t in tensors {
        let values: Vec<f32> = Vec::try_from(t.to_kind(tch::Kind::Float).contiguous().view([-1])).unwrap_or_default();
        for v in values {
            hasher.update(v.to_le_bytes());
        }
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The cut-off of the per-query NDCG the verdict's interval resamples (the report's primary metric).
const PRIMARY_NDCG_K: usize = 10;

/// Evaluations of several models by name, in the order given.
pub type Comparison = IndexMap<String, Evaluation>;
