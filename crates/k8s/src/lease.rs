//! Leader election with a `coordination.k8s.io/v1` Lease. Every replica watches and keeps its
//! stores warm; only the holder writes. Leadership is held until a deadline that each renewal
//! pushes out, so a replica that cannot renew (API outage, partition) stops writing before
//! anyone else can take the lease. A standby watches the Lease and takes it the moment the
//! holder releases it (on SIGTERM) or it expires.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use tokio::sync::Notify;

/// Whether this replica may write, and until when.
#[derive(Clone, Debug)]
pub struct Leadership(Arc<Mutex<Option<Instant>>>);

impl Leadership {
    /// A replica that always leads (one replica, no election).
    pub fn always() -> Leadership {
        Leadership(Arc::new(Mutex::new(Some(far_future()))))
    }

    /// A replica that starts as a standby.
    pub fn standby() -> Leadership {
        Leadership(Arc::new(Mutex::new(None)))
    }

    /// True while this replica holds an unexpired lease.
    pub fn is_leader(&self) -> bool {
        self.lock().is_some_and(|until| Instant::now() < until)
    }

    /// Leads until `until`.
    pub fn lead_until(&self, until: Instant) {
        *self.lock() = Some(until);
    }

    /// Stops leading now.
    pub fn step_down(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// Lease settings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    /// How long a lease is valid after its last renewal.
    pub duration: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
}

/// Runs the election until `shutdown` fires, then releases the lease if held.
/// `gained` is notified each time this replica becomes the leader.
pub async fn run(
    client: Client,
    cfg: LeaseConfig,
    leadership: Leadership,
    gained: Arc<Notify>,
    shutdown: Arc<Notify>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    // The latest Lease seen by the watch, and when we saw it change: expiry is judged by our
    // own clock from that moment, so clock skew between replicas does not matter.
    let seen: Arc<Mutex<Option<(Lease, Instant)>>> = Arc::default();
    let changed = Arc::new(Notify::new());
    let watch = tokio::spawn(watch_lease(
        api.clone(),
        cfg.name.clone(),
        seen.clone(),
        changed.clone(),
    ));

    let mut delays = failure_backoff(&cfg);
    let mut last_error: Option<String> = None;
    loop {
        let now = Instant::now();
        let (held_by_me, failed) = match try_acquire_or_renew(&api, &cfg, &seen).await {
            Ok(held) => {
                if last_error.take().is_some() {
                    tracing::info!(lease = %cfg.name, "lease updates work again");
                }
                delays = failure_backoff(&cfg);
                (held, false)
            }
            Err(e) => {
                metrics.lease_failures.inc();
                // A missing namespace, lost RBAC or an API outage: log a changed error once,
                // not at every attempt.
                let why = crate::error::describe(&e);
                if last_error.as_deref() != Some(why.as_str()) {
                    tracing::warn!(lease = %cfg.name, error = %why, "lease update failed; retrying with backoff");
                    last_error = Some(why);
                }
                (false, true)
            }
        };
        if held_by_me {
            let was = leadership.is_leader();
            // Stop writing a little before the lease could expire for the others.
            leadership.lead_until(
                now + cfg
                    .duration
                    .saturating_sub(cfg.renew_every.min(cfg.duration / 3)),
            );
            if !was {
                tracing::info!(lease = %cfg.name, identity = %cfg.identity, "became the leader");
                gained.notify_one();
            }
        } else if leadership.is_leader() && holder_is_other(&seen, &cfg) {
            // Someone else holds the lease now: stop at once rather than at our deadline.
            tracing::warn!(lease = %cfg.name, "lost the lease");
            leadership.step_down();
        }
        // A failed renewal keeps us leading only until the deadline set by the last success.
        let wait = if failed {
            delays.next().unwrap_or(cfg.renew_every)
        } else if held_by_me {
            cfg.renew_every
        } else {
            time_to_expiry(&seen, &cfg).min(cfg.renew_every)
        };
        tokio::select! {
            _ = shutdown.notified() => break,
            _ = changed.notified(), if !held_by_me => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    watch.abort();
    if leadership.is_leader() {
        leadership.step_down();
        match release(&api, &cfg).await {
            Ok(()) => tracing::info!(lease = %cfg.name, "released the lease"),
            Err(e) => tracing::warn!(lease = %cfg.name, error = %e, "failed to release the lease"),
        }
    }
}

/// Delays between failed lease updates: from 100 ms, doubling, with jitter, up to about the
/// renew interval (a leader must retry before its lease runs out).
fn failure_backoff(cfg: &LeaseConfig) -> impl Iterator<Item = Duration> {
    crate::error::backoff(Duration::from_millis(100), cfg.renew_every)
}

async fn watch_lease(
    api: Api<Lease>,
    name: String,
    seen: Arc<Mutex<Option<(Lease, Instant)>>>,
    changed: Arc<Notify>,
) {
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    while let Some(ev) = stream.next().await {
        let lease = match ev {
            Ok(Event::Apply(l)) | Ok(Event::InitApply(l)) => Some(l),
            Ok(Event::Delete(_)) => None,
            Ok(_) => continue,
            Err(_) => continue,
        };
        record(&seen, lease);
        changed.notify_one();
    }
}

/// Stores a newly seen Lease, keeping the first-seen time while its record is unchanged.
fn record(seen: &Mutex<Option<(Lease, Instant)>>, lease: Option<Lease>) {
    let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
    match lease {
        None => *s = None,
        Some(l) => {
            let same = s.as_ref().is_some_and(|(old, _)| old.spec == l.spec);
            if same {
                if let Some((old, _)) = s.as_mut() {
                    *old = l;
                }
            } else {
                *s = Some((l, Instant::now()));
            }
        }
    }
}

fn time_to_expiry(seen: &Mutex<Option<(Lease, Instant)>>, cfg: &LeaseConfig) -> Duration {
    let s = seen.lock().unwrap_or_else(|e| e.into_inner());
    match s.as_ref() {
        Some((lease, at)) => {
            let duration = lease_duration(lease, cfg);
            (*at + duration).saturating_duration_since(Instant::now()) + Duration::from_millis(10)
        }
        None => Duration::ZERO,
    }
}

fn lease_duration(lease: &Lease, cfg: &LeaseConfig) -> Duration {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_duration_seconds)
        .map(|s| Duration::from_secs(s.max(0) as u64))
        .unwrap_or(cfg.duration)
}

fn holder_is_other(seen: &Mutex<Option<(Lease, Instant)>>, cfg: &LeaseConfig) -> bool {
    let s = seen.lock().unwrap_or_else(|e| e.into_inner());
    s.as_ref().is_some_and(|(l, _)| {
        let who = holder(l);
        !who.is_empty() && who != cfg.identity
    })
}

fn holder(lease: &Lease) -> String {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default()
}

/// Takes the lease if it is free, expired or ours; renews it if ours. True if we hold it.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    seen: &Mutex<Option<(Lease, Instant)>>,
) -> Result<bool, kube::Error> {
    let now = k8s_openapi::jiff::Timestamp::now();
    let current = match api.get_opt(&cfg.name).await? {
        None => {
            let lease = Lease {
                metadata: kube::api::ObjectMeta {
                    name: Some(cfg.name.clone()),
                    ..Default::default()
                },
                spec: Some(spec_for(cfg, now, now, 0)),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(l) => {
                    record(seen, Some(l));
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        }
        Some(l) => l,
    };
    record(seen, Some(current.clone()));
    let who = holder(&current);
    let mine = who == cfg.identity;
    let free = who.is_empty();
    let expired = {
        let s = seen.lock().unwrap_or_else(|e| e.into_inner());
        s.as_ref()
            .is_some_and(|(l, at)| Instant::now() > *at + lease_duration(l, cfg))
    };
    if !(mine || free || expired) {
        return Ok(false);
    }
    let spec = current.spec.clone().unwrap_or_default();
    let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
    let acquired = if mine {
        spec.acquire_time.map(|t| t.0).unwrap_or(now)
    } else {
        now
    };
    let mut next = current.clone();
    next.spec = Some(spec_for(cfg, acquired, now, transitions));
    // replace carries the resourceVersion we read: a concurrent taker makes this fail (409).
    match api.replace(&cfg.name, &PostParams::default(), &next).await {
        Ok(l) => {
            record(seen, Some(l));
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

fn spec_for(
    cfg: &LeaseConfig,
    acquired: k8s_openapi::jiff::Timestamp,
    renewed: k8s_openapi::jiff::Timestamp,
    transitions: i32,
) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.duration.as_secs().max(1) as i32),
        acquire_time: Some(MicroTime(acquired)),
        renew_time: Some(MicroTime(renewed)),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}

/// Gives the lease up so a standby can take it at once.
async fn release(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        return Ok(());
    };
    if holder(&lease) != cfg.identity {
        return Ok(());
    }
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
    }
    api.replace(&cfg.name, &PostParams::default(), &lease)
        .await
        .map(|_| ())
}
