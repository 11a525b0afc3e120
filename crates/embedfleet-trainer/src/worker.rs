//! The trainer worker's stage: train a run's dataset, hand a checkpoint to the evaluators at every
//! evaluation point (`step-0` is the base model), and mirror resume checkpoints to the store so a
//! redelivered task on another machine continues where the dead one stopped.

use crate::checkpoint::LogRow;
use crate::train::{TrainConfig, TrainHooks, train_with_hooks};
use crate::{AdamWConfig, MnrlLoss};
use embedfleet_bus::layout;
use embedfleet_bus::messages::{Message, RunSpec};
use embedfleet_bus::worker::{TaskError, TaskHandler};
use embedfleet_bus::{Bus, Stage};
use embedfleet_core::dataset::read_dataset;
use embedfleet_core::progress::NoProgress;
use embedfleet_core::{ArtifactStore, DatasetSplit, StoreOptions};
use embedfleet_model::{Device, LoadOptions, ModelCard, Precision, SentenceEncoder, resolve_model};
use embedfleet_report::fleet::FleetTraining;
use prometheus::{Gauge, IntCounter, register_gauge, register_int_counter};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Instant;
use tokio::runtime::Handle;

static LOSS: LazyLock<Gauge> = LazyLock::new(|| register_gauge!("embedfleet_trainer_loss", "Training loss of the last step").expect("registers once"));
static LR: LazyLock<Gauge> = LazyLock::new(|| register_gauge!("embedfleet_trainer_learning_rate", "Learning rate of the last step").expect("registers once"));
static STEPS: LazyLock<IntCounter> = LazyLock::new(|| register_int_counter!("embedfleet_trainer_steps_total", "Optimisation steps").expect("registers once"));
static STEPS_PER_S: LazyLock<Gauge> = LazyLock::new(|| register_gauge!("embedfleet_trainer_steps_per_second", "Recent training speed").expect("registers once"));

pub struct TrainWorker {
    pub bus: Bus,
    pub store: ArtifactStore,
    pub store_options: StoreOptions,
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

fn retry(e: impl std::fmt::Display) -> TaskError {
    TaskError::Retry(e.to_string())
}

struct FleetHooks {
    bus: Bus,
    store: ArtifactStore,
    run_id: String,
    scratch: PathBuf,
    rt: Handle,
    last: Instant,
}

impl FleetHooks {
    fn publish(&self, m: Message) -> Result<(), String> {
        self.rt.block_on(self.bus.publish(Stage::Coordinate, &m)).map_err(|e| e.to_string())
    }
}

impl TrainHooks for FleetHooks {
    fn step_done(&mut self, row: &LogRow) {
        LOSS.set(row.loss);
        LR.set(row.lr);
        STEPS.inc();
        STEPS_PER_S.set(1.0 / self.last.elapsed().as_secs_f64().max(1e-9));
        self.last = Instant::now();
    }

    fn evaluation_point(&mut self, step: usize, model: &SentenceEncoder) -> Result<(), String> {
        let label = layout::label(step as u64);
        let prefix = layout::checkpoint(&self.run_id, &label);
        let exists = self.rt.block_on(self.store.exists(&format!("{prefix}/model.safetensors"))).map_err(|e| e.to_string())?;
        if !exists {
            let dir = self.scratch.join(&label);
            let _ = std::fs::remove_dir_all(&dir);
            model.save(&dir, &ModelCard::default()).map_err(|e| e.to_string())?;
            // Weights last: a checkpoint whose model.safetensors exists is complete.
            let weights = std::fs::read(dir.join("model.safetensors")).map_err(|e| e.to_string())?;
            std::fs::remove_file(dir.join("model.safetensors")).map_err(|e| e.to_string())?;
            self.rt.block_on(self.store.put_dir(&dir, &prefix)).map_err(|e| e.to_string())?;
            self.rt.block_on(self.store.put(&format!("{prefix}/model.safetensors"), weights)).map_err(|e| e.to_string())?;
            let _ = std::fs::remove_dir_all(&dir);
        }
        self.publish(Message::CheckpointSaved { run_id: self.run_id.clone(), label, step: step as u64 })
    }

    fn checkpoint_written(&mut self, dir: &Path, step: usize) -> Result<(), String> {
        let prefix = format!("{}/step-{step}", layout::resume(&self.run_id));
        let state = std::fs::read(dir.join("state.json")).map_err(|e| e.to_string())?;
        for file in ["model.safetensors", "optimizer.safetensors"] {
            let bytes = std::fs::read(dir.join(file)).map_err(|e| e.to_string())?;
            self.rt.block_on(self.store.put(&format!("{prefix}/{file}"), bytes)).map_err(|e| e.to_string())?;
        }
        // state.json last: only a complete checkpoint is ever resumed from.
        self.rt.block_on(self.store.put(&format!("{prefix}/state.json"), state)).map_err(|e| e.to_string())?;
        Ok(())
    }
}

impl TaskHandler for TrainWorker {
    async fn handle(&self, message: Message, deliveries: i64) -> Result<(), TaskError> {
        let Message::TrainTask { run_id } = message else {
            return Err(TaskError::Fatal("the trainer only handles train tasks".into()));
        };
        let spec: RunSpec = serde_json::from_slice(&self.store.get(&layout::spec(&run_id)).await.map_err(retry)?)
            .map_err(|e| TaskError::Fatal(format!("run spec: {e}")))?;
        let train_set = read_dataset(&self.store, &layout::data(&run_id), DatasetSplit::Train).await.map_err(retry)?;
        let model_dir = resolve_model(&spec.model_id, &self.store_options).await.map_err(|e| TaskError::Fatal(e.to_string()))?;
        let local = self.work_dir.join(&run_id);
        let _ = std::fs::remove_dir_all(&local);
        // A redelivered task resumes from the newest complete checkpoint in the store.
        let resume = self.fetch_resume(&run_id, &local).await?;
        if resume {
            tracing::info!(run_id, deliveries, "resuming training from the store's checkpoint");
        }
        let config = TrainConfig {
            epochs: spec.epochs,
            batch_size: spec.batch_size,
            optim: AdamWConfig { lr: spec.learning_rate, ..Default::default() },
            loss: MnrlLoss::default(),
            evaluation_steps: spec.evaluation_steps,
            checkpoint_every: spec.evaluation_steps,
            seed: spec.seed,
            base_model: spec.model_id.clone(),
            ..Default::default()
        };
        let options = LoadOptions { device: self.device, precision: self.precision };
        let mut hooks = FleetHooks {
            bus: self.bus.clone(),
            store: self.store.clone(),
            run_id: run_id.clone(),
            scratch: self.work_dir.join(format!("{run_id}-export")),
            rt: Handle::current(),
            last: Instant::now(),
        };
        let outcome = tokio::task::spawn_blocking(move || -> Result<_, TaskError> {
            let mut model = SentenceEncoder::load(&model_dir, options).map_err(|e| TaskError::Fatal(e.to_string()))?;
            if !resume {
                hooks.evaluation_point(0, &model).map_err(TaskError::Retry)?;
            }
            train_with_hooks(&mut model, &train_set, None, &config, &local, resume, true, &NoProgress, &mut hooks).map_err(|e| match e {
                crate::TrainError::TooFewPairs { .. } | crate::TrainError::OutOfMemory { .. } => TaskError::Fatal(e.to_string()),
                other => TaskError::Retry(other.to_string()),
            })
        })
        .await
        .map_err(retry)??;
        // Before TrainDone, so the run's report finds it when the run is finalized.
        let training = FleetTraining { facts: outcome.facts.clone(), log: outcome.log.clone() };
        let key = embedfleet_report::fleet::training_key(&layout::run(&run_id));
        self.store.put(&key, serde_json::to_vec(&training).expect("serializes")).await.map_err(retry)?;
        self.bus.publish(Stage::Coordinate, &Message::TrainDone { run_id: run_id.clone(), steps: outcome.steps as u64 }).await.map_err(retry)?;
        let _ = std::fs::remove_dir_all(self.work_dir.join(&run_id));
        Ok(())
    }
}

impl TrainWorker {
    async fn fetch_resume(&self, run_id: &str, local: &Path) -> Result<bool, TaskError> {
        let keys = self.store.list(&layout::resume(run_id)).await.map_err(retry)?;
        let newest = keys
            .iter()
            .filter(|k| k.ends_with("/state.json"))
            .filter_map(|k| {
                let step = k.rsplit('/').nth(1)?.strip_prefix("step-")?.parse::<usize>().ok()?;
                Some(step)
            })
            .max();
        let Some(step) = newest else { return Ok(false) };
        let prefix = format!("{}/step-{step}", layout::resume(run_id));
        let target = crate::checkpoint::checkpoint_dir(local, step);
        self.store.get_dir(&prefix, &target).await.map_err(retry)?;
        // The trainer recognises its own output folder by its log.
        std::fs::write(local.join("training_log.csv"), "step,epoch,loss,lr\n").map_err(retry)?;
        Ok(true)
    }
}
