//! Where embedfleet keeps what it downloads or computes once (models fetched from `s3://`, results
//! fetched by `results --download`, the LLM's answers): one definition for every crate.
//!
//! `EMBEDFLEET_CACHE` if set; else `$HOME/.cache/embedfleet`; else `.embedfleet-cache` in the
//! working directory. The images set `EMBEDFLEET_CACHE` under `/tmp`, the one path a worker with a
//! read-only root filesystem can write.

use std::path::PathBuf;

/// The cache's root folder (not created here).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("EMBEDFLEET_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".cache/embedfleet")))
        .unwrap_or_else(|| PathBuf::from(".embedfleet-cache"))
}

/// A named part of the cache: `models`, `results`, `llm-answers`.
pub fn cache_subdir(name: &str) -> PathBuf {
    cache_dir().join(name)
}
