//! The training loop. `embedfleet finetune`, `embedfleet run` and the fleet's trainer worker all
//! call [`train`].

use crate::batching::{Negative, TrainPair, candidates, epoch_batches_with_negatives};
use crate::checkpoint::{EvalRow, LogRow, TrainState, checkpoint_dir, latest};
use crate::loss::{MnrlLoss, TrainingLoss};
use crate::optim::{AdamW, AdamWConfig, linear_schedule};
use embedfleet_core::{ClozeCuts, HardNegatives, NegativesError, Progress, QaDataset};
use embedfleet_evaluator::csv::{csv_file_name, csv_header, csv_row, dim_csv_name};
use embedfleet_evaluator::metrics::RetrievalMetrics;
use embedfleet_evaluator::rank::ScoreFunction;
use embedfleet_evaluator::{EvalOptions, PreparedDataset, evaluate_model};
use embedfleet_model::{Device, ModelCard, SentenceEncoder};
use embedfleet_report::{TrainingCurve, TrainingFacts};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::{Kind, Tensor};

pub use embedfleet_core::TrainConfig;

/// One training job: the user's settings ([`TrainConfig`], the same struct as the CLI flags and the
/// fleet's run spec) and what the caller decides around them.
#[derive(Debug, Clone)]
pub struct TrainJob {
    pub config: TrainConfig,
    /// How validation scores checkpoints; [`TrainJob::new`] makes sure it computes the metric.
    pub eval: EvalOptions,
    /// Stop after this many steps in this process (a deliberate interruption, for tests).
    pub stop_after: Option<usize>,
    /// The base model as the user named it, for the model card.
    pub base_model: String,
    /// Mined negatives of the training set (`{train}_negatives.json`); `config.mining.hard_negatives`
    /// of each question's are used. Needed when that is set.
    pub negatives: Option<Arc<HardNegatives>>,
}

impl Default for TrainJob {
    fn default() -> Self {
        Self::new(TrainConfig::default(), "")
    }
}

impl TrainJob {
    pub fn new(config: TrainConfig, base_model: &str) -> Self {
        let eval = EvalOptions::for_training(&config);
        Self { config, eval, stop_after: None, base_model: base_model.to_owned(), negatives: None }
    }

    pub fn with_negatives(mut self, negatives: HardNegatives) -> Self {
        self.negatives = Some(Arc::new(negatives));
        self
    }

    /// Hard negatives per question the loss uses; 0 for in-batch negatives only.
    pub fn hard_negatives(&self) -> usize {
        self.config.mining.hard_negatives.unwrap_or(0)
    }

    pub fn loss(&self) -> TrainingLoss {
        TrainingLoss {
            mnrl: MnrlLoss { symmetric: self.config.symmetric_loss, ..Default::default() },
            matryoshka_dims: self.config.matryoshka_dims_descending(),
        }
    }

    pub fn optim(&self) -> AdamWConfig {
        AdamWConfig { weight_decay: self.config.weight_decay, max_grad_norm: self.config.max_grad_norm, ..Default::default() }
    }
}

/// Why a hook wants training to end.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// Stop now and keep what is saved (the fleet cancelled the run).
    #[error("stopped: {0}")]
    Stop(String),
    /// Worth a retry elsewhere: the store or NATS is unreachable.
    #[error("{0}")]
    Transient(Box<dyn std::error::Error + Send + Sync>),
    #[error("{0}")]
    Fatal(Box<dyn std::error::Error + Send + Sync>),
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] embedfleet_core::ConfigError),
    #[error("training stopped at step {step}: {reason}")]
    Stopped { step: usize, reason: String },
    #[error("at step {step}: {source}")]
    Hook { step: usize, source: HookError },
    #[error("--hard-negatives {0}: no mined negatives were given to the trainer; mine them first (embedfleet mine)")]
    NoNegatives(usize),
    #[error(transparent)]
    Negatives(#[from] NegativesError),
    #[error("the training set has {pairs} pairs, fewer than one batch of {batch}; lower --batch-size or generate more questions")]
    TooFewPairs { pairs: usize, batch: usize },
    #[error("{0} already holds something that is not an embedfleet output; pass --overwrite or choose another --output-path")]
    OutputInUse(PathBuf),
    #[error("--resume: no checkpoint under {0}/checkpoints; train with --checkpoint-every N first")]
    NoCheckpoint(PathBuf),
    #[error("--resume: the checkpoint was written with other settings ({0}); resume with the same settings")]
    ResumeMismatch(String),
    #[error(
        "out of memory at step {step} ({detail}); lower --batch-size, or set --mini-batch-size (GradCache) to keep the batch and bound memory"
    )]
    OutOfMemory { step: usize, detail: String },
    #[error("training failed at step {step}: {detail}")]
    Step { step: usize, detail: String },
    #[error(transparent)]
    Model(#[from] embedfleet_model::ModelError),
    #[error(transparent)]
    Eval(#[from] embedfleet_evaluator::EvalError),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("checkpoint {path} is unreadable: {detail}")]
    BadCheckpoint { path: PathBuf, detail: String },
}

#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub steps: usize,
    pub base_value: Option<f64>,
    pub best_value: Option<f64>,
    /// None when no checkpoint beat the base model (the output holds the base).
    pub best_step: Option<usize>,
    pub pairs_per_epoch: usize,
    pub seconds: f64,
    pub pairs_per_second: f64,
    pub log: Vec<LogRow>,
    /// Every step the schedule evaluates at (0 is the base model), whether this process ran it or
    /// an earlier one it resumed from.
    pub evaluation_points: Vec<usize>,
    /// Every evaluation, the base model's (step 0) first.
    pub evals: Vec<EvalRow>,
    /// What the report and the model card say about this training.
    pub facts: TrainingFacts,
    pub curve: TrainingCurve,
    /// The merge with the base after training (`--merge-with-base`), when one was asked for.
    pub merge: Option<crate::merge::MergeOutcome>,
}

impl TrainOutcome {
    pub fn improved(&self) -> bool {
        self.best_step.is_some()
    }
}

/// Marker that says a folder is embedfleet's output, so `--overwrite` is not needed to reuse it.
const MARKER: &str = "training_log.csv";

/// Where the fleet's trainer worker plugs in: it uploads checkpoints for the evaluators and resume
/// state to the store, and exports metrics. Local runs use [`NoHooks`].
pub trait TrainHooks {
    /// After every optimisation step; `HookError::Stop` ends training there.
    fn step_done(&mut self, _row: &LogRow) -> Result<(), HookError> {
        Ok(())
    }
    /// At each evaluation point when there is no local validation set (the fleet evaluates
    /// elsewhere): step 0 is the base model.
    fn evaluation_point(&mut self, _step: usize, _model: &SentenceEncoder) -> Result<(), HookError> {
        Ok(())
    }
    /// After a resume checkpoint was written to `dir`.
    fn checkpoint_written(&mut self, _dir: &Path, _step: usize) -> Result<(), HookError> {
        Ok(())
    }
}

pub struct NoHooks;
impl TrainHooks for NoHooks {}

/// How a training treats its output folder, and where it reports progress: the settings of
/// [`Trainer::run`] besides the model and the data.
#[derive(Clone, Copy)]
pub struct TrainOptions<'a> {
    /// Continue from the latest resume checkpoint in the output folder.
    pub resume: bool,
    /// Start afresh in a folder that holds another training.
    pub overwrite: bool,
    pub progress: &'a dyn Progress,
}

impl Default for TrainOptions<'_> {
    fn default() -> Self {
        Self { resume: false, overwrite: false, progress: &embedfleet_core::progress::NoProgress }
    }
}

/// What must not change across a resume: a checkpoint continues only the training that wrote it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
struct Fingerprint {
    pairs: usize,
    batch: usize,
    epochs: usize,
    seed: u64,
    lr: f64,
    mini: Option<usize>,
    /// Negatives per question and in all; None without hard negatives.
    negatives: Option<(usize, usize)>,
    inverse_cloze: bool,
    matryoshka: Vec<usize>,
    query_prompt: Option<String>,
}

impl Fingerprint {
    /// As stored in a checkpoint's state.
    fn encoded(&self) -> String {
        serde_json::to_string(self).expect("plain data serializes")
    }

    /// The text checkpoints written before the fingerprint was a struct hold, so they still resume.
    fn legacy(&self) -> String {
        let mut s = format!(
            "pairs={} batch={} epochs={} seed={} lr={} mini={:?}",
            self.pairs, self.batch, self.epochs, self.seed, self.lr, self.mini
        );
        if let Some((per_question, all)) = self.negatives {
            s.push_str(&format!(" negatives={per_question}/{all}"));
        }
        if self.inverse_cloze {
            s.push_str(" inverse_cloze");
        }
        if !self.matryoshka.is_empty() {
            s.push_str(&format!(" matryoshka={:?}", self.matryoshka));
        }
        if let Some(prompt) = &self.query_prompt {
            s.push_str(&format!(" query_prompt={prompt:?}"));
        }
        s
    }

    fn matches(&self, stored: &str) -> bool {
        stored == self.encoded() || stored == self.legacy()
    }
}

/// Fine-tunes a model in place; the best model by `config.metric` on the validation set is saved
/// to the output as a sentence-transformers folder, with `training_log.csv`, the evaluation CSV
/// (`eval/`) and `training.svg`. [`Trainer::new`] checks the settings and lays out every epoch's
/// batches; [`Trainer::run`] trains.
pub struct Trainer<'a> {
    model: &'a mut SentenceEncoder,
    val: Option<&'a PreparedDataset>,
    job: &'a TrainJob,
    output: &'a Path,
    pairs: Vec<TrainPair>,
    negatives: Vec<Vec<Negative>>,
    cloze_cuts: ClozeCuts,
    learning_rate: f64,
    /// Every epoch's batches of pair indices, laid out up front so a resume finds its place.
    batches_per_epoch: Vec<Vec<Vec<usize>>>,
    total_steps: usize,
    warmup: usize,
    query_prompt: Option<String>,
    fingerprint: Fingerprint,
}

/// Fine-tunes `model` with no hooks: a local training. See [`Trainer`].
pub fn train(
    model: &mut SentenceEncoder,
    train_set: &QaDataset,
    val: Option<&PreparedDataset>,
    job: &TrainJob,
    output: &Path,
    options: TrainOptions<'_>,
) -> Result<TrainOutcome, TrainError> {
    Trainer::new(model, train_set, val, job, output)?.run(options, &mut NoHooks)
}

impl<'a> Trainer<'a> {
    pub fn new(
        model: &'a mut SentenceEncoder,
        train_set: &QaDataset,
        val: Option<&'a PreparedDataset>,
        job: &'a TrainJob,
        output: &'a Path,
    ) -> Result<Self, TrainError> {
        let config = &job.config;
        config.validate()?;
        config.check_model_dim(model.dimension().max(0) as usize)?;
        let (pairs, negatives, cloze_cuts) = training_pairs(train_set, job)?;
        let learning_rate = config.learning_rate_for(&cloze_cuts);
        if config.learning_rate.is_none() && cloze_cuts.questions_are_spans() {
            tracing::info!(
                learning_rate,
                "most questions are spans of their passages: training at the rate for spans (pass --learning-rate to choose)"
            );
        }
        if pairs.len() < config.batch_size {
            return Err(TrainError::TooFewPairs { pairs: pairs.len(), batch: config.batch_size });
        }
        let batches_per_epoch: Vec<Vec<Vec<usize>>> =
            (0..config.epochs).map(|e| epoch_batches_with_negatives(&pairs, &negatives, config.batch_size, config.train_seed, e)).collect();
        let total_steps: usize = batches_per_epoch.iter().map(Vec::len).sum();
        let warmup = (total_steps as f64 * config.warmup_ratio).ceil() as usize;
        // The questions' prompt: the model's own `query` prompt unless --query-prompt says otherwise.
        let query_prompt = model.query_prompt(config.prompt.setting());
        let fingerprint = Fingerprint {
            pairs: pairs.len(),
            batch: config.batch_size,
            epochs: config.epochs,
            seed: config.train_seed,
            lr: learning_rate,
            mini: config.mini_batch_size,
            // Only when set, so checkpoints written before hard negatives existed still resume.
            negatives: (job.hard_negatives() > 0).then(|| (job.hard_negatives(), negatives.iter().map(Vec::len).sum())),
            inverse_cloze: config.cloze.inverse_cloze,
            matryoshka: config.matryoshka_dims_descending(),
            query_prompt: query_prompt.clone(),
        };
        Ok(Self {
            model,
            val,
            job,
            output,
            pairs,
            negatives,
            cloze_cuts,
            learning_rate,
            batches_per_epoch,
            total_steps,
            warmup,
            query_prompt,
            fingerprint,
        })
    }

    /// Trains to the end (or to `job.stop_after` steps, or until a hook stops it), evaluating and
    /// keeping the best model as it goes.
    pub fn run(mut self, options: TrainOptions<'_>, hooks: &mut dyn TrainHooks) -> Result<TrainOutcome, TrainError> {
        let output = self.output;
        if options.resume && latest(output).is_none() {
            return Err(TrainError::NoCheckpoint(output.to_owned()));
        }
        prepare_output(output, options.resume, options.overwrite)?;
        let named: Vec<(String, Tensor)> = self.model.var_store().variables().into_iter().collect();
        let mut optimizer = AdamW::new(named, self.job.optim());
        // Training time starts after the base model's evaluation.
        let mut started = Instant::now();
        let mut state = self.start(options.resume, &mut optimizer, hooks, started)?;
        started = Instant::now();
        let start_step = state.global_step;
        let progress = options.progress;
        progress.start("train", Some(self.total_steps as u64));
        progress.advance(start_step as u64);
        let stopped_early = self.train_steps(&mut state, &mut optimizer, hooks, progress, started)?;
        progress.finish();
        self.finish(state, start_step, stopped_early, started)
    }

    /// A fresh state with the base model evaluated (or handed to the hooks), or the state of the
    /// latest checkpoint when resuming.
    fn start(
        &mut self,
        resume: bool,
        optimizer: &mut AdamW,
        hooks: &mut dyn TrainHooks,
        started: Instant,
    ) -> Result<TrainState, TrainError> {
        let output = self.output;
        if resume {
            let dir = latest(output).ok_or_else(|| TrainError::NoCheckpoint(output.to_owned()))?;
            let state = load_checkpoint(self.model, optimizer, &dir)?;
            if !self.fingerprint.matches(&state.fingerprint) {
                return Err(TrainError::ResumeMismatch(state.fingerprint));
            }
            tracing::info!(step = state.global_step, checkpoint = %dir.display(), "resumed");
            return Ok(state);
        }
        let mut state = TrainState {
            global_step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            total_steps: self.total_steps,
            base_value: None,
            best_value: None,
            best_step: None,
            log: Vec::new(),
            evals: Vec::new(),
            fingerprint: self.fingerprint.encoded(),
        };
        if let Some(val) = self.val {
            // The base model is the bar to beat, and the output holds it until something beats it.
            let (value, row) = evaluate(self.model, val, self.job, 0, 0)?;
            state.base_value = Some(value);
            state.best_value = Some(value);
            state.evals.push(row);
            write_eval_csv(output, self.job, &state.evals)?;
            self.model.save(output, &self.card(&state.evals, None, self.facts(0, 0, None, started)))?;
            tracing::info!(metric = %self.job.config.metric, value, "base model evaluated");
        } else {
            hooks.evaluation_point(0, self.model).map_err(hook_err(0))?;
        }
        Ok(state)
    }

    /// The optimisation steps from `state` on; true when `job.stop_after` ended them early.
    fn train_steps(
        &mut self,
        state: &mut TrainState,
        optimizer: &mut AdamW,
        hooks: &mut dyn TrainHooks,
        progress: &dyn Progress,
        started: Instant,
    ) -> Result<bool, TrainError> {
        let (config, job, output) = (&self.job.config, self.job, self.output);
        let start_step = state.global_step;
        for epoch in state.epoch..self.batches_per_epoch.len() {
            let first = if epoch == state.epoch { state.batch_in_epoch } else { 0 };
            let epoch_len = self.batches_per_epoch[epoch].len();
            for b in first..epoch_len {
                if job.stop_after.is_some_and(|n| state.global_step - start_step >= n) {
                    return Ok(true);
                }
                let lr = self.learning_rate * linear_schedule(state.global_step, self.warmup, self.total_steps);
                // A fixed RNG stream per step makes dropout, and so a resumed run, reproducible.
                tch::manual_seed((config.train_seed as i64).wrapping_mul(1_000_003).wrapping_add(state.global_step as i64));
                let batch = &self.batches_per_epoch[epoch][b];
                let loss = run_step(self.model, &self.pairs, &self.negatives, batch, job, self.query_prompt.as_deref(), state.global_step)?;
                optimizer.step(lr);
                optimizer.zero_grad();
                state.global_step += 1;
                state.epoch = epoch;
                state.batch_in_epoch = b + 1;
                state.log.push(LogRow { step: state.global_step, epoch, loss, lr });
                hooks.step_done(state.log.last().expect("just pushed")).map_err(hook_err(state.global_step))?;
                progress.advance(1);
                progress.message(&format!("loss {loss:.4} lr {lr:.2e}"));

                let end_of_epoch = b + 1 == epoch_len;
                let eval_now = config.evaluation_steps > 0 && state.global_step.is_multiple_of(config.evaluation_steps);
                if eval_now || end_of_epoch {
                    self.evaluation_point(state, hooks, epoch, start_step, started)?;
                }
                if end_of_epoch {
                    state.epoch = epoch + 1;
                    state.batch_in_epoch = 0;
                }
                if config.checkpoint_every > 0 && state.global_step.is_multiple_of(config.checkpoint_every) {
                    save_checkpoint(self.model, optimizer, output, state)?;
                    write_log(output, &state.log)?;
                    hooks
                        .checkpoint_written(&checkpoint_dir(output, state.global_step), state.global_step)
                        .map_err(hook_err(state.global_step))?;
                }
            }
        }
        Ok(false)
    }

    /// Evaluates on the validation set and keeps a new best model, or, with none (the fleet),
    /// hands the model to the hooks.
    fn evaluation_point(
        &mut self,
        state: &mut TrainState,
        hooks: &mut dyn TrainHooks,
        epoch: usize,
        start_step: usize,
        started: Instant,
    ) -> Result<(), TrainError> {
        let Some(val) = self.val else {
            return hooks.evaluation_point(state.global_step, self.model).map_err(hook_err(state.global_step));
        };
        let (value, row) = evaluate(self.model, val, self.job, epoch as i64, state.global_step as i64)?;
        state.evals.push(row);
        write_eval_csv(self.output, self.job, &state.evals)?;
        if state.best_value.is_none_or(|best| value > best) {
            state.best_value = Some(value);
            state.best_step = Some(state.global_step);
            let so_far = self.facts(state.global_step, self.trained_pairs(start_step, state.global_step), state.best_step, started);
            self.model.save(self.output, &self.card(&state.evals, state.best_step, so_far))?;
            tracing::info!(step = state.global_step, value, "new best checkpoint");
        }
        // Per-question results are kept for the base and the best checkpoint only (the verdict's
        // interval pairs those two), so the state does not grow with every evaluation.
        let best = state.best_step.map(|s| s as i64);
        for row in state.evals.iter_mut().filter(|r| r.step != 0 && Some(r.step) != best) {
            row.questions = Vec::new();
        }
        Ok(())
    }

    /// The log, the chart and the final card, and the outcome.
    fn finish(self, state: TrainState, start_step: usize, stopped_early: bool, started: Instant) -> Result<TrainOutcome, TrainError> {
        let output = self.output;
        let final_facts = self.facts(state.global_step, self.trained_pairs(start_step, state.global_step), state.best_step, started);
        if self.val.is_none() && !stopped_early {
            self.model.save(output, &self.card(&[], None, final_facts.clone()))?;
        }
        write_log(output, &state.log)?;
        let curve = TrainingCurve {
            log: state.log.clone(),
            evaluations: state.evals.iter().map(|e| (e.step.max(0) as u64, e.value)).collect(),
            metric: self.job.config.metric.to_string(),
            best_step: state.best_step.map(|s| s as u64),
        };
        if !state.log.is_empty() {
            embedfleet_report::write::write_training_chart(&output.join("training.svg"), &curve).map_err(report_error)?;
        }
        if self.val.is_some() && !state.evals.is_empty() {
            // The card of the kept model, now with the whole training's time and speed.
            embedfleet_report::write::rewrite_card(output, &self.card(&state.evals, state.best_step, final_facts.clone()))
                .map_err(report_error)?;
        }
        Ok(TrainOutcome {
            steps: state.global_step,
            base_value: state.base_value,
            best_value: state.best_value,
            best_step: state.best_step,
            pairs_per_epoch: self.pairs.len(),
            seconds: final_facts.seconds,
            pairs_per_second: final_facts.pairs_per_second,
            log: state.log,
            evaluation_points: evaluation_points(&self.batches_per_epoch, self.job.config.evaluation_steps),
            evals: state.evals,
            facts: final_facts,
            curve,
            merge: None,
        })
    }

    /// Pairs in the steps `from..to`: steps are numbered across epochs, so the batches trained in
    /// this process are a contiguous run.
    fn trained_pairs(&self, from: usize, to: usize) -> usize {
        self.batches_per_epoch.iter().flatten().skip(from).take(to - from).map(Vec::len).sum()
    }

    /// The training's facts for the report and the card, `steps` in and timed from `started`.
    fn facts(&self, steps: usize, trained_pairs: usize, best_step: Option<usize>, started: Instant) -> TrainingFacts {
        let seconds = started.elapsed().as_secs_f64();
        training_facts(
            &FactsInput {
                job: self.job,
                model: self.model,
                query_prompt: self.query_prompt.as_deref(),
                pairs: self.pairs.len(),
                cloze_cuts: self.cloze_cuts.cut,
                learning_rate: self.learning_rate,
            },
            steps,
            seconds,
            trained_pairs as f64 / seconds.max(1e-9),
            best_step,
        )
    }

    fn card(&self, evals: &[EvalRow], best_step: Option<usize>, facts: TrainingFacts) -> ModelCard {
        model_card(self.job, self.pairs.len(), self.output, self.val, evals, best_step, facts)
    }
}

fn hook_err(step: usize) -> impl Fn(HookError) -> TrainError {
    move |e: HookError| match e {
        HookError::Stop(reason) => TrainError::Stopped { step, reason },
        source => TrainError::Hook { step, source },
    }
}

fn report_error(e: embedfleet_report::ReportError) -> TrainError {
    match e {
        embedfleet_report::ReportError::Write { path, source } => TrainError::Write { path, source },
        other => TrainError::Write { path: PathBuf::new(), source: std::io::Error::other(other.to_string()) },
    }
}

/// `cpu (4 threads)`, `cuda:0`.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

#[allow(clippy::too_many_arguments)]
/// What the facts are made from, besides how far training got.
#[derive(Clone, Copy)]
struct FactsInput<'a> {
    job: &'a TrainJob,
    model: &'a SentenceEncoder,
    query_prompt: Option<&'a str>,
    pairs: usize,
    cloze_cuts: usize,
    learning_rate: f64,
}

fn training_facts(input: &FactsInput<'_>, steps: usize, seconds: f64, pairs_per_second: f64, best_step: Option<usize>) -> TrainingFacts {
    let FactsInput { job, model, query_prompt, pairs, cloze_cuts, learning_rate } = *input;
    let config = &job.config;
    let loss_fn = job.loss();
    let mut loss = format!(
        "MultipleNegativesRankingLoss{}: cosine similarity times {}, cross-entropy against the other passages of the batch",
        if loss_fn.mnrl.symmetric { " (symmetric: questions to passages and back)" } else { "" },
        loss_fn.mnrl.scale
    );
    if job.hard_negatives() > 0 {
        let m = &config.mining;
        loss.push_str(&format!(
            " and up to {} mined hard negatives per question (ranks {}..{}, below {:.0} % of the positive's score, never from the positive's document)",
            job.hard_negatives(),
            m.range_min,
            m.range_max,
            (1.0 - m.relative_margin) * 100.0
        ));
    }
    if cloze_cuts > 0 {
        loss.push_str(&format!(
            "; {cloze_cuts} questions that were word for word in their passage were cut out of it first (inverse cloze; in validation too)"
        ));
    }
    if let Some(prompt) = query_prompt {
        loss.push_str(&format!(", every question prefixed with the model's query prompt {prompt:?} (in validation too)"));
    }
    if !loss_fn.matryoshka_dims.is_empty() {
        let dims: Vec<String> = loss_fn.matryoshka_dims.iter().map(usize::to_string).collect();
        loss = format!(
            "MatryoshkaLoss over dimensions {} (weights 1): the sum of this loss on the embeddings cut to each dimension and re-normalised. {loss}",
            dims.join(", ")
        );
    }
    TrainingFacts {
        base_model: job.base_model.clone(),
        loss,
        batch_size: config.batch_size,
        mini_batch_size: config.mini_batch_size,
        epochs: config.epochs,
        steps,
        learning_rate,
        warmup_ratio: config.warmup_ratio,
        weight_decay: config.weight_decay,
        max_grad_norm: config.max_grad_norm,
        evaluation_steps: config.evaluation_steps,
        metric: config.metric.to_string(),
        seed: config.train_seed,
        precision: embedfleet_model::describe_precision(model.precision(), model.device()),
        device: device_name(model.device()),
        pairs_per_epoch: pairs,
        seconds,
        pairs_per_second,
        best_step: best_step.map(|s| s as u64),
        matryoshka_dims: loss_fn.matryoshka_dims.clone(),
        merge: None,
    }
}

/// The card of the model in `output`: base against the kept checkpoint (the base alone while
/// nothing beats it).
pub fn model_card(
    job: &TrainJob,
    pairs: usize,
    output: &Path,
    val: Option<&PreparedDataset>,
    evals: &[EvalRow],
    best_step: Option<usize>,
    facts: TrainingFacts,
) -> ModelCard {
    let base = evals.iter().find(|e| e.step == 0);
    let best = best_step.and_then(|s| evals.iter().find(|e| e.step == s as i64));
    let location = output.display().to_string();
    ModelCard {
        base_model: job.base_model.clone(),
        training_data: format!("{pairs} (question, passage) pairs"),
        metrics: Vec::new(),
        evaluation: base
            .map(|b| b.to_result("base", &job.base_model))
            .into_iter()
            .chain(best.map(|b| b.to_result("finetuned", &location)))
            .collect(),
        evaluation_size: val.map(|v| (v.query_ids.len(), v.corpus_ids.len())),
        training: Some(facts),
        dataset: None,
        location,
        checksums: Vec::new(),
    }
}

/// Step 0, every `every` steps, and each epoch's last step: where the loop evaluates.
fn evaluation_points(batches_per_epoch: &[Vec<Vec<usize>>], every: usize) -> Vec<usize> {
    let mut points = vec![0];
    let mut step = 0;
    for epoch in batches_per_epoch {
        for b in 0..epoch.len() {
            step += 1;
            if (every > 0 && step % every == 0) || b + 1 == epoch.len() {
                points.push(step);
            }
        }
    }
    points
}

fn prepare_output(output: &Path, resume: bool, overwrite: bool) -> Result<(), TrainError> {
    let occupied = output.exists() && std::fs::read_dir(output).map(|mut d| d.next().is_some()).unwrap_or(false);
    if occupied && !resume && !overwrite && !output.join(MARKER).exists() {
        return Err(TrainError::OutputInUse(output.to_owned()));
    }
    if occupied && !resume {
        // Old checkpoints from another run must not be resumed into this one.
        let _ = std::fs::remove_dir_all(output.join("checkpoints"));
        let _ = std::fs::remove_dir_all(output.join("eval"));
    }
    std::fs::create_dir_all(output).map_err(|e| TrainError::Write { path: output.to_owned(), source: e })?;
    // Claim the folder at once, so a crash before the first log still leaves it recognisable.
    if !output.join(MARKER).exists() {
        write_log(output, &[])?;
    }
    Ok(())
}

/// The (question, positive) pairs, each pair's negatives, and the inverse cloze cuts.
type TrainingPairs = (Vec<TrainPair>, Vec<Vec<Negative>>, ClozeCuts);

/// The (question, positive) pairs in the dataset's order, and each pair's first
/// `--hard-negatives` mined negatives (empty lists when none are asked for).
/// Also what inverse cloze cut out of the passages.
fn training_pairs(train_set: &QaDataset, job: &TrainJob) -> Result<TrainingPairs, TrainError> {
    let wanted = job.hard_negatives();
    let mined = match (&job.negatives, wanted) {
        (_, 0) => None,
        (Some(n), _) => {
            n.validate(train_set, "the mined negatives")?;
            Some(n.as_ref())
        }
        (None, n) => return Err(TrainError::NoNegatives(n)),
    };
    let (train_set, cuts) = job.config.training_view_counted(train_set);
    let mut pairs = Vec::new();
    let mut negatives = Vec::new();
    for (qid, question) in &train_set.queries {
        for cid in train_set.relevant_docs.get(qid).into_iter().flatten() {
            let Some(passage) = train_set.corpus.get(cid) else { continue };
            pairs.push(TrainPair { chunk_id: cid.clone(), question: question.clone(), passage: passage.clone() });
            if let Some(mined) = mined {
                let negs = mined
                    .of(qid, wanted)
                    .iter()
                    .filter_map(|c| Some(Negative { chunk_id: c.clone(), text: train_set.corpus.get(c)?.clone() }));
                negatives.push(negs.collect());
            }
        }
    }
    Ok((pairs, negatives, cuts))
}

/// One optimisation step's forward and backward; returns the loss. A libtorch failure (out of
/// memory above all) becomes an error that says what to lower. `query_prompt` goes before every
/// question, as sentence-transformers' trainer puts a `prompts` entry before its column's texts.
fn run_step(
    model: &SentenceEncoder,
    pairs: &[TrainPair],
    negatives: &[Vec<Negative>],
    batch: &[usize],
    job: &TrainJob,
    query_prompt: Option<&str>,
    step: usize,
) -> Result<f64, TrainError> {
    let config = &job.config;
    let loss_fn = job.loss();
    let questions: Vec<&str> = batch.iter().map(|&i| pairs[i].question.as_str()).collect();
    // The positives, then the hard negatives as extra columns.
    let passages: Vec<&str> = candidates(pairs, negatives, batch);
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<f64, embedfleet_model::ModelError> {
        match config.mini_batch_size.filter(|&m| m < batch.len()) {
            Some(mini) => cached_step(model, &questions, &passages, query_prompt, mini, &loss_fn, config.train_seed, step),
            None => {
                let q = model.forward(&model.prompted_batch(&questions, query_prompt)?, true);
                let p = model.forward(&model.tokenizer().batch(&passages, model.device())?, true);
                let loss = loss_fn.compute(&q, &p);
                loss.backward();
                Ok(f64::try_from(&loss).unwrap_or(f64::NAN))
            }
        }
    }));
    match result {
        Ok(Ok(loss)) if loss.is_finite() => Ok(loss),
        Ok(Ok(loss)) => Err(TrainError::Step { step, detail: format!("loss is {loss}; lower --learning-rate") }),
        Ok(Err(e)) => Err(TrainError::Model(e)),
        Err(panic) => {
            let detail = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "libtorch error".into());
            let first_line = detail.lines().next().unwrap_or_default().to_owned();
            if detail.contains("out of memory") || detail.contains("can't allocate memory") {
                Err(TrainError::OutOfMemory { step, detail: first_line })
            } else {
                Err(TrainError::Step { step, detail: first_line })
            }
        }
    }
}

/// GradCache: embed everything without gradients, take the loss's gradient with respect to the
/// embeddings, then re-embed each mini-batch with gradients and push that gradient through it.
/// Each mini-batch replays its own RNG seed, so dropout masks are the same in both passes.
/// `passages` may hold more rows than `questions`: the hard negatives after the positives.
/// `query_prompt` goes before every question.
#[allow(clippy::too_many_arguments)]
pub fn cached_step(
    model: &SentenceEncoder,
    questions: &[&str],
    passages: &[&str],
    query_prompt: Option<&str>,
    mini: usize,
    loss_fn: &TrainingLoss,
    seed: u64,
    step: usize,
) -> Result<f64, embedfleet_model::ModelError> {
    let seed_of = |side: i64, i: usize| -> i64 {
        (seed as i64).wrapping_mul(7_919).wrapping_add((step as i64) << 20).wrapping_add(side << 16).wrapping_add(i as i64)
    };
    let prompt_of = |side: i64| if side == 0 { query_prompt } else { None };
    let embed_all = |texts: &[&str], side: i64| -> Result<Tensor, embedfleet_model::ModelError> {
        let _guard = tch::no_grad_guard();
        let mut parts = Vec::new();
        for (i, chunk) in texts.chunks(mini).enumerate() {
            tch::manual_seed(seed_of(side, i));
            parts.push(model.forward(&model.prompted_batch(chunk, prompt_of(side))?, true).to_kind(Kind::Float));
        }
        Ok(Tensor::cat(&parts, 0))
    };
    let q = embed_all(questions, 0)?.detach().set_requires_grad(true);
    let p = embed_all(passages, 1)?.detach().set_requires_grad(true);
    let loss = loss_fn.compute(&q, &p);
    loss.backward();
    let (q_grad, p_grad) = (q.grad(), p.grad());
    for (texts, grad, side) in [(questions, &q_grad, 0i64), (passages, &p_grad, 1i64)] {
        for (i, chunk) in texts.chunks(mini).enumerate() {
            tch::manual_seed(seed_of(side, i));
            let emb = model.forward(&model.prompted_batch(chunk, prompt_of(side))?, true).to_kind(Kind::Float);
            let g = grad.narrow(0, (i * mini) as i64, chunk.len() as i64);
            (emb * g).sum(Kind::Float).backward();
        }
    }
    Ok(f64::try_from(&loss).unwrap_or(f64::NAN))
}

fn evaluate(model: &SentenceEncoder, val: &PreparedDataset, job: &TrainJob, epoch: i64, step: i64) -> Result<(f64, EvalRow), TrainError> {
    let evaluation = evaluate_model(model, val, &job.eval)?;
    let value = evaluation.metric(&job.config.metric.to_string()).unwrap_or(f64::NAN);
    let questions = evaluation
        .per_query
        .iter()
        .map(|q| embedfleet_report::QuestionResult { query_id: q.query_id.clone(), rank: q.rank, ndcg: q.ndcg, top: Vec::new() })
        .collect();
    Ok((
        value,
        EvalRow {
            epoch,
            step,
            metrics: evaluation.metrics,
            value,
            hit_rate: Some(evaluation.hit_rate),
            dims: evaluation.dims,
            questions,
            embeddings_digest: evaluation.embeddings_digest,
        },
    ))
}

/// The reference's evaluation CSV in `<output>/eval/`, one row per evaluation, and one CSV per
/// Matryoshka dimension.
fn write_eval_csv(output: &Path, job: &TrainJob, rows: &[EvalRow]) -> Result<(), TrainError> {
    let dir = output.join("eval");
    /// One evaluation's metrics per score function, for one CSV.
    type MetricsOf<'a> = dyn Fn(&EvalRow) -> Option<&[(ScoreFunction, RetrievalMetrics)]> + 'a;
    let write = |name: &str, metrics: &MetricsOf| {
        let functions: Vec<_> = rows.iter().find_map(metrics).map(|m| m.iter().map(|(f, _)| *f).collect()).unwrap_or_default();
        let mut text = csv_header(&functions, &job.eval.metrics);
        text.push_str("\r\n");
        for row in rows {
            if let Some(m) = metrics(row) {
                text.push_str(&csv_row(row.epoch, row.step, m));
                text.push_str("\r\n");
            }
        }
        write_atomic(&dir.join(csv_file_name(name)), text.as_bytes())
    };
    write("val", &|r| Some(&r.metrics))?;
    for &dim in &job.eval.matryoshka_dims {
        write(&dim_csv_name("val", dim), &|r| r.dims.iter().find(|d| d.dim == dim).map(|d| d.metrics.as_slice()))?;
    }
    Ok(())
}

fn write_log(output: &Path, log: &[LogRow]) -> Result<(), TrainError> {
    let mut text = String::from("step,epoch,loss,lr\n");
    for r in log {
        text.push_str(&format!("{},{},{},{}\n", r.step, r.epoch, r.loss, r.lr));
    }
    write_atomic(&output.join(MARKER), text.as_bytes())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let err = |e| TrainError::Write { path: path.to_owned(), source: e };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

fn save_checkpoint(model: &SentenceEncoder, optimizer: &AdamW, output: &Path, state: &TrainState) -> Result<(), TrainError> {
    let dir = checkpoint_dir(output, state.global_step);
    std::fs::create_dir_all(&dir).map_err(|e| TrainError::Write { path: dir.clone(), source: e })?;
    let bad = |e: tch::TchError| TrainError::Write { path: dir.clone(), source: std::io::Error::other(e.to_string()) };
    let weights: Vec<(String, Tensor)> = model.var_store().variables().into_iter().collect();
    Tensor::write_safetensors(&weights, dir.join("model.safetensors")).map_err(bad)?;
    Tensor::write_safetensors(&optimizer.state(), dir.join("optimizer.safetensors")).map_err(bad)?;
    // state.json last: a checkpoint without it is incomplete and never resumed from.
    write_atomic(&dir.join("state.json"), &serde_json::to_vec(state).expect("state serializes"))?;
    // Keep the two newest.
    if let Ok(entries) = std::fs::read_dir(output.join("checkpoints")) {
        let mut steps: Vec<(usize, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = embedfleet_core::CheckpointLabel::step_in(&e.file_name().to_string_lossy())? as usize;
                Some((n, e.path()))
            })
            .collect();
        steps.sort();
        for (_, old) in steps.iter().rev().skip(2) {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    Ok(())
}

fn load_checkpoint(model: &mut SentenceEncoder, optimizer: &mut AdamW, dir: &Path) -> Result<TrainState, TrainError> {
    let bad = |detail: String| TrainError::BadCheckpoint { path: dir.to_owned(), detail };
    let state: TrainState =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
    let weights = Tensor::read_safetensors(dir.join("model.safetensors")).map_err(|e| bad(e.to_string()))?;
    {
        let _guard = tch::no_grad_guard();
        let mut vars = model.var_store_mut().variables();
        for (name, t) in &weights {
            let var = vars.get_mut(name).ok_or_else(|| bad(format!("unknown tensor {name}")))?;
            var.copy_(t);
        }
    }
    let opt = Tensor::read_safetensors(dir.join("optimizer.safetensors")).map_err(|e| bad(e.to_string()))?;
    optimizer.load_state(&opt, state.global_step as i64).map_err(|e| bad(e.to_string()))?;
    Ok(state)
}

impl embedfleet_core::Transient for TrainError {
    fn is_transient(&self) -> bool {
        match self {
            TrainError::Hook { source: HookError::Transient(_), .. } => true,
            TrainError::Model(e) => e.is_transient(),
            TrainError::Eval(e) => e.is_transient(),
            // The local disk (full, unwritable): another worker may have room.
            TrainError::Write { .. } => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_written_before_the_struct_still_match() {
        let f = Fingerprint {
            pairs: 10,
            batch: 4,
            epochs: 2,
            seed: 42,
            lr: 2e-5,
            mini: None,
            negatives: Some((3, 27)),
            inverse_cloze: true,
            matryoshka: vec![384, 64],
            query_prompt: Some("query: ".into()),
        };
        // What a checkpoint of the string-built fingerprint holds.
        let old = r#"pairs=10 batch=4 epochs=2 seed=42 lr=0.00002 mini=None negatives=3/27 inverse_cloze matryoshka=[384, 64] query_prompt="query: ""#;
        assert!(f.matches(old));
        assert!(f.matches(&f.encoded()));
        let plain = Fingerprint { negatives: None, inverse_cloze: false, matryoshka: Vec::new(), query_prompt: None, ..f.clone() };
        assert!(plain.matches("pairs=10 batch=4 epochs=2 seed=42 lr=0.00002 mini=None"));
        let other = Fingerprint { lr: 3e-5, ..f.clone() };
        assert!(!other.matches(&f.encoded()) && !other.matches(old));
    }
}
