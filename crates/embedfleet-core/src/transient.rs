//! Whether an error is worth another try. Every crate's error enum answers for itself, so the
//! fleet's worker loop can back off and retry an outage (a store, NATS, an LLM server or the hub
//! unreachable) while bad input fails at once with its reason.

pub trait Transient {
    /// True when the same call may succeed later without anyone changing anything.
    fn is_transient(&self) -> bool;
}

impl Transient for crate::StoreError {
    fn is_transient(&self) -> bool {
        // A missing object is an answer, not an outage; callers that expect it to appear soon
        // (a checkpoint still uploading) decide that themselves.
        matches!(self, crate::StoreError::Backend { .. })
    }
}

impl Transient for crate::GenerateError {
    fn is_transient(&self) -> bool {
        matches!(self, crate::GenerateError::Unavailable(_))
    }
}

impl Transient for crate::DatasetError {
    fn is_transient(&self) -> bool {
        matches!(self, crate::DatasetError::Store(e) if e.is_transient())
    }
}
