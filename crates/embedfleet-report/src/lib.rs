//! Everything a person reads after a run, kept free of libtorch so the coordinator (which never
//! links it) writes the same page as `embedfleet run`: `report.html`, the comparison and training
//! charts (`metrics.svg`, `training.svg`), the model card, and the serializable results they are
//! built from. The evaluator, the trainer, the CLI and the coordinator all go through here.

pub mod card;
pub mod charts;
pub mod data;
pub mod fleet;
pub mod html;
pub mod questions;
pub mod stats;
pub mod summary;
pub mod svg;
pub mod write;

pub use card::{ModelCard, ModelFacts};
pub use data::{
    DatasetFacts, DimResult, HitRate, LlmFacts, LogRow, ModelResult, QuestionResult, Retrieved, RunReport, TrainingCurve, TrainingFacts,
};
pub use write::{ReportError, write_local_report};

/// The version written into pages and cards.
pub const EMBEDFLEET_VERSION: &str = env!("CARGO_PKG_VERSION");
