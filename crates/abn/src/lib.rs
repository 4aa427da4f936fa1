//! The A/B/n service.

/// Messages and service of `abn.proto` (package `main`).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("main");
}

pub mod assign;
pub mod config;
pub mod dashboard;
pub mod service;
pub mod store;
