//! What the proxy tells its operators: Prometheus metrics and the access log.
//! Nothing here may block a request: counters are atomics, log lines go through a bounded queue.

pub mod access_log;
pub mod metrics;

pub use access_log::{AccessLog, Entry, Sink};
pub use metrics::{Metrics, MirrorOutcome};
