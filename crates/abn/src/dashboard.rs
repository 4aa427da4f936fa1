//! The A/B/n dashboard (`GET /abnDashboard`): per metric, a summary and a histogram per
//! version, over transactions and over users, in Iter8 v1.1's JSON shape (the Grafana
//! dashboard reads it). Unlike v1.1: metrics and versions come in a fixed order, users who
//! never wrote a metric count as 0 (not 10), and a histogram counts each value once.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::{Number, Value};

use crate::store::{Aggregate, SeriesData};

/// Buckets per histogram and decimals of their labels, as v1.1.
const BUCKETS: usize = 10;
const LABEL_DECIMALS: i32 = 1;

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Summary {
    version: usize,
    count: u64,
    mean: Value,
    std_dev: Value,
    min: Value,
    max: Value,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Bucket {
    /// A string here, an integer in summaries: as v1.1.
    version: String,
    bucket: String,
    value: Value,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct MetricEntry {
    histograms_over_transactions: Vec<Bucket>,
    histograms_over_users: Vec<Bucket>,
    summary_over_transactions: Vec<Summary>,
    summary_over_users: Vec<Summary>,
}

/// The dashboard of an application whose versions (by index) have these series; a version
/// with no signature (a resource missing) is `None` and left out, as in v1.1.
pub fn dashboard(versions: &[Option<SeriesData>]) -> Value {
    let metrics: BTreeSet<&String> = versions
        .iter()
        .flatten()
        .flat_map(|s| s.metrics.keys())
        .collect();
    let mut out = BTreeMap::new();
    for metric in metrics {
        let mut over_txn: Vec<(usize, Vec<f64>)> = Vec::new();
        let mut over_users: Vec<(usize, Vec<f64>)> = Vec::new();
        let mut entry = MetricEntry {
            histograms_over_transactions: Vec::new(),
            histograms_over_users: Vec::new(),
            summary_over_transactions: Vec::new(),
            summary_over_users: Vec::new(),
        };
        for (v, series) in versions.iter().enumerate() {
            let Some(series) = series else { continue };
            let data = series.metrics.get(metric).cloned().unwrap_or_default();
            entry
                .summary_over_transactions
                .push(summary(v, &data.transactions));
            // Users served this version who never wrote the metric count as 0.
            let mut users = data.user_sums.clone();
            let silent = series.users.saturating_sub(users.len() as u64);
            users.extend(std::iter::repeat_n(0.0, silent as usize));
            entry
                .summary_over_users
                .push(summary(v, &Aggregate::of(users.iter().copied())));
            over_txn.push((v, data.recent));
            over_users.push((v, users));
        }
        entry.histograms_over_transactions = histograms(&over_txn);
        entry.histograms_over_users = histograms(&over_users);
        out.insert(metric.clone(), entry);
    }
    serde_json::to_value(out).unwrap_or(Value::Null)
}

/// The body v1.1 sends: JSON indented by three spaces.
pub fn render(dashboard: &Value) -> Vec<u8> {
    let mut buf = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"   ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, formatter);
    // Serializing a Value into memory cannot fail.
    let _ = dashboard.serialize(&mut ser);
    buf
}

fn summary(version: usize, a: &Aggregate) -> Summary {
    let (min, max) = if a.count == 0 {
        (0.0, 0.0)
    } else {
        (a.min, a.max)
    };
    Summary {
        version,
        count: a.count,
        mean: number(a.mean()),
        std_dev: number(a.std_dev()),
        min: number(min),
        max: number(max),
    }
}

/// A float as Go's encoder writes it: integral values without a fraction.
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        Value::Number(Number::from(x as i64))
    } else {
        Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
}

/// Equal-width buckets between the smallest and largest value of every version, so the
/// versions' bars line up; versions in index order.
fn histograms(by_version: &[(usize, Vec<f64>)]) -> Vec<Bucket> {
    let all = by_version.iter().flat_map(|(_, xs)| xs.iter().copied());
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    if lo > hi {
        return Vec::new();
    }
    // All values equal: one bucket holds them.
    let buckets = if lo == hi { 1 } else { BUCKETS };
    let width = (hi - lo) / buckets as f64;
    let mut out = Vec::with_capacity(by_version.len() * buckets);
    for (v, xs) in by_version {
        let mut counts = vec![0u64; buckets];
        for &x in xs {
            let i = if width > 0.0 {
                (((x - lo) / width) as usize).min(buckets - 1)
            } else {
                0
            };
            counts[i] += 1;
        }
        for (i, count) in counts.into_iter().enumerate() {
            let start = lo + width * i as f64;
            let end = if i + 1 == buckets {
                hi
            } else {
                lo + width * (i + 1) as f64
            };
            out.push(Bucket {
                version: v.to_string(),
                bucket: format!("{} - {}", floor_to(start), floor_to(end)),
                value: number(count as f64),
            });
        }
    }
    out
}

/// Labels truncate (not round) to one decimal, as v1.1's.
fn floor_to(x: f64) -> f64 {
    let scale = 10f64.powi(LABEL_DECIMALS);
    let y = (x * scale).floor() / scale;
    // No "-0" in a label.
    if y == 0.0 {
        0.0
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MetricData;

    fn series(users: u64, metric: &str, values: &[f64], user_sums: &[f64]) -> SeriesData {
        let mut s = SeriesData {
            users,
            ..Default::default()
        };
        s.metrics.insert(
            metric.to_string(),
            MetricData {
                transactions: Aggregate::of(values.iter().copied()),
                recent: values.to_vec(),
                user_sums: user_sums.to_vec(),
            },
        );
        s
    }

    #[test]
    fn shape_and_numbers_match_v1_1() {
        let d = dashboard(&[
            Some(series(3, "sales", &[1.0, 2.0, 3.0, 4.0, 5.0], &[6.0, 9.0])),
            Some(series(1, "sales", &[10.0], &[10.0])),
        ]);
        let m = &d["sales"];
        assert_eq!(
            m["SummaryOverTransactions"][0],
            serde_json::json!({"Version": 0, "Count": 5, "Mean": 3, "StdDev": 2f64.sqrt(), "Min": 1, "Max": 5})
        );
        // The third user of version 0 wrote nothing: a 0, not v1.1's 10.
        assert_eq!(m["SummaryOverUsers"][0]["Count"], 3);
        assert_eq!(m["SummaryOverUsers"][0]["Min"], 0);
        assert_eq!(m["SummaryOverUsers"][0]["Mean"], 5);
        assert_eq!(m["SummaryOverUsers"][1]["Version"], 1);
        let h = m["HistogramsOverTransactions"].as_array().expect("array");
        assert_eq!(h.len(), 20);
        assert_eq!(
            h[0],
            serde_json::json!({"Version": "0", "Bucket": "1 - 1.9", "Value": 1})
        );
        assert_eq!(h[19]["Bucket"], "9.1 - 10");
        assert_eq!(h[19]["Value"], 1);
        let total: u64 = h.iter().map(|b| b["Value"].as_u64().expect("count")).sum();
        assert_eq!(total, 6, "every value counted once");
    }

    #[test]
    fn equal_values_make_one_bucket_counted_once() {
        let d = dashboard(&[Some(series(2, "m", &[7.0, 7.0], &[7.0, 7.0]))]);
        assert_eq!(
            d["m"]["HistogramsOverTransactions"],
            serde_json::json!([{"Version": "0", "Bucket": "7 - 7", "Value": 2}])
        );
    }

    #[test]
    fn versions_without_a_signature_are_left_out_and_order_is_fixed() {
        let d = dashboard(&[None, Some(series(1, "b", &[1.0], &[1.0]))]);
        assert_eq!(d["b"]["SummaryOverTransactions"][0]["Version"], 1);
        let body = String::from_utf8(render(&dashboard(&[
            Some(series(1, "z", &[1.0], &[1.0])),
            Some(series(1, "a", &[2.0], &[2.0])),
        ])))
        .expect("utf-8");
        assert!(body.find("\"a\"") < body.find("\"z\""), "{body}");
        assert!(body.starts_with("{\n   \""), "three-space indent: {body}");
    }

    #[test]
    fn a_version_whose_users_wrote_nothing_shows_zeros() {
        let quiet = SeriesData {
            users: 4,
            ..Default::default()
        };
        let d = dashboard(&[Some(series(1, "m", &[2.0], &[2.0])), Some(quiet)]);
        assert_eq!(
            d["m"]["SummaryOverUsers"][1],
            serde_json::json!({"Version": 1, "Count": 4, "Mean": 0, "StdDev": 0, "Min": 0, "Max": 0})
        );
        assert_eq!(d["m"]["SummaryOverTransactions"][1]["Count"], 0);
    }
}
