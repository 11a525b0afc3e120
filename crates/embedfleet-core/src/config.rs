//! The settings a user chooses for a job, each defined once. The same struct is the CLI's flags
//! (clap, with an `EMBEDFLEET_*` variable per flag) and the fleet's run spec (serde), so `generate`,
//! `finetune`, `run` and `submit` share names, defaults and checks, and a run on the fleet trains
//! exactly what `embedfleet finetune` trains.
//!
//! `validate` runs before anything starts, locally and at `submit` (and again in the coordinator,
//! for specs that did not come through the CLI); its error names the flag.

use crate::chunk::ChunkConfig;
use crate::dataset::QaDataset;
use crate::inverse_cloze::{ClozeCuts, cut_questions_from_positives};
use crate::metric::Metric;
use crate::split::{SplitBy, SplitConfig};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

pub use crate::config_error::ConfigError;
use crate::config_error::refuse;

/// The defaults, named once for the flags and for `Default`.
pub mod defaults {
    pub const CHUNK_SIZE: usize = 1000;
    pub const CHUNK_OVERLAP: usize = 200;
    pub const QUESTIONS_PER_CHUNK: usize = 2;
    pub const TRAIN_RATIO: f64 = 0.8;
    pub const SEED: u64 = 42;
    pub const EPOCHS: usize = 2;
    pub const BATCH_SIZE: usize = 10;
    /// sentence-transformers' default, and the rate for questions an LLM wrote.
    pub const LEARNING_RATE: f64 = 2e-5;
    /// The rate when the questions are spans of their passages (the offline generator's): on 137
    /// human FAQ questions, MiniLM trained on spans at 2e-5 lost accuracy@1 against the base, and at
    /// this rate every variant gained (README, "Human questions").
    pub const LEARNING_RATE_SPANS: f64 = 5e-6;
    pub const WEIGHT_DECAY: f64 = 0.01;
    pub const WARMUP_RATIO: f64 = 0.1;
    pub const MAX_GRAD_NORM: f64 = 1.0;
    pub const EVALUATION_STEPS: usize = 50;
    pub const METRIC: &str = "cosine-NDCG@10";
    pub const MODEL_ID: &str = "BAAI/bge-small-en";
    /// Negatives per question `embedfleet mine` writes when `--hard-negatives` is left out.
    pub const MINE_NEGATIVES: usize = 5;
    /// The candidate window: the closest 50 chunks that are not the positive.
    pub const RANGE_MAX: usize = 50;
    /// NV-Retriever's TopK-PercPos 95 %: a negative scores below 95 % of the positive.
    pub const RELATIVE_MARGIN: f64 = 0.05;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GeneratorKind {
    /// An LLM when one is configured, else offline. On the fleet: the generator workers' LLM when
    /// they have one (configure every replica alike).
    #[default]
    Auto,
    /// Pseudo-queries cropped from each chunk's own text; needs nothing. Spans of the text, not
    /// questions.
    Offline,
    /// Questions written by an OpenAI-compatible LLM.
    Llm,
}

/// How a corpus becomes a dataset: chunking, questions, split.
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct DatasetConfig {
    /// Which question generator to use.
    #[arg(long, env = "EMBEDFLEET_GENERATOR", value_enum, default_value_t = GeneratorKind::Auto)]
    pub generator: GeneratorKind,
    /// The field holding the text in JSON records (default: content, text, page_content or body).
    #[arg(long, env = "EMBEDFLEET_TEXT_FIELD", alias = "text_field")]
    pub text_field: Option<String>,
    /// Characters per chunk.
    #[arg(long, env = "EMBEDFLEET_CHUNK_SIZE", alias = "chunk_size", default_value_t = defaults::CHUNK_SIZE)]
    pub chunk_size: usize,
    /// Characters shared by consecutive chunks.
    #[arg(long, env = "EMBEDFLEET_CHUNK_OVERLAP", alias = "chunk_overlap", default_value_t = defaults::CHUNK_OVERLAP)]
    pub chunk_overlap: usize,
    /// Questions to write for each chunk.
    #[arg(
        long,
        env = "EMBEDFLEET_QUESTIONS_PER_CHUNK",
        aliases = ["questions_per_chunk", "num_questions_per_chunk"],
        default_value_t = defaults::QUESTIONS_PER_CHUNK
    )]
    pub questions_per_chunk: usize,
    /// Share of chunks for training; the rest validates.
    #[arg(long, env = "EMBEDFLEET_TRAIN_RATIO", alias = "train_ratio", default_value_t = defaults::TRAIN_RATIO)]
    pub train_ratio: f64,
    /// Keep each document on one side (no leakage), or split chunks like the reference.
    #[arg(long, env = "EMBEDFLEET_SPLIT_BY", alias = "split_by", value_enum, default_value_t = SplitBy::Document)]
    pub split_by: SplitBy,
    /// Seed for the split and the offline generator.
    #[arg(long, env = "EMBEDFLEET_SEED", default_value_t = defaults::SEED)]
    pub seed: u64,
}

impl Default for DatasetConfig {
    fn default() -> Self {
        Self {
            generator: GeneratorKind::Auto,
            text_field: None,
            chunk_size: defaults::CHUNK_SIZE,
            chunk_overlap: defaults::CHUNK_OVERLAP,
            questions_per_chunk: defaults::QUESTIONS_PER_CHUNK,
            train_ratio: defaults::TRAIN_RATIO,
            split_by: SplitBy::Document,
            seed: defaults::SEED,
        }
    }
}

impl DatasetConfig {
    pub fn chunk_config(&self) -> ChunkConfig {
        ChunkConfig { size: self.chunk_size, overlap: self.chunk_overlap }
    }

    pub fn split_config(&self) -> SplitConfig {
        SplitConfig { train_ratio: self.train_ratio, seed: self.seed, by: self.split_by }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.chunk_size == 0 {
            return Err(refuse("--chunk-size", 0, "must be at least 1 character"));
        }
        if self.chunk_config().validate().is_err() {
            return Err(refuse(
                "--chunk-overlap",
                self.chunk_overlap,
                format!("must be under half of --chunk-size ({}); lower the overlap or raise the size", self.chunk_size),
            ));
        }
        if self.questions_per_chunk == 0 {
            return Err(refuse("--questions-per-chunk", 0, "must be at least 1"));
        }
        if self.questions_per_chunk > 100 {
            return Err(refuse("--questions-per-chunk", self.questions_per_chunk, "at most 100 questions per chunk"));
        }
        open_unit("--train-ratio", self.train_ratio)?;
        if self.text_field.as_deref().is_some_and(|f| f.trim().is_empty()) {
            return Err(refuse("--text-field", "''", "is empty; leave it out to use content, text, page_content or body"));
        }
        Ok(())
    }
}

/// A ratio strictly between 0 and 1.
fn open_unit(flag: &'static str, v: f64) -> Result<(), ConfigError> {
    if v.is_finite() && v > 0.0 && v < 1.0 { Ok(()) } else { Err(refuse(flag, v, "must be strictly between 0 and 1")) }
}

/// How candidates are picked among those the false-negative guard keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Sampling {
    /// The closest survivors (NV-Retriever's TopK).
    #[default]
    Top,
    /// A seeded random choice among the survivors.
    Random,
}

/// Hard-negative mining: for each training question, chunks the mining model ranks close to it
/// that are not its answer. A candidate is kept only outside the positive's own document (the
/// chunks overlap, so a neighbour chunk holds part of the answer) and only if it scores below
/// `positive × (1 − relative_margin)`.
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct MiningConfig {
    /// Hard negatives per question. finetune and run: mine them (or read `{train}_negatives.json`
    /// beside the training set) and add them to each question's candidates in the loss; left out,
    /// the other passages of the batch are the only negatives. mine: how many to write (default 5).
    #[arg(long, env = "EMBEDFLEET_HARD_NEGATIVES", alias = "hard_negatives")]
    pub hard_negatives: Option<usize>,
    /// The model that ranks the candidates (folder, s3:// prefix or hub id); default: the base model.
    #[arg(long, env = "EMBEDFLEET_MINING_MODEL", alias = "mining_model")]
    pub mining_model: Option<String>,
    /// Skip this many of the closest candidates that pass the guard (sentence-transformers' range_min).
    #[arg(long, env = "EMBEDFLEET_RANGE_MIN", alias = "range_min", default_value_t = 0)]
    pub range_min: usize,
    /// Look at the closest N chunks that are not the positive (sentence-transformers' range_max).
    #[arg(long, env = "EMBEDFLEET_RANGE_MAX", alias = "range_max", default_value_t = defaults::RANGE_MAX)]
    pub range_max: usize,
    /// Keep a candidate only if it scores below positive × (1 − margin); 0 keeps anything below the positive.
    #[arg(long, env = "EMBEDFLEET_RELATIVE_MARGIN", alias = "relative_margin", default_value_t = defaults::RELATIVE_MARGIN)]
    pub relative_margin: f64,
    /// top: the closest survivors; random: a seeded choice among them.
    #[arg(long, env = "EMBEDFLEET_SAMPLING", aliases = ["sampling_strategy", "sampling-strategy"], value_enum, default_value_t = Sampling::Top)]
    pub sampling: Sampling,
    /// Seed of `--sampling random`.
    #[arg(long, env = "EMBEDFLEET_MINING_SEED", alias = "mining_seed", default_value_t = defaults::SEED)]
    pub mining_seed: u64,
}

impl Default for MiningConfig {
    fn default() -> Self {
        Self {
            hard_negatives: None,
            mining_model: None,
            range_min: 0,
            range_max: defaults::RANGE_MAX,
            relative_margin: defaults::RELATIVE_MARGIN,
            sampling: Sampling::Top,
            mining_seed: defaults::SEED,
        }
    }
}

impl MiningConfig {
    /// The settings alone, whether or not negatives are asked for.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(0) = self.hard_negatives {
            return Err(refuse("--hard-negatives", 0, "must be at least 1 (leave it out to train on in-batch negatives only)"));
        }
        if let Some(n) = self.hard_negatives.filter(|&n| n > 1_000) {
            return Err(refuse("--hard-negatives", n, "at most 1000 negatives per question"));
        }
        if self.range_max == 0 {
            return Err(refuse("--range-max", 0, "must be at least 1"));
        }
        if self.range_max > 100_000 {
            return Err(refuse("--range-max", self.range_max, "at most 100000 candidates per question"));
        }
        if self.range_min >= self.range_max {
            return Err(refuse(
                "--range-min",
                self.range_min,
                format!("must be below --range-max ({}): the range would hold no candidate", self.range_max),
            ));
        }
        if !(self.relative_margin.is_finite() && (0.0..1.0).contains(&self.relative_margin)) {
            return Err(refuse("--relative-margin", self.relative_margin, "must be at least 0 and below 1"));
        }
        if self.mining_model.as_deref().is_some_and(|m| m.trim().is_empty()) {
            return Err(refuse("--mining-model", "''", "is empty; leave it out to mine with the base model"));
        }
        self.check_room(self.hard_negatives.unwrap_or(0))
    }

    /// Whether the range can hold `count` negatives at all.
    pub fn check_room(&self, count: usize) -> Result<(), ConfigError> {
        let room = self.range_max.saturating_sub(self.range_min);
        if count > room {
            return Err(refuse(
                "--range-max",
                self.range_max,
                format!("leaves room for {room} candidates after --range-min {}, fewer than --hard-negatives {count}", self.range_min),
            ));
        }
        Ok(())
    }
}

/// The prompt put before every question, one flag for every command that embeds questions:
/// training and its validation (`run`, `finetune`, `submit`), `mine` and `evaluate`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct QueryPrompt {
    /// Put before every question: the name of one of the model's prompts
    /// (config_sentence_transformers.json), the prompt's text, or `none`. Default: the model's own
    /// `query` prompt if it has one (Qwen3-Embedding's instruction), else none, as
    /// sentence-transformers' evaluator does with query_prompt_name="query". Passages get none.
    #[arg(long, env = "EMBEDFLEET_QUERY_PROMPT", alias = "query_prompt")]
    pub query_prompt: Option<String>,
}

impl QueryPrompt {
    /// The setting as the model's `query_prompt` takes it (None: the model's own).
    pub fn setting(&self) -> Option<&str> {
        self.query_prompt.as_deref()
    }
}

/// The inverse-cloze switch, one flag for every command that shows a model its passages: training
/// and its validation (`run`, `finetune`, `submit`), `mine` and `evaluate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct InverseCloze {
    /// Inverse cloze: cut each question that is word for word in its passage (the offline
    /// generator's spans) out of that passage, in training, validation, mining and evaluation, so
    /// the model learns (and is scored on) what a passage is about instead of matching its words;
    /// `false` keeps the passages whole, as sentence-transformers does. Questions an LLM wrote are
    /// not in their passage and stay as they are.
    #[arg(long, env = "EMBEDFLEET_INVERSE_CLOZE", alias = "inverse_cloze", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub inverse_cloze: bool,
}

impl Default for InverseCloze {
    fn default() -> Self {
        InverseCloze { inverse_cloze: true }
    }
}

impl InverseCloze {
    /// The dataset with each question cut out of its passages when the switch is on (see
    /// [`crate::inverse_cloze`]), otherwise the dataset itself; and what the cut did.
    pub fn view<'a>(self, dataset: &'a QaDataset) -> (Cow<'a, QaDataset>, ClozeCuts) {
        if !self.inverse_cloze {
            return (Cow::Borrowed(dataset), ClozeCuts::default());
        }
        let (cut, cuts) = cut_questions_from_positives(dataset);
        tracing::info!(cut = cuts.cut, not_found = cuts.not_found, left_in = cuts.left_in, "{cuts}");
        (Cow::Owned(cut), cuts)
    }
}

/// Fine-tuning settings: MultipleNegativesRankingLoss, AdamW, evaluation and checkpoints.
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    #[arg(long, env = "EMBEDFLEET_EPOCHS", default_value_t = defaults::EPOCHS)]
    pub epochs: usize,
    /// Pairs per batch; every other pair's passage is a question's negative.
    #[arg(long, env = "EMBEDFLEET_BATCH_SIZE", alias = "batch_size", default_value_t = defaults::BATCH_SIZE)]
    pub batch_size: usize,
    /// GradCache: embed in mini-batches of this size, so a big batch fits in the memory of a small one.
    #[arg(long, env = "EMBEDFLEET_MINI_BATCH_SIZE", alias = "mini_batch_size")]
    pub mini_batch_size: Option<usize>,
    /// Peak learning rate of AdamW. Default: 2e-5, or 5e-6 when inverse cloze finds most questions
    /// word for word in their passages (the offline generator's spans), which did better on
    /// questions people wrote.
    #[arg(long, env = "EMBEDFLEET_LEARNING_RATE", alias = "learning_rate")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    #[arg(long, env = "EMBEDFLEET_WEIGHT_DECAY", alias = "weight_decay", default_value_t = defaults::WEIGHT_DECAY)]
    pub weight_decay: f64,
    /// Share of the steps spent warming the learning rate up.
    #[arg(long, env = "EMBEDFLEET_WARMUP_RATIO", alias = "warmup_ratio", default_value_t = defaults::WARMUP_RATIO)]
    pub warmup_ratio: f64,
    #[arg(long, env = "EMBEDFLEET_MAX_GRAD_NORM", alias = "max_grad_norm", default_value_t = defaults::MAX_GRAD_NORM)]
    pub max_grad_norm: f64,
    /// Evaluate every N steps (and at each epoch end); 0: at epoch ends only.
    #[arg(long, env = "EMBEDFLEET_EVALUATION_STEPS", alias = "evaluation_steps", default_value_t = defaults::EVALUATION_STEPS)]
    pub evaluation_steps: usize,
    /// Write a resume checkpoint every N steps. 0: never locally; the fleet then checkpoints at every
    /// evaluation, so a replaced trainer resumes.
    #[arg(long, env = "EMBEDFLEET_CHECKPOINT_EVERY", alias = "checkpoint_every", default_value_t = 0)]
    pub checkpoint_every: usize,
    /// The metric that picks the best checkpoint: cosine- or dot- followed by Accuracy@k,
    /// Precision@k, Recall@k (k = 1, 3, 5, 10), MRR@10, NDCG@10 or MAP@100.
    #[arg(long, env = "EMBEDFLEET_METRIC", default_value = defaults::METRIC)]
    pub metric: Metric,
    /// Also score passages against questions.
    #[arg(long, env = "EMBEDFLEET_SYMMETRIC_LOSS")]
    pub symmetric_loss: bool,
    /// Seed for batch order and dropout.
    #[arg(long = "train-seed", env = "EMBEDFLEET_TRAIN_SEED", default_value_t = defaults::SEED)]
    pub train_seed: u64,
    /// Matryoshka: also train the first D dimensions of each embedding to work on their own, for
    /// each D listed (e.g. 384,256,128,64). The loss is the sum of MNRL over the embeddings cut to
    /// each D and re-normalised (sentence-transformers' MatryoshkaLoss, weights 1); evaluation
    /// reports every metric at each D.
    #[arg(long, env = "EMBEDFLEET_MATRYOSHKA_DIMS", alias = "matryoshka_dims", value_delimiter = ',', num_args = 1..)]
    pub matryoshka_dims: Vec<usize>,
    #[command(flatten)]
    #[serde(flatten)]
    pub prompt: QueryPrompt,
    #[command(flatten)]
    #[serde(flatten)]
    pub cloze: InverseCloze,
    /// Hard negatives: how many per question, and how they are mined.
    #[command(flatten)]
    pub mining: MiningConfig,
    /// After training, interpolate the kept weights with the base's (WiSE-FT): `auto` scores the
    /// weights 0, 0.25, 0.5, 0.75 and 1 on validation and keeps the best (0 is the base); a number
    /// from 0 to 1 takes that weight of the fine-tuned model; `off` keeps the trained weights.
    #[arg(long, env = "EMBEDFLEET_MERGE_WITH_BASE", default_value = "off")]
    pub merge_with_base: crate::MergeWithBase,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: defaults::EPOCHS,
            batch_size: defaults::BATCH_SIZE,
            mini_batch_size: None,
            learning_rate: None,
            weight_decay: defaults::WEIGHT_DECAY,
            warmup_ratio: defaults::WARMUP_RATIO,
            max_grad_norm: defaults::MAX_GRAD_NORM,
            evaluation_steps: defaults::EVALUATION_STEPS,
            checkpoint_every: 0,
            metric: Metric::default(),
            symmetric_loss: false,
            train_seed: defaults::SEED,
            matryoshka_dims: Vec::new(),
            prompt: QueryPrompt::default(),
            cloze: InverseCloze::default(),
            mining: MiningConfig::default(),
            merge_with_base: crate::MergeWithBase::Off,
        }
    }
}

/// The number format of the matrix products (weights, residuals and layer norms stay fp32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "float32" | "f32" => Ok(Precision::Fp32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(refuse("--precision", other, "unknown precision; use fp32 or bf16")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// The precision a user asks for: one of the two, or `auto`, which the model crate resolves for the
/// hardware (bf16 where the CPU has AVX-512 BF16 or AMX, or the GPU is Ampere or later; fp32
/// elsewhere, where bf16 is emulated and several times slower).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrecisionSetting {
    #[default]
    Auto,
    Fp32,
    Bf16,
}

impl PrecisionSetting {
    /// The precision asked for, or `None` for `auto`.
    pub fn fixed(self) -> Option<Precision> {
        match self {
            PrecisionSetting::Auto => None,
            PrecisionSetting::Fp32 => Some(Precision::Fp32),
            PrecisionSetting::Bf16 => Some(Precision::Bf16),
        }
    }
}

impl From<Precision> for PrecisionSetting {
    fn from(p: Precision) -> Self {
        match p {
            Precision::Fp32 => PrecisionSetting::Fp32,
            Precision::Bf16 => PrecisionSetting::Bf16,
        }
    }
}

impl std::str::FromStr for PrecisionSetting {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(PrecisionSetting::Auto);
        }
        s.parse::<Precision>()
            .map(PrecisionSetting::from)
            .map_err(|_| refuse("--precision", s, "unknown precision; use auto, fp32 or bf16"))
    }
}

impl std::fmt::Display for PrecisionSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.fixed() {
            Some(p) => p.fmt(f),
            None => f.write_str("auto"),
        }
    }
}

impl TrainConfig {
    /// The dataset as training and validation see it: with `--inverse-cloze`, each question cut
    /// out of its passages (see [`crate::inverse_cloze`]); otherwise the dataset itself.
    pub fn training_view<'a>(&self, dataset: &'a QaDataset) -> Cow<'a, QaDataset> {
        self.training_view_counted(dataset).0
    }

    /// [`TrainConfig::training_view`], and what the cut did.
    pub fn training_view_counted<'a>(&self, dataset: &'a QaDataset) -> (Cow<'a, QaDataset>, ClozeCuts) {
        self.cloze.view(dataset)
    }

    /// The learning rate to train with: `--learning-rate` when given, else the default for what the
    /// questions are, which `cuts` (the training set's inverse cloze) tells.
    pub fn learning_rate_for(&self, cuts: &ClozeCuts) -> f64 {
        match self.learning_rate {
            Some(lr) => lr,
            None if cuts.questions_are_spans() => defaults::LEARNING_RATE_SPANS,
            None => defaults::LEARNING_RATE,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.epochs == 0 {
            return Err(refuse("--epochs", 0, "must be at least 1"));
        }
        if self.epochs > 10_000 {
            return Err(refuse("--epochs", self.epochs, "at most 10000"));
        }
        if self.batch_size < 2 {
            return Err(refuse(
                "--batch-size",
                self.batch_size,
                "must be at least 2: each question needs the other passages of its batch as negatives",
            ));
        }
        if self.batch_size > 1_000_000 {
            return Err(refuse("--batch-size", self.batch_size, "at most 1000000"));
        }
        if self.mini_batch_size == Some(0) {
            return Err(refuse("--mini-batch-size", 0, "must be at least 1 (leave it out to embed the whole batch at once)"));
        }
        if let Some(lr) = self.learning_rate.filter(|lr| !(lr.is_finite() && (0.0..1.0).contains(lr))) {
            return Err(refuse("--learning-rate", lr, "must be at least 0 and below 1"));
        }
        if !(self.weight_decay.is_finite() && (0.0..1.0).contains(&self.weight_decay)) {
            return Err(refuse("--weight-decay", self.weight_decay, "must be at least 0 and below 1"));
        }
        if !(self.warmup_ratio.is_finite() && (0.0..1.0).contains(&self.warmup_ratio)) {
            return Err(refuse("--warmup-ratio", self.warmup_ratio, "must be at least 0 and below 1"));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm > 0.0) {
            return Err(refuse("--max-grad-norm", self.max_grad_norm, "must be a positive number"));
        }
        self.check_matryoshka_dims()?;
        self.mining.validate()
    }

    /// The dimensions alone; [`TrainConfig::check_model_dim`] checks them against the model.
    fn check_matryoshka_dims(&self) -> Result<(), ConfigError> {
        let dims = &self.matryoshka_dims;
        let flag = "--matryoshka-dims";
        if let Some(&d) = dims.iter().find(|&&d| d == 0) {
            return Err(refuse(flag, d, "every dimension must be at least 1"));
        }
        if dims.len() > 32 {
            return Err(refuse(flag, dims.len(), "at most 32 dimensions"));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(d) = dims.iter().find(|d| !seen.insert(**d)) {
            return Err(refuse(flag, d, "is listed twice; list each dimension once"));
        }
        Ok(())
    }

    /// Whether every Matryoshka dimension fits in the model's embedding.
    pub fn check_model_dim(&self, model_dim: usize) -> Result<(), ConfigError> {
        match self.matryoshka_dims.iter().find(|&&d| d > model_dim) {
            Some(d) => Err(refuse(
                "--matryoshka-dims",
                d,
                format!("is larger than the model's embedding ({model_dim} dimensions); list dimensions up to {model_dim}"),
            )),
            None => Ok(()),
        }
    }

    /// The Matryoshka dimensions from the largest down, as the loss and the evaluation use them.
    pub fn matryoshka_dims_descending(&self) -> Vec<usize> {
        let mut dims = self.matryoshka_dims.clone();
        dims.sort_unstable_by(|a, b| b.cmp(a));
        dims
    }

    /// The resume checkpoint interval on the fleet, where a replaced trainer must find one.
    pub fn fleet_checkpoint_every(&self) -> usize {
        match self.checkpoint_every {
            0 => self.evaluation_steps,
            n => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_settings_parse_auto_and_both_formats() {
        assert_eq!("auto".parse::<PrecisionSetting>().unwrap(), PrecisionSetting::Auto);
        assert_eq!("BF16".parse::<PrecisionSetting>().unwrap().fixed(), Some(Precision::Bf16));
        assert_eq!("float32".parse::<PrecisionSetting>().unwrap().fixed(), Some(Precision::Fp32));
        assert_eq!(PrecisionSetting::default().fixed(), None);
        let err = "fp16".parse::<PrecisionSetting>().unwrap_err().to_string();
        assert!(err.contains("--precision") && err.contains("auto, fp32 or bf16"), "{err}");
        assert_eq!(PrecisionSetting::Auto.to_string(), "auto");
    }
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        dataset: DatasetConfig,
        #[command(flatten)]
        train: TrainConfig,
    }

    fn parse(args: &[&str]) -> Flags {
        Flags::try_parse_from(std::iter::once("x").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn flag_defaults_are_the_serde_and_struct_defaults() {
        // Env vars would leak into the parse; none of these tests' names are set in CI.
        let flags = parse(&[]);
        assert_eq!(flags.dataset, DatasetConfig::default());
        assert_eq!(flags.train, TrainConfig::default());
        assert_eq!(serde_json::from_str::<TrainConfig>("{}").unwrap(), TrainConfig::default());
        assert_eq!(serde_json::from_str::<DatasetConfig>("{}").unwrap(), DatasetConfig::default());
        assert_eq!(TrainConfig::default().epochs, 2, "the reference's default");
        assert!(DatasetConfig::default().validate().is_ok());
        assert!(TrainConfig::default().validate().is_ok());
    }

    #[test]
    fn bad_values_are_refused_naming_the_flag() {
        let cases: [(&[&str], &str); 20] = [
            (&["--matryoshka-dims", "384,0"], "--matryoshka-dims"),
            (&["--matryoshka-dims", "64,64"], "--matryoshka-dims"),
            (&["--matryoshka-dims", "64", "--matryoshka-dims", "64"], "--matryoshka-dims"),
            (&["--hard-negatives", "0"], "--hard-negatives"),
            (&["--range-min", "50", "--range-max", "50"], "--range-min"),
            (&["--range-min", "60"], "--range-min"),
            (&["--range-max", "0"], "--range-max"),
            (&["--hard-negatives", "8", "--range-min", "45"], "--range-max"),
            (&["--relative-margin", "1"], "--relative-margin"),
            (&["--relative-margin=-0.1"], "--relative-margin"),
            (&["--batch-size", "0"], "--batch-size"),
            (&["--batch-size", "1"], "--batch-size"),
            (&["--epochs", "0"], "--epochs"),
            (&["--train-ratio", "1"], "--train-ratio"),
            (&["--train-ratio", "0"], "--train-ratio"),
            (&["--train-ratio", "NaN"], "--train-ratio"),
            (&["--learning-rate=-1"], "--learning-rate"),
            (&["--warmup-ratio", "1.5"], "--warmup-ratio"),
            (&["--chunk-overlap", "600"], "--chunk-overlap"),
            (&["--questions-per-chunk", "0"], "--questions-per-chunk"),
        ];
        for (args, flag) in cases {
            let f = parse(args);
            let err = f.dataset.validate().and_then(|_| f.train.validate()).unwrap_err();
            assert_eq!(err.flag, flag, "{args:?}: {err}");
        }
        // A metric is typed: an unknown one is refused when the flag is read.
        for bad in ["cosine-NDCG@7", "ndcg"] {
            let err = Flags::try_parse_from(["x", "--metric", bad]).err().expect("refused").to_string();
            assert!(err.contains("unknown metric") && err.contains("MAP@100"), "{bad}: {err}");
        }
        let err = "cosine-ndcg@10".parse::<Metric>().unwrap_err().to_string();
        assert!(err.contains("NDCG@10") && err.contains("MAP@100"), "the error lists the metrics: {err}");
        for ok in ["cosine-NDCG@10", "dot-MRR@10", "cosine-Accuracy@1", "cosine-Recall@5", "dot-MAP@100"] {
            assert!(ok.parse::<Metric>().is_ok(), "{ok}");
        }
    }

    #[test]
    fn mining_settings_decode_from_old_specs_and_accept_the_edges() {
        // A run spec written before mining existed has no `mining` object.
        let old: TrainConfig = serde_json::from_str(r#"{"epochs": 3, "batch_size": 16}"#).unwrap();
        assert_eq!(old.mining, MiningConfig::default());
        assert_eq!(old.mining.hard_negatives, None);
        let f = parse(&["--hard-negatives", "3", "--relative-margin", "0", "--sampling", "random", "--range-min", "2", "--range-max", "5"]);
        assert!(f.train.validate().is_ok());
        assert_eq!(f.train.mining.sampling, Sampling::Random);
        let back: TrainConfig = serde_json::from_str(&serde_json::to_string(&f.train).unwrap()).unwrap();
        assert_eq!(back, f.train);
        assert!(parse(&["--hard-negatives", "4", "--range-min", "2", "--range-max", "5"]).train.validate().is_err());
    }

    #[test]
    fn matryoshka_dims_parse_as_a_list_and_must_fit_the_model() {
        let f = parse(&["--matryoshka-dims", "128,384,64"]);
        assert_eq!(f.train.matryoshka_dims, vec![128, 384, 64]);
        assert!(f.train.validate().is_ok());
        assert_eq!(f.train.matryoshka_dims_descending(), vec![384, 128, 64]);
        assert!(f.train.check_model_dim(384).is_ok());
        let err = f.train.check_model_dim(256).unwrap_err();
        assert_eq!((err.flag, err.value.as_str()), ("--matryoshka-dims", "384"));
        assert!(err.problem.contains("256"), "{err}");
        // Specs written before Matryoshka have no dimensions: plain MNRL.
        let old: TrainConfig = serde_json::from_str(r#"{"epochs": 1}"#).unwrap();
        assert!(old.matryoshka_dims.is_empty());
        let back: TrainConfig = serde_json::from_str(&serde_json::to_string(&f.train).unwrap()).unwrap();
        assert_eq!(back, f.train);
    }

    #[test]
    fn the_learning_rate_follows_what_the_questions_are_unless_set() {
        let spans = ClozeCuts { cut: 90, not_found: 8, left_in: 2 };
        let llm_questions = ClozeCuts { cut: 1, not_found: 99, left_in: 0 };
        let default = TrainConfig::default();
        assert_eq!(default.learning_rate_for(&spans), defaults::LEARNING_RATE_SPANS);
        assert_eq!(default.learning_rate_for(&llm_questions), defaults::LEARNING_RATE);
        // Inverse cloze off cuts nothing: the reference's rate.
        assert_eq!(default.learning_rate_for(&ClozeCuts::default()), defaults::LEARNING_RATE);
        let set = parse(&["--learning-rate", "3e-5"]).train;
        assert_eq!(set.learning_rate_for(&spans), 3e-5);
        assert_eq!(set.learning_rate_for(&llm_questions), 3e-5);
        // A spec written with a rate keeps it; one without takes the default.
        let old: TrainConfig = serde_json::from_str(r#"{"learning_rate": 2e-5}"#).unwrap();
        assert_eq!(old.learning_rate_for(&spans), 2e-5);
        assert_eq!(serde_json::from_str::<TrainConfig>("{}").unwrap().learning_rate, None);
        assert_eq!(parse(&["--learning-rate", "NaN"]).train.validate().unwrap_err().flag, "--learning-rate");
    }

    #[test]
    fn the_fleet_always_has_a_resume_checkpoint_interval() {
        let c = TrainConfig { evaluation_steps: 7, ..Default::default() };
        assert_eq!(c.fleet_checkpoint_every(), 7);
        assert_eq!(TrainConfig { checkpoint_every: 3, ..c }.fleet_checkpoint_every(), 3);
    }
}
