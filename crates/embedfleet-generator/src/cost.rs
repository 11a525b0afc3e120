//! Token and dollar accounting, and the budget that stops a run before it overspends.

use serde::{Deserialize, Serialize};
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

#[derive(Debug, Default)]
struct Ledger {
    spent: f64,
    /// Worst-case cost of requests sent but not yet answered; counted against the budget so that
    /// many concurrent requests cannot overshoot it together.
    reserved: f64,
    prompt_tokens: u64,
    completion_tokens: u64,
}

#[derive(Debug)]
pub struct CostMeter {
    pricing: Pricing,
    budget: Option<f64>,
    ledger: Mutex<Ledger>,
}

/// The worst-case cost of one request, held until it is answered or abandoned.
#[must_use]
#[derive(Debug)]
pub struct Reservation<'a> {
    meter: &'a CostMeter,
    amount: f64,
}

impl CostMeter {
    pub fn new(pricing: Pricing, budget: Option<f64>) -> Self {
        Self { pricing, budget, ledger: Mutex::new(Ledger::default()) }
    }

    pub fn pricing(&self) -> &Pricing {
        &self.pricing
    }

    /// Holds the worst case of a request with `prompt_tokens` (estimated) and at most
    /// `max_completion_tokens`, or refuses when that could pass the budget.
    pub fn reserve(&self, prompt_tokens: u64, max_completion_tokens: u64) -> Result<Reservation<'_>, BudgetReached> {
        let next = self.pricing.cost(prompt_tokens, max_completion_tokens);
        let mut ledger = self.ledger.lock().expect("not poisoned");
        if let Some(budget) = self.budget.filter(|&b| ledger.spent + ledger.reserved + next > b) {
            return Err(BudgetReached { budget, spent: ledger.spent, reserved: ledger.reserved, next });
        }
        ledger.reserved += next;
        Ok(Reservation { meter: self, amount: next })
    }

    /// Records what was used without a reservation (tests, or counting a cached answer's origin).
    pub fn record(&self, prompt_tokens: u64, completion_tokens: u64) {
        let mut ledger = self.ledger.lock().expect("not poisoned");
        ledger.spent += self.pricing.cost(prompt_tokens, completion_tokens);
        // Counts come from the server's `usage`; a server that claims u64::MAX must not overflow them.
        ledger.prompt_tokens = ledger.prompt_tokens.saturating_add(prompt_tokens);
        ledger.completion_tokens = ledger.completion_tokens.saturating_add(completion_tokens);
    }

    /// (prompt tokens, completion tokens, USD spent).
    pub fn totals(&self) -> (u64, u64, f64) {
        let ledger = self.ledger.lock().expect("not poisoned");
        (ledger.prompt_tokens, ledger.completion_tokens, ledger.spent)
    }

    fn release(&self, amount: f64) {
        let mut ledger = self.ledger.lock().expect("not poisoned");
        ledger.reserved = (ledger.reserved - amount).max(0.0);
    }
}

impl Reservation<'_> {
    /// Replaces the worst case by what the answer's `usage` says was used.
    pub fn settle(self, prompt_tokens: u64, completion_tokens: u64) {
        self.meter.record(prompt_tokens, completion_tokens);
        // Drop releases the hold.
    }
}

impl Drop for Reservation<'_> {
    /// A failed request frees its hold: errors are not billed by the APIs this client targets.
    fn drop(&mut self) {
        self.meter.release(self.amount);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_counts_spent_and_in_flight_worst_cases() {
        // $1 per 1k tokens both ways keeps the arithmetic readable.
        let meter = CostMeter::new(Pricing { input_per_1k: 1.0, output_per_1k: 1.0 }, Some(1.0));
        let a = meter.reserve(300, 200).unwrap(); // 0.5 held
        let b = meter.reserve(300, 200).unwrap(); // 1.0 held
        let err = meter.reserve(1, 0).unwrap_err();
        assert!(err.to_string().contains("budget of $1.0000 reached"), "{err}");
        a.settle(300, 50); // 0.35 spent, 0.5 still held
        drop(b); // failed request: hold released, nothing spent
        assert_eq!(meter.totals(), (300, 50, 0.35));
        assert!(meter.reserve(300, 300).is_ok(), "0.35 + 0.6 fits in 1.0");
        assert!(meter.reserve(300, 400).is_err(), "0.35 + 0.7 would pass 1.0");
    }

    #[test]
    fn absurd_usage_saturates_instead_of_overflowing() {
        let meter = CostMeter::new(Pricing::default(), None);
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
