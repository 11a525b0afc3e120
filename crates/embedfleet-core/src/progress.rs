//! The seam through which long stage functions report progress. The CLI draws indicatif bars,
//! workers publish events and log; libraries stay free of terminal code.

pub trait Progress: Send + Sync {
    /// Starts a phase of `total` steps (None when unknown).
    fn start(&self, phase: &str, total: Option<u64>);
    fn advance(&self, steps: u64);
    fn message(&self, _message: &str) {}
    fn finish(&self) {}
}

/// Reports nothing: tests and callers that do not care.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _phase: &str, _total: Option<u64>) {}
    fn advance(&self, _steps: u64) {}
}
