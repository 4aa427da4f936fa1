//! ghz's `runner.Report` (ghz v0.117.0, `runner/reporter.go`): the JSON a gRPC load run stores
//! under `insights.taskData.grpc.<endpoint>` of an `ExperimentResult`, as Iter8 v1.1 stored it.
//!
//! One model reads both a stored v1.1 result and ours, so the shape is checked in one place:
//! unknown fields are refused. Durations are Go `time.Duration`s (integer nanoseconds), the
//! histogram's marks are seconds. ghz's per-call `details` are read (v1.1 stored one entry per
//! call) but never written back: they made a stored result grow with the number of calls.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The percentages of ghz's `latencyDistribution`.
pub const LATENCY_PERCENTAGES: [u32; 7] = [10, 25, 50, 75, 90, 95, 99];

/// The number of intervals of ghz's histogram (it has one more mark than that).
pub const HISTOGRAM_INTERVALS: usize = 10;

/// Results by endpoint key (the call, or the user's endpoint id), as v1.1's `GHZResult`.
pub type GhzResult = BTreeMap<String, Report>;

/// ghz's `runner.Report`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// "normal" (the requests were sent), "timeout" (the duration ended) or "cancel".
    #[serde(
        rename = "endReason",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub end_reason: String,
    /// RFC 3339, seconds.
    #[serde(default)]
    pub date: String,
    #[serde(default)]
    pub options: Options,
    #[serde(default)]
    pub count: u64,
    /// Wall time of the run, ns.
    #[serde(default)]
    pub total: i64,
    /// Mean latency of every call, errors included, ns.
    #[serde(default)]
    pub average: i64,
    /// Fastest and slowest latency of the calls the histogram covers, ns.
    #[serde(default)]
    pub fastest: i64,
    #[serde(default)]
    pub slowest: i64,
    #[serde(default)]
    pub rps: f64,
    /// Go writes a nil map as `null`; ghz's maps are never nil, so ours are never `None`.
    #[serde(rename = "errorDistribution", default)]
    pub error_distribution: Option<BTreeMap<String, u64>>,
    #[serde(rename = "statusCodeDistribution", default)]
    pub status_code_distribution: Option<BTreeMap<String, u64>>,
    /// `null` when no call was counted.
    #[serde(rename = "latencyDistribution", default)]
    pub latency_distribution: Option<Vec<LatencyDistribution>>,
    /// `null` when no call was counted.
    #[serde(default)]
    pub histogram: Option<Vec<Bucket>>,
    /// Read, never written (see the module docs).
    #[serde(default, skip_serializing)]
    pub details: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
}

/// ghz's `runner.Options`: the options the run used (JSON names as ghz writes them; the fields
/// ghz writes even when empty are not optional here either).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub call: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub proto: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protoset: String,
    #[serde(
        rename = "import-paths",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub import_paths: Vec<String>,
    #[serde(
        rename = "enable-compression",
        default,
        skip_serializing_if = "is_false"
    )]
    pub enable_compression: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cacert: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cert: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cname: String,
    #[serde(rename = "skipTLS", default, skip_serializing_if = "is_false")]
    pub skip_tls: bool,
    #[serde(default)]
    pub insecure: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub authority: String,
    /// An integer in ghz; ours may be fractional (written as an integer when it is whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rps: Option<serde_json::Number>,
    #[serde(rename = "load-schedule", default)]
    pub load_schedule: String,
    #[serde(rename = "load-start", default)]
    pub load_start: i64,
    #[serde(rename = "load-end", default)]
    pub load_end: i64,
    #[serde(rename = "load-step", default)]
    pub load_step: i64,
    #[serde(rename = "load-step-duration", default)]
    pub load_step_duration: i64,
    #[serde(rename = "load-max-duration", default)]
    pub load_max_duration: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub concurrency: i64,
    #[serde(rename = "concurrency-schedule", default)]
    pub concurrency_schedule: String,
    #[serde(rename = "concurrency-start", default)]
    pub concurrency_start: i64,
    #[serde(rename = "concurrency-end", default)]
    pub concurrency_end: i64,
    #[serde(rename = "concurrency-step", default)]
    pub concurrency_step: i64,
    #[serde(rename = "concurrency-step-duration", default)]
    pub concurrency_step_duration: i64,
    #[serde(rename = "concurrency-max-duration", default)]
    pub concurrency_max_duration: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub total: i64,
    #[serde(rename = "async", default, skip_serializing_if = "is_false")]
    pub async_: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub connections: i64,
    /// ns
    #[serde(default, skip_serializing_if = "is_zero")]
    pub duration: i64,
    /// ns
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout: i64,
    /// ns
    #[serde(rename = "dial-timeout", default, skip_serializing_if = "is_zero")]
    pub dial_timeout: i64,
    /// ns
    #[serde(rename = "keepalive", default, skip_serializing_if = "is_zero")]
    pub keepalive: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    #[serde(default)]
    pub binary: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(rename = "CPUs", default)]
    pub cpus: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(rename = "skipFirst", default, skip_serializing_if = "is_zero")]
    pub skip_first: i64,
    #[serde(rename = "count-errors", default, skip_serializing_if = "is_false")]
    pub count_errors: bool,
}

/// One entry of `latencyDistribution`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyDistribution {
    pub percentage: u32,
    /// ns
    pub latency: i64,
}

/// One mark of `histogram`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    /// Seconds.
    pub mark: f64,
    pub count: u64,
    /// Fraction of the histogram's calls (0..=1).
    pub frequency: f64,
}

impl Report {
    /// Reads a report (a stored v1.1 one or ours), refusing fields ghz does not write.
    pub fn from_value(v: &Value) -> Result<Report, serde_json::Error> {
        Report::deserialize(v)
    }

    /// The report as JSON.
    pub fn to_value(&self) -> Value {
        // A struct of strings, numbers and maps always serializes.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Reads `insights.taskData.grpc` of a stored result (endpoint key → report).
pub fn read_result(v: &Value) -> Result<GhzResult, serde_json::Error> {
    GhzResult::deserialize(v)
}

/// ghz's 11 histogram marks (seconds) from the fastest to the slowest latency.
pub fn histogram_marks(fastest_s: f64, slowest_s: f64) -> [f64; HISTOGRAM_INTERVALS + 1] {
    let step = (slowest_s - fastest_s) / HISTOGRAM_INTERVALS as f64;
    let mut marks = [0.0; HISTOGRAM_INTERVALS + 1];
    for (i, m) in marks.iter_mut().enumerate().take(HISTOGRAM_INTERVALS) {
        *m = fastest_s + step * i as f64;
    }
    marks[HISTOGRAM_INTERVALS] = slowest_s;
    marks
}

/// ghz's histogram of latencies (seconds, ascending, each with its count): each goes to the
/// first mark it does not exceed, as ghz's `histogram` does; values past the slowest mark
/// (an approximate histogram's rounding) go to the last.
pub fn histogram(
    ascending: impl IntoIterator<Item = (f64, u64)>,
    fastest_s: f64,
    slowest_s: f64,
) -> Vec<Bucket> {
    let marks = histogram_marks(fastest_s, slowest_s);
    let mut counts = [0u64; HISTOGRAM_INTERVALS + 1];
    let mut bi = 0;
    let mut n = 0u64;
    for (v, c) in ascending {
        while bi < HISTOGRAM_INTERVALS && v > marks[bi] {
            bi += 1;
        }
        counts[bi] += c;
        n += c;
    }
    marks
        .iter()
        .zip(counts)
        .map(|(&mark, count)| Bucket {
            mark,
            count,
            frequency: if n == 0 { 0.0 } else { count as f64 / n as f64 },
        })
        .collect()
}

/// `t` as RFC 3339 in UTC, whole seconds (Go's `time.RFC3339` layout for a UTC time).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(x: &i64) -> bool {
    *x == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_689_596_636);
        assert_eq!(rfc3339(t), "2023-07-17T12:23:56Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn histogram_as_ghz() {
        // ghz: each latency goes to the first mark >= it.
        let lat = [(1.0, 1), (1.05, 2), (1.1, 1), (1.95, 3), (2.0, 1)];
        let b = histogram(lat, 1.0, 2.0);
        assert_eq!(b.len(), 11);
        let counts: Vec<u64> = b.iter().map(|b| b.count).collect();
        assert_eq!(counts, [1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 4]);
        assert!((b[0].frequency - 0.125).abs() < 1e-12);
        assert_eq!(b[10].mark, 2.0);
        // All equal: everything in the first mark.
        let b = histogram([(0.5, 4)], 0.5, 0.5);
        assert_eq!(b[0].count, 4);
    }
}
