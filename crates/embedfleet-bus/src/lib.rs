//! NATS JetStream for embedfleet: the stream, consumer and bucket layout, typed messages with a
//! schema version, the worker loop (in-progress acks, retries, dead letters, graceful shutdown),
//! `/metrics` and health endpoints, and the fleet-wide LLM rate limit.

pub mod bus;
pub mod crash_loops;
pub mod health;
pub mod layout;
pub mod messages;
pub mod metrics;
pub mod options;
pub mod ratelimit;
pub mod runtime;
pub mod subjects;
#[cfg(feature = "testing")]
pub mod testing;
pub mod worker;

pub use bus::{Bus, BusError, RunState};
pub use messages::{Message, RunSpec};
pub use options::{BusOptions, NatsArgs};
pub use subjects::Stage;
