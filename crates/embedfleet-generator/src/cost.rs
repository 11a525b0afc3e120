//! Token and dollar accounting, and the budget that stops a run before it overspends.

use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Mutex;

/// USD per 1000 tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pricing {
    pub input_per_1k: f64,
    pub output_per_1k: f64,
}

impl Default for Pricing {
    /// gpt-3.5-turbo (0125), the reference's model.
    fn default() -> Self {
        Self { input_per_1k: 0.0005, output_per_1k: 0.0015 }
    }
}

impl Pricing {
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.input_per_1k + completion_tokens as f64 * self.output_per_1k) / 1000.0
    }
}

/// Why a request was not started.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "budget of ${budget:.4} reached: ${spent:.4} spent, ${reserved:.4} held by requests in flight, and the next \
     request could cost up to ${next:.4}; raise the budget (max cost) to continue, already generated chunks are kept"
)]
pub struct BudgetReached {
    pub budget: f64,
    pub spent: f64,
    pub reserved: f64,
    pub next: f64,
}

/// Why a request may not be sent, as far as money goes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BudgetError {
    #[error(transparent)]
    Reached(#[from] BudgetReached),
    /// The fleet's ledger (NATS KV) cannot be read or written: nothing is sent until it can.
    #[error("the run's budget ledger is unreachable: {0}")]
    Unavailable(String),
}

/// Where the spending limit is kept: in this process ([`LocalBudget`], `embedfleet generate`), or
/// in NATS KV for one run across every generator replica (the fleet). A request holds its worst
/// case (prompt estimate plus `max_tokens`) while in flight, so concurrent requests cannot pass the
/// limit together; the answer's `usage` settles it.
pub trait Budget: Send + Sync {
    fn reserve(&self, worst_usd: f64) -> impl Future<Output = Result<(), BudgetError>> + Send;
    /// The request ended: `held_usd` is released and `spent_usd` (0 for a failed request: errors
    /// are not billed by the APIs this client targets) is spent.
    fn settle(&self, held_usd: f64, spent_usd: f64) -> impl Future<Output = ()> + Send;
}

#[derive(Debug, Default, Clone, Copy)]
struct Ledger {
    spent: f64,
    reserved: f64,
}

impl Ledger {
    /// Holds `next`, or refuses when spent + held + next would pass `limit`.
    pub(crate) fn reserve(&mut self, limit: Option<f64>, next: f64) -> Result<(), BudgetReached> {
        if let Some(budget) = limit.filter(|&b| self.spent + self.reserved + next > b) {
            return Err(BudgetReached { budget, spent: self.spent, reserved: self.reserved, next });
        }
        self.reserved += next;
        Ok(())
    }

    pub(crate) fn settle(&mut self, held: f64, spent: f64) {
        self.reserved = (self.reserved - held).max(0.0);
        self.spent += spent;
    }
}

/// One process's limit (`--max-cost-usd` of `embedfleet generate`).
#[derive(Debug)]
pub struct LocalBudget {
    limit: Option<f64>,
    ledger: Mutex<Ledger>,
}

impl LocalBudget {
    pub fn new(limit: Option<f64>) -> Self {
        Self { limit, ledger: Mutex::new(Ledger::default()) }
    }

    pub fn spent(&self) -> f64 {
        self.ledger.lock().expect("not poisoned").spent
    }
}

impl Budget for LocalBudget {
    async fn reserve(&self, worst_usd: f64) -> Result<(), BudgetError> {
        Ok(self.ledger.lock().expect("not poisoned").reserve(self.limit, worst_usd)?)
    }

    async fn settle(&self, held_usd: f64, spent_usd: f64) {
        self.ledger.lock().expect("not poisoned").settle(held_usd, spent_usd);
    }
}

/// A fleet ledger's value: what one run may spend, has spent and holds for requests in flight.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct SharedLedger {
    pub limit: f64,
    pub spent: f64,
    pub reserved: f64,
}

impl SharedLedger {
    /// The ledger after holding `next`, or why not.
    pub fn reserved(mut self, next: f64) -> Result<Self, BudgetReached> {
        let mut l = Ledger { spent: self.spent, reserved: self.reserved };
        l.reserve(Some(self.limit), next)?;
        (self.spent, self.reserved) = (l.spent, l.reserved);
        Ok(self)
    }

    pub fn settled(mut self, held: f64, spent: f64) -> Self {
        let mut l = Ledger { spent: self.spent, reserved: self.reserved };
        l.settle(held, spent);
        (self.spent, self.reserved) = (l.spent, l.reserved);
        self
    }
}

/// Tokens and dollars used, for the summary and the metrics (whatever the budget).
#[derive(Debug)]
pub struct CostMeter {
    pricing: Pricing,
    totals: Mutex<(u64, u64, f64)>,
}

impl CostMeter {
    pub fn new(pricing: Pricing) -> Self {
        Self { pricing, totals: Mutex::new((0, 0, 0.0)) }
    }

    pub fn pricing(&self) -> &Pricing {
        &self.pricing
    }

    /// Counts a finished request; returns its cost.
    pub fn record(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        let cost = self.pricing.cost(prompt_tokens, completion_tokens);
        let mut t = self.totals.lock().expect("not poisoned");
        // Counts come from the server's `usage`; a server that claims u64::MAX must not overflow them.
        t.0 = t.0.saturating_add(prompt_tokens);
        t.1 = t.1.saturating_add(completion_tokens);
        t.2 += cost;
        cost
    }

    /// (prompt tokens, completion tokens, USD spent).
    pub fn totals(&self) -> (u64, u64, f64) {
        *self.totals.lock().expect("not poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn budget_counts_spent_and_in_flight_worst_cases() {
        let budget = LocalBudget::new(Some(1.0));
        budget.reserve(0.5).await.unwrap();
        budget.reserve(0.5).await.unwrap(); // 1.0 held
        let err = budget.reserve(0.001).await.unwrap_err();
        assert!(err.to_string().contains("budget of $1.0000 reached"), "{err}");
        budget.settle(0.5, 0.35).await; // 0.35 spent, 0.5 still held
        budget.settle(0.5, 0.0).await; // failed request: hold released, nothing spent
        assert!((budget.spent() - 0.35).abs() < 1e-12);
        assert!(budget.reserve(0.6).await.is_ok(), "0.35 + 0.6 fits in 1.0");
        assert!(budget.reserve(0.1).await.is_err(), "0.35 + 0.6 + 0.1 would pass 1.0");
        assert!(LocalBudget::new(None).reserve(1e9).await.is_ok(), "no limit");
    }

    #[test]
    fn shared_ledger_arithmetic() {
        let l = SharedLedger { limit: 1.0, ..Default::default() };
        let l = l.reserved(0.6).unwrap();
        assert!(l.reserved(0.5).is_err());
        let l = l.settled(0.6, 0.2);
        assert_eq!((l.spent, l.reserved), (0.2, 0.0));
        assert!(l.reserved(0.8).is_ok());
    }

    #[test]
    fn meter_counts_tokens_and_dollars() {
        let m = CostMeter::new(Pricing { input_per_1k: 1.0, output_per_1k: 2.0 });
        assert!((m.record(1000, 500) - 2.0).abs() < 1e-12);
        assert_eq!(m.totals(), (1000, 500, 2.0));
    }

    #[test]
    fn absurd_usage_saturates_instead_of_overflowing() {
        let meter = CostMeter::new(Pricing::default());
        meter.record(u64::MAX, u64::MAX);
        meter.record(u64::MAX, 1);
        let (prompt, completion, spent) = meter.totals();
        assert_eq!((prompt, completion), (u64::MAX, u64::MAX));
        assert!(spent.is_finite() && spent > 0.0);
    }

    #[test]
    fn default_pricing_is_gpt_35_turbo() {
        let cost = Pricing::default().cost(1000, 1000);
        assert!((cost - 0.002).abs() < 1e-12);
    }
}
