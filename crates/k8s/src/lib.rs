//! Kubernetes glue of the release controller: watches feed in-memory stores and an index from
//! each object to the routemaps that name it; a de-duplicating queue feeds one reconcile loop;
//! one writer applies routing objects, deletes them, removes the legacy finalizer and
//! publishes Events.

pub mod controller;
pub mod keys;
pub mod lease;
pub mod metrics;
pub mod queue;
pub mod state;
pub mod writer;

pub use controller::{Controller, Options};
pub use lease::{Leadership, LeaseConfig};
