//! Prometheus metrics of the controller. Labels take a few fixed values (a category, a result,
//! a resource type), never object names, except the analysis metrics, which are per analysed
//! application (users ask for them by name; there is one set per application under analysis).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::Controller;

type Labels = Vec<(&'static str, String)>;

/// Every metric the controller exports.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Counter,
    pub reconcile_seconds: Histogram,
    /// Errors by category (template_parse, apply, watch, ...).
    pub errors: Family<Labels, Counter>,
    /// Writes of routing objects by result (applied, failed, unchanged).
    pub applies: Family<Labels, Counter>,
    pub deletes: Counter,
    pub finalizers_removed: Counter,
    /// Events published, by type (Normal, Warning).
    pub events: Family<Labels, Counter>,
    /// Writes a standby refused to make.
    pub not_leader: Counter,
    pub leader: Gauge,
    /// Lease reads and writes that failed.
    pub lease_failures: Counter,
    /// Watched objects by resource type.
    pub watched: Family<Labels, Gauge>,
    pub queue_depth: Gauge,
    pub watch_restarts: Counter,
    /// Changes delivered by each watch (whether or not they changed what the store keeps).
    pub watch_events: Family<Labels, Counter>,
    /// Analysis phase per application: 1 for the current phase, 0 for the others.
    pub analysis_phase: Family<Labels, Gauge>,
    /// Weight per version of each analysed application.
    pub analysis_weight: Family<Labels, Gauge>,
    /// The last measured value per metric and version of each analysed application.
    pub analysis_metric_value: Family<Labels, Gauge<f64, AtomicU64>>,
    /// Evaluations by outcome.
    pub analysis_evaluations: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("iter8");
        let m = Metrics {
            reconciles: Counter::default(),
            reconcile_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            errors: Family::default(),
            applies: Family::default(),
            deletes: Counter::default(),
            finalizers_removed: Counter::default(),
            events: Family::default(),
            not_leader: Counter::default(),
            leader: Gauge::default(),
            lease_failures: Counter::default(),
            watched: Family::default(),
            queue_depth: Gauge::default(),
            watch_restarts: Counter::default(),
            watch_events: Family::default(),
            analysis_phase: Family::default(),
            analysis_weight: Family::default(),
            analysis_metric_value: Family::default(),
            analysis_evaluations: Family::default(),
            registry: Registry::default(),
        };
        registry.register("reconciles", "Routemap reconciles", m.reconciles.clone());
        registry.register(
            "reconcile_duration_seconds",
            "Time to reconcile one routemap",
            m.reconcile_seconds.clone(),
        );
        registry.register("errors", "Errors by category", m.errors.clone());
        registry.register(
            "applies",
            "Routing object writes by result",
            m.applies.clone(),
        );
        registry.register(
            "deletes",
            "Routing objects deleted with their routemap",
            m.deletes.clone(),
        );
        registry.register(
            "finalizers_removed",
            "Legacy finalizers removed from deleting objects",
            m.finalizers_removed.clone(),
        );
        registry.register(
            "events",
            "Kubernetes Events published, by type",
            m.events.clone(),
        );
        registry.register(
            "standby_writes_refused",
            "Writes not made because this replica is not the leader",
            m.not_leader.clone(),
        );
        registry.register(
            "leader",
            "1 if this replica holds the lease",
            m.leader.clone(),
        );
        registry.register(
            "lease_update_failures",
            "Lease reads and updates that failed (retried with backoff)",
            m.lease_failures.clone(),
        );
        registry.register(
            "watched_objects",
            "Watched objects by resource type",
            m.watched.clone(),
        );
        registry.register("queue_depth", "Work items waiting", m.queue_depth.clone());
        registry.register(
            "watch_restarts",
            "Watch streams that failed and restarted",
            m.watch_restarts.clone(),
        );
        registry.register(
            "watch_events",
            "Changes delivered by each watch, counted before the store compares them",
            m.watch_events.clone(),
        );
        registry.register(
            "analysis_phase",
            "1 for the current analysis phase of an application, 0 for the others",
            m.analysis_phase.clone(),
        );
        registry.register(
            "analysis_weight",
            "Weight of each version of an analysed application",
            m.analysis_weight.clone(),
        );
        registry.register(
            "analysis_metric_value",
            "Last measured value of an analysis metric, per version",
            m.analysis_metric_value.clone(),
        );
        registry.register(
            "analysis_evaluations",
            "Analysis evaluations by outcome",
            m.analysis_evaluations.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts an error of `category`.
    pub fn error(&self, category: &'static str) {
        self.errors
            .get_or_create(&vec![("category", category.to_string())])
            .inc();
    }

    /// Counts a routing object write with `result`.
    pub fn apply(&self, result: &'static str) {
        self.applies
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }

    /// Reads a counter of `errors` (for tests).
    pub fn errors_with(&self, category: &'static str) -> u64 {
        self.errors
            .get_or_create(&vec![("category", category.to_string())])
            .get()
    }

    /// Shows an application's analysis: its phase, its versions' weights and the values of the
    /// last evaluation.
    pub fn analysis(
        &self,
        namespace: &str,
        application: &str,
        state: &iter8_analysis::State,
        versions: &[(String, u32)],
    ) {
        let app = |extra: Vec<(&'static str, String)>| {
            let mut l = vec![
                ("namespace", namespace.to_string()),
                ("application", application.to_string()),
            ];
            l.extend(extra);
            l
        };
        for phase in iter8_analysis::Phase::ALL {
            self.analysis_phase
                .get_or_create(&app(vec![("phase", phase.as_str().to_string())]))
                .set(i64::from(phase == state.phase));
        }
        for (name, weight) in versions {
            self.analysis_weight
                .get_or_create(&app(vec![("version", name.clone())]))
                .set(i64::from(*weight));
        }
        if let Some(last) = state.history.last() {
            for m in &last.metrics {
                for (i, value) in [(0, m.primary), (1, m.candidate)] {
                    let Some((name, _)) = versions.get(i) else {
                        continue;
                    };
                    let labels = app(vec![("metric", m.name.clone()), ("version", name.clone())]);
                    match value {
                        Some(v) => {
                            self.analysis_metric_value.get_or_create(&labels).set(v);
                        }
                        None => {
                            self.analysis_metric_value.remove(&labels);
                        }
                    }
                }
            }
        }
    }

    /// Reads a counter of `applies` (for tests and the benchmark).
    pub fn applies_with(&self, result: &'static str) -> u64 {
        self.applies
            .get_or_create(&vec![("result", result.to_string())])
            .get()
    }
}

/// The text exposition of every metric, with gauges refreshed from the controller.
pub fn encode_text(metrics: &Arc<Metrics>, controller: &Controller) -> String {
    metrics.queue_depth.set(controller.queue_depth() as i64);
    metrics
        .leader
        .set(i64::from(controller.leadership().is_leader()));
    for (ty, n) in controller.watched_counts() {
        metrics
            .watched
            .get_or_create(&vec![("resource", ty)])
            .set(n as i64);
    }
    let mut out = String::new();
    if encode(&mut out, &metrics.registry).is_err() {
        out.clear();
    }
    out
}
