//! Service-level objectives of a performance test: upper limits on what a load run measured.
//! Iter8 v1.1 dropped them; users of load testers expect a test that fails when its latency or
//! error rate is too high, so CI can gate on it.
//!
//! Values (all upper limits, latencies in milliseconds):
//!
//! ```yaml
//! slos:
//!   error-rate: 0.01      # errors / requests
//!   error-count: 0
//!   latency-mean: 50
//!   latency-p99: 200      # any percentile: latency-p50, latency-p99.9, ...
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a load run measured, as the objectives read it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measured {
    pub requests: u64,
    pub errors: u64,
    /// Mean latency in ms (of every request, errors included, as Fortio's histogram).
    pub mean_ms: f64,
    /// Latency percentiles in ms, by percentile (e.g. 99.9).
    pub percentiles_ms: Vec<(f64, f64)>,
}

/// One objective and what the run gave.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub metric: String,
    pub limit: f64,
    /// `None` when the run did not measure it (a percentile not collected, no requests).
    pub value: Option<f64>,
    pub held: bool,
}

/// Why objectives are not usable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SloError {
    #[error("unknown SLO metric {0:?} (use error-rate, error-count, latency-mean or latency-pNN, e.g. latency-p99)")]
    Unknown(String),
    #[error("SLO {metric}: the limit {limit} must be a finite number of at least 0")]
    BadLimit { metric: String, limit: f64 },
}

/// The percentile an objective names (`latency-p99.9` → 99.9), if it names one.
pub fn percentile_of(metric: &str) -> Option<f64> {
    let p: f64 = metric.strip_prefix("latency-p")?.parse().ok()?;
    (p > 0.0 && p < 100.0).then_some(p)
}

/// Checks the objectives' names and limits (before any load is sent).
pub fn validate(slos: &BTreeMap<String, f64>) -> Result<(), SloError> {
    for (metric, &limit) in slos {
        let known = matches!(
            metric.as_str(),
            "error-rate" | "error-count" | "latency-mean"
        ) || percentile_of(metric).is_some();
        if !known {
            return Err(SloError::Unknown(metric.clone()));
        }
        if !limit.is_finite() || limit < 0.0 {
            return Err(SloError::BadLimit {
                metric: metric.clone(),
                limit,
            });
        }
    }
    Ok(())
}

/// The percentiles the objectives need measured.
pub fn percentiles_needed(slos: &BTreeMap<String, f64>) -> Vec<f64> {
    slos.keys().filter_map(|m| percentile_of(m)).collect()
}

/// Evaluates every objective (in name order); a value that was not measured does not hold.
pub fn evaluate(slos: &BTreeMap<String, f64>, m: &Measured) -> Vec<Outcome> {
    slos.iter()
        .map(|(metric, &limit)| {
            let value = match metric.as_str() {
                "error-count" => Some(m.errors as f64),
                "error-rate" if m.requests > 0 => Some(m.errors as f64 / m.requests as f64),
                "latency-mean" if m.requests > 0 => Some(m.mean_ms),
                _ => percentile_of(metric).and_then(|p| {
                    m.percentiles_ms
                        .iter()
                        .find(|(q, _)| (q - p).abs() < 1e-9)
                        .map(|&(_, v)| v)
                }),
            };
            Outcome {
                metric: metric.clone(),
                limit,
                value,
                held: value.is_some_and(|v| v <= limit),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slos(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn objectives_hold_or_not() {
        let m = Measured {
            requests: 100,
            errors: 2,
            mean_ms: 12.0,
            percentiles_ms: vec![(50.0, 10.0), (99.0, 40.0)],
        };
        let out = evaluate(
            &slos(&[
                ("error-rate", 0.01),
                ("error-count", 5.0),
                ("latency-mean", 20.0),
                ("latency-p99", 30.0),
                ("latency-p99.9", 100.0),
            ]),
            &m,
        );
        let held: Vec<(&str, bool)> = out.iter().map(|o| (o.metric.as_str(), o.held)).collect();
        assert_eq!(
            held,
            [
                ("error-count", true),
                ("error-rate", false),
                ("latency-mean", true),
                ("latency-p99", false),
                ("latency-p99.9", false)
            ]
        );
        assert_eq!(out[4].value, None, "not measured: does not hold");
    }

    #[test]
    fn bad_objectives_are_named() {
        assert_eq!(
            validate(&slos(&[("latency-max", 1.0)])),
            Err(SloError::Unknown("latency-max".into()))
        );
        assert!(validate(&slos(&[("error-rate", -1.0)])).is_err());
        assert!(validate(&slos(&[("latency-p100", 1.0)])).is_err());
        assert!(validate(&slos(&[("latency-p99.9", 1.0), ("error-count", 0.0)])).is_ok());
        assert_eq!(percentiles_needed(&slos(&[("latency-p95", 1.0)])), [95.0]);
    }
}
