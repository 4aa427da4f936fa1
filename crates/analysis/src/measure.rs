//! One evaluation: every metric measured for the candidate and the primary, then judged. The
//! only part of the analysis that reads the world (Prometheus, the A/B/n store).

use futures::future::join_all;
use iter8_abn::store::{Aggregate, Served, Store};

use crate::http::Http;
use crate::judge::{self, MetricResult, Outcome, Reading};
use crate::query::{self, Context};
use crate::spec::{Analysis, Metric, Source, Statistic};

/// One version as the analysis sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRef {
    /// The name of its first resource (`{{ version.name }}`).
    pub name: String,
    /// Its signature (the A/B/n store keys metrics by it).
    pub signature: String,
}

/// The application an evaluation is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub namespace: String,
    pub application: String,
    /// Primary (0) and candidate (1).
    pub versions: [VersionRef; 2],
}

/// Where measurements come from.
#[derive(Clone)]
pub struct Sources {
    pub http: Http,
    /// The A/B/n store (absent when it could not be opened).
    pub abn: Option<Store>,
}

/// The result of one evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub outcome: Outcome,
    /// What decided it, for people (empty for a pass).
    pub reason: String,
    pub metrics: Vec<MetricResult>,
}

/// Measures every metric of `analysis` for both versions of `subject` and judges them.
pub async fn evaluate(analysis: &Analysis, subject: &Subject, sources: &Sources) -> Verdict {
    let guard = match &analysis.sample_size {
        None => None,
        Some(spec) => {
            let reading = prometheus(analysis, subject, sources, &spec.query, 1).await;
            judge::sample_guard(spec, &reading)
        }
    };
    let measured = join_all(analysis.metrics.iter().map(|m| async move {
        let (candidate, primary) = futures::join!(
            read(analysis, subject, sources, m, 1),
            read(analysis, subject, sources, m, 0)
        );
        judge::judge(m, &candidate, &primary)
    }))
    .await;
    let metrics: Vec<MetricResult> = match &guard {
        None => measured,
        // A small sample decides nothing, not even a failure.
        Some((outcome, why)) => measured
            .into_iter()
            .map(|mut r| {
                if r.outcome != Outcome::Error {
                    r.outcome = *outcome;
                    r.reason = why.clone();
                }
                r
            })
            .collect(),
    };
    let outcome = match &guard {
        Some((o, _)) => (*o).max(judge::combine(&metrics)),
        None => judge::combine(&metrics),
    };
    let reason = match &guard {
        Some((o, why)) if *o == outcome => why.clone(),
        _ => metrics
            .iter()
            .find(|r| r.outcome == outcome && outcome != Outcome::Pass)
            .map(|r| format!("{}: {}", r.name, r.reason))
            .unwrap_or_default(),
    };
    Verdict {
        outcome,
        reason,
        metrics,
    }
}

async fn read(
    analysis: &Analysis,
    subject: &Subject,
    sources: &Sources,
    metric: &Metric,
    index: usize,
) -> Reading {
    match &metric.source {
        Source::Prometheus { query } => prometheus(analysis, subject, sources, query, index).await,
        Source::Abn {
            statistic,
            min_samples,
        } => {
            abn(
                subject,
                sources,
                &metric.name,
                *statistic,
                *min_samples,
                index,
            )
            .await
        }
    }
}

async fn prometheus(
    analysis: &Analysis,
    subject: &Subject,
    sources: &Sources,
    template: &str,
    index: usize,
) -> Reading {
    let Some(prom) = &analysis.prometheus else {
        return Reading::Error("no Prometheus address".into());
    };
    let ctx = Context::new(
        &subject.namespace,
        &subject.application,
        index,
        &subject.versions[index].name,
        analysis.interval,
        &analysis.variables,
    );
    match query::render(template, &ctx) {
        Err(e) => Reading::Error(format!("query template: {e}")),
        Ok(q) => sources.http.query(&prom.address, &q, prom.timeout).await,
    }
}

async fn abn(
    subject: &Subject,
    sources: &Sources,
    metric: &str,
    statistic: Statistic,
    min_samples: u64,
    index: usize,
) -> Reading {
    let Some(store) = &sources.abn else {
        return Reading::Error("the A/B/n metrics store is not available".into());
    };
    let version = &subject.versions[index];
    if version.signature.is_empty() {
        return Reading::NoData;
    }
    let served = Served {
        version: index as u32,
        signature: version.signature.clone(),
    };
    let key = format!("{}/{}", subject.namespace, subject.application);
    match store.series(&key, &served).await {
        Err(e) => Reading::Error(format!("A/B/n store: {e}")),
        Ok(series) => {
            let data = series.metrics.get(metric);
            let transactions = data.map(|d| d.transactions).unwrap_or_default();
            statistic_of(statistic, &transactions, series.users, min_samples)
        }
    }
}

/// A statistic of an A/B/n metric, or why there is none.
pub fn statistic_of(statistic: Statistic, t: &Aggregate, users: u64, min_samples: u64) -> Reading {
    let samples = if statistic == Statistic::UserMean {
        users
    } else {
        t.count
    };
    if samples == 0 && statistic != Statistic::Count {
        return Reading::NoData;
    }
    if samples < min_samples {
        return Reading::TooFewSamples {
            have: samples,
            need: min_samples,
        };
    }
    Reading::Value(match statistic {
        Statistic::Mean => t.mean(),
        Statistic::Sum => t.sum,
        Statistic::Count => t.count as f64,
        Statistic::Min => t.min,
        Statistic::Max => t.max,
        Statistic::Stddev => t.std_dev(),
        Statistic::UserMean => t.sum / users as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abn_statistics() {
        let t = Aggregate::of([1.0, 2.0, 3.0, 6.0]);
        let v = |s| statistic_of(s, &t, 8, 0);
        assert_eq!(v(Statistic::Mean), Reading::Value(3.0));
        assert_eq!(v(Statistic::Sum), Reading::Value(12.0));
        assert_eq!(v(Statistic::Count), Reading::Value(4.0));
        assert_eq!(v(Statistic::Min), Reading::Value(1.0));
        assert_eq!(v(Statistic::Max), Reading::Value(6.0));
        // Users who wrote nothing count as 0.
        assert_eq!(v(Statistic::UserMean), Reading::Value(1.5));
        assert_eq!(
            statistic_of(Statistic::Mean, &t, 8, 5),
            Reading::TooFewSamples { have: 4, need: 5 }
        );
        assert_eq!(
            statistic_of(Statistic::UserMean, &t, 8, 10),
            Reading::TooFewSamples { have: 8, need: 10 }
        );
        let empty = Aggregate::default();
        assert_eq!(statistic_of(Statistic::Mean, &empty, 0, 0), Reading::NoData);
        assert_eq!(
            statistic_of(Statistic::Count, &empty, 0, 0),
            Reading::Value(0.0)
        );
    }
}
