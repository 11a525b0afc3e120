//! The verdict and the headline table, as one sentence and as text for the terminal's summary.

use crate::data::{HEADLINE_METRICS, ModelResult, PRIMARY_METRIC, RunReport};
use crate::stats::{self, Difference, Interval};
use std::fmt::Write as _;

/// What the evaluation supports about the candidate against the base, in one sentence.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub text: String,
    /// What the paired interval of the primary metric supports; None when there is nothing to
    /// compare. Without per-question results (older results) there is no interval, and a higher
    /// score alone is never called better.
    pub outcome: Option<Difference>,
}

/// One model against the base on one measure, paired question by question.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PairedComparison {
    pub model: String,
    pub base: String,
    /// `NDCG@10` or `Hit rate@5`.
    pub measure: String,
    pub base_value: f64,
    pub value: f64,
    pub interval: Interval,
    pub difference: Difference,
}

/// The per-question values of `measure` (`NDCG@10`, `Hit rate@k`) of a model, when it has them.
fn per_question(model: &ModelResult, measure: &str) -> Option<Vec<f64>> {
    if model.questions.is_empty() {
        return None;
    }
    if measure == PRIMARY_METRIC {
        return model.questions.iter().map(|q| q.ndcg).collect();
    }
    let k = model.hit_rate.k;
    Some(model.questions.iter().map(|q| if q.rank.is_some_and(|r| r <= k) { 1.0 } else { 0.0 }).collect())
}

/// `candidate` against `base` on the primary metric and the hit rate, each with its 95 %
/// paired-bootstrap interval; empty when the two were not scored on the same questions, question
/// by question.
pub fn paired_comparisons(base: &ModelResult, candidate: &ModelResult) -> Vec<PairedComparison> {
    let same_questions = base.questions.len() == candidate.questions.len()
        && base.questions.iter().zip(&candidate.questions).all(|(a, b)| a.query_id == b.query_id);
    if !same_questions {
        return Vec::new();
    }
    let hit_rate = format!("Hit rate@{}", base.hit_rate.k);
    let measures = [
        (PRIMARY_METRIC.to_owned(), base.metric(PRIMARY_METRIC), candidate.metric(PRIMARY_METRIC)),
        (hit_rate.clone(), Some(base.hit_rate.rate), Some(candidate.hit_rate.rate)),
    ];
    let mut out = Vec::new();
    for (measure, base_value, value) in measures {
        let (Some(b), Some(c), Some(base_value), Some(value)) =
            (per_question(base, &measure), per_question(candidate, &measure), base_value, value)
        else {
            continue;
        };
        if let Some(interval) = stats::paired(&b, &c) {
            out.push(PairedComparison {
                model: candidate.name.clone(),
                base: base.name.clone(),
                measure,
                base_value,
                value,
                difference: Difference::of(&interval),
                interval,
            });
        }
    }
    out
}

/// Every model after the first against the first.
pub fn all_comparisons(models: &[ModelResult]) -> Vec<PairedComparison> {
    let Some((base, rest)) = models.split_first() else { return Vec::new() };
    rest.iter().flat_map(|m| paired_comparisons(base, m)).collect()
}

/// `+0.0123 (95 % interval +0.0040 to +0.0210, 137 questions)`.
pub fn describe_interval(i: &Interval) -> String {
    format!("{:+.4} (95 % interval {:+.4} to {:+.4}, {} questions)", i.mean, i.low, i.high, i.questions)
}

/// Whether the candidate embeds exactly as the base: the change check.
pub fn unchanged(base: &ModelResult, candidate: &ModelResult) -> bool {
    matches!((&base.embeddings_digest, &candidate.embeddings_digest), (Some(a), Some(b)) if a == b)
}

/// The sentence for the last model against the first on the primary metric.
pub fn verdict(models: &[ModelResult]) -> Verdict {
    let (Some(base), Some(candidate)) = (models.first(), models.last().filter(|_| models.len() > 1)) else {
        return Verdict { text: String::new(), outcome: None };
    };
    let (name, base_name) = (&candidate.name, &base.name);
    if unchanged(base, candidate) {
        let why = candidate.selection.as_deref().unwrap_or("it holds the base's weights, or training did not move them");
        return Verdict {
            text: format!(
                "{name} is unchanged: its embeddings are exactly {base_name}'s ({why}). Fine-tuning made no difference; use the base, or fine-tune with more data or other settings."
            ),
            outcome: Some(Difference::NoMeasurableDifference),
        };
    }
    let b = base.metric(PRIMARY_METRIC).unwrap_or(0.0);
    let f = candidate.metric(PRIMARY_METRIC).unwrap_or(0.0);
    let scores = format!("{PRIMARY_METRIC} {f:.4} vs {b:.4}");
    let primary = paired_comparisons(base, candidate).into_iter().find(|c| c.measure == PRIMARY_METRIC);
    let Some(paired) = primary else {
        return Verdict {
            text: format!(
                "{name} against {base_name}: {scores} ({:+.4}); these results have no per-question scores, so no interval says whether the difference is more than noise.",
                f - b
            ),
            outcome: None,
        };
    };
    let delta = describe_interval(&paired.interval);
    let text = match paired.difference {
        Difference::Better => format!("{name} is better than {base_name}: {scores}, {delta}."),
        Difference::Worse => format!(
            "{name} is worse than {base_name}: {scores}, {delta}. Keep the base model, or fine-tune with more data or other settings."
        ),
        Difference::NoMeasurableDifference => format!(
            "No measurable difference between {name} and {base_name}: {scores}, {delta}; the interval contains 0. Keep the base model, or evaluate on more questions."
        ),
    };
    Verdict { text, outcome: Some(paired.difference) }
}

/// The columns of the headline table: the hit rate, then [`HEADLINE_METRICS`].
pub fn headline_columns(models: &[ModelResult]) -> Vec<String> {
    let k = models.first().map(|m| m.hit_rate.k).unwrap_or(5);
    std::iter::once(format!("Hit rate@{k}")).chain(HEADLINE_METRICS.iter().map(|m| m.to_string())).collect()
}

/// A model's values in [`headline_columns`] order.
pub fn headline_values(model: &ModelResult) -> Vec<Option<f64>> {
    std::iter::once(Some(model.hit_rate.rate)).chain(HEADLINE_METRICS.iter().map(|m| model.metric(m))).collect()
}

/// The headline table, the verdict and where things are, for the end of a command.
pub fn summary_block(report: &RunReport) -> String {
    let mut s = String::new();
    let columns = headline_columns(&report.models);
    let name_w = report.models.iter().map(|m| m.name.chars().count()).max().unwrap_or(5).max(9);
    let _ = write!(s, "{:<name_w$}", "model");
    for c in &columns {
        let _ = write!(s, " {c:>11}");
    }
    s.push('\n');
    let base = report.base().map(headline_values);
    for (i, m) in report.models.iter().enumerate() {
        let values = headline_values(m);
        let _ = write!(s, "{:<name_w$}", m.name);
        for v in &values {
            let _ = write!(s, " {:>11}", v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into()));
        }
        s.push('\n');
        if let (true, Some(base)) = (i > 0, &base) {
            let _ = write!(s, "{:<name_w$}", "  vs base");
            for (v, b) in values.iter().zip(base) {
                let d = match (v, b) {
                    (Some(v), Some(b)) => format!("{:+.4}", v - b),
                    _ => "-".into(),
                };
                let _ = write!(s, " {d:>11}");
            }
            s.push('\n');
        }
    }
    for c in all_comparisons(&report.models) {
        let _ = writeln!(
            s,
            "{:<name_w$} {}: {}, {}",
            format!("  {}", c.model),
            c.measure,
            describe_interval(&c.interval),
            c.difference.as_str()
        );
    }
    let verdict = verdict(&report.models);
    if !verdict.text.is_empty() {
        let _ = write!(s, "\n{}\n", verdict.text);
    }
    if report.offline_spans() {
        let _ = writeln!(s, "Note: {}", crate::data::OFFLINE_SPANS_CAVEAT);
    }
    if !report.files.is_empty() {
        s.push('\n');
        let w = report.files.iter().map(|(what, _)| what.chars().count()).max().unwrap_or(0);
        for (what, path) in &report.files {
            let _ = writeln!(s, "{what:<w$}  {path}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{HitRate, QuestionResult};
    use indexmap::IndexMap;

    fn model(name: &str, ndcg: f64) -> ModelResult {
        ModelResult {
            name: name.into(),
            source: name.into(),
            hit_rate: HitRate { k: 3, hits: 1, total: 2, rate: 0.5 },
            metrics: IndexMap::from([("cosine-NDCG@10".to_owned(), ndcg), ("cosine-MRR@10".to_owned(), ndcg / 2.0)]),
            depth: 100,
            ..Default::default()
        }
    }

    /// A model whose per-question NDCG@10 are `per_question` (ranks 1 where 1.0, else none).
    fn scored(name: &str, per_question: &[f64]) -> ModelResult {
        let mean = per_question.iter().sum::<f64>() / per_question.len() as f64;
        let questions = per_question
            .iter()
            .enumerate()
            .map(|(i, &ndcg)| QuestionResult {
                query_id: format!("q{i}"),
                rank: (ndcg == 1.0).then_some(1),
                ndcg: Some(ndcg),
                ..Default::default()
            })
            .collect();
        ModelResult { questions, ..model(name, mean) }
    }

    #[test]
    fn the_verdict_claims_only_what_its_interval_supports() {
        let base: Vec<f64> = (0..120).map(|i| if i % 2 == 0 { 1.0 } else { 0.0 }).collect();
        let mut better = base.clone();
        for (i, v) in better.iter_mut().enumerate() {
            if i % 4 == 1 {
                *v = 1.0;
            }
        }
        let up = verdict(&[scored("base", &base), scored("finetuned", &better)]);
        assert_eq!(up.outcome, Some(Difference::Better), "{}", up.text);
        assert!(up.text.starts_with("finetuned is better than base: NDCG@10 0.7500 vs 0.5000, +0.2500 (95 % interval +0."), "{}", up.text);
        let down = verdict(&[scored("finetuned", &better), scored("base", &base)]);
        assert_eq!(down.outcome, Some(Difference::Worse));
        assert!(down.text.contains("is worse than") && down.text.contains("Keep the base model"));
        // One question of 120 moves: a higher mean, and no gain the interval supports.
        let mut one = base.clone();
        one[1] = 1.0;
        let noise = verdict(&[scored("base", &base), scored("finetuned", &one)]);
        assert_eq!(noise.outcome, Some(Difference::NoMeasurableDifference), "{}", noise.text);
        assert!(noise.text.starts_with("No measurable difference") && !noise.text.contains("is better"), "{}", noise.text);
        // Without per-question scores there is no interval, and no claim.
        let bare = verdict(&[model("base", 0.5), model("finetuned", 0.75)]);
        assert_eq!(bare.outcome, None);
        assert!(!bare.text.contains("better") && bare.text.contains("no interval"), "{}", bare.text);
        assert_eq!(verdict(&[model("base", 0.5)]).outcome, None);
    }

    #[test]
    fn the_change_check_says_when_the_model_embeds_as_the_base() {
        let digest = Some("ab12".to_owned());
        let base = ModelResult { embeddings_digest: digest.clone(), ..scored("base", &[1.0, 0.0]) };
        let kept = ModelResult {
            embeddings_digest: digest,
            selection: Some("no checkpoint beat the base on validation".into()),
            ..scored("finetuned", &[1.0, 0.0])
        };
        let v = verdict(&[base.clone(), kept.clone()]);
        assert_eq!(v.outcome, Some(Difference::NoMeasurableDifference));
        assert!(v.text.starts_with("finetuned is unchanged: its embeddings are exactly base's (no checkpoint beat the base"), "{}", v.text);
        let moved = ModelResult { embeddings_digest: Some("cd34".into()), ..kept };
        assert!(!verdict(&[base, moved]).text.contains("unchanged"));
    }

    #[test]
    fn the_summary_has_the_table_the_verdict_and_the_paths() {
        let report = RunReport {
            models: vec![model("base", 0.5), model("finetuned", 0.75)],
            files: vec![("model".into(), "out/model".into()), ("report".into(), "out/results/report.html".into())],
            ..Default::default()
        };
        let s = summary_block(&report);
        let lines: Vec<&str> = s.lines().collect();
        assert!(lines[0].contains("Hit rate@3") && lines[0].contains("NDCG@10") && lines[0].contains("MAP@100"));
        assert!(lines[2].starts_with("finetuned") && lines[2].contains("0.7500") && lines[2].contains("0.3750"));
        assert!(lines[3].contains("+0.2500") && lines[3].contains("+0.1250"));
        assert!(lines[3].contains('-'), "a metric the models lack shows as -");
        assert!(s.contains("finetuned against base: NDCG@10 0.7500 vs 0.5000"), "{s}");
        assert!(s.contains("report  out/results/report.html"));
        assert!(!s.contains("pseudo-queries"), "no dataset facts, no caveat");
    }

    #[test]
    fn numbers_on_offline_spans_say_so_in_the_summary_and_the_page() {
        let facts = |generator: &str| crate::data::DatasetFacts { generator: generator.into(), ..Default::default() };
        let mut report = RunReport { models: vec![model("base", 0.5), model("finetuned", 0.75)], ..Default::default() };
        report.dataset = Some(facts("offline (pseudo-queries cropped from each chunk)"));
        assert!(summary_block(&report).contains(crate::data::OFFLINE_SPANS_CAVEAT));
        let page = crate::html::render(&report);
        assert_eq!(page.matches("not questions a person wrote").count(), 2, "under the headline and above the questions");
        report.dataset = Some(facts("llm (gpt-4o-mini)"));
        assert!(!summary_block(&report).contains("pseudo-queries"));
        assert!(!crate::html::render(&report).contains("not questions a person wrote"));
    }
}
