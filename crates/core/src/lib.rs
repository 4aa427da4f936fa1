//! Pure core of the release controller.
//!
//! Everything here is deterministic and free of I/O: no tokio, no kube client, no clock.
//! The data flows through the modules in this order:
//!
//! ```text
//! config ──┐
//! routemap ┴─> availability::weigh (readiness, weights, signatures) ─> render (templates -> objects)
//! ```
//!
//! The glue crate feeds trimmed copies of watched objects ([`availability::Observed`]) in
//! through a lookup function and applies what [`render::render`] returns after
//! [`render::check_target`] has accepted it.

// Tests may unwrap: a panic there is a failed test, which is what we want.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod availability;
mod budget;
pub mod config;
mod gotemplate;
pub mod render;
pub mod routemap;
pub mod yaml;

pub use availability::{weigh, Observed, Weighing};
pub use config::{Config, ConfigError, ResourceType};
pub use render::{check_target, render, RenderError, Rendered, RoutemapMeta};
pub use routemap::{parse, ResourceRef, Routemap, RoutemapError, RoutingTemplate, Version};
