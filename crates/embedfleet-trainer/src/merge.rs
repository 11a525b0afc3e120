//! A merge with the base (`--merge-with-base`): the kept model's weights interpolated with the base
//! model's, tensor by tensor, θ = w·θ_fine-tuned + (1 − w)·θ_base (WiSE-FT). `auto` scores a few
//! weights on validation and keeps the best; 0, the base itself, is always one of them, so the kept
//! model is never below the base on validation.

use embedfleet_core::{MergeWithBase, Metric};
use embedfleet_evaluator::{EvalError, EvalOptions, Evaluation, PreparedDataset, evaluate_model};
use embedfleet_model::{ModelError, SentenceEncoder, Tensor};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error(
        "cannot merge with the base: {detail}. The base and the fine-tuned model must be the same architecture; use --merge-with-base off"
    )]
    Mismatch { detail: String },
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// One weight scored on validation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MergeCandidate {
    /// Of the fine-tuned model: 0 is the base, 1 the fine-tuned model.
    pub weight: f64,
    /// The training metric on validation (NaN when a single weight was asked for and not scored).
    pub value: f64,
}

/// Which weight was kept, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MergeOutcome {
    pub weight: f64,
    pub candidates: Vec<MergeCandidate>,
    /// One sentence for the card and the report.
    pub reason: String,
    /// The kept model's evaluation on validation.
    pub evaluation: Evaluation,
}

/// The fine-tuned weights and the base's, by variable name, checked to match.
pub struct MergePair {
    trained: Vec<(String, Tensor)>,
    base: Vec<Tensor>,
}

impl MergePair {
    /// Copies `model`'s current weights (the fine-tuned ones) and the base's, refusing models whose
    /// variables differ in name or shape.
    pub fn new(model: &SentenceEncoder, base: &SentenceEncoder) -> Result<Self, MergeError> {
        let _guard = tch::no_grad_guard();
        let ours = model.var_store().variables();
        let theirs = base.var_store().variables();
        let mut trained = Vec::with_capacity(ours.len());
        let mut base_weights = Vec::with_capacity(ours.len());
        let mut names: Vec<&String> = ours.keys().collect();
        names.sort();
        for name in names {
            let t = &ours[name];
            let b = theirs.get(name).ok_or_else(|| MergeError::Mismatch { detail: format!("the base has no weight {name}") })?;
            if t.size() != b.size() {
                return Err(MergeError::Mismatch { detail: format!("{name} is {:?} here and {:?} in the base", t.size(), b.size()) });
            }
            trained.push((name.clone(), t.detach().copy()));
            base_weights.push(b.detach().to_kind(t.kind()).to_device(t.device()));
        }
        if theirs.len() != ours.len() {
            return Err(MergeError::Mismatch { detail: format!("{} weights here, {} in the base", ours.len(), theirs.len()) });
        }
        Ok(Self { trained, base: base_weights })
    }

    /// Sets `model`'s weights to `weight`·fine-tuned + (1 − weight)·base. Exactly the base at 0 and
    /// exactly the fine-tuned weights at 1 (copied, not computed).
    pub fn apply(&self, model: &mut SentenceEncoder, weight: f64) {
        let _guard = tch::no_grad_guard();
        let mut variables = model.var_store().variables();
        for ((name, trained), base) in self.trained.iter().zip(&self.base) {
            let Some(var) = variables.get_mut(name) else { continue };
            let value = if weight <= 0.0 {
                base.shallow_clone()
            } else if weight >= 1.0 {
                trained.shallow_clone()
            } else {
                trained * weight + base * (1.0 - weight)
            };
            var.copy_(&value);
        }
    }
}

/// Applies `setting` to `model` (the kept fine-tuned model) against `base`: a fixed weight, or the
/// best of [`MergeWithBase::candidates`] on `val` by `metric` (ties go to the weight nearer the
/// base). Leaves `model` holding the chosen weights; None when the setting is off.
pub fn merge_with_base(
    model: &mut SentenceEncoder,
    base: &SentenceEncoder,
    setting: MergeWithBase,
    val: &PreparedDataset,
    options: &EvalOptions,
    metric: &Metric,
) -> Result<Option<MergeOutcome>, MergeError> {
    let weights = setting.candidates();
    if weights.is_empty() {
        return Ok(None);
    }
    let pair = MergePair::new(model, base)?;
    let name = metric.to_string();
    let mut scored: Vec<(MergeCandidate, Evaluation)> = Vec::with_capacity(weights.len());
    for &weight in &weights {
        pair.apply(model, weight);
        let evaluation = evaluate_model(model, val, options)?;
        let value = evaluation.metric(&name).unwrap_or(f64::NAN);
        tracing::info!(weight, value, metric = %name, "merge candidate scored");
        scored.push((MergeCandidate { weight, value }, evaluation));
    }
    // The best value; on a tie the weight nearer the base (candidates are in rising weight).
    let mut best = 0;
    for (i, (c, _)) in scored.iter().enumerate() {
        if c.value > scored[best].0.value || scored[best].0.value.is_nan() {
            best = i;
        }
    }
    let (kept, evaluation) = scored[best].clone();
    pair.apply(model, kept.weight);
    let candidates: Vec<MergeCandidate> = scored.into_iter().map(|(c, _)| c).collect();
    let listed = candidates.iter().map(|c| format!("{}: {:.4}", c.weight, c.value)).collect::<Vec<_>>().join(", ");
    let reason = match (setting, kept.weight) {
        (MergeWithBase::Weight(w), _) => {
            format!("weight {w} of the fine-tuned model, as --merge-with-base asked (validation {name} {:.4})", kept.value)
        }
        (_, 0.0) => format!("weight 0, the base: no mix with the fine-tuned weights beat it on validation {name} ({listed})"),
        (_, 1.0) => format!("weight 1: the fine-tuned weights as trained scored best on validation {name} ({listed})"),
        (_, w) => format!("weight {w} of the fine-tuned model, the best on validation {name} ({listed})"),
    };
    Ok(Some(MergeOutcome { weight: kept.weight, candidates, reason, evaluation }))
}

/// Loads the kept model from `output`, merges it with `base` by `setting`, and writes the merged
/// weights back into `output` (unless the fine-tuned weights were kept as they are).
pub fn merge_saved_model(
    output: &Path,
    base: &SentenceEncoder,
    setting: MergeWithBase,
    val: &PreparedDataset,
    options: &EvalOptions,
    metric: &Metric,
    load: embedfleet_model::LoadOptions,
) -> Result<Option<MergeOutcome>, MergeError> {
    if setting == MergeWithBase::Off {
        return Ok(None);
    }
    let mut model = SentenceEncoder::load(output, load)?;
    let outcome = merge_with_base(&mut model, base, setting, val, options, metric)?;
    if let Some(o) = &outcome
        && o.weight != 1.0
    {
        model.write_weights(output)?;
    }
    Ok(outcome)
}
