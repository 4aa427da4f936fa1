//! The `analysis` block of a routemap (the release chart's `application.analysis`, see
//! docs/analysis.md): parsed, checked and completed with defaults. Pure.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration;

/// Most metrics in one analysis: each is queried twice per evaluation.
pub const MAX_METRICS: usize = 32;
/// Shortest accepted interval.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// How the candidate's traffic is controlled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// The candidate's weight goes up in steps.
    BlueGreen,
    /// Requests matching a header reach the candidate; promotion sends it everything.
    Canary,
}

/// Whether decisions change routing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    #[default]
    Auto,
    /// Measure and report what would be decided; routing stays as without analysis.
    DryRun,
}

/// What too many inconclusive (or erroring) evaluations in a row lead to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OnInconclusive {
    #[default]
    Hold,
    Rollback,
}

/// What a metric without data counts as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OnNoData {
    #[default]
    Inconclusive,
    Pass,
    Fail,
}

/// A statistic of an A/B/n business metric.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Statistic {
    /// Mean over transactions (values written).
    #[default]
    Mean,
    Sum,
    Count,
    Min,
    Max,
    /// Population standard deviation over transactions.
    Stddev,
    /// Mean over users of each user's sum (users served the version who wrote nothing count
    /// as 0, as in the A/B/n dashboard).
    UserMean,
}

/// Bounds a value must lie within; at least one is given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

impl Range {
    pub fn contains(&self, x: f64) -> bool {
        self.min.is_none_or(|m| x >= m) && self.max.is_none_or(|m| x <= m)
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.min, self.max) {
            (Some(a), Some(b)) => write!(f, "[{a}, {b}]"),
            (Some(a), None) => write!(f, "at least {a}"),
            (None, Some(b)) => write!(f, "at most {b}"),
            (None, None) => write!(f, "any value"),
        }
    }
}

/// Where a metric's values come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// An instant query, a template rendered per version.
    Prometheus { query: String },
    /// A statistic of the A/B/n store's business metric of the same name.
    Abn {
        statistic: Statistic,
        min_samples: u64,
    },
}

/// One metric, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    pub name: String,
    pub source: Source,
    /// The candidate's value must lie within it.
    pub threshold: Option<Range>,
    /// The candidate's value divided by the primary's must lie within it.
    pub relative: Option<Range>,
    pub on_no_data: OnNoData,
}

/// An HTTP endpoint the controller POSTs to.
#[derive(Clone, Debug, PartialEq)]
pub struct Hook {
    pub url: String,
    pub timeout: Duration,
}

/// The Prometheus the queries go to.
#[derive(Clone, Debug, PartialEq)]
pub struct Prometheus {
    pub address: String,
    pub timeout: Duration,
}

/// A Prometheus query whose value (for the candidate) must reach `min` for the other metrics
/// to be judged.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleSize {
    pub query: String,
    pub min: f64,
}

/// A routemap's analysis, checked and completed with defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Analysis {
    pub strategy: Strategy,
    pub mode: Mode,
    pub interval: Duration,
    pub progress_deadline: Duration,
    /// Candidate weight (percent) per step; blue-green only (canary: empty).
    pub steps: Vec<u32>,
    pub passes_per_step: u32,
    pub failure_limit: u32,
    /// 0: no limit.
    pub inconclusive_limit: u32,
    /// 0: no limit.
    pub error_limit: u32,
    pub on_inconclusive: OnInconclusive,
    pub prometheus: Option<Prometheus>,
    pub variables: serde_json::Map<String, serde_json::Value>,
    pub sample_size: Option<SampleSize>,
    pub metrics: Vec<Metric>,
    pub confirm_promotion: Option<Hook>,
    pub notify: Option<Hook>,
}

// The block as written; `deny_unknown_fields` so that a typo is an error, not a silent default.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawAnalysis {
    strategy: Option<Strategy>,
    #[serde(default)]
    mode: Mode,
    interval: Option<String>,
    progress_deadline: Option<String>,
    steps: Option<Vec<u32>>,
    passes_per_step: Option<u32>,
    failure_limit: Option<u32>,
    #[serde(default)]
    inconclusive_limit: u32,
    #[serde(default)]
    error_limit: u32,
    #[serde(default)]
    on_inconclusive: OnInconclusive,
    provider: Option<RawProvider>,
    #[serde(default)]
    variables: BTreeMap<String, serde_json::Value>,
    sample_size: Option<RawSampleSize>,
    #[serde(default)]
    metrics: Vec<RawMetric>,
    gates: Option<RawGates>,
    notify: Option<RawHook>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    prometheus: Option<RawPrometheus>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrometheus {
    address: String,
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSampleSize {
    query: String,
    min: f64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawMetric {
    name: String,
    source: Option<String>,
    query: Option<String>,
    threshold_range: Option<Range>,
    relative_range: Option<Range>,
    #[serde(default)]
    on_no_data: OnNoData,
    statistic: Option<Statistic>,
    min_samples: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawGates {
    confirm_promotion: Option<RawHook>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHook {
    url: String,
    timeout: Option<String>,
}

const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_DEADLINE: Duration = Duration::from_secs(600);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// Parses and checks a routemap's `analysis` block. The error names the field to fix, as
/// `analysis.<path>`.
pub fn parse(block: &serde_yaml::Value) -> Result<Analysis, String> {
    let raw: RawAnalysis =
        serde_yaml::from_value(block.clone()).map_err(|e| format!("analysis: {e}"))?;
    let strategy = raw
        .strategy
        .ok_or("analysis.strategy is required (blue-green or canary)")?;
    let dur = |field: &str, text: &Option<String>, default: Duration| -> Result<_, String> {
        match text {
            None => Ok(default),
            Some(t) => duration::parse(t).map_err(|e| format!("analysis.{field}: {e}")),
        }
    };
    let interval = dur("interval", &raw.interval, DEFAULT_INTERVAL)?;
    if interval < MIN_INTERVAL {
        return Err(format!(
            "analysis.interval must be at least {}",
            duration::display(MIN_INTERVAL)
        ));
    }
    let progress_deadline = dur("progressDeadline", &raw.progress_deadline, DEFAULT_DEADLINE)?;

    let steps = match (strategy, raw.steps) {
        (Strategy::Canary, Some(_)) => {
            return Err("analysis.steps applies to strategy blue-green only".into())
        }
        (Strategy::Canary, None) => Vec::new(),
        (Strategy::BlueGreen, None) => vec![100],
        (Strategy::BlueGreen, Some(steps)) => {
            if steps.is_empty() {
                return Err("analysis.steps must list at least one weight".into());
            }
            for (i, s) in steps.iter().enumerate() {
                if !(1..=100).contains(s) {
                    return Err(format!(
                        "analysis.steps[{i}] must be within 1..100, not {s}"
                    ));
                }
                if i > 0 && *s <= steps[i - 1] {
                    return Err(format!(
                        "analysis.steps must be strictly increasing: {s} follows {}",
                        steps[i - 1]
                    ));
                }
            }
            steps
        }
    };
    let passes_per_step = raw.passes_per_step.unwrap_or(1);
    if passes_per_step == 0 {
        return Err("analysis.passesPerStep must be at least 1".into());
    }
    let failure_limit = raw.failure_limit.unwrap_or(1);
    if failure_limit == 0 {
        return Err("analysis.failureLimit must be at least 1".into());
    }

    let prometheus = match raw.provider.and_then(|p| p.prometheus) {
        None => None,
        Some(p) => {
            check_url("analysis.provider.prometheus.address", &p.address)?;
            Some(Prometheus {
                address: p.address.trim_end_matches('/').to_string(),
                timeout: dur("provider.prometheus.timeout", &p.timeout, DEFAULT_TIMEOUT)?,
            })
        }
    };
    let needs_prometheus = |field: String| -> Result<(), String> {
        if prometheus.is_none() {
            return Err(format!(
                "{field} is a Prometheus query, but analysis.provider.prometheus.address is not set"
            ));
        }
        Ok(())
    };

    let sample_size = match raw.sample_size {
        None => None,
        Some(s) => {
            check_query("analysis.sampleSize.query", &s.query)?;
            needs_prometheus("analysis.sampleSize.query".into())?;
            Some(SampleSize {
                query: s.query,
                min: s.min,
            })
        }
    };

    if raw.metrics.len() > MAX_METRICS {
        return Err(format!(
            "analysis.metrics has {} entries, more than the limit of {MAX_METRICS}",
            raw.metrics.len()
        ));
    }
    let mut metrics: Vec<Metric> = Vec::with_capacity(raw.metrics.len());
    for (i, m) in raw.metrics.into_iter().enumerate() {
        let field = format!("analysis.metrics[{i}]");
        if !valid_metric_name(&m.name) {
            return Err(format!(
                "{field}.name {:?} must start with a letter or '_' and hold only letters, digits, '_', '-' and ':'",
                m.name
            ));
        }
        if metrics.iter().any(|o| o.name == m.name) {
            return Err(format!("{field}.name {:?} is used twice", m.name));
        }
        let source = match m.source.as_deref().unwrap_or("prometheus") {
            "prometheus" => {
                if m.statistic.is_some() || m.min_samples.is_some() {
                    return Err(format!(
                        "{field}: statistic and minSamples apply to source abn only"
                    ));
                }
                let query = m.query.unwrap_or_default();
                check_query(&format!("{field}.query"), &query)?;
                needs_prometheus(format!("{field}.query"))?;
                Source::Prometheus { query }
            }
            "abn" => {
                if m.query.is_some() {
                    return Err(format!(
                        "{field}.query applies to source prometheus only (source abn reads the A/B/n metric {:?})",
                        m.name
                    ));
                }
                Source::Abn {
                    statistic: m.statistic.unwrap_or_default(),
                    min_samples: m.min_samples.unwrap_or(0),
                }
            }
            other => {
                return Err(format!(
                    "{field}.source {other:?} is unknown (prometheus or abn)"
                ))
            }
        };
        for (name, range) in [
            ("thresholdRange", &m.threshold_range),
            ("relativeRange", &m.relative_range),
        ] {
            if let Some(r) = range {
                check_range(&format!("{field}.{name}"), r)?;
            }
        }
        metrics.push(Metric {
            name: m.name,
            source,
            threshold: m.threshold_range,
            relative: m.relative_range,
            on_no_data: m.on_no_data,
        });
    }

    let hook = |field: &str, h: RawHook| -> Result<Hook, String> {
        check_url(&format!("analysis.{field}.url"), &h.url)?;
        Ok(Hook {
            url: h.url,
            timeout: dur(
                &format!("{field}.timeout"),
                &h.timeout,
                DEFAULT_HOOK_TIMEOUT,
            )?,
        })
    };
    let confirm_promotion = match raw.gates.and_then(|g| g.confirm_promotion) {
        None => None,
        Some(h) => Some(hook("gates.confirmPromotion", h)?),
    };
    let notify = match raw.notify {
        None => None,
        Some(h) => Some(hook("notify", h)?),
    };

    Ok(Analysis {
        strategy,
        mode: raw.mode,
        interval,
        progress_deadline,
        steps,
        passes_per_step,
        failure_limit,
        inconclusive_limit: raw.inconclusive_limit,
        error_limit: raw.error_limit,
        on_inconclusive: raw.on_inconclusive,
        prometheus,
        variables: raw.variables.into_iter().collect(),
        sample_size,
        metrics,
        confirm_promotion,
        notify,
    })
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':'))
}

fn check_range(field: &str, r: &Range) -> Result<(), String> {
    match (r.min, r.max) {
        (None, None) => Err(format!("{field} needs a min or a max")),
        (Some(a), Some(b)) if a > b => Err(format!("{field}: min {a} is greater than max {b}")),
        (a, b) if a.is_some_and(f64::is_nan) || b.is_some_and(f64::is_nan) => {
            Err(format!("{field}: bounds must be numbers"))
        }
        _ => Ok(()),
    }
}

fn check_query(field: &str, query: &str) -> Result<(), String> {
    if query.trim().is_empty() {
        return Err(format!("{field} is empty"));
    }
    crate::query::check(query).map_err(|e| format!("{field}: {e}"))
}

fn check_url(field: &str, url: &str) -> Result<(), String> {
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => Err(format!("{field} {url:?} is not an http:// or https:// URL")),
    }
}

#[cfg(test)]
mod tests;
