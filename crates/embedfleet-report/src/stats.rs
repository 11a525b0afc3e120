//! How sure a difference between two models is: a paired bootstrap over the questions.
//!
//! Both models answer the same questions, so what varies from one sample of questions to another is
//! the per-question difference. Resampling the questions with replacement and taking the 2.5th and
//! 97.5th percentiles of the mean difference gives a 95 % interval (Efron's percentile bootstrap,
//! as `tools/human_questions/paired_bootstrap.py` and most IR papers compute it). A difference whose
//! interval contains 0 is one these questions cannot tell from noise.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Resamples of a bootstrap. 10,000 puts the Monte Carlo error of each bound near 1 % of the
/// interval's width.
pub const RESAMPLES: usize = 10_000;

/// Draws per interval above which the resamples are cut, so a million-question log still answers
/// in about a second: 200 resamples at least.
const MAX_DRAWS: usize = 200_000_000;

/// The seed every interval uses unless told otherwise, so the same results give the same report.
pub const SEED: u64 = 0x5EED;

/// A mean difference and its 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Mean of the per-question differences (candidate minus base).
    pub mean: f64,
    pub low: f64,
    pub high: f64,
    /// Questions the differences came from.
    pub questions: usize,
    pub resamples: usize,
}

/// What an interval supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Difference {
    /// The whole interval is above 0.
    Better,
    /// The whole interval is below 0.
    Worse,
    /// The interval contains 0.
    NoMeasurableDifference,
}

impl Difference {
    pub fn of(interval: &Interval) -> Self {
        if interval.low > 0.0 {
            Difference::Better
        } else if interval.high < 0.0 {
            Difference::Worse
        } else {
            Difference::NoMeasurableDifference
        }
    }

    /// As the CSV and the summary write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Difference::Better => "better",
            Difference::Worse => "worse",
            Difference::NoMeasurableDifference => "no measurable difference",
        }
    }
}

/// The linear-interpolation percentile of sorted values (numpy's default, `method="linear"`):
/// `q` in [0, 100].
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let position = (q / 100.0).clamp(0.0, 1.0) * (n - 1) as f64;
            let below = position.floor() as usize;
            let above = (below + 1).min(n - 1);
            let fraction = position - below as f64;
            sorted[below] + (sorted[above] - sorted[below]) * fraction
        }
    }
}

/// The interval from resample means already drawn: their 2.5th and 97.5th percentiles.
pub fn interval_from_means(diffs: &[f64], mut means: Vec<f64>) -> Interval {
    means.sort_by(f64::total_cmp);
    Interval {
        mean: diffs.iter().sum::<f64>() / diffs.len().max(1) as f64,
        low: percentile(&means, 2.5),
        high: percentile(&means, 97.5),
        questions: diffs.len(),
        resamples: means.len(),
    }
}

/// The mean of `diffs` over each resample, given as lists of indices into `diffs`.
pub fn resample_means<'a>(diffs: &[f64], resamples: impl IntoIterator<Item = &'a [usize]>) -> Vec<f64> {
    resamples.into_iter().map(|picks| picks.iter().map(|&i| diffs[i]).sum::<f64>() / picks.len().max(1) as f64).collect()
}

/// The 95 % paired-bootstrap interval of the mean of `diffs`, seeded. None without questions.
pub fn bootstrap(diffs: &[f64], resamples: usize, seed: u64) -> Option<Interval> {
    let n = diffs.len();
    if n == 0 {
        return None;
    }
    let resamples = resamples.min(MAX_DRAWS / n).max(200);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let means = (0..resamples).map(|_| (0..n).map(|_| diffs[rng.random_range(0..n)]).sum::<f64>() / n as f64).collect();
    Some(interval_from_means(diffs, means))
}

/// Candidate minus base, question by question, with its interval. None when the two lists are
/// empty or of different lengths (different question sets cannot be paired).
pub fn paired(base: &[f64], candidate: &[f64]) -> Option<Interval> {
    if base.len() != candidate.len() {
        return None;
    }
    let diffs: Vec<f64> = candidate.iter().zip(base).map(|(c, b)| c - b).collect();
    bootstrap(&diffs, RESAMPLES, SEED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_interpolates_like_numpy() {
        let v = [1.0, 2.0, 4.0, 8.0];
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 100.0), 8.0);
        // numpy.percentile([1, 2, 4, 8], 50) == 3.0; at 2.5: position 0.075 → 1.075.
        assert_eq!(percentile(&v, 50.0), 3.0);
        assert!((percentile(&v, 2.5) - 1.075).abs() < 1e-12);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn identical_models_have_no_measurable_difference() {
        let same = vec![0.5; 40];
        let interval = paired(&same, &same).expect("paired");
        assert_eq!((interval.mean, interval.low, interval.high), (0.0, 0.0, 0.0));
        assert_eq!(Difference::of(&interval), Difference::NoMeasurableDifference);
    }

    #[test]
    fn a_clear_gain_is_better_and_a_clear_loss_worse() {
        let base: Vec<f64> = (0..200).map(|i| (i % 5) as f64 / 10.0).collect();
        let up: Vec<f64> = base.iter().map(|b| b + 0.2).collect();
        let gain = paired(&base, &up).unwrap();
        assert_eq!(Difference::of(&gain), Difference::Better);
        assert!((gain.mean - 0.2).abs() < 1e-12);
        assert_eq!(Difference::of(&paired(&up, &base).unwrap()), Difference::Worse);
        assert!(paired(&base, &up[..10]).is_none(), "different question sets do not pair");
        assert!(paired(&[], &[]).is_none());
    }

    #[test]
    fn the_same_seed_gives_the_same_interval() {
        let diffs: Vec<f64> = (0..97).map(|i| ((i * 37) % 11) as f64 / 10.0 - 0.4).collect();
        assert_eq!(bootstrap(&diffs, 2_000, 7), bootstrap(&diffs, 2_000, 7));
        assert_ne!(bootstrap(&diffs, 2_000, 7), bootstrap(&diffs, 2_000, 8));
    }
}
