//! `--merge-with-base`: how much of the fine-tuned weights to keep against the base's (WiSE-FT,
//! Wortsman et al. 2022: interpolating the two keeps most of the gain on the new task and more of
//! the base's strength elsewhere).

use serde::{Deserialize, Serialize};
use std::fmt;

/// The weights `auto` scores, of the fine-tuned model (0 is the base, 1 the fine-tuned model).
pub const AUTO_WEIGHTS: [f64; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum MergeWithBase {
    /// Keep the fine-tuned weights as trained.
    #[default]
    Off,
    /// Score each of [`AUTO_WEIGHTS`] on validation and keep the best.
    Auto,
    /// θ = w·θ_fine-tuned + (1 − w)·θ_base, w in [0, 1].
    Weight(f64),
}

impl MergeWithBase {
    /// The weights to score, in order.
    pub fn candidates(self) -> Vec<f64> {
        match self {
            MergeWithBase::Off => Vec::new(),
            MergeWithBase::Auto => AUTO_WEIGHTS.to_vec(),
            MergeWithBase::Weight(w) => vec![w],
        }
    }
}

impl std::str::FromStr for MergeWithBase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "off" | "none" => Ok(MergeWithBase::Off),
            "auto" => Ok(MergeWithBase::Auto),
            other => match other.parse::<f64>() {
                Ok(w) if (0.0..=1.0).contains(&w) => Ok(MergeWithBase::Weight(w)),
                Ok(w) => Err(format!("merge weight {w} is outside [0, 1]; 0 is the base, 1 the fine-tuned model")),
                Err(_) => Err(format!("'{other}' is not a merge setting; use auto, off, or a weight from 0 to 1")),
            },
        }
    }
}

impl fmt::Display for MergeWithBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MergeWithBase::Off => f.write_str("off"),
            MergeWithBase::Auto => f.write_str("auto"),
            MergeWithBase::Weight(w) => write!(f, "{w}"),
        }
    }
}

impl TryFrom<String> for MergeWithBase {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<MergeWithBase> for String {
    fn from(m: MergeWithBase) -> String {
        m.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_auto_off_and_weights_and_refuses_the_rest() {
        assert_eq!("auto".parse(), Ok(MergeWithBase::Auto));
        assert_eq!("off".parse(), Ok(MergeWithBase::Off));
        assert_eq!("0.5".parse(), Ok(MergeWithBase::Weight(0.5)));
        assert_eq!("0".parse(), Ok(MergeWithBase::Weight(0.0)));
        assert!("1.5".parse::<MergeWithBase>().unwrap_err().contains("outside [0, 1]"));
        assert!("NaN".parse::<MergeWithBase>().is_err());
        assert!("half".parse::<MergeWithBase>().unwrap_err().contains("auto, off"));
        let json = serde_json::to_string(&MergeWithBase::Weight(0.25)).unwrap();
        assert_eq!(json, "\"0.25\"");
        assert_eq!(serde_json::from_str::<MergeWithBase>(&json).unwrap(), MergeWithBase::Weight(0.25));
        assert_eq!(MergeWithBase::Auto.candidates(), AUTO_WEIGHTS);
    }
}
