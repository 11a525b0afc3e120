//! The coordinator: a pure state machine ([`machine`]) that decides what happens to a run, and the
//! worker ([`worker`]) that feeds it events from NATS, carries out its commands, and guards each
//! transition with the run record's KV revision so several replicas never do a step twice.

pub mod machine;
pub mod worker;

pub use embedfleet_bus::RunState;
pub use machine::RunRecord;
