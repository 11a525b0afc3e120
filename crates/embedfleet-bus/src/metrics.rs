//! The metrics every worker exports (names `embedfleet_<area>_<what>_<unit>`; the contract with
//! the Grafana dashboard is deploy/METRICS.md). Buckets are explicit: task times span
//! milliseconds (a cached chunk) to an hour (training).

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, register_histogram_vec, register_int_counter_vec, register_int_gauge_vec,
};
use std::sync::LazyLock;

pub const TASK_BUCKETS: &[f64] = &[0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];
pub const STORE_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

pub static MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        Opts::new("embedfleet_worker_messages_total", "Messages handled, by stage and outcome (ok, failed, dead_letter)"),
        &["stage", "outcome"]
    )
    .expect("metric registers once")
});

pub static PROCESSING: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        HistogramOpts::new("embedfleet_worker_processing_seconds", "Time to handle one message").buckets(TASK_BUCKETS.to_vec()),
        &["stage"]
    )
    .expect("metric registers once")
});

pub static PENDING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(Opts::new("embedfleet_worker_consumer_pending", "Messages waiting for this stage"), &["stage"])
        .expect("metric registers once")
});

pub static REDELIVERED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        Opts::new("embedfleet_worker_consumer_redelivered_total", "Messages received again after a failure or a lost worker"),
        &["stage"]
    )
    .expect("metric registers once")
});

pub static UP: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(Opts::new("embedfleet_worker_up", "1 while the worker is connected and serving"), &["stage"])
        .expect("metric registers once")
});

pub static STORE_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(Opts::new("embedfleet_store_bytes_total", "Bytes moved to and from the artifact store"), &["op"])
        .expect("metric registers once")
});

pub static STORE_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        HistogramOpts::new("embedfleet_store_op_seconds", "Artifact store operation latency").buckets(STORE_BUCKETS.to_vec()),
        &["op"]
    )
    .expect("metric registers once")
});

/// Feeds the artifact store's operations into the store metrics.
pub struct StoreMetrics;

impl embedfleet_core::store::StoreObserver for StoreMetrics {
    fn observe(&self, op: &'static str, bytes: usize, seconds: f64) {
        STORE_BYTES.with_label_values(&[op]).inc_by(bytes as u64);
        STORE_SECONDS.with_label_values(&[op]).observe(seconds);
    }
}

/// Touches every common metric so a scrape shows them before the first message.
pub fn init(stage: &str) {
    for outcome in ["ok", "failed", "dead_letter"] {
        MESSAGES.with_label_values(&[stage, outcome]);
    }
    PROCESSING.with_label_values(&[stage]);
    PENDING.with_label_values(&[stage]);
    REDELIVERED.with_label_values(&[stage]);
    UP.with_label_values(&[stage]);
    for op in ["get", "put"] {
        STORE_BYTES.with_label_values(&[op]);
        STORE_SECONDS.with_label_values(&[op]);
    }
}
