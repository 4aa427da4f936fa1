//! A real Kubernetes control plane for tests, the demo and the benchmarks.

pub mod tools;

pub use tools::Tools;
