//! Kubernetes glue.
