//! The gRPC service `main.ABN` (Lookup, WriteMetric) and the dashboard's data, over the
//! routemaps the controller watches and the metrics store.
//!
//! Every replica answers: weights and signatures come from this replica's own stores, the
//! assignment is a pure function of them (see [`crate::assign`]), and the store is shared
//! (Redis) or local (embedded, one replica).

use std::sync::Arc;
use std::time::{Duration, Instant};

use iter8_core::availability::Weighing;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tonic::{Code, Request, Response, Status};

use crate::assign;
use crate::proto::abn_server::{Abn, AbnServer};
use crate::proto::{Application, MetricValue, VersionRecommendation};
use crate::store::{Served, Store, StoreError};

/// Longest user id accepted (session tokens fit; a megabyte does not).
pub const MAX_USER_BYTES: usize = 4096;
/// Longest metric name accepted.
pub const MAX_METRIC_BYTES: usize = 256;
/// How long Lookup waits for the store to record the assignment before answering anyway.
const RECORD_TIMEOUT: Duration = Duration::from_millis(250);

/// What the service reads of the controller: routemaps weighed from its stores.
pub trait Applications: Send + Sync + 'static {
    /// Routemap `namespace/name`, weighed: `None` if unknown, `Err` with why it is held.
    fn weigh(&self, namespace: &str, name: &str) -> Option<Result<Weighing, String>>;
    /// Whether the stores have listed everything once (before that, "unknown" may be wrong).
    fn synced(&self) -> bool;
}

/// An application's versions as the service uses them.
pub struct Versions {
    /// `namespace/name` of the application (the storage key).
    pub key: String,
    pub weights: Vec<u32>,
    pub signatures: Vec<String>,
}

/// Prometheus metrics of the service.
#[derive(Default)]
pub struct AbnMetrics {
    /// Requests by method and gRPC code.
    pub requests: Family<Vec<(&'static str, String)>, Counter>,
    /// Store operations that failed, by operation.
    pub store_errors: Family<Vec<(&'static str, &'static str)>, Counter>,
    pub lookup_seconds: Option<Histogram>,
}

impl AbnMetrics {
    /// Registers the metrics under `iter8_abn_` in `registry`.
    pub fn registered(registry: &mut Registry) -> AbnMetrics {
        let m = AbnMetrics {
            lookup_seconds: Some(Histogram::new(exponential_buckets(0.00005, 2.0, 16))),
            ..Default::default()
        };
        let abn = registry.sub_registry_with_prefix("abn");
        abn.register(
            "requests",
            "A/B/n requests by method and code",
            m.requests.clone(),
        );
        abn.register(
            "store_errors",
            "Metrics store operations that failed, by operation",
            m.store_errors.clone(),
        );
        if let Some(h) = &m.lookup_seconds {
            abn.register(
                "lookup_duration_seconds",
                "Time to answer a Lookup",
                h.clone(),
            );
        }
        m
    }

    fn count(&self, method: &'static str, code: Code) {
        self.requests
            .get_or_create(&vec![
                ("method", method.to_string()),
                ("code", format!("{code:?}")),
            ])
            .inc();
    }

    /// Requests of `method` answered with `code` (for tests).
    pub fn requests_with(&self, method: &'static str, code: Code) -> u64 {
        self.requests
            .get_or_create(&vec![
                ("method", method.to_string()),
                ("code", format!("{code:?}")),
            ])
            .get()
    }

    fn store_error(&self, op: &'static str) {
        self.store_errors.get_or_create(&vec![("op", op)]).inc();
    }
}

/// The A/B/n service.
pub struct AbnService<A> {
    apps: Arc<A>,
    store: Store,
    seed: u64,
    metrics: Arc<AbnMetrics>,
}

impl<A: Applications> AbnService<A> {
    pub fn new(apps: Arc<A>, store: Store, seed: u64, metrics: Arc<AbnMetrics>) -> Self {
        AbnService {
            apps,
            store,
            seed,
            metrics,
        }
    }

    /// The tonic service.
    pub fn server(self) -> AbnServer<Self> {
        AbnServer::new(self)
    }

    /// Finds the application's routemap: the ConfigMap `name`, else `name-routemap` (as v1.1).
    pub fn versions(&self, application: &str) -> Result<Versions, Status> {
        let (namespace, name) = split_application(application)?;
        let key = format!("{namespace}/{name}");
        let found = self
            .apps
            .weigh(namespace, name)
            .or_else(|| self.apps.weigh(namespace, &format!("{name}-routemap")));
        match found {
            Some(Ok(w)) if w.weights.is_empty() => Err(Status::failed_precondition(format!(
                "application {key} has no versions"
            ))),
            Some(Ok(w)) => Ok(Versions {
                key,
                weights: w.weights,
                signatures: w.signatures,
            }),
            Some(Err(why)) => Err(Status::failed_precondition(format!(
                "the routemap of application {key} is not usable: {why}"
            ))),
            None if !self.apps.synced() => Err(Status::unavailable(format!(
                "routemaps not loaded yet; application {key} is not known so far"
            ))),
            None => Err(Status::not_found(format!(
                "no routemap for application {key} (looked for ConfigMaps {name} and {name}-routemap in namespace {namespace})"
            ))),
        }
    }

    fn choose(&self, versions: &Versions, user: &str) -> Result<Served, Status> {
        let i = assign::choose(user, &versions.weights, &versions.signatures, self.seed)
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "application {} has no version to route to",
                    versions.key
                ))
            })?;
        Ok(Served {
            version: i as u32,
            signature: versions.signatures[i].clone(),
        })
    }

    async fn lookup_inner(&self, app: Application) -> Result<VersionRecommendation, Status> {
        check_user(&app.user)?;
        let versions = self.versions(&app.name)?;
        let served = self.choose(&versions, &app.user)?;
        // The answer does not depend on the store: a store that is slow or down costs the
        // record (and the metric's exact crediting for clients that do not echo the
        // version), never the user's routing.
        let record = self.store.record_lookup(&versions.key, &app.user, &served);
        match tokio::time::timeout(RECORD_TIMEOUT, record).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.metrics.store_error("record_lookup");
                tracing::warn!(application = %versions.key, error = %e, "could not record a lookup");
            }
            Err(_) => {
                self.metrics.store_error("record_lookup");
                tracing::warn!(application = %versions.key, "recording a lookup timed out");
            }
        }
        Ok(VersionRecommendation {
            version_number: served.version as i32,
            signature: served.signature,
        })
    }

    async fn write_metric_inner(&self, m: MetricValue) -> Result<(), Status> {
        check_user(&m.user)?;
        check_metric_name(&m.name)?;
        let value = parse_value(&m.value)?;
        let versions = self.versions(&m.application)?;
        let served = match m.version_number {
            Some(v) => {
                let i = usize::try_from(v)
                    .ok()
                    .filter(|&i| i < versions.weights.len());
                let Some(i) = i else {
                    return Err(Status::invalid_argument(format!(
                        "versionNumber {v} is not a version of application {} (it has {})",
                        versions.key,
                        versions.weights.len()
                    )));
                };
                let signature = if m.signature.is_empty() {
                    versions.signatures[i].clone()
                } else {
                    m.signature.clone()
                };
                Served {
                    version: i as u32,
                    signature,
                }
            }
            // What Lookup gave this user, else what it would give now (and record it).
            None => match self.store.assignment(&versions.key, &m.user).await {
                Ok(Some(served)) => served,
                Ok(None) => {
                    let served = self.choose(&versions, &m.user)?;
                    self.store
                        .record_lookup(&versions.key, &m.user, &served)
                        .await
                        .map_err(|e| self.store_status("record_lookup", e))?;
                    served
                }
                Err(e) => return Err(self.store_status("assignment", e)),
            },
        };
        self.store
            .write_metric(&versions.key, &served, &m.name, &m.user, value)
            .await
            .map_err(|e| self.store_status("write_metric", e))
    }

    fn store_status(&self, op: &'static str, e: StoreError) -> Status {
        self.metrics.store_error(op);
        match e {
            StoreError::Unavailable(_) => Status::unavailable(e.to_string()),
            StoreError::Full(_) => Status::resource_exhausted(e.to_string()),
        }
    }

    /// The A/B/n dashboard of `namespace/application` as JSON (the `/abnDashboard` body).
    pub async fn dashboard(&self, namespace: &str, application: &str) -> Result<Vec<u8>, Status> {
        let versions = self.versions(&format!("{namespace}/{application}"))?;
        let mut series = Vec::with_capacity(versions.signatures.len());
        for (i, sig) in versions.signatures.iter().enumerate() {
            if sig.is_empty() {
                series.push(None);
                continue;
            }
            let served = Served {
                version: i as u32,
                signature: sig.clone(),
            };
            let data = self
                .store
                .series(&versions.key, &served)
                .await
                .map_err(|e| self.store_status("series", e))?;
            series.push(Some(data));
        }
        Ok(crate::dashboard::render(&crate::dashboard::dashboard(
            &series,
        )))
    }
}

#[tonic::async_trait]
impl<A: Applications> Abn for AbnService<A> {
    async fn lookup(
        &self,
        request: Request<Application>,
    ) -> Result<Response<VersionRecommendation>, Status> {
        let started = Instant::now();
        let result = self.lookup_inner(request.into_inner()).await;
        if let Some(h) = &self.metrics.lookup_seconds {
            h.observe(started.elapsed().as_secs_f64());
        }
        self.metrics.count(
            "Lookup",
            result.as_ref().map_or_else(Status::code, |_| Code::Ok),
        );
        result.map(Response::new)
    }

    async fn write_metric(&self, request: Request<MetricValue>) -> Result<Response<()>, Status> {
        let result = self.write_metric_inner(request.into_inner()).await;
        self.metrics.count(
            "WriteMetric",
            result.as_ref().map_or_else(Status::code, |_| Code::Ok),
        );
        result.map(Response::new)
    }
}

/// `"namespace/name"`, or `"name"` in namespace `default` (as v1.1).
pub fn split_application(application: &str) -> Result<(&str, &str), Status> {
    let (ns, name) = application
        .split_once('/')
        .unwrap_or(("default", application));
    if name.is_empty() || ns.is_empty() {
        return Err(Status::invalid_argument(format!(
            "no application provided (want \"namespace/name\", got {application:?})"
        )));
    }
    let dns_ok = |s: &str, max: usize| {
        s.len() <= max
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    if !dns_ok(ns, 63) || !dns_ok(name, 253) {
        return Err(Status::invalid_argument(format!(
            "application {:?} is not \"namespace/name\" with Kubernetes names",
            truncate(application)
        )));
    }
    Ok((ns, name))
}

fn check_user(user: &str) -> Result<(), Status> {
    if user.is_empty() {
        return Err(Status::invalid_argument("no user session provided"));
    }
    if user.len() > MAX_USER_BYTES {
        return Err(Status::invalid_argument(format!(
            "user id is {} bytes; at most {MAX_USER_BYTES} are accepted",
            user.len()
        )));
    }
    Ok(())
}

fn check_metric_name(name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("no metric name provided"));
    }
    if name.len() > MAX_METRIC_BYTES {
        return Err(Status::invalid_argument(format!(
            "metric name is {} bytes; at most {MAX_METRIC_BYTES} are accepted",
            name.len()
        )));
    }
    // `:` separated the keys of v1.1's store, which refused it; names stay portable.
    if name.contains(':') || name.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "metric name {:?} contains ':' or a control character",
            truncate(name)
        )));
    }
    Ok(())
}

/// A finite number, as Go's `strconv.ParseFloat` reads it (no spaces).
fn parse_value(value: &str) -> Result<f64, Status> {
    match value.parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err(Status::invalid_argument(format!(
            "metric value {:?} is not a finite number",
            truncate(value)
        ))),
    }
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applications_are_namespace_slash_name() {
        assert_eq!(split_application("ns/app").ok(), Some(("ns", "app")));
        assert_eq!(split_application("app").ok(), Some(("default", "app")));
        for bad in ["", "/", "ns/", "/app", "a/b/c", "NS/app"] {
            assert_eq!(
                split_application(bad).map_err(|s| s.code()),
                Err(Code::InvalidArgument),
                "{bad}"
            );
        }
    }

    #[test]
    fn values_and_names_are_checked() {
        assert_eq!(parse_value("1.5").ok(), Some(1.5));
        assert_eq!(parse_value("-2e3").ok(), Some(-2000.0));
        for bad in ["", "abc", " 1", "NaN", "inf", "1,5"] {
            assert!(parse_value(bad).is_err(), "{bad}");
        }
        assert!(check_metric_name("sales").is_ok());
        assert!(check_metric_name("a::b").is_err());
        assert!(check_metric_name(&"m".repeat(MAX_METRIC_BYTES + 1)).is_err());
        assert!(check_user(&"u".repeat(1 << 20)).is_err());
        assert!(check_user("").is_err());
    }
}
