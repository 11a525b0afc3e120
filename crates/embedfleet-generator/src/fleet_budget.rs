//! One run's LLM budget for the whole fleet: a ledger (limit, spent, held) in one NATS KV key per
//! run, updated with compare-and-set on the key's revision like the fleet rate limit. However many
//! generator replicas work on the run, a request is sent only after its worst case is held in the
//! shared ledger, so together they never pass `--max-cost-usd`. A replica that dies holding a
//! request's worst case leaves it held: the ledger errs on the side of spending less.

use crate::cost::{Budget, BudgetError, SharedLedger};
use async_nats::jetstream::kv;
use embedfleet_core::RunId;
use std::sync::Mutex;

pub struct FleetBudget {
    kv: kv::Store,
    key: String,
    limit: f64,
    /// What this task spent, for its `GenerateDone`.
    spent_here: Mutex<f64>,
}

/// Compare-and-set attempts before the ledger counts as unreachable (contention this high means
/// something else is wrong).
const ATTEMPTS: usize = 200;

impl FleetBudget {
    pub fn new(kv: kv::Store, run: &RunId, limit: f64) -> Self {
        Self { kv, key: run.to_string(), limit, spent_here: Mutex::new(0.0) }
    }

    pub fn spent_here(&self) -> f64 {
        *self.spent_here.lock().expect("not poisoned")
    }

    async fn read(&self) -> Result<(SharedLedger, Option<u64>), BudgetError> {
        let unavailable = |e: &dyn std::fmt::Display| BudgetError::Unavailable(e.to_string());
        match self.kv.entry(&self.key).await.map_err(|e| unavailable(&e))? {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let ledger = serde_json::from_slice(&entry.value).map_err(|e| unavailable(&e))?;
                Ok((ledger, Some(entry.revision)))
            }
            Some(entry) => Ok((self.fresh(), Some(entry.revision))),
            None => Ok((self.fresh(), None)),
        }
    }

    fn fresh(&self) -> SharedLedger {
        SharedLedger { limit: self.limit, ..Default::default() }
    }

    async fn write(&self, ledger: &SharedLedger, revision: Option<u64>) -> bool {
        let value = serde_json::to_vec(ledger).expect("ledger serializes").into();
        match revision {
            Some(rev) => self.kv.update(&self.key, value, rev).await.is_ok(),
            None => self.kv.create(&self.key, value).await.is_ok(),
        }
    }

    /// The run's ledger as the fleet sees it now.
    pub async fn ledger(&self) -> Result<SharedLedger, BudgetError> {
        Ok(self.read().await?.0)
    }
}

impl Budget for FleetBudget {
    async fn reserve(&self, worst_usd: f64) -> Result<(), BudgetError> {
        for _ in 0..ATTEMPTS {
            let (ledger, revision) = self.read().await?;
            let next = ledger.reserved(worst_usd)?;
            if self.write(&next, revision).await {
                return Ok(());
            }
        }
        Err(BudgetError::Unavailable(format!("the ledger of run {} is too contended", self.key)))
    }

    async fn settle(&self, held_usd: f64, spent_usd: f64) {
        *self.spent_here.lock().expect("not poisoned") += spent_usd;
        for _ in 0..ATTEMPTS {
            let Ok((ledger, revision)) = self.read().await else { break };
            if self.write(&ledger.settled(held_usd, spent_usd), revision).await {
                return;
            }
        }
        tracing::warn!(
            run = self.key,
            held_usd,
            spent_usd,
            "could not settle the run's budget ledger; the hold stays (the run may stop early)"
        );
    }
}
