//! Fortio's result shapes and histogram (fortio 1.63.5, the version Iter8 v1.1.2 ran;
//! unchanged through 1.68): `stats.Histogram` with its fixed bucket edges, its export to
//! `HistogramData` and its interpolated percentiles, and the `HTTPRunnerResults` JSON a stored
//! v1.1 result holds under `insights.taskData.http.<endpoint>`.
//!
//! The histogram is a port, not an approximation: same edges, same open-left intervals
//! `]start, end]`, same float arithmetic, so a latency lands in the bucket Fortio would put it
//! in and the exported `Data`/`Percentiles` mean what Fortio's mean. Values are seconds for
//! durations (resolution 0.001 s) and bytes for sizes.
//!
//! [`HttpRunnerResults`] is the one reader of that JSON: it parses the original's stored
//! fixture and our own output, so a field we fail to write (or misname) fails to parse.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Fortio's `histogramBucketValues` (stats/stats.go): bucket ends, in units of the divider.
pub const BUCKET_VALUES: [i32; 56] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, // by 1
    12, 14, 16, 18, 20, // by 2
    25, 30, 35, 40, 45, 50, // by 5
    60, 70, 80, 90, 100, // by 10
    120, 140, 160, 180, 200, //
    250, 300, 350, 400, 450, 500, //
    600, 700, 800, 900, 1000, //
    2000, 3000, 4000, 5000, 7500, 10000, //
    20000, 30000, 40000, 50000, 75000, 100000,
];

/// One special bucket for values <= 0 (index 0) ... and one for values above the last edge.
const NUM_BUCKETS: usize = BUCKET_VALUES.len() + 1;

/// Fortio's duration resolution (`periodic.DefaultRunnerOptions.Resolution`): 1 ms.
pub const DURATION_RESOLUTION: f64 = 0.001;

/// The bucket edges of a duration histogram in seconds, as Fortio exports them
/// (`divider * value + offset`; the first bucket really starts at Min, the last ends at Max).
pub fn duration_edges() -> Vec<f64> {
    BUCKET_VALUES
        .iter()
        .map(|&v| DURATION_RESOLUTION * f64::from(v) + 0.0)
        .collect()
}

/// Fortio's `stats.Counter`: count, min, max, sum and sum of squares.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counter {
    pub count: i64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    sum_of_squares: f64,
}

impl Counter {
    pub fn record(&mut self, v: f64) {
        if self.count == 0 {
            self.min = v;
            self.max = v;
        } else if v < self.min {
            self.min = v;
        } else if v > self.max {
            self.max = v;
        }
        self.count += 1;
        self.sum += v;
        self.sum_of_squares += v * v;
    }

    pub fn avg(&self) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        self.sum / self.count as f64
    }

    /// Population standard deviation, as Fortio (0 when rounding makes the variance negative).
    pub fn std_dev(&self) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let n = self.count as f64;
        let sigma = (self.sum_of_squares - self.sum * self.sum / n) / n;
        if sigma < 0.0 {
            0.0
        } else {
            sigma.sqrt()
        }
    }

    pub fn merge(&mut self, other: &Counter) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = other.clone();
            return;
        }
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
        self.sum_of_squares += other.sum_of_squares;
    }
}

/// Fortio's `stats.Histogram`: a [`Counter`] plus counts in the fixed buckets.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    pub counter: Counter,
    /// Subtracted from a value before bucketing.
    pub offset: f64,
    /// A value is bucketed in units of this (0.001: milliseconds of a value in seconds).
    pub divider: f64,
    counts: [i64; NUM_BUCKETS],
}

impl Histogram {
    /// `divider` must be > 0 (Fortio returns nil for 0).
    pub fn new(offset: f64, divider: f64) -> Histogram {
        Histogram {
            counter: Counter::default(),
            offset,
            divider: if divider > 0.0 { divider } else { 1.0 },
            counts: [0; NUM_BUCKETS],
        }
    }

    /// A duration histogram in seconds at Fortio's 1 ms resolution.
    pub fn durations() -> Histogram {
        Histogram::new(0.0, DURATION_RESOLUTION)
    }

    pub fn count(&self) -> i64 {
        self.counter.count
    }

    /// The bucket index of `v`: buckets are open on the left, `]edge[i-1], edge[i]]`.
    pub fn bucket_of(&self, v: f64) -> usize {
        let scaled = (v - self.offset) / self.divider;
        let first = f64::from(BUCKET_VALUES[0]);
        let last = f64::from(BUCKET_VALUES[BUCKET_VALUES.len() - 1]);
        if scaled <= first {
            return 0;
        }
        if scaled > last {
            return NUM_BUCKETS - 1;
        }
        // Fortio's epsilon check: a value right on an edge belongs to the bucket it ends.
        let mut whole = scaled as i64;
        if scaled - (whole as f64) < 1e-12 {
            whole -= 1;
        }
        BUCKET_VALUES
            .iter()
            .position(|&e| i64::from(e) > whole)
            .unwrap_or(NUM_BUCKETS - 1)
    }

    pub fn record(&mut self, v: f64) {
        self.counter.record(v);
        let i = self.bucket_of(v);
        self.counts[i] += 1;
    }

    /// Adds another histogram of the same offset and divider (per-connection histograms into
    /// the run's).
    pub fn merge(&mut self, other: &Histogram) {
        self.counter.merge(&other.counter);
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
    }

    /// Fortio's `Export()`: only non-empty buckets; the first starts at Min, the last ends at
    /// Max; `Percent` is cumulative. `Data` is `None` (JSON `null`) when nothing was recorded.
    pub fn export(&self) -> HistogramData {
        let c = &self.counter;
        let mut res = HistogramData {
            count: c.count,
            min: c.min,
            max: c.max,
            sum: c.sum,
            avg: c.avg(),
            std_dev: c.std_dev(),
            data: None,
            percentiles: None,
        };
        let Some(last_idx) = self.counts.iter().rposition(|&n| n > 0) else {
            return res;
        };
        let mut data: Vec<Bucket> = Vec::new();
        let mut prev = BUCKET_VALUES[0];
        let mut total = 0i64;
        let all = c.count as f64;
        for (i, &n) in self.counts.iter().enumerate().take(last_idx + 1) {
            if n == 0 {
                if i < BUCKET_VALUES.len() {
                    prev = BUCKET_VALUES[i];
                }
                continue;
            }
            total += n;
            let mut start = if data.is_empty() {
                c.min
            } else {
                self.divider * f64::from(prev) + self.offset
            };
            let end = if i < BUCKET_VALUES.len() {
                let cur = BUCKET_VALUES[i];
                let e = self.divider * f64::from(cur) + self.offset;
                prev = cur;
                e
            } else {
                start = self.divider * f64::from(prev) + self.offset;
                c.max
            };
            data.push(Bucket {
                start,
                end,
                percent: 100.0 * total as f64 / all,
                count: n,
            });
        }
        if let Some(b) = data.last_mut() {
            b.end = c.max;
        }
        res.data = Some(data);
        res
    }

    /// `export()` plus Fortio's interpolated percentiles (none when nothing was recorded, as
    /// Fortio omits them).
    pub fn export_with_percentiles(&self, percentiles: &[f64]) -> HistogramData {
        let mut h = self.export();
        h.calc_percentiles(percentiles);
        h
    }
}

/// Fortio's `stats.HistogramData` (Go field names).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistogramData {
    #[serde(rename = "Count")]
    pub count: i64,
    #[serde(rename = "Min")]
    pub min: f64,
    #[serde(rename = "Max")]
    pub max: f64,
    #[serde(rename = "Sum")]
    pub sum: f64,
    #[serde(rename = "Avg")]
    pub avg: f64,
    #[serde(rename = "StdDev")]
    pub std_dev: f64,
    /// `null` when empty (a nil Go slice).
    #[serde(rename = "Data")]
    pub data: Option<Vec<Bucket>>,
    /// Omitted when empty (`omitempty`).
    #[serde(
        rename = "Percentiles",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub percentiles: Option<Vec<Percentile>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    #[serde(rename = "Start")]
    pub start: f64,
    #[serde(rename = "End")]
    pub end: f64,
    /// Cumulative percentage of the count up to this bucket's end.
    #[serde(rename = "Percent")]
    pub percent: f64,
    #[serde(rename = "Count")]
    pub count: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Percentile {
    #[serde(rename = "Percentile")]
    pub percentile: f64,
    #[serde(rename = "Value")]
    pub value: f64,
}

impl HistogramData {
    /// Fortio's `CalcPercentile`: linear interpolation inside the bucket that holds it (the
    /// first bucket's start being Min); Min below the first point, Max at 100.
    pub fn percentile(&self, p: f64) -> f64 {
        let Some(data) = self.data.as_deref().filter(|d| !d.is_empty()) else {
            return 0.0;
        };
        if p >= 100.0 {
            return self.max;
        }
        let mut pp = 100.0 / self.count as f64;
        if p <= pp {
            return self.min;
        }
        for b in data {
            if p <= b.percent {
                return b.start + (p - pp) / (b.percent - pp) * (b.end - b.start);
            }
            pp = b.percent;
        }
        self.max
    }

    /// Fills `Percentiles` (left out when nothing was recorded, as Fortio).
    pub fn calc_percentiles(&mut self, percentiles: &[f64]) {
        if self.count == 0 {
            return;
        }
        let v = percentiles
            .iter()
            .map(|&p| Percentile {
                percentile: p,
                value: self.percentile(p),
            })
            .collect();
        self.percentiles = Some(v);
    }
}

/// Fortio's `fhttp.HTTPRunnerResults` as JSON (Go field names; fortio 1.57–1.68 write the
/// same set). Every field the original's stored fixture has is required here, so reading our
/// output with it proves we write them all. Go's `[]byte` `Payload` is base64 or `null`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpRunnerResults {
    #[serde(rename = "RunType")]
    pub run_type: String,
    #[serde(rename = "Labels")]
    pub labels: String,
    /// RFC 3339 with nanoseconds.
    #[serde(rename = "StartTime")]
    pub start_time: String,
    /// `%.9g` of the QPS, or "max".
    #[serde(rename = "RequestedQPS")]
    pub requested_qps: String,
    /// "exactly N calls" or a Go duration ("10s").
    #[serde(rename = "RequestedDuration")]
    pub requested_duration: String,
    #[serde(rename = "ActualQPS")]
    pub actual_qps: f64,
    /// Nanoseconds.
    #[serde(rename = "ActualDuration")]
    pub actual_duration: i64,
    #[serde(rename = "NumThreads")]
    pub num_threads: i64,
    #[serde(rename = "Version")]
    pub version: String,
    /// Every call, errors included.
    #[serde(rename = "DurationHistogram")]
    pub duration_histogram: HistogramData,
    /// The calls that were errors only.
    #[serde(rename = "ErrorsDurationHistogram")]
    pub errors_duration_histogram: HistogramData,
    #[serde(rename = "Exactly")]
    pub exactly: i64,
    #[serde(rename = "Jitter")]
    pub jitter: bool,
    #[serde(rename = "Uniform")]
    pub uniform: bool,
    #[serde(rename = "NoCatchUp")]
    pub no_catch_up: bool,
    #[serde(rename = "RunID")]
    pub run_id: i64,
    #[serde(rename = "AccessLoggerInfo")]
    pub access_logger_info: String,
    #[serde(rename = "ID")]
    pub id: String,
    /// Calls by HTTP status code; "-1" for socket errors and timeouts.
    #[serde(rename = "RetCodes")]
    pub ret_codes: BTreeMap<String, i64>,
    /// Connections by remote "ip:port".
    #[serde(rename = "IPCountMap")]
    pub ip_count_map: BTreeMap<String, i64>,
    #[serde(rename = "Insecure")]
    pub insecure: bool,
    #[serde(rename = "MTLS")]
    pub mtls: bool,
    #[serde(rename = "CACert")]
    pub ca_cert: String,
    #[serde(rename = "Cert")]
    pub cert: String,
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "UnixDomainSocket")]
    pub unix_domain_socket: String,
    #[serde(rename = "URL")]
    pub url: String,
    /// The std client's pool size (1); the load's connections are `NumThreads`.
    #[serde(rename = "NumConnections")]
    pub num_connections: i64,
    #[serde(rename = "Compression")]
    pub compression: bool,
    #[serde(rename = "DisableFastClient")]
    pub disable_fast_client: bool,
    #[serde(rename = "HTTP10")]
    pub http10: bool,
    #[serde(rename = "H2")]
    pub h2: bool,
    #[serde(rename = "DisableKeepAlive")]
    pub disable_keep_alive: bool,
    #[serde(rename = "AllowHalfClose")]
    pub allow_half_close: bool,
    #[serde(rename = "FollowRedirects")]
    pub follow_redirects: bool,
    #[serde(rename = "Resolve")]
    pub resolve: String,
    /// Nanoseconds.
    #[serde(rename = "HTTPReqTimeOut")]
    pub http_req_timeout: i64,
    #[serde(rename = "UserCredentials")]
    pub user_credentials: String,
    #[serde(rename = "ContentType")]
    pub content_type: String,
    #[serde(rename = "Payload")]
    pub payload: Option<String>,
    #[serde(rename = "MethodOverride")]
    pub method_override: String,
    #[serde(rename = "LogErrors")]
    pub log_errors: bool,
    #[serde(rename = "SequentialWarmup")]
    pub sequential_warmup: bool,
    #[serde(rename = "ConnReuseRange")]
    pub conn_reuse_range: [i64; 2],
    #[serde(rename = "NoResolveEachConn")]
    pub no_resolve_each_conn: bool,
    /// Nanoseconds.
    #[serde(rename = "Offset")]
    pub offset: i64,
    #[serde(rename = "Resolution")]
    pub resolution: f64,
    /// Response sizes (headers + body), bytes.
    #[serde(rename = "Sizes")]
    pub sizes: Option<HistogramData>,
    #[serde(rename = "HeaderSizes")]
    pub header_sizes: Option<HistogramData>,
    /// Sockets opened per connection.
    #[serde(rename = "Sockets")]
    pub sockets: Option<Vec<i64>>,
    #[serde(rename = "SocketCount")]
    pub socket_count: i64,
    /// Connection (TCP + TLS) set-up times, seconds.
    #[serde(rename = "ConnectionStats")]
    pub connection_stats: Option<HistogramData>,
    #[serde(rename = "AbortOn")]
    pub abort_on: i64,
}

/// Results by endpoint key (the URL, or the user's endpoint id), as v1.1's `HTTPResult`.
pub type HttpResult = BTreeMap<String, HttpRunnerResults>;

impl HttpRunnerResults {
    pub fn from_value(v: &Value) -> Result<HttpRunnerResults, serde_json::Error> {
        HttpRunnerResults::deserialize(v)
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Reads `insights.taskData.http` (or a fixture of that shape).
pub fn read_result(v: &Value) -> Result<HttpResult, serde_json::Error> {
    HttpResult::deserialize(v)
}

/// Go's `%.9g` (how Fortio writes `RequestedQPS`).
pub fn format_g9(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    if x == 0.0 {
        return "0".into();
    }
    const P: i32 = 9;
    // The exponent after rounding to P significant digits decides fixed vs exponent form.
    let sci = format!("{:.*e}", (P - 1) as usize, x);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..P).contains(&exp) {
        let m = trim_zeros(mantissa);
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{m}e{sign}{:02}", exp.abs())
    } else {
        let decimals = (P - 1 - exp).max(0) as usize;
        trim_zeros(&format!("{x:.decimals$}")).to_string()
    }
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// Go's `time.Duration.String()` ("10s", "1m30s", "1.5s", "250ms", "0s").
pub fn format_go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000_000_000 {
        let (unit, div) = if ns < 1_000 {
            ("ns", 1u128)
        } else if ns < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", frac(ns, div));
    }
    let total_s = ns / 1_000_000_000;
    let (h, m) = (total_s / 3600, (total_s / 60) % 60);
    let s_ns = ns - (h * 3600 + m * 60) * 1_000_000_000;
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&format!("{}s", frac(s_ns, 1_000_000_000)));
    out
}

/// `n / div` with the fraction's trailing zeros dropped.
fn frac(n: u128, div: u128) -> String {
    let (whole, rest) = (n / div, n % div);
    if rest == 0 {
        return whole.to_string();
    }
    let width = div.ilog10() as usize;
    let f = format!("{rest:0width$}");
    format!("{whole}.{}", f.trim_end_matches('0'))
}

/// Go's `time.Time` JSON (RFC 3339, nanoseconds without trailing zeros), in UTC.
pub fn rfc3339_nano(t: SystemTime) -> String {
    let dt: chrono::DateTime<chrono::Utc> = t.into();
    let base = dt.format("%Y-%m-%dT%H:%M:%S").to_string();
    let nanos = dt.timestamp_subsec_nanos();
    if nanos == 0 {
        format!("{base}Z")
    } else {
        let f = format!("{nanos:09}");
        format!("{base}.{}Z", f.trim_end_matches('0'))
    }
}

/// Fortio's run ID ("YYYY-MM-DD-HHMMSS" of the start, no labels, no run id).
pub fn run_id(t: SystemTime) -> String {
    let dt: chrono::DateTime<chrono::Utc> = t.into();
    dt.format("%Y-%m-%d-%H%M%S").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_open_on_the_left() {
        let h = Histogram::durations();
        assert_eq!(h.bucket_of(0.0), 0);
        assert_eq!(h.bucket_of(0.0005), 1);
        assert_eq!(h.bucket_of(0.001), 1, "1 ms ends ]0, 1]");
        assert_eq!(h.bucket_of(0.0010001), 2);
        assert_eq!(h.bucket_of(0.013), 13, "]12, 14]");
        assert_eq!(h.bucket_of(0.014), 13);
        assert_eq!(h.bucket_of(99.0), 55);
        assert_eq!(h.bucket_of(100.0), 55);
        assert_eq!(h.bucket_of(100.5), 56, "above the last edge");
    }

    #[test]
    fn export_and_percentiles_match_fortio() {
        // Fortio's stats_test TestHistogramExport1 / TestPercentiles-like case: values 1..=10 ms.
        let mut h = Histogram::durations();
        for i in 1..=10 {
            h.record(f64::from(i) / 1000.0);
        }
        let d = h.export_with_percentiles(&[50.0, 90.0, 99.0]);
        assert_eq!(d.count, 10);
        let data = d.data.clone().expect("data");
        assert_eq!(data.len(), 10);
        assert_eq!(data[0].start, 0.001, "first bucket starts at Min");
        assert_eq!(data[0].end, 0.001);
        assert_eq!(data[9].end, 0.01, "last bucket ends at Max");
        assert_eq!(data[4].percent, 50.0);
        let p = d.percentiles.expect("percentiles");
        assert!((p[0].value - 0.005).abs() < 1e-12, "{p:?}");
        assert!((p[2].value - 0.0099).abs() < 1e-12, "{p:?}");
        assert!((d.avg - 0.0055).abs() < 1e-12);
    }

    #[test]
    fn empty_histogram_exports_like_go() {
        let d = Histogram::durations().export_with_percentiles(&[50.0]);
        let v = serde_json::to_value(&d).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"Count":0,"Min":0.0,"Max":0.0,"Sum":0.0,"Avg":0.0,"StdDev":0.0,"Data":null})
        );
    }

    #[test]
    fn go_formats() {
        assert_eq!(format_g9(8.0), "8");
        assert_eq!(format_g9(1000.0), "1000");
        assert_eq!(format_g9(0.5), "0.5");
        assert_eq!(format_g9(1.0 / 3.0), "0.333333333");
        assert_eq!(format_g9(123456789.0), "123456789");
        assert_eq!(format_g9(1e10), "1e+10");
        assert_eq!(format_g9(0.00001), "1e-05");
        assert_eq!(format_go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(format_go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format_go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_go_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_go_duration(Duration::ZERO), "0s");
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_689_948_040, 134_434_900);
        assert_eq!(rfc3339_nano(t), "2023-07-21T14:00:40.1344349Z");
        assert_eq!(run_id(t), "2023-07-21-140040");
    }
}
