//! The metric that picks the best checkpoint, typed: a score function, a measure and its cut-off,
//! written as sentence-transformers writes it (`cosine-NDCG@10`). A run spec, a flag or a config
//! file cannot name a metric the evaluator does not compute.

use crate::config_error::ConfigError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// How a question is compared with a passage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScoreFunction {
    Cosine,
    Dot,
}

impl ScoreFunction {
    pub const ALL: [ScoreFunction; 2] = [ScoreFunction::Cosine, ScoreFunction::Dot];

    pub fn name(self) -> &'static str {
        match self {
            ScoreFunction::Cosine => "cosine",
            ScoreFunction::Dot => "dot",
        }
    }
}

/// What is measured of each question's ranking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Measure {
    Accuracy,
    Precision,
    Recall,
    Mrr,
    Ndcg,
    Map,
}

impl Measure {
    pub const ALL: [Measure; 6] = [Measure::Accuracy, Measure::Precision, Measure::Recall, Measure::Mrr, Measure::Ndcg, Measure::Map];

    /// sentence-transformers' name of the measure.
    pub fn name(self) -> &'static str {
        match self {
            Measure::Accuracy => "Accuracy",
            Measure::Precision => "Precision",
            Measure::Recall => "Recall",
            Measure::Mrr => "MRR",
            Measure::Ndcg => "NDCG",
            Measure::Map => "MAP",
        }
    }

    /// The cut-offs the evaluator computes by default (sentence-transformers'
    /// `InformationRetrievalEvaluator` defaults); the evaluator's own defaults are checked against
    /// these by a test there.
    pub fn cutoffs(self) -> &'static [usize] {
        match self {
            Measure::Accuracy | Measure::Precision | Measure::Recall => &[1, 3, 5, 10],
            Measure::Mrr | Measure::Ndcg => &[10],
            Measure::Map => &[100],
        }
    }
}

/// A metric the evaluator computes: `cosine-NDCG@10`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Metric {
    pub score: ScoreFunction,
    pub measure: Measure,
    pub k: usize,
}

impl Metric {
    /// NDCG@10 on cosine similarity: the default, and the one reports lead with.
    pub const COSINE_NDCG_10: Metric = Metric { score: ScoreFunction::Cosine, measure: Measure::Ndcg, k: 10 };

    /// The name without the score function (`NDCG@10`), as evaluations key their values.
    pub fn measure_name(&self) -> String {
        format!("{}@{}", self.measure.name(), self.k)
    }

    fn known() -> String {
        Measure::ALL.iter().flat_map(|m| m.cutoffs().iter().map(move |k| format!("{}@{k}", m.name()))).collect::<Vec<_>>().join(", ")
    }
}

impl Default for Metric {
    fn default() -> Self {
        Metric::COSINE_NDCG_10
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}@{}", self.score.name(), self.measure.name(), self.k)
    }
}

impl std::str::FromStr for Metric {
    type Err = ConfigError;
    fn from_str(name: &str) -> Result<Self, ConfigError> {
        let parsed = name.split_once('-').and_then(|(f, m)| {
            let (measure, k) = m.split_once('@')?;
            let k: usize = k.parse().ok()?;
            let score = ScoreFunction::ALL.into_iter().find(|s| s.name() == f)?;
            let measure = Measure::ALL.into_iter().find(|x| x.name() == measure)?;
            measure.cutoffs().contains(&k).then_some(Metric { score, measure, k })
        });
        parsed.ok_or_else(|| ConfigError {
            flag: "--metric",
            value: name.to_owned(),
            problem: format!("unknown metric; use cosine- or dot- followed by one of {}", Metric::known()),
        })
    }
}

impl TryFrom<String> for Metric {
    type Error = ConfigError;
    fn try_from(s: String) -> Result<Self, ConfigError> {
        s.parse()
    }
}

impl From<Metric> for String {
    fn from(m: Metric) -> String {
        m.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_metric_round_trips_and_others_are_refused() {
        for score in ScoreFunction::ALL {
            for measure in Measure::ALL {
                for &k in measure.cutoffs() {
                    let m = Metric { score, measure, k };
                    assert_eq!(m.to_string().parse::<Metric>().unwrap(), m);
                    let json = serde_json::to_string(&m).unwrap();
                    assert_eq!(serde_json::from_str::<Metric>(&json).unwrap(), m, "{json}");
                }
            }
        }
        assert_eq!("cosine-NDCG@10".parse::<Metric>().unwrap(), Metric::default());
        assert_eq!(Metric::default().measure_name(), "NDCG@10");
        for bad in ["NDCG@10", "cosine-NDCG@5", "euclid-NDCG@10", "cosine-ndcg@10", "cosine-MAP@x", ""] {
            let err = bad.parse::<Metric>().unwrap_err().to_string();
            assert!(err.contains("--metric") && err.contains("MAP@100"), "{bad}: {err}");
        }
        assert!(serde_json::from_str::<Metric>("\"cosine-NDCG@11\"").is_err());
    }
}
