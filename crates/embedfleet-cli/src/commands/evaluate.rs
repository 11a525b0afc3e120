//! `embedfleet evaluate`: the base and the fine-tuned model (or any list) on the validation set,
//! side by side, with the reference's CSV per model, report.json, a chart and per-query ranks.

use super::queries::{QueryLogEvaluation, evaluate_query_log, load_query_log};
use super::storage::StorageArgs;
use anyhow::{Context, Result, bail};
use clap::Args;
use embedfleet_core::inverse_cloze::cut_questions_from_positives;
use embedfleet_core::{InverseCloze, QaDataset, QueryPrompt};
use embedfleet_evaluator::csv::{append_csv, dim_csv_name};
use embedfleet_evaluator::metrics::MetricsConfig;
use embedfleet_evaluator::rank::ScoreFunction;
use embedfleet_evaluator::report::{dims_table, doc_hit_rate_table, hit_rate_table, metric_table, write_report};
use embedfleet_evaluator::{Comparison, EvalOptions, PreparedDataset, evaluate_model_with_progress};
use embedfleet_model::RuntimeArgs;
use embedfleet_report::RunReport;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Clone, Args)]
pub struct EvaluateArgs {
    /// The model before fine-tuning: folder, s3:// prefix or hub id.
    #[arg(long, env = "EMBEDFLEET_BASE_MODEL", alias = "base_model", default_value = "BAAI/bge-small-en")]
    pub base_model: String,
    /// The fine-tuned model folder.
    #[arg(long, env = "EMBEDFLEET_FINETUNED_MODEL", alias = "finetuned_model", default_value = "exp_finetune")]
    pub finetuned_model: String,
    /// Compare these instead of base and fine-tuned: NAME=MODEL or MODEL, repeatable.
    #[arg(long = "model", env = "EMBEDFLEET_MODELS", value_delimiter = ',')]
    pub models: Vec<String>,
    /// Evaluate on a query log instead of the validation set: CSV or JSON Lines, with `query` and one
    /// of url, doc_id, answer, chunk_id (what answered it). Needs --corpus.
    #[arg(long, env = "EMBEDFLEET_QUERIES", requires = "corpus")]
    pub queries: Option<PathBuf>,
    /// The corpus the logged queries were asked against: anything `generate --input` reads, chunked
    /// with --chunk-size and --chunk-overlap.
    #[arg(long, env = "EMBEDFLEET_CORPUS", requires = "queries")]
    pub corpus: Option<PathBuf>,
    /// Characters per chunk of --corpus (as `generate` chunked it).
    #[arg(long, env = "EMBEDFLEET_CHUNK_SIZE", alias = "chunk_size", default_value_t = embedfleet_core::config::defaults::CHUNK_SIZE)]
    pub chunk_size: usize,
    /// Characters shared by consecutive chunks of --corpus.
    #[arg(long, env = "EMBEDFLEET_CHUNK_OVERLAP", alias = "chunk_overlap", default_value_t = embedfleet_core::config::defaults::CHUNK_OVERLAP)]
    pub chunk_overlap: usize,
    /// The field holding the text in --corpus's JSON records (default: content, text, page_content or body).
    #[arg(long, env = "EMBEDFLEET_TEXT_FIELD", alias = "text_field")]
    pub text_field: Option<String>,
    /// The validation set (`val_dataset.json`).
    #[arg(long, env = "EMBEDFLEET_VAL_DATASET", alias = "val_dataset", default_value = "data/val_dataset.json")]
    pub val_dataset: PathBuf,
    /// The k of the hit-rate table.
    #[arg(long, env = "EMBEDFLEET_TOP_K", alias = "top_k", default_value_t = 5)]
    pub top_k: usize,
    /// Where CSVs, report.json, metrics.svg and per_query.jsonl go.
    #[arg(long, env = "EMBEDFLEET_RESULTS_DIR", alias = "results_dir", default_value = "results")]
    pub results_dir: PathBuf,
    /// Score functions, in CSV column order.
    #[arg(long, env = "EMBEDFLEET_SCORE_FUNCTIONS", value_delimiter = ',', default_value = "cosine")]
    pub score_functions: Vec<ScoreFunction>,
    // Each model's own `query` prompt unless the setting says otherwise.
    #[command(flatten)]
    pub prompt: QueryPrompt,
    #[arg(long, env = "EMBEDFLEET_BATCH_SIZE", alias = "batch_size", default_value_t = 32)]
    pub batch_size: usize,
    /// Score the embeddings cut to their first D dimensions (sentence-transformers' truncate_dim),
    /// for a model trained with --matryoshka-dims.
    #[arg(long, env = "EMBEDFLEET_TRUNCATE_DIM", alias = "truncate_dim")]
    pub truncate_dim: Option<usize>,
    /// Also score at each of these dimensions, from the same encoding: a table, and one CSV per
    /// model and dimension (`<model>_dim_<D>`).
    #[arg(long, env = "EMBEDFLEET_MATRYOSHKA_DIMS", alias = "matryoshka_dims", value_delimiter = ',', num_args = 1..)]
    pub matryoshka_dims: Vec<usize>,
    // Scored as training's validation scored it: spans cut out of their passages by default.
    #[command(flatten)]
    pub cloze: InverseCloze,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
}

fn named_models(args: &EvaluateArgs) -> Vec<(String, String)> {
    if args.models.is_empty() {
        return vec![("base".into(), args.base_model.clone()), ("finetuned".into(), args.finetuned_model.clone())];
    }
    args.models
        .iter()
        .map(|m| match m.split_once('=') {
            Some((name, spec)) => (name.to_owned(), spec.to_owned()),
            None => (Path::new(m).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or(m.clone()), m.clone()),
        })
        .collect()
}

/// Fails early, before minutes of encoding, when results cannot be written.
fn check_writable(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("results directory {} cannot be created", dir.display()))?;
    let probe = dir.join(".embedfleet-write-probe");
    std::fs::write(&probe, b"").with_context(|| format!("results directory {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

pub async fn run(args: EvaluateArgs) -> Result<ExitCode> {
    if let (Some(queries), Some(corpus)) = (&args.queries, &args.corpus) {
        return run_on_query_log(&args, queries, corpus).await;
    }
    let loaded = QaDataset::load(&args.val_dataset)?;
    // Spans are found in their passages whether or not they are then cut out.
    let (cut, cuts) = cut_questions_from_positives(&loaded);
    let spans_found = cuts.questions_are_spans();
    let dataset = if args.cloze.inverse_cloze && cuts.cut > 0 {
        println!("{cuts}");
        cut
    } else {
        loaded
    };
    let data = PreparedDataset::new(&dataset)?;
    let models = named_models(&args);
    if models.is_empty() {
        bail!("no model to evaluate");
    }
    let options = eval_options(&args);
    let comparison =
        compare_models(&models, &data, &options, args.prompt.setting(), &args.runtime, &args.storage, &args.results_dir).await?;
    let report = RunReport {
        title: format!("{} on {}", models.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(" vs "), args.val_dataset.display()),
        models: super::report::model_results(&comparison, &models),
        validation: dataset,
        files: vec![("results".into(), args.results_dir.display().to_string())],
        spans_found,
        ..Default::default()
    };
    super::report::finish(&args.results_dir, report)?;
    Ok(ExitCode::SUCCESS)
}

/// The scoring the flags ask for, the same on a validation set and on a query log.
fn eval_options(args: &EvaluateArgs) -> EvalOptions {
    EvalOptions {
        metrics: MetricsConfig::default(),
        functions: args.score_functions.clone(),
        hit_rate_k: args.top_k,
        batch_size: args.batch_size,
        truncate_dim: args.truncate_dim,
        matryoshka_dims: args.matryoshka_dims.clone(),
        ..Default::default()
    }
}

/// `evaluate --queries LOG --corpus CORPUS`: the models on the questions people asked.
async fn run_on_query_log(args: &EvaluateArgs, queries: &Path, corpus: &Path) -> Result<ExitCode> {
    let chunking = embedfleet_core::ChunkConfig { size: args.chunk_size, overlap: args.chunk_overlap };
    let log = load_query_log(queries, corpus, chunking, args.text_field.clone())?;
    let models = named_models(args);
    let options = eval_options(args);
    let title =
        format!("{} on the query log {}", models.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(" vs "), queries.display());
    let eval = QueryLogEvaluation {
        models: &models,
        options: &options,
        query_prompt: args.prompt.setting(),
        runtime: &args.runtime,
        storage: &args.storage,
    };
    evaluate_query_log(log, title, eval, &args.results_dir).await?;
    Ok(ExitCode::SUCCESS)
}

/// Evaluates each (name, model) on `data`, writes the CSVs, `report.json`, `per_query.jsonl` and
/// `metrics.svg` to `results_dir`, and prints the full tables. Shared with `run`, which, like
/// `evaluate`, then writes `report.html` and ends with the summary.
pub async fn compare_models(
    models: &[(String, String)],
    data: &PreparedDataset,
    options: &EvalOptions,
    query_prompt: Option<&str>,
    runtime: &RuntimeArgs,
    storage: &StorageArgs,
    results_dir: &Path,
) -> Result<Comparison> {
    check_writable(results_dir)?;
    let progress = crate::progress::for_terminal();
    let mut comparison = Comparison::new();
    // Counted in texts encoded, so the rate and the ETA mean something.
    let per_model = (data.queries.len() + data.corpus.len()) as u64;
    progress.start("evaluate", Some(per_model * models.len() as u64));
    for (name, spec) in models {
        progress.message(name);
        let model = runtime.load(spec, &storage.options()).await.with_context(|| format!("loading model {name} ({spec})"))?;
        let mut opts = options.clone();
        // Resolved against each model: its own `query` prompt unless the setting says otherwise.
        opts.query_prompt = query_prompt.map(str::to_owned);
        let data = data.clone();
        let bar = progress.clone();
        let evaluation =
            tokio::task::spawn_blocking(move || evaluate_model_with_progress(&model, &data, &opts, &mut |n| bar.advance(n as u64)))
                .await??;
        comparison.insert(name.clone(), evaluation);
    }
    progress.finish();
    // Everything is computed before the first write, so a failure leaves no half report.
    for (name, evaluation) in &comparison {
        let csv = results_dir.join(embedfleet_evaluator::csv::csv_file_name(name));
        let _ = std::fs::remove_file(&csv);
        append_csv(results_dir, name, -1, -1, &options.metrics, &evaluation.metrics)
            .with_context(|| format!("writing the CSV for {name}"))?;
        for at in &evaluation.dims {
            let dim_name = dim_csv_name(name, at.dim);
            let _ = std::fs::remove_file(results_dir.join(embedfleet_evaluator::csv::csv_file_name(&dim_name)));
            append_csv(results_dir, &dim_name, -1, -1, &options.metrics, &at.metrics)
                .with_context(|| format!("writing the CSV for {name} at {} dimensions", at.dim))?;
        }
    }
    write_report(results_dir, &comparison).with_context(|| format!("writing the report to {}", results_dir.display()))?;

    if data.dropped_queries > 0 {
        println!("{} queries without relevant documents were skipped", data.dropped_queries);
    }
    println!("{} queries, {} corpus chunks\n", data.query_ids.len(), data.corpus_ids.len());
    println!("{}", hit_rate_table(&comparison));
    let documents = doc_hit_rate_table(&comparison);
    if !documents.is_empty() {
        println!("{documents}");
    }
    println!("{}", metric_table(&comparison));
    if let Some(d) = options.truncate_dim {
        println!("(embeddings cut to their first {d} dimensions)\n");
    }
    let dims = dims_table(&comparison);
    if !dims.is_empty() {
        println!("at each Matryoshka dimension:\n{dims}");
    }
    Ok(comparison)
}
