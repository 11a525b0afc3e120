//! Everything the embedfleet stages share: ids, ingestion, chunking, the train/validation split,
//! the dataset files of the reference layout, the question-generator seam, and the artifact store.
//!
//! Stage functions here are plain inputs → outputs so that `embedfleet run` (one process) and the
//! fleet workers call exactly the same code.

pub mod assemble;
pub mod cache;
pub mod chunk;
pub mod config;
pub mod config_error;
pub mod dataset;
pub mod generate;
pub mod html;
pub mod ids;
pub mod ingest;
pub mod inverse_cloze;
pub mod merge;
pub mod metric;
pub mod model_source;
pub mod name;
pub mod negatives;
pub mod offline;
pub mod progress;
pub mod query_file;
pub mod shard;
pub mod split;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod transient;

pub use chunk::{Chunk, ChunkConfig};
pub use config::{
    ConfigError, DatasetConfig, GeneratorKind, InverseCloze, MiningConfig, Precision, PrecisionSetting, QueryPrompt, Sampling, TrainConfig,
};
pub use dataset::{DatasetError, DatasetSplit, QaDataset};
pub use generate::{GenerateError, GenerationOutcome, QuestionGenerator};
pub use ids::{ChunkId, DocId, QueryId};
pub use ingest::{Document, IngestError, IngestOptions};
pub use inverse_cloze::ClozeCuts;
pub use merge::MergeWithBase;
pub use metric::{Measure, Metric, ScoreFunction};
pub use name::{CheckpointLabel, InvalidName, RunId};
pub use negatives::{ExportFormat, HardNegatives, NegativesError};
pub use offline::OfflineGenerator;
pub use progress::Progress;
pub use split::{SplitBy, SplitConfig};
pub use store::{ArtifactStore, StoreError, StoreOptions};
pub use transient::Transient;
