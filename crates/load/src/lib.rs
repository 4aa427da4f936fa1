//! Performance tests of a model version: an HTTP and a gRPC load generator whose results keep
//! the shapes Iter8 v1.1 stored (Fortio's `HTTPRunnerResults`, ghz's `Report`) inside its
//! `ExperimentResult`, service-level objectives on them, and the dashboards' JSON
//! (`/httpDashboard`, `/grpcDashboard`) built from a stored result.

pub mod dashboard;
pub mod fortio;
pub mod ghz;
pub mod grpc;
pub mod http;
pub mod result;
pub mod slo;
