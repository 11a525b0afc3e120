//! The verdict and the headline table, as one sentence and as text for the terminal's summary.

use crate::data::{HEADLINE_METRICS, ModelResult, PRIMARY_METRIC, RunReport};
use std::fmt::Write as _;

/// Whether the candidate beats the base on the primary metric, in one sentence.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub text: String,
    /// None when there is nothing to compare.
    pub improved: Option<bool>,
}

/// The sentence for `candidate` against `base` on the primary metric.
pub fn verdict_of(base: (&str, f64), candidate: (&str, f64)) -> Verdict {
    let ((base_name, b), (name, f)) = (base, candidate);
    if f > b {
        Verdict {
            text: format!("{name} is better than {base_name}: {PRIMARY_METRIC} {f:.4} vs {b:.4} ({:+.4}).", f - b),
            improved: Some(true),
        }
    } else {
        Verdict {
            text: format!(
                "{name} is NOT better than {base_name}: {PRIMARY_METRIC} {f:.4} vs {b:.4} ({:+.4}). Keep the base model, or fine-tune with more data or other settings.",
                f - b
            ),
            improved: Some(false),
        }
    }
}

pub fn verdict(models: &[ModelResult]) -> Verdict {
    let (Some(base), Some(candidate)) = (models.first(), models.last().filter(|_| models.len() > 1)) else {
        return Verdict { text: String::new(), improved: None };
    };
    let value = |m: &ModelResult| m.metric(PRIMARY_METRIC).unwrap_or(0.0);
    verdict_of((&base.name, value(base)), (&candidate.name, value(candidate)))
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
    use crate::data::HitRate;
    use indexmap::IndexMap;

    fn model(name: &str, ndcg: f64) -> ModelResult {
        ModelResult {
            name: name.into(),
            source: name.into(),
            hit_rate: HitRate { k: 3, hits: 1, total: 2, rate: 0.5 },
            metrics: IndexMap::from([("cosine-NDCG@10".to_owned(), ndcg), ("cosine-MRR@10".to_owned(), ndcg / 2.0)]),
            questions: Vec::new(),
            depth: 100,
            step: None,
            dims: Vec::new(),
        }
    }

    #[test]
    fn the_verdict_says_plainly_when_fine_tuning_did_not_help() {
        let better = verdict(&[model("base", 0.5), model("finetuned", 0.75)]);
        assert_eq!(better.improved, Some(true));
        assert_eq!(better.text, "finetuned is better than base: NDCG@10 0.7500 vs 0.5000 (+0.2500).");
        let worse = verdict(&[model("base", 0.5), model("finetuned", 0.5)]);
        assert_eq!(worse.improved, Some(false));
        assert!(worse.text.contains("NOT better") && worse.text.contains("Keep the base model"));
        assert_eq!(verdict(&[model("base", 0.5)]).improved, None);
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
        assert!(s.contains("finetuned is better than base"));
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
