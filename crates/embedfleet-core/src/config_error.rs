//! The error of a setting that cannot work. In a module of its own so that the types a setting
//! holds (`Metric`, …) and the settings themselves (`config`) both use it without depending on
//! each other.

/// A setting that cannot work, named by its flag.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{flag} {value}: {problem}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub value: String,
    pub problem: String,
}

/// The error for `flag` set to `value`, and why it cannot work.
pub(crate) fn refuse(flag: &'static str, value: impl ToString, problem: impl Into<String>) -> ConfigError {
    ConfigError { flag, value: value.to_string(), problem: problem.into() }
}
