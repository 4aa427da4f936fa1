//! Kubernetes glue of the release controller, one way through: [`watch`]es feed the stores
//! of [`state`] (and [`sync`] tracks that they are complete); a de-duplicating [`queue`] feeds
//! a small pool of workers in [`controller`]; each reconcile is [`plan`]ned from plain values
//! and carried out by the one [`applier`], which alone writes (routing objects, deletes,
//! finalizer removal, [`events`]). [`lease`] decides who may write.

pub mod analysis;
pub mod applier;
pub mod controller;
pub mod error;
pub mod events;
pub mod keys;
pub mod lease;
pub mod metrics;
pub mod plan;
pub mod queue;
pub mod state;
pub mod sync;
pub mod watch;

pub use controller::{Controller, Options};
pub use error::{ApiFailure, Error};
pub use lease::{Leadership, LeaseConfig};
