//! The trainer worker's stage: train a run's dataset, hand a checkpoint to the evaluators at every
//! evaluation point (`step-0` is the base model), and mirror resume checkpoints to the store so a
//! redelivered task on another machine continues where the dead one stopped.

use crate::checkpoint::LogRow;
use crate::mining::{MineSettings, mine};
use crate::train::{HookError, TrainError, TrainHooks, TrainJob, TrainOptions, Trainer};
use embedfleet_bus::layout;
use embedfleet_bus::messages::{Message, RunSpec};
use embedfleet_bus::worker::{TaskError, TaskHandler};
use embedfleet_bus::{Bus, RunState, Stage};
use embedfleet_core::dataset::read_dataset;
use embedfleet_core::progress::NoProgress;
use embedfleet_core::{ArtifactStore, DatasetSplit, HardNegatives, RunId, StoreOptions};
use embedfleet_model::{Device, LoadOptions, ModelCard, Precision, SentenceEncoder, resolve_fleet_model};
use embedfleet_report::fleet::FleetTraining;
use prometheus::{Gauge, IntCounter, register_gauge, register_int_counter};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

static LOSS: LazyLock<Gauge> =
    LazyLock::new(|| register_gauge!("embedfleet_trainer_loss", "Training loss of the last step").expect("registers once"));
static LR: LazyLock<Gauge> =
    LazyLock::new(|| register_gauge!("embedfleet_trainer_learning_rate", "Learning rate of the last step").expect("registers once"));
static STEPS: LazyLock<IntCounter> =
    LazyLock::new(|| register_int_counter!("embedfleet_trainer_steps_total", "Optimisation steps").expect("registers once"));
static STEPS_PER_S: LazyLock<Gauge> =
    LazyLock::new(|| register_gauge!("embedfleet_trainer_steps_per_second", "Recent training speed").expect("registers once"));

pub struct TrainWorker {
    pub bus: Bus,
    pub store: ArtifactStore,
    pub store_options: StoreOptions,
    /// Where base and mining models may come from.
    pub model_sources: embedfleet_core::model_source::ModelSources,
    pub device: Device,
    pub precision: Precision,
    /// Local scratch space (a pod's emptyDir).
    pub work_dir: PathBuf,
}

impl TrainWorker {
    pub fn init_metrics() {
        for m in [&LOSS, &LR, &STEPS_PER_S] {
            LazyLock::force(m);
        }
        LazyLock::force(&STEPS);
    }
}

/// How often a training step looks whether its run was cancelled (one KV read).
const CANCEL_CHECK: Duration = Duration::from_secs(1);

fn hook_transient(e: impl std::error::Error + Send + Sync + 'static) -> HookError {
    HookError::Transient(Box::new(e))
}

fn io(e: std::io::Error) -> HookError {
    HookError::Transient(Box::new(e))
}

struct FleetHooks {
    bus: Bus,
    store: ArtifactStore,
    run_id: RunId,
    scratch: PathBuf,
    rt: Handle,
    last: Instant,
    last_cancel_check: Instant,
    /// Test hook: abort the process at the first step at or past this one, as an OOM kill would
    /// (EMBEDFLEET_TEST_ABORT_AT_STEP, read only by builds with debug assertions: the test builds,
    /// never a release binary).
    abort_at: Option<usize>,
}

/// The crash-loop tests' hook (see `FleetHooks::abort_at`); a release build never reads it.
fn test_abort_step() -> Option<usize> {
    if cfg!(debug_assertions) { std::env::var("EMBEDFLEET_TEST_ABORT_AT_STEP").ok().and_then(|s| s.parse().ok()) } else { None }
}

impl FleetHooks {
    fn publish(&self, m: Message) -> Result<(), HookError> {
        self.rt.block_on(self.bus.publish(Stage::Coordinate, &m)).map_err(hook_transient)
    }
}

impl TrainHooks for FleetHooks {
    fn step_done(&mut self, row: &LogRow) -> Result<(), HookError> {
        LOSS.set(row.loss);
        LR.set(row.lr);
        STEPS.inc();
        STEPS_PER_S.set(1.0 / self.last.elapsed().as_secs_f64().max(1e-9));
        self.last = Instant::now();
        if self.abort_at.is_some_and(|n| row.step >= n) {
            tracing::error!(step = row.step, "EMBEDFLEET_TEST_ABORT_AT_STEP: aborting as an OOM kill would");
            std::process::abort();
        }
        if self.last_cancel_check.elapsed() >= CANCEL_CHECK {
            self.last_cancel_check = Instant::now();
            // NATS unreachable for a moment is no reason to stop training: look again next time.
            if let Ok(Some(state)) = self.rt.block_on(self.bus.run_state(&self.run_id))
                && state.is_terminal()
            {
                return Err(HookError::Stop(format!("the run is {}", state.name())));
            }
        }
        Ok(())
    }

    fn evaluation_point(&mut self, step: usize, model: &SentenceEncoder) -> Result<(), HookError> {
        let label = layout::label(step as u64);
        let prefix = layout::checkpoint(&self.run_id, &label);
        let exists = self.rt.block_on(self.store.exists(&format!("{prefix}/model.safetensors"))).map_err(hook_transient)?;
        if !exists {
            let dir = self.scratch.join(label.as_str());
            let _ = std::fs::remove_dir_all(&dir);
            model.save(&dir, &ModelCard::default()).map_err(hook_transient)?;
            // Weights last: a checkpoint whose model.safetensors exists is complete.
            let weights = std::fs::read(dir.join("model.safetensors")).map_err(io)?;
            std::fs::remove_file(dir.join("model.safetensors")).map_err(io)?;
            self.rt.block_on(self.store.put_dir(&dir, &prefix)).map_err(hook_transient)?;
            self.rt.block_on(self.store.put(&format!("{prefix}/model.safetensors"), weights)).map_err(hook_transient)?;
            let _ = std::fs::remove_dir_all(&dir);
        }
        self.publish(Message::CheckpointSaved { run_id: self.run_id.clone(), label, step: step as u64 })
    }

    fn checkpoint_written(&mut self, dir: &Path, step: usize) -> Result<(), HookError> {
        let prefix = format!("{}/{}", layout::resume(&self.run_id), embedfleet_core::CheckpointLabel::step(step as u64));
        let state = std::fs::read(dir.join("state.json")).map_err(io)?;
        for file in ["model.safetensors", "optimizer.safetensors"] {
            let bytes = std::fs::read(dir.join(file)).map_err(io)?;
            self.rt.block_on(self.store.put(&format!("{prefix}/{file}"), bytes)).map_err(hook_transient)?;
        }
        // state.json last: only a complete checkpoint is ever resumed from.
        self.rt.block_on(self.store.put(&format!("{prefix}/state.json"), state)).map_err(hook_transient)?;
        Ok(())
    }
}

impl TaskHandler for TrainWorker {
    async fn handle(&self, message: Message, deliveries: i64) -> Result<(), TaskError> {
        let Message::TrainTask { run_id } = message else {
            return Err(TaskError::fatal("the trainer only handles train tasks"));
        };
        match self.bus.run_state(&run_id).await? {
            Some(state) if state.is_terminal() || state == RunState::Finalizing => {
                tracing::info!(run_id = run_id.as_str(), state = state.name(), "skipping the train task of a run past training");
                return Ok(());
            }
            _ => {}
        }
        let spec: RunSpec = serde_json::from_slice(&self.store.get(&layout::spec(&run_id)).await?)
            .map_err(|e| TaskError::fatal(format!("run spec of {run_id}: {e}")))?;
        // Where the models come from is checked before anything of the run is read.
        for model in std::iter::once(&spec.model_id).chain(spec.train.mining.mining_model.as_ref()) {
            self.model_sources.check(model).map_err(TaskError::fatal)?;
        }
        let train_set = read_dataset(&self.store, &layout::data(&run_id), DatasetSplit::Train).await.map_err(TaskError::classify)?;
        let model_dir = resolve_fleet_model(&spec.model_id, &self.store_options, &self.model_sources).await.map_err(TaskError::classify)?;
        let local = self.work_dir.join(run_id.as_str());
        let _ = std::fs::remove_dir_all(&local);
        // A redelivered task resumes from the newest complete checkpoint in the store.
        let resume = self.fetch_resume(&run_id, &local).await?;
        if resume {
            tracing::info!(run_id = run_id.as_str(), deliveries, "resuming training from the store's checkpoint");
        }
        // Mining is the stage between assembly and training: its output lies in the run's data
        // folder, so a redelivered task trains on the very negatives the first delivery mined.
        let negatives_key = format!("{}/{}", layout::data(&run_id), HardNegatives::file_name(DatasetSplit::Train));
        let mined_before = match spec.train.mining.hard_negatives {
            Some(_) => match self.store.get_opt(&negatives_key).await? {
                Some(bytes) => Some(
                    HardNegatives::from_json(&self.store.describe(&negatives_key), &bytes).map_err(|e| TaskError::fatal(e.to_string()))?,
                ),
                None => None,
            },
            None => None,
        };
        let mining_dir = match (&spec.train.mining.mining_model, &mined_before, spec.train.mining.hard_negatives) {
            (Some(m), None, Some(_)) => {
                Some(resolve_fleet_model(m, &self.store_options, &self.model_sources).await.map_err(TaskError::classify)?)
            }
            _ => None,
        };
        let mut config = spec.train.clone();
        // A replaced trainer must find a checkpoint to resume from.
        config.checkpoint_every = config.fleet_checkpoint_every();
        let mut job = TrainJob::new(config, &spec.model_id);
        let options = LoadOptions { device: self.device, precision: spec.precision.unwrap_or(self.precision) };
        let mut hooks = FleetHooks {
            bus: self.bus.clone(),
            store: self.store.clone(),
            run_id: run_id.clone(),
            scratch: self.work_dir.join(format!("{run_id}-export")),
            rt: Handle::current(),
            last: Instant::now(),
            last_cancel_check: Instant::now(),
            abort_at: test_abort_step(),
        };
        let outcome = tokio::task::spawn_blocking(move || -> Result<_, TrainError> {
            let mut model = SentenceEncoder::load(&model_dir, options)?;
            if let Some(count) = job.config.mining.hard_negatives {
                let negatives = match mined_before {
                    Some(n) => n,
                    None => {
                        // Before any checkpoint is loaded: the base model (or --mining-model) ranks.
                        let miner = mining_dir.as_deref().map(|d| SentenceEncoder::load(d, options)).transpose()?;
                        let settings = MineSettings::for_training(&job.config, count);
                        let (n, report) = mine(miner.as_ref().unwrap_or(&model), &train_set, &settings, 32)?;
                        tracing::info!(
                            negatives = report.negatives,
                            same_document = report.dropped_same_document,
                            margin = report.dropped_margin,
                            short = report.short,
                            "hard negatives mined"
                        );
                        hooks
                            .rt
                            .block_on(hooks.store.put(&negatives_key, n.to_json()))
                            .map_err(|e| TrainError::Hook { step: 0, source: hook_transient(e) })?;
                        n
                    }
                };
                job = job.with_negatives(negatives);
            }
            if !resume {
                hooks.evaluation_point(0, &model).map_err(|source| TrainError::Hook { step: 0, source })?;
            }
            Trainer::new(&mut model, &train_set, None, &job, &local)
                .and_then(|trainer| trainer.run(TrainOptions { resume, overwrite: true, progress: &NoProgress }, &mut hooks))
        })
        .await
        .map_err(|e| TaskError::transient(format!("the training thread ended: {e}")))?;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(TrainError::Stopped { step, reason }) => {
                // The run was cancelled: its last checkpoint stays in the store; nothing to report.
                tracing::info!(run_id = run_id.as_str(), step, reason, "training stopped");
                let _ = std::fs::remove_dir_all(self.work_dir.join(run_id.as_str()));
                return Ok(());
            }
            Err(e) => return Err(TaskError::classify(e)),
        };
        // Before TrainDone, so the run's report finds it when the run is finalized.
        let training = FleetTraining { facts: outcome.facts.clone(), log: outcome.log.clone() };
        let key = embedfleet_report::fleet::training_key(&layout::run(&run_id));
        self.store.put(&key, serde_json::to_vec(&training).expect("serializes")).await?;
        let checkpoints = outcome.evaluation_points.iter().map(|&s| layout::label(s as u64)).collect();
        self.bus
            .publish(Stage::Coordinate, &Message::TrainDone { run_id: run_id.clone(), steps: outcome.steps as u64, checkpoints })
            .await?;
        let _ = std::fs::remove_dir_all(self.work_dir.join(run_id.as_str()));
        Ok(())
    }
}

impl TrainWorker {
    async fn fetch_resume(&self, run_id: &RunId, local: &Path) -> Result<bool, TaskError> {
        let keys = self.store.list(&layout::resume(run_id)).await?;
        let newest = keys
            .iter()
            .filter(|k| k.ends_with("/state.json"))
            .filter_map(|k| {
                let step = embedfleet_core::CheckpointLabel::step_in(k.rsplit('/').nth(1)?)? as usize;
                Some(step)
            })
            .max();
        let Some(step) = newest else { return Ok(false) };
        let prefix = format!("{}/{}", layout::resume(run_id), embedfleet_core::CheckpointLabel::step(step as u64));
        let target = crate::checkpoint::checkpoint_dir(local, step);
        self.store.get_dir(&prefix, &target).await?;
        // The trainer recognises its own output folder by its log.
        std::fs::write(local.join("training_log.csv"), "step,epoch,loss,lr\n").map_err(TaskError::transient)?;
        Ok(true)
    }
}
