//! `embedfleet finetune`: MultipleNegativesRankingLoss on (question, chunk) pairs, evaluating on the
//! validation set as it goes and keeping the best checkpoint.

use embedfleet_model::RuntimeArgs;
use super::storage::StorageArgs;
use anyhow::{Context, Result};
use clap::Args;
use embedfleet_core::QaDataset;
use embedfleet_evaluator::{EvalOptions, PreparedDataset};
use embedfleet_trainer::{AdamWConfig, MnrlLoss, TrainConfig, TrainOutcome};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Clone, Args)]
pub struct FinetuneArgs {
    /// The base model: folder, s3:// prefix or hub id.
    #[arg(long, env = "EMBEDFLEET_MODEL_ID", alias = "model_id", default_value = "BAAI/bge-small-en")]
    pub model_id: String,
    #[arg(long, env = "EMBEDFLEET_TRAIN_DATASET", alias = "train_dataset", default_value = "./data/train_dataset.json")]
    pub train_dataset: PathBuf,
    #[arg(long, env = "EMBEDFLEET_VAL_DATASET", alias = "val_dataset", default_value = "./data/val_dataset.json")]
    pub val_dataset: PathBuf,
    /// Where the best model is saved (a sentence-transformers folder), with its logs and charts.
    #[arg(long, env = "EMBEDFLEET_OUTPUT_PATH", alias = "output_path", default_value = "exp_finetune")]
    pub output_path: PathBuf,
    #[command(flatten)]
    pub training: TrainingArgs,
    /// Replace an output path that holds something else.
    #[arg(long, env = "EMBEDFLEET_OVERWRITE")]
    pub overwrite: bool,
    /// Continue from the newest checkpoint in the output path.
    #[arg(long, env = "EMBEDFLEET_RESUME")]
    pub resume: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// Training settings shared by `finetune` and `run`.
#[derive(Debug, Clone, Args)]
pub struct TrainingArgs {
    #[arg(long, env = "EMBEDFLEET_EPOCHS", default_value_t = 2)]
    pub epochs: usize,
    #[arg(long, env = "EMBEDFLEET_BATCH_SIZE", alias = "batch_size", default_value_t = 10)]
    pub batch_size: usize,
    /// GradCache: embed in mini-batches of this size, so a big batch fits in the memory of a small one.
    #[arg(long, env = "EMBEDFLEET_MINI_BATCH_SIZE", alias = "mini_batch_size")]
    pub mini_batch_size: Option<usize>,
    #[arg(long, env = "EMBEDFLEET_LEARNING_RATE", alias = "learning_rate", default_value_t = 2e-5)]
    pub learning_rate: f64,
    #[arg(long, env = "EMBEDFLEET_WEIGHT_DECAY", alias = "weight_decay", default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Share of the steps spent warming the learning rate up.
    #[arg(long, env = "EMBEDFLEET_WARMUP_RATIO", alias = "warmup_ratio", default_value_t = 0.1)]
    pub warmup_ratio: f64,
    #[arg(long, env = "EMBEDFLEET_MAX_GRAD_NORM", alias = "max_grad_norm", default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Evaluate every N steps (and at each epoch end).
    #[arg(long, env = "EMBEDFLEET_EVALUATION_STEPS", alias = "evaluation_steps", default_value_t = 50)]
    pub evaluation_steps: usize,
    /// Write a resume checkpoint every N steps (0: never).
    #[arg(long, env = "EMBEDFLEET_CHECKPOINT_EVERY", alias = "checkpoint_every", default_value_t = 0)]
    pub checkpoint_every: usize,
    /// The metric that picks the best checkpoint.
    #[arg(long, env = "EMBEDFLEET_METRIC", default_value = "cosine-NDCG@10")]
    pub metric: String,
    /// Also score passages against questions.
    #[arg(long, env = "EMBEDFLEET_SYMMETRIC_LOSS")]
    pub symmetric_loss: bool,
    #[arg(long = "train-seed", env = "EMBEDFLEET_TRAIN_SEED", default_value_t = 42)]
    pub train_seed: u64,
}

impl TrainingArgs {
    pub fn config(&self, base_model: &str) -> TrainConfig {
        TrainConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            mini_batch_size: self.mini_batch_size,
            loss: MnrlLoss { symmetric: self.symmetric_loss, ..Default::default() },
            optim: AdamWConfig {
                lr: self.learning_rate,
                weight_decay: self.weight_decay,
                max_grad_norm: self.max_grad_norm,
                ..Default::default()
            },
            warmup_ratio: self.warmup_ratio,
            evaluation_steps: self.evaluation_steps,
            checkpoint_every: self.checkpoint_every,
            seed: self.train_seed,
            metric: self.metric.clone(),
            eval: EvalOptions::default(),
            stop_after: None,
            base_model: base_model.to_owned(),
        }
    }
}

/// Loads, trains, and returns the outcome; shared with `run`.
pub async fn finetune(
    model_id: &str,
    train: QaDataset,
    val: QaDataset,
    output: PathBuf,
    training: &TrainingArgs,
    runtime: &RuntimeArgs,
    storage: &StorageArgs,
    resume: bool,
    overwrite: bool,
) -> Result<TrainOutcome> {
    let mut model = runtime.load(model_id, &storage.options()).await.with_context(|| format!("loading {model_id}"))?;
    // The card names the base by its hub id or name, never by a local path.
    let config = training.config(&embedfleet_report::card::describe_base_model(model_id));
    let val = PreparedDataset::new(&val)?;
    let progress = crate::progress::for_terminal();
    let outcome = tokio::task::spawn_blocking(move || {
        embedfleet_trainer::train(&mut model, &train, Some(&val), &config, &output, resume, overwrite, progress.as_ref())
    })
    .await??;
    Ok(outcome)
}

pub fn print_outcome(outcome: &TrainOutcome, metric: &str, output: &std::path::Path) {
    println!("trained {} steps in {:.1} s ({:.1} pairs/s, {} pairs per epoch)", outcome.steps, outcome.seconds, outcome.pairs_per_second, outcome.pairs_per_epoch);
    if let (Some(base), Some(best)) = (outcome.base_value, outcome.best_value) {
        match outcome.best_step {
            Some(step) => println!("best {metric} {best:.4} at step {step} (base model {base:.4}, {:+.4})", best - base),
            None => println!("no checkpoint beat the base model ({metric} {base:.4}); {} holds the base model", output.display()),
        }
    }
    println!("model, training_log.csv, training.svg and eval/ in {}", output.display());
}

pub async fn run(args: FinetuneArgs) -> Result<ExitCode> {
    let train = QaDataset::load(&args.train_dataset)?;
    let val = QaDataset::load(&args.val_dataset)?;
    let outcome = finetune(
        &args.model_id,
        train,
        val,
        args.output_path.clone(),
        &args.training,
        &args.runtime,
        &args.storage,
        args.resume,
        args.overwrite,
    )
    .await?;
    print_outcome(&outcome, &args.training.metric, &args.output_path);
    // The headline of the training's own evaluations: the base, and the kept checkpoint.
    let location = args.output_path.display().to_string();
    let base = outcome.evals.iter().find(|e| e.step == 0).map(|e| e.to_result("base", &args.model_id));
    let best = outcome.best_step.and_then(|s| outcome.evals.iter().find(|e| e.step == s as i64)).map(|e| e.to_result("finetuned", &location));
    let report = embedfleet_report::RunReport {
        models: base.into_iter().chain(best).collect(),
        files: vec![("model".into(), location)],
        ..Default::default()
    };
    println!("\n== summary\n{}", embedfleet_report::summary::summary_block(&report));
    Ok(ExitCode::SUCCESS)
}
