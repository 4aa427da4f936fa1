//! Automated analysis (docs/analysis.md): whether a candidate model version is good enough to
//! get more traffic, from metrics measured for it and for the primary.
//!
//! - [`spec`]: the routemap's `analysis` block, checked (pure).
//! - [`judge`]: outcomes of metrics and evaluations (pure).
//! - [`machine`]: the phases, the stored state and the traffic each version gets (pure).
//! - [`measure`]: one evaluation against Prometheus and the A/B/n store.
//! - [`http`]: Prometheus queries, the promotion gate and notifications.

pub mod duration;
pub mod http;
pub mod judge;
pub mod machine;
pub mod measure;
pub mod query;
pub mod spec;

pub use judge::{MetricResult, Outcome, Reading};
pub use machine::{Facts, Phase, State};
pub use spec::Analysis;
