//! `embedfleet run`: generate, fine-tune and evaluate in one process, through the same stage
//! functions as the separate commands and the fleet's workers.

use super::evaluate::compare_models;
use super::finetune::{finetune, print_outcome};
use super::generate::{build_dataset, print_llm_stats, print_summary, report_failures};
use super::mine::{mine_negatives, print_report};
use super::queries::{QueryLogEvaluation, RoundTripArgs, evaluate_query_log, load_query_log};
use super::report;
use super::storage::StorageArgs;
use anyhow::{Context, Result};
use clap::Args;
use embedfleet_core::dataset::read_dataset;
use embedfleet_core::{DatasetConfig, TrainConfig};
use embedfleet_core::{DatasetSplit, HardNegatives};
use embedfleet_evaluator::{EvalOptions, PreparedDataset};
use embedfleet_generator::LlmArgs;
use embedfleet_model::ModelCard;
use embedfleet_model::RuntimeArgs;
use embedfleet_report::card::describe_base_model;
use embedfleet_report::write::rewrite_card;
use embedfleet_report::{ModelResult, QuestionResult, RunReport};
use embedfleet_trainer::TrainOutcome;
use embedfleet_trainer::mining::MineSettings;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The corpus: JSON, JSON Lines, or a directory of .txt/.md/.html files.
    #[arg(long, env = "EMBEDFLEET_INPUT")]
    pub input: PathBuf,
    /// Everything goes here: data/, model/, results/.
    #[arg(long, env = "EMBEDFLEET_OUTPUT_DIR", alias = "output_dir", default_value = "out")]
    pub output_dir: PathBuf,
    /// The base model to fine-tune: folder, s3:// prefix or hub id.
    #[arg(long, env = "EMBEDFLEET_MODEL_ID", alias = "model_id", default_value = "BAAI/bge-small-en")]
    pub model_id: String,
    #[command(flatten)]
    pub dataset: DatasetConfig,
    #[command(flatten)]
    pub llm: LlmArgs,
    #[command(flatten)]
    pub training: TrainConfig,
    #[command(flatten)]
    pub round_trip: RoundTripArgs,
    /// Also evaluate on a query log asked against --input (CSV or JSON Lines: `query` and one of
    /// url, doc_id, answer, chunk_id), into results/queries/, next to the validation set.
    #[arg(long, env = "EMBEDFLEET_QUERIES")]
    pub queries: Option<PathBuf>,
    /// Replace earlier results in the output directory.
    #[arg(long, env = "EMBEDFLEET_OVERWRITE")]
    pub overwrite: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
}

pub async fn run(args: RunArgs) -> Result<ExitCode> {
    let started = Instant::now();
    // Every setting is checked before the first stage starts, not when its stage comes.
    args.dataset.validate()?;
    args.training.validate()?;
    if let Some(queries) = &args.queries {
        embedfleet_evaluator::query_log::read_query_log(queries)?;
        if let Some(examples) = &args.llm.example_queries {
            super::queries::refuse_shared_queries(examples, queries)?;
        }
    }
    let progress = crate::progress::for_terminal();
    println!("== generate");
    let data_dir = args.output_dir.join("data");
    let data_location = data_dir.to_str().context("output directory is not UTF-8")?;
    let open = || Ok(args.storage.open(data_location)?);
    let (built, store) = build_dataset(&args.input, &args.dataset, &args.llm, open, args.overwrite, progress).await?;
    print_summary(&built.summary, &store.describe(""), started.elapsed().as_secs_f64());
    // Training holds its pairs in memory; the dataset is read back from the files just written.
    let mut train = read_dataset(&store, "", DatasetSplit::Train).await?;
    let val = read_dataset(&store, "", DatasetSplit::Val).await?;
    if let Some(stats) = &built.llm_stats {
        print_llm_stats(stats);
    }

    let (kept, round_trip) =
        args.round_trip.filter(train, &args.model_id, args.training.prompt.setting(), &args.runtime, &args.storage).await?;
    train = kept;
    if let Some(report) = &round_trip {
        store.put("round_trip.json", serde_json::to_vec_pretty(report)?).await?;
    }

    let negatives = match args.training.mining.hard_negatives {
        None => None,
        Some(count) => {
            println!("\n== mine");
            let mined_at = Instant::now();
            let settings = MineSettings::for_training(&args.training, count);
            let (negatives, report) =
                mine_negatives(&args.model_id, &train, &args.training.mining, settings, 32, &args.runtime, &args.storage).await?;
            let name = HardNegatives::file_name(DatasetSplit::Train);
            store.put(&name, negatives.to_json()).await?;
            print_report(&report, count, std::path::Path::new(&store.describe(&name)), mined_at.elapsed().as_secs_f64());
            Some(negatives)
        }
    };

    println!("\n== finetune");
    let model_dir = args.output_dir.join("model");
    let outcome = finetune(
        &args.model_id,
        train,
        val.clone(),
        model_dir.clone(),
        &args.training,
        &args.runtime,
        &args.storage,
        false,
        args.overwrite,
        negatives,
    )
    .await?;
    print_outcome(&outcome, &args.training.metric, &model_dir);

    println!("\n== evaluate");
    // Scored as training's validation scored it (with --inverse-cloze, questions cut out of their passages).
    let validation = args.training.training_view(&val).into_owned();
    let data = PreparedDataset::new(&validation)?;
    let models = vec![("base".to_owned(), args.model_id.clone()), ("finetuned".to_owned(), model_dir.display().to_string())];
    let results_dir = args.output_dir.join("results");
    let comparison = compare_models(
        &models,
        &data,
        &EvalOptions::for_training(&args.training),
        args.training.prompt.setting(),
        &args.runtime,
        &args.storage,
        &results_dir,
    )
    .await?;

    let mut results = report::model_results(&comparison, &models);
    let selection = selection_note(&outcome);
    if let Some(finetuned) = results.last_mut() {
        finetuned.selection = selection.clone();
    }
    let mut dataset = report::dataset_facts(&built, &args.dataset, &args.llm);
    if let Some(rt) = &round_trip {
        dataset.dropped.insert(format!("own chunk not in the top {} (round trip)", rt.top_k), rt.dropped as u64);
        dataset.train_questions = rt.kept;
        dataset.round_trip_examples = rt.examples.clone();
    }
    let base_model = describe_base_model(&args.model_id);
    // The card gets the final evaluation, every metric base against fine-tuned.
    let card = ModelCard {
        base_model: base_model.clone(),
        training_data: format!("{} (question, passage) pairs", outcome.pairs_per_epoch),
        metrics: Vec::new(),
        // Per-question scores stay (the verdict's interval needs them); the passages do not.
        evaluation: results
            .iter()
            .map(|m| ModelResult {
                questions: m.questions.iter().map(|q| QuestionResult { top: Vec::new(), ..q.clone() }).collect(),
                ..m.clone()
            })
            .collect(),
        evaluation_size: Some((data.query_ids.len(), data.corpus_ids.len())),
        training: Some(outcome.facts.clone()),
        dataset: Some(dataset.clone()),
        location: model_dir.display().to_string(),
        checksums: Vec::new(),
    };
    rewrite_card(&model_dir, &card).with_context(|| format!("writing the model card in {}", model_dir.display()))?;
    let report = RunReport {
        title: format!("{base_model} fine-tuned on {}", args.input.display()),
        models: results,
        validation,
        dataset: Some(dataset),
        training: Some(outcome.facts.clone()),
        curve: Some(outcome.curve.clone()),
        files: vec![("model".into(), model_dir.display().to_string()), ("results".into(), results_dir.display().to_string())],
        // The dataset facts say what the questions are.
        spans_found: false,
        query_log: None,
    };
    report::finish(&results_dir, report)?;
    if let Some(queries) = &args.queries {
        println!("\n== evaluate on the query log");
        let log = load_query_log(queries, &args.input, args.dataset.chunk_config(), args.dataset.text_field.clone())?;
        let title = format!("{base_model} fine-tuned on {}, on the query log {}", args.input.display(), queries.display());
        let options = EvalOptions { matryoshka_dims: Vec::new(), ..EvalOptions::for_training(&args.training) };
        let eval = QueryLogEvaluation {
            models: &models,
            options: &options,
            query_prompt: args.training.prompt.setting(),
            runtime: &args.runtime,
            storage: &args.storage,
        };
        evaluate_query_log(log, title, eval, &results_dir.join("queries")).await?;
    }
    println!("embedfleet run finished in {:.1} s", started.elapsed().as_secs_f64());
    report_failures(&built.failures)
}

/// Why the kept model is what it is, for the verdict's change check.
fn selection_note(outcome: &TrainOutcome) -> Option<String> {
    if let Some(merge) = &outcome.merge {
        return Some(format!("merged with the base: {}", merge.reason));
    }
    match outcome.best_step {
        None => Some("no checkpoint beat the base on validation, so the output holds the base's weights".to_owned()),
        Some(step) => Some(format!("the checkpoint of step {step}, the best on validation")),
    }
}
