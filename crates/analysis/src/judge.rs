//! Outcomes: what one measured metric says about the candidate, and what an evaluation says
//! as a whole. Pure.

use serde::{Deserialize, Serialize};

use crate::spec::{Metric, OnNoData, Range, SampleSize};

/// What a source answered for one version.
#[derive(Clone, Debug, PartialEq)]
pub enum Reading {
    Value(f64),
    /// An empty result: nothing measured.
    NoData,
    /// Fewer samples than the metric asks for.
    TooFewSamples {
        have: u64,
        need: u64,
    },
    /// The source could not answer; the text says why.
    Error(String),
}

impl Reading {
    /// The value, if it is one and a number.
    pub fn value(&self) -> Option<f64> {
        match self {
            Reading::Value(v) if !v.is_nan() => Some(*v),
            _ => None,
        }
    }
}

/// The outcome of a metric or an evaluation. Ordered by precedence when combined: a Fail
/// anywhere decides, then an Error, then an Inconclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Outcome {
    Pass,
    Inconclusive,
    Error,
    Fail,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Pass => "Pass",
            Outcome::Inconclusive => "Inconclusive",
            Outcome::Error => "Error",
            Outcome::Fail => "Fail",
        })
    }
}

/// One metric at one evaluation: the values and what they mean.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricResult {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<f64>,
    pub outcome: Outcome,
    /// Why, in words (empty for a plain pass).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// Judges one metric from the candidate's and the primary's readings.
pub fn judge(metric: &Metric, candidate: &Reading, primary: &Reading) -> MetricResult {
    let (outcome, reason) = verdict(metric, candidate, primary);
    MetricResult {
        name: metric.name.clone(),
        candidate: candidate.value(),
        primary: primary.value(),
        outcome,
        reason,
    }
}

fn verdict(metric: &Metric, candidate: &Reading, primary: &Reading) -> (Outcome, String) {
    let no_data = |what: String| match metric.on_no_data {
        OnNoData::Inconclusive => (Outcome::Inconclusive, what),
        OnNoData::Pass => (Outcome::Pass, format!("{what} (onNoData: pass)")),
        OnNoData::Fail => (Outcome::Fail, format!("{what} (onNoData: fail)")),
    };
    let value = match candidate {
        Reading::Error(e) => return (Outcome::Error, e.clone()),
        Reading::NoData => return no_data("no data for the candidate".into()),
        Reading::Value(v) if v.is_nan() => return no_data("the candidate's value is NaN".into()),
        Reading::TooFewSamples { have, need } => {
            return (
                Outcome::Inconclusive,
                format!("the candidate has {have} samples, fewer than {need}"),
            )
        }
        Reading::Value(v) => *v,
    };
    if let Some(range) = &metric.threshold {
        if !range.contains(value) {
            return (
                Outcome::Fail,
                format!("the candidate's value {value} is not {}", describe(range)),
            );
        }
    }
    if let Some(range) = &metric.relative {
        let base = match primary {
            Reading::Error(e) => return (Outcome::Error, format!("primary: {e}")),
            Reading::Value(v) if !v.is_nan() => *v,
            _ => {
                return (
                    Outcome::Inconclusive,
                    "no value for the primary to compare with".into(),
                )
            }
        };
        let ratio = ratio(value, base);
        if !range.contains(ratio) {
            return (
                Outcome::Fail,
                format!(
                    "the candidate's value {value} is {ratio:.3}x the primary's {base}, not {}",
                    describe(range)
                ),
            );
        }
    }
    (Outcome::Pass, String::new())
}

/// `candidate ÷ primary`, where two zeros are equal (1) and anything over a zero is infinitely
/// more.
fn ratio(candidate: f64, primary: f64) -> f64 {
    if primary == 0.0 {
        if candidate == 0.0 {
            1.0
        } else {
            f64::INFINITY * candidate.signum()
        }
    } else {
        candidate / primary
    }
}

fn describe(range: &Range) -> String {
    match (range.min, range.max) {
        (Some(_), Some(_)) => format!("within {range}"),
        _ => range.to_string(),
    }
}

/// The sample-size guard: `None` when the candidate's sample suffices, else the reason every
/// metric is held inconclusive (or errors).
pub fn sample_guard(spec: &SampleSize, reading: &Reading) -> Option<(Outcome, String)> {
    match reading {
        Reading::Error(e) => Some((Outcome::Error, format!("sample size: {e}"))),
        Reading::Value(v) if *v >= spec.min => None,
        Reading::Value(v) if !v.is_nan() => Some((
            Outcome::Inconclusive,
            format!("sample size {v} is below {}", spec.min),
        )),
        _ => Some((
            Outcome::Inconclusive,
            format!("no sample yet (at least {} needed)", spec.min),
        )),
    }
}

/// The outcome of an evaluation: Fail if any metric failed, else Error if any errored, else
/// Inconclusive if any was inconclusive, else Pass (also when there are no metrics).
pub fn combine(results: &[MetricResult]) -> Outcome {
    results
        .iter()
        .map(|r| r.outcome)
        .max()
        .unwrap_or(Outcome::Pass)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Source;

    fn metric(threshold: Option<Range>, relative: Option<Range>, on_no_data: OnNoData) -> Metric {
        Metric {
            name: "m".into(),
            source: Source::Prometheus { query: "q".into() },
            threshold,
            relative,
            on_no_data,
        }
    }

    fn max(x: f64) -> Option<Range> {
        Some(Range {
            min: None,
            max: Some(x),
        })
    }

    #[test]
    fn thresholds_pass_and_fail() {
        let m = metric(max(0.01), None, OnNoData::Inconclusive);
        let none = Reading::NoData;
        assert_eq!(
            judge(&m, &Reading::Value(0.0), &none).outcome,
            Outcome::Pass
        );
        assert_eq!(
            judge(&m, &Reading::Value(0.01), &none).outcome,
            Outcome::Pass
        );
        let r = judge(&m, &Reading::Value(0.5), &none);
        assert_eq!(r.outcome, Outcome::Fail);
        assert_eq!(r.reason, "the candidate's value 0.5 is not at most 0.01");
        assert_eq!(r.candidate, Some(0.5));
    }

    #[test]
    fn no_data_nan_and_small_samples_are_inconclusive_unless_told_otherwise() {
        let m = metric(max(1.0), None, OnNoData::Inconclusive);
        for reading in [
            Reading::NoData,
            Reading::Value(f64::NAN),
            Reading::TooFewSamples { have: 3, need: 10 },
        ] {
            let r = judge(&m, &reading, &Reading::NoData);
            assert_eq!(r.outcome, Outcome::Inconclusive, "{reading:?}");
            assert_eq!(r.candidate, None);
        }
        let pass = metric(max(1.0), None, OnNoData::Pass);
        assert_eq!(
            judge(&pass, &Reading::NoData, &Reading::NoData).outcome,
            Outcome::Pass
        );
        let fail = metric(max(1.0), None, OnNoData::Fail);
        assert_eq!(
            judge(&fail, &Reading::NoData, &Reading::NoData).outcome,
            Outcome::Fail
        );
        // Errors are never turned into passes.
        let r = judge(&pass, &Reading::Error("down".into()), &Reading::NoData);
        assert_eq!(r.outcome, Outcome::Error);
    }

    #[test]
    fn relative_ranges_compare_with_the_primary() {
        let m = metric(None, max(1.2), OnNoData::Inconclusive);
        let ok = judge(&m, &Reading::Value(110.0), &Reading::Value(100.0));
        assert_eq!(ok.outcome, Outcome::Pass);
        let slow = judge(&m, &Reading::Value(130.0), &Reading::Value(100.0));
        assert_eq!(slow.outcome, Outcome::Fail);
        assert!(slow.reason.contains("1.300x"), "{}", slow.reason);
        let no_base = judge(&m, &Reading::Value(1.0), &Reading::NoData);
        assert_eq!(no_base.outcome, Outcome::Inconclusive);
        let base_err = judge(&m, &Reading::Value(1.0), &Reading::Error("x".into()));
        assert_eq!(base_err.outcome, Outcome::Error);
        // Zero over zero is equal; anything over zero is worse than any bound.
        assert_eq!(
            judge(&m, &Reading::Value(0.0), &Reading::Value(0.0)).outcome,
            Outcome::Pass
        );
        assert_eq!(
            judge(&m, &Reading::Value(1.0), &Reading::Value(0.0)).outcome,
            Outcome::Fail
        );
    }

    #[test]
    fn evaluations_combine_by_precedence() {
        let r = |outcome| MetricResult {
            name: "m".into(),
            candidate: None,
            primary: None,
            outcome,
            reason: String::new(),
        };
        use Outcome::*;
        assert_eq!(combine(&[]), Pass);
        assert_eq!(combine(&[r(Pass), r(Inconclusive)]), Inconclusive);
        assert_eq!(combine(&[r(Inconclusive), r(Error), r(Pass)]), Error);
        assert_eq!(combine(&[r(Error), r(Fail)]), Fail);
    }

    #[test]
    fn sample_guard_holds_small_samples() {
        let s = SampleSize {
            query: "q".into(),
            min: 100.0,
        };
        assert_eq!(sample_guard(&s, &Reading::Value(100.0)), None);
        assert_eq!(
            sample_guard(&s, &Reading::Value(99.0)).map(|g| g.0),
            Some(Outcome::Inconclusive)
        );
        assert_eq!(
            sample_guard(&s, &Reading::NoData).map(|g| g.0),
            Some(Outcome::Inconclusive)
        );
        assert_eq!(
            sample_guard(&s, &Reading::Error("down".into())).map(|g| g.0),
            Some(Outcome::Error)
        );
    }
}
