//! `embedfleet finetune`: MultipleNegativesRankingLoss on (question, chunk) pairs, evaluating on the
//! validation set as it goes and keeping the best checkpoint.

use super::storage::StorageArgs;
use anyhow::{Context, Result};
use clap::Args;
use embedfleet_core::{HardNegatives, MergeWithBase, QaDataset, TrainConfig};
use embedfleet_evaluator::{EvalOptions, PreparedDataset};
use embedfleet_model::RuntimeArgs;
use embedfleet_report::ModelResult;
use embedfleet_report::write::rewrite_card;
use embedfleet_trainer::merge::merge_saved_model;
use embedfleet_trainer::train::model_card;
use embedfleet_trainer::{TrainJob, TrainOptions, TrainOutcome};
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
    pub training: TrainConfig,
    #[command(flatten)]
    pub round_trip: super::queries::RoundTripArgs,
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

/// Loads, trains, and returns the outcome; shared with `run`.
#[allow(clippy::too_many_arguments)]
pub async fn finetune(
    model_id: &str,
    train: QaDataset,
    val: QaDataset,
    output: PathBuf,
    training: &TrainConfig,
    runtime: &RuntimeArgs,
    storage: &StorageArgs,
    resume: bool,
    overwrite: bool,
    negatives: Option<HardNegatives>,
) -> Result<TrainOutcome> {
    // Bad settings are refused before the model is loaded.
    training.validate()?;
    let mut model = runtime.load(model_id, &storage.options()).await.with_context(|| format!("loading {model_id}"))?;
    // The card names the base by its hub id or name, never by a local path.
    let mut job = TrainJob::new(training.clone(), &embedfleet_report::card::describe_base_model(model_id));
    if let Some(negatives) = negatives {
        job = job.with_negatives(negatives);
    }
    let val = PreparedDataset::new(&training.training_view(&val))?;
    let progress = crate::progress::for_terminal();
    let (mut outcome, job, val, output) = tokio::task::spawn_blocking(move || {
        let outcome = embedfleet_trainer::train(
            &mut model,
            &train,
            Some(&val),
            &job,
            &output,
            TrainOptions { resume, overwrite, progress: progress.as_ref() },
        )?;
        Ok::<_, anyhow::Error>((outcome, job, val, output))
    })
    .await??;
    if training.merge_with_base != MergeWithBase::Off {
        let base =
            runtime.load(model_id, &storage.options()).await.with_context(|| format!("loading the base {model_id} to merge with"))?;
        let load = runtime.load_options()?;
        let options = EvalOptions::for_training(training);
        let (setting, metric) = (training.merge_with_base, training.metric);
        let (merged, val) = tokio::task::spawn_blocking(move || {
            let merged = merge_saved_model(&output, &base, setting, &val, &options, &metric, load);
            (merged.map(|m| (m, output)), val)
        })
        .await?;
        let (merge, output) = merged?;
        if let Some(merge) = merge {
            println!("merge with the base: {}", merge.reason);
            outcome.facts.merge = Some(merge.reason.clone());
            let mut card =
                model_card(&job, outcome.pairs_per_epoch, &output, Some(&val), &outcome.evals, outcome.best_step, outcome.facts.clone());
            let location = output.display().to_string();
            card.evaluation.truncate(1);
            card.evaluation.push(merge.evaluation.to_result("finetuned", &location));
            rewrite_card(&output, &card).with_context(|| format!("writing the model card in {}", output.display()))?;
            outcome.merge = Some(merge);
        }
    }
    Ok(outcome)
}

pub fn print_outcome(outcome: &TrainOutcome, metric: &embedfleet_core::Metric, output: &std::path::Path) {
    // Two significant digits at least: a 0.6B model on a CPU trains well under one pair a second.
    let rate = outcome.pairs_per_second;
    let digits = if rate > 0.0 && rate < 1.0 { (1.0 - rate.log10().floor()) as usize } else { 1 };
    println!(
        "trained {} steps in {:.1} s ({rate:.digits$} pairs/s, {} pairs per epoch)",
        outcome.steps, outcome.seconds, outcome.pairs_per_epoch
    );
    if let (Some(base), Some(best)) = (outcome.base_value, outcome.best_value) {
        match outcome.best_step {
            Some(step) => println!("best {metric} {best:.4} at step {step} (base model {base:.4}, {:+.4})", best - base),
            None => println!("no checkpoint beat the base model ({metric} {base:.4}); {} holds the base model", output.display()),
        }
    }
    println!("model, training_log.csv, training.svg and eval/ in {}", output.display());
}

pub async fn run(args: FinetuneArgs) -> Result<ExitCode> {
    args.training.validate()?;
    let train = QaDataset::load(&args.train_dataset)?;
    let val = QaDataset::load(&args.val_dataset)?;
    let (train, _) = args.round_trip.filter(train, &args.model_id, args.training.prompt.setting(), &args.runtime, &args.storage).await?;
    let negatives =
        super::mine::negatives_for_training(&args.model_id, &args.train_dataset, &train, &args.training, &args.runtime, &args.storage)
            .await?;
    if negatives.is_some() {
        println!("\n== finetune");
    }
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
        negatives,
    )
    .await?;
    print_outcome(&outcome, &args.training.metric, &args.output_path);
    // The headline of the training's own evaluations: the base, and the kept checkpoint.
    let location = args.output_path.display().to_string();
    let base = outcome.evals.iter().find(|e| e.step == 0).map(|e| e.to_result("base", &args.model_id));
    let best = match &outcome.merge {
        Some(merge) => Some(ModelResult { selection: Some(merge.reason.clone()), ..merge.evaluation.to_result("finetuned", &location) }),
        None => {
            outcome.best_step.and_then(|s| outcome.evals.iter().find(|e| e.step == s as i64)).map(|e| e.to_result("finetuned", &location))
        }
    };
    let report = embedfleet_report::RunReport {
        models: base.into_iter().chain(best).collect(),
        files: vec![("model".into(), location)],
        ..Default::default()
    };
    println!("\n== summary\n{}", embedfleet_report::summary::summary_block(&report));
    Ok(ExitCode::SUCCESS)
}
