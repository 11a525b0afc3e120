//! The results a report is made of. They are plain data (serde), written by the evaluator and the
//! trainer and read by the page, the charts and the card, in one process or across the fleet.

use embedfleet_core::QaDataset;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// The metric that decides whether fine-tuning helped.
pub const PRIMARY_METRIC: &str = "NDCG@10";

/// The columns of the headline table, after the hit rate.
pub const HEADLINE_METRICS: [&str; 4] = ["Accuracy@1", "MRR@10", "NDCG@10", "MAP@100"];

/// Hit rate@k as the reference scripts report it: the share of queries whose relevant chunk is in
/// the top k, with the counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct HitRate {
    pub k: usize,
    pub hits: usize,
    pub total: usize,
    pub rate: f64,
}

/// One passage a model retrieved for a question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retrieved {
    pub corpus_id: String,
    pub score: f64,
}

/// Where one model put the right passage for one question, and what it put first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QuestionResult {
    pub query_id: String,
    /// 1-based rank of the first relevant passage, None when it is not within the depth searched.
    pub rank: Option<usize>,
    /// The best few passages, best first.
    #[serde(default)]
    pub top: Vec<Retrieved>,
    /// This question's [`PRIMARY_METRIC`] under the first score function: what the paired
    /// bootstrap of the verdict resamples (None in results written before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ndcg: Option<f64>,
}

/// One model's metrics with its embeddings cut to their first `dim` dimensions (Matryoshka).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DimResult {
    pub dim: usize,
    pub hit_rate: HitRate,
    /// By CSV name, as [`ModelResult::metrics`].
    pub metrics: IndexMap<String, f64>,
}

/// One model's evaluation on the validation set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelResult {
    /// The name in tables: `base`, `finetuned`, a `--model NAME`, or a checkpoint label.
    pub name: String,
    /// Where the model came from, as the user named it (hub id, folder, s3:// prefix).
    pub source: String,
    pub hit_rate: HitRate,
    /// Every metric by its CSV name (`cosine-NDCG@10`), in the reference's column order.
    pub metrics: IndexMap<String, f64>,
    /// In validation-set order.
    #[serde(default)]
    pub questions: Vec<QuestionResult>,
    /// How deep the ranking went: a rank beyond it is unknown.
    #[serde(default)]
    pub depth: usize,
    /// The training step, for a checkpoint of a run.
    #[serde(default)]
    pub step: Option<u64>,
    /// The same metrics with the embeddings cut to each Matryoshka dimension, largest first
    /// (empty unless Matryoshka dimensions were asked for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dims: Vec<DimResult>,
    /// SHA-256 of the embeddings the model gave for the evaluation's texts: equal digests mean the
    /// model embeds exactly as the base does (the change check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embeddings_digest: Option<String>,
    /// How this model came to be what it is, when that is not simply "the last checkpoint": "no
    /// checkpoint beat the base on validation", "merged with the base at weight 0.5".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<String>,
}

impl ModelResult {
    /// A metric by its full name (`cosine-NDCG@10`) or, for the first score function, its short
    /// one (`NDCG@10`).
    pub fn metric(&self, name: &str) -> Option<f64> {
        if let Some(v) = self.metrics.get(name) {
            return Some(*v);
        }
        let first = self.metrics.keys().next()?.split_once('-')?.0;
        self.metrics.get(&format!("{first}-{name}")).copied()
    }

    /// The score functions the metrics were computed with, in column order.
    pub fn functions(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for key in self.metrics.keys() {
            if let Some((f, _)) = key.split_once('-')
                && !out.contains(&f)
            {
                out.push(f);
            }
        }
        out
    }
}

/// One optimisation step of the training log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogRow {
    pub step: usize,
    pub epoch: usize,
    pub loss: f64,
    pub lr: f64,
}

/// What the training charts draw.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingCurve {
    pub log: Vec<LogRow>,
    /// (step, value of `metric`) at each evaluation; step 0 is the base model.
    pub evaluations: Vec<(u64, f64)>,
    pub metric: String,
    /// The step of the checkpoint that was kept; None when none beat the base model.
    pub best_step: Option<u64>,
}

/// How the model was trained, for the page and the card.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingFacts {
    pub base_model: String,
    pub loss: String,
    pub batch_size: usize,
    pub mini_batch_size: Option<usize>,
    pub epochs: usize,
    pub steps: usize,
    pub learning_rate: f64,
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub evaluation_steps: usize,
    pub metric: String,
    pub seed: u64,
    pub precision: String,
    pub device: String,
    pub pairs_per_epoch: usize,
    pub seconds: f64,
    pub pairs_per_second: f64,
    pub best_step: Option<u64>,
    /// The Matryoshka dimensions trained, largest first; empty for plain MNRL.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matryoshka_dims: Vec<usize>,
    /// The merge with the base (`--merge-with-base`): which weight was kept and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge: Option<String>,
}

/// The LLM's part of generating the questions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LlmFacts {
    pub model: String,
    pub requests: u64,
    pub retries: u64,
    pub rate_limited: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
}

/// Where the questions came from and how they were split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DatasetFacts {
    pub documents: Option<usize>,
    pub chunks: usize,
    pub train_chunks: usize,
    pub val_chunks: usize,
    pub train_questions: usize,
    pub val_questions: usize,
    /// `document` or `chunk`.
    pub split_by: String,
    /// `offline` or `llm`.
    pub generator: String,
    /// Questions dropped by the filters, by reason.
    pub dropped: IndexMap<String, u64>,
    /// Chunks that got no questions.
    pub failed_chunks: usize,
    /// A few training questions the round-trip filter dropped (`--round-trip-top-k`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub round_trip_examples: Vec<String>,
    pub llm: Option<LlmFacts>,
}

impl DatasetFacts {
    /// Whether the "questions" are the offline generator's spans of each chunk: a reader must be
    /// told, since finding the chunk a span was cut from is easier than answering a question.
    pub fn offline_spans(&self) -> bool {
        self.generator.starts_with("offline")
    }
}

/// Said wherever numbers measured on offline spans are shown.
pub const OFFLINE_SPANS_CAVEAT: &str = "These questions are the offline generator's pseudo-queries: spans cropped from each chunk, not questions a person wrote. The numbers say how well a model finds the chunk a span came from (cut out of that chunk, by the default inverse cloze), which is not the task of answering real questions. On 137 human FAQ questions (tools/human_questions), MiniLM fine-tuned on spans of their documents with the defaults (inverse cloze, learning rate 5e-6) gained 0.013 to 0.021 NDCG@10 over the base, inside the noise of 137 questions (about ±0.035), and lost 0.04 with the spans left in: a gain of 0.1 here is not a gain of 0.1 on questions. Use an LLM generator for questions.";

/// Everything one report page shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// The page's heading: the run id, or what was compared.
    pub title: String,
    /// Base first; the last one is the candidate the verdict is about.
    pub models: Vec<ModelResult>,
    /// The validation set the models were scored on (question and passage texts).
    pub validation: QaDataset,
    pub dataset: Option<DatasetFacts>,
    pub training: Option<TrainingFacts>,
    pub curve: Option<TrainingCurve>,
    /// Where things are, as (what, path), for the page's footer and the terminal summary.
    pub files: Vec<(String, String)>,
    /// The validation questions were found word for word in their passages (the offline
    /// generator's spans): `evaluate` finds it out, where no dataset facts say so.
    #[serde(default)]
    pub spans_found: bool,
    /// When the models were scored on a query log rather than a validation set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_log: Option<QueryLogFacts>,
}

/// The query log a report's numbers come from (`evaluate --queries`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueryLogFacts {
    /// The log as the user named it.
    pub file: String,
    /// Queries in the log, and how many matched the corpus (the rest are not scored).
    pub rows: usize,
    pub matched: usize,
    /// Where the queries that matched nothing are listed.
    pub unmatched_file: String,
}

impl RunReport {
    pub fn base(&self) -> Option<&ModelResult> {
        self.models.first()
    }

    /// Whether the questions are the offline generator's spans, as the dataset facts or the
    /// validation set itself show: the page and the summary must then say what the numbers measure.
    pub fn offline_spans(&self) -> bool {
        self.spans_found || self.dataset.as_ref().is_some_and(DatasetFacts::offline_spans)
    }

    /// The model the verdict is about: the last one, when there are two or more.
    pub fn candidate(&self) -> Option<&ModelResult> {
        if self.models.len() < 2 { None } else { self.models.last() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_metric_names_mean_the_first_score_function() {
        let m = ModelResult {
            name: "base".into(),
            source: "x".into(),
            hit_rate: HitRate { k: 5, hits: 1, total: 2, rate: 0.5 },
            metrics: IndexMap::from([("cosine-NDCG@10".to_owned(), 0.5), ("dot-NDCG@10".to_owned(), 0.25)]),
            questions: Vec::new(),
            depth: 100,
            step: None,
            ..Default::default()
        };
        assert_eq!(m.metric("NDCG@10"), Some(0.5));
        assert_eq!(m.metric("dot-NDCG@10"), Some(0.25));
        assert_eq!(m.metric("MRR@10"), None);
        assert_eq!(m.functions(), ["cosine", "dot"]);
    }
}
