//! `embedfleet mine`: hard negatives for each training question, behind the false-negative
//! guard, written to `{train}_negatives.json` beside the dataset (and, on request, as the JSON
//! Lines other trainers read). `finetune` and `run` call the same [`mine_negatives`].

use super::storage::StorageArgs;
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use embedfleet_core::config::{InverseCloze, MiningConfig, QueryPrompt, TrainConfig, defaults};
use embedfleet_core::{ExportFormat, HardNegatives, QaDataset};
use embedfleet_model::RuntimeArgs;
use embedfleet_trainer::mining::{MineSettings, MiningReport, mine};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Debug, Clone, Args)]
pub struct MineArgs {
    /// The training set to mine for (its corpus is the candidate pool).
    #[arg(long, env = "EMBEDFLEET_TRAIN_DATASET", alias = "train_dataset", default_value = "./data/train_dataset.json")]
    pub train_dataset: PathBuf,
    /// The base model; it ranks the candidates unless --mining-model names another.
    #[arg(long, env = "EMBEDFLEET_MODEL_ID", alias = "model_id", default_value = defaults::MODEL_ID)]
    pub model_id: String,
    #[command(flatten)]
    pub mining: MiningConfig,
    /// Where the negatives go (default: `{train}_negatives.json` beside the training set).
    #[arg(long, env = "EMBEDFLEET_OUTPUT")]
    pub output: Option<PathBuf>,
    /// Also write (question, positive, negatives) as JSON Lines for sentence-transformers or FlagEmbedding.
    #[arg(long, env = "EMBEDFLEET_EXPORT_JSONL", alias = "export_jsonl")]
    pub export_jsonl: Option<PathBuf>,
    /// triplet: one {query, pos, neg} line per negative; n-tuple: {query, pos, neg_1..neg_N};
    /// flag: FlagEmbedding's {query, pos: [..], neg: [..]}.
    #[arg(long, env = "EMBEDFLEET_EXPORT_FORMAT", alias = "export_format", value_enum, default_value_t = ExportFormat::Triplet)]
    pub export_format: ExportFormat,
    /// Texts per encoding batch.
    #[arg(long, env = "EMBEDFLEET_BATCH_SIZE", alias = "batch_size", default_value_t = 32)]
    pub batch_size: usize,
    // The mining model's prompts.
    #[command(flatten)]
    pub prompt: QueryPrompt,
    // Passages are embedded as training will see them, so the guard's margin is against the
    // positive the loss uses.
    #[command(flatten)]
    pub cloze: InverseCloze,
    /// Replace a negatives file that is already there.
    #[arg(long, env = "EMBEDFLEET_OVERWRITE")]
    pub overwrite: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// Loads the mining model (`--mining-model`, else `base_model`) and mines negatives for each
/// question of `train` as `settings` say.
pub async fn mine_negatives(
    base_model: &str,
    train: &QaDataset,
    mining: &MiningConfig,
    settings: MineSettings,
    batch_size: usize,
    runtime: &RuntimeArgs,
    storage: &StorageArgs,
) -> Result<(HardNegatives, MiningReport)> {
    let model_id = mining.mining_model.as_deref().unwrap_or(base_model);
    let model = runtime.load(model_id, &storage.options()).await.with_context(|| format!("loading the mining model {model_id}"))?;
    let train = train.clone();
    let mined = tokio::task::spawn_blocking(move || mine(&model, &train, &settings, batch_size)).await??;
    Ok(mined)
}

pub fn print_report(report: &MiningReport, asked: usize, path: &Path, seconds: f64) {
    println!("{}", report.summary(asked));
    println!(
        "mined in {seconds:.1} s (embedding {:.1} s, ranking {:.1} s); negatives in {}",
        report.embed_seconds,
        report.search_seconds,
        path.display()
    );
}

/// The negatives `finetune` trains with: the file beside the training set when there is one
/// (mined earlier, perhaps with another model), else mined now and written there.
pub async fn negatives_for_training(
    base_model: &str,
    train_path: &Path,
    train: &QaDataset,
    training: &TrainConfig,
    runtime: &RuntimeArgs,
    storage: &StorageArgs,
) -> Result<Option<HardNegatives>> {
    let Some(count) = training.mining.hard_negatives else { return Ok(None) };
    let path = HardNegatives::path_beside(train_path);
    if path.exists() {
        let negatives = HardNegatives::load(&path)?;
        negatives.validate(train, &path.display().to_string())?;
        let total: usize = negatives.0.values().map(|v| v.len().min(count)).sum();
        println!("using {total} hard negatives from {} (delete it to mine again)", path.display());
        return Ok(Some(negatives));
    }
    println!("== mine");
    let started = Instant::now();
    let settings = MineSettings::for_training(training, count);
    let (negatives, report) = mine_negatives(base_model, train, &training.mining, settings, 32, runtime, storage).await?;
    negatives.save(&path)?;
    print_report(&report, count, &path, started.elapsed().as_secs_f64());
    Ok(Some(negatives))
}

pub async fn run(args: MineArgs) -> Result<ExitCode> {
    let count = args.mining.hard_negatives.unwrap_or(defaults::MINE_NEGATIVES);
    args.mining.validate()?;
    args.mining.check_room(count)?;
    if args.batch_size == 0 {
        bail!("--batch-size 0: must be at least 1");
    }
    if !args.train_dataset.exists() {
        bail!("--train-dataset {}: does not exist; run embedfleet generate first", args.train_dataset.display());
    }
    let train = QaDataset::load(&args.train_dataset)?;
    let output = args.output.clone().unwrap_or_else(|| HardNegatives::path_beside(&args.train_dataset));
    if output.exists() && !args.overwrite {
        bail!("{} already exists; pass --overwrite to replace it, or choose another --output", output.display());
    }
    let started = Instant::now();
    let settings = MineSettings {
        inverse_cloze: args.cloze.inverse_cloze,
        ..MineSettings::new(&args.mining, count).with_query_prompt(args.prompt.setting())
    };
    let (negatives, report) =
        mine_negatives(&args.model_id, &train, &args.mining, settings, args.batch_size, &args.runtime, &args.storage).await?;
    negatives.save(&output)?;
    print_report(&report, count, &output, started.elapsed().as_secs_f64());
    if let Some(path) = &args.export_jsonl {
        let (text, lines) = negatives.export_jsonl(&train, args.export_format, count);
        let tmp = path.with_extension("partial");
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        let format = args.export_format.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default();
        println!("{lines} lines of {format} JSON Lines in {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
