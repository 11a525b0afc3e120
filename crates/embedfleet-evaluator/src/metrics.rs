//! The metrics of sentence-transformers' InformationRetrievalEvaluator (v3.3 and later), averaged
//! over the queries that have at least one relevant document.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// The cut-offs of each metric. Defaults are the reference's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsConfig {
    pub accuracy_at_k: Vec<usize>,
    pub precision_recall_at_k: Vec<usize>,
    pub mrr_at_k: Vec<usize>,
    pub ndcg_at_k: Vec<usize>,
    pub map_at_k: Vec<usize>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            accuracy_at_k: vec![1, 3, 5, 10],
            precision_recall_at_k: vec![1, 3, 5, 10],
            mrr_at_k: vec![10],
            ndcg_at_k: vec![10],
            map_at_k: vec![100],
        }
    }
}

impl MetricsConfig {
    /// The deepest cut-off: how many hits each query needs.
    pub fn max_k(&self) -> usize {
        [&self.accuracy_at_k, &self.precision_recall_at_k, &self.mrr_at_k, &self.ndcg_at_k, &self.map_at_k]
            .iter()
            .flat_map(|v| v.iter().copied())
            .max()
            .unwrap_or(10)
    }
}

/// One score function's metrics, keyed by cut-off.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RetrievalMetrics {
    pub accuracy: BTreeMap<usize, f64>,
    pub precision: BTreeMap<usize, f64>,
    pub recall: BTreeMap<usize, f64>,
    pub mrr: BTreeMap<usize, f64>,
    pub ndcg: BTreeMap<usize, f64>,
    pub map: BTreeMap<usize, f64>,
}

impl RetrievalMetrics {
    /// `(name, value)` in the reference's column order, names like `Accuracy@1`, `NDCG@10`.
    pub fn named(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        out.extend(self.accuracy.iter().map(|(k, v)| (format!("Accuracy@{k}"), *v)));
        for (k, p) in &self.precision {
            out.push((format!("Precision@{k}"), *p));
            out.push((format!("Recall@{k}"), self.recall[k]));
        }
        out.extend(self.mrr.iter().map(|(k, v)| (format!("MRR@{k}"), *v)));
        out.extend(self.ndcg.iter().map(|(k, v)| (format!("NDCG@{k}"), *v)));
        out.extend(self.map.iter().map(|(k, v)| (format!("MAP@{k}"), *v)));
        out
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.named().into_iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }
}

/// Metrics from each query's ranked corpus ids (best first) and its relevant set.
pub fn compute_metrics(ranked: &[Vec<&str>], relevant: &[HashSet<&str>], config: &MetricsConfig) -> RetrievalMetrics {
    assert_eq!(ranked.len(), relevant.len());
    let n = ranked.len().max(1) as f64;
    let mut m = RetrievalMetrics::default();
    for (hits, rel) in ranked.iter().zip(relevant) {
        let is_rel: Vec<bool> = hits.iter().map(|id| rel.contains(id)).collect();
        let top = |k: usize| &is_rel[..k.min(is_rel.len())];
        for &k in &config.accuracy_at_k {
            *m.accuracy.entry(k).or_default() += if top(k).iter().any(|&r| r) { 1.0 } else { 0.0 };
        }
        for &k in &config.precision_recall_at_k {
            let correct = top(k).iter().filter(|&&r| r).count() as f64;
            *m.precision.entry(k).or_default() += correct / k as f64;
            *m.recall.entry(k).or_default() += correct / rel.len() as f64;
        }
        for &k in &config.mrr_at_k {
            let rr = top(k).iter().position(|&r| r).map(|rank| 1.0 / (rank + 1) as f64).unwrap_or(0.0);
            *m.mrr.entry(k).or_default() += rr;
        }
        for &k in &config.ndcg_at_k {
            let dcg: f64 = top(k).iter().enumerate().filter(|(_, r)| **r).map(|(i, _)| 1.0 / (i as f64 + 2.0).log2()).sum();
            let ideal: f64 = (0..rel.len().min(k)).map(|i| 1.0 / (i as f64 + 2.0).log2()).sum();
            *m.ndcg.entry(k).or_default() += dcg / ideal;
        }
        for &k in &config.map_at_k {
            let mut correct = 0.0;
            let mut sum = 0.0;
            for (rank, _) in top(k).iter().enumerate().filter(|(_, r)| **r) {
                correct += 1.0;
                sum += correct / (rank + 1) as f64;
            }
            *m.map.entry(k).or_default() += sum / k.min(rel.len()) as f64;
        }
    }
    for map in [&mut m.accuracy, &mut m.precision, &mut m.recall, &mut m.mrr, &mut m.ndcg, &mut m.map] {
        map.values_mut().for_each(|v| *v /= n);
    }
    m
}

/// One query's NDCG@k, as [`compute_metrics`] averages it.
pub fn ndcg_at(ranked: &[&str], relevant: &HashSet<&str>, k: usize) -> f64 {
    let dcg: f64 =
        ranked.iter().take(k).enumerate().filter(|(_, id)| relevant.contains(*id)).map(|(i, _)| 1.0 / (i as f64 + 2.0).log2()).sum();
    let ideal: f64 = (0..relevant.len().min(k)).map(|i| 1.0 / (i as f64 + 2.0).log2()).sum();
    if ideal == 0.0 { 0.0 } else { dcg / ideal }
}

pub use embedfleet_report::HitRate;

pub fn hit_rate(ranked: &[Vec<&str>], relevant: &[HashSet<&str>], k: usize) -> HitRate {
    let hits = ranked.iter().zip(relevant).filter(|(h, rel)| h.iter().take(k).any(|id| rel.contains(id))).count();
    let total = ranked.len();
    HitRate { k, hits, total, rate: if total == 0 { 0.0 } else { hits as f64 / total as f64 } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_metrics() {
        // Query 1: relevant {a, c}; ranking b, a, c. Query 2: relevant {z}; not retrieved.
        let ranked = vec![vec!["b", "a", "c"], vec!["x", "y", "w"]];
        let relevant = vec![HashSet::from(["a", "c"]), HashSet::from(["z"])];
        let config = MetricsConfig {
            accuracy_at_k: vec![1, 3],
            precision_recall_at_k: vec![1, 3],
            mrr_at_k: vec![3],
            ndcg_at_k: vec![3],
            map_at_k: vec![3],
        };
        let m = compute_metrics(&ranked, &relevant, &config);
        assert_eq!(m.accuracy[&1], 0.0);
        assert_eq!(m.accuracy[&3], 0.5);
        assert_eq!(m.precision[&3], (2.0 / 3.0) / 2.0);
        assert_eq!(m.recall[&3], 1.0 / 2.0);
        assert_eq!(m.mrr[&3], 0.5 / 2.0);
        let dcg = 1.0 / 3f64.log2() + 1.0 / 4f64.log2();
        let idcg = 1.0 + 1.0 / 3f64.log2();
        assert!((m.ndcg[&3] - dcg / idcg / 2.0).abs() < 1e-15);
        assert!((m.map[&3] - (0.5 + 2.0 / 3.0) / 2.0 / 2.0).abs() < 1e-15);
        let names: Vec<String> = m.named().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["Accuracy@1", "Accuracy@3", "Precision@1", "Recall@1", "Precision@3", "Recall@3", "MRR@3", "NDCG@3", "MAP@3"]);
        assert_eq!(hit_rate(&ranked, &relevant, 2), HitRate { k: 2, hits: 1, total: 2, rate: 0.5 });
        let per_query: f64 = ranked.iter().zip(&relevant).map(|(r, rel)| ndcg_at(r, rel, 3)).sum::<f64>() / 2.0;
        assert!((per_query - m.ndcg[&3]).abs() < 1e-15, "per-query NDCG averages to the metric");
    }
}
