//! Fine-tuning a sentence encoder on (question, chunk) pairs with MultipleNegativesRankingLoss:
//! batches without in-batch false negatives, AdamW with warm-up and decay, evaluation every N steps
//! with the best checkpoint kept, GradCache for big batches in small memory, exact resume, and mined
//! hard negatives behind a false-negative guard.

pub mod batching;
pub mod checkpoint;
pub mod loss;
pub mod merge;
pub mod mining;
pub mod optim;
pub mod train;
pub mod worker;

pub use batching::TrainPair;
pub use checkpoint::LogRow;
pub use loss::{MnrlLoss, TrainingLoss};
pub use optim::AdamWConfig;
pub use train::{HookError, NoHooks, TrainConfig, TrainError, TrainHooks, TrainJob, TrainOptions, TrainOutcome, Trainer, train};
