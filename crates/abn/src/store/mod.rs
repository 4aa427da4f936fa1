//! Where A/B/n users and business metrics are kept: an embedded single-file store (the
//! default, one replica) or Redis (several replicas share it). Both keep the same model:
//!
//! - an **assignment** per (application, user): the version Lookup last gave the user, so a
//!   metric written later is credited to what the user was served;
//! - per **series** (application, version index, version signature): the users who were
//!   served it, and per metric a running [`Aggregate`] over transactions (O(1) summaries),
//!   each user's running sum, and the most recent values (bounded) for histograms.
//!
//! Everything expires `ttl` after its last write; a store holds at most `max_users`
//! assignments and refuses new users beyond that ([`StoreError::Full`]).
//!
//! The same store keeps the **results of performance tests** (`PUT /testResult`): one JSON
//! document per (namespace, test), replaced by each PUT, expiring `ttl` after it, at most
//! [`MAX_RESULT_BYTES`] each (a result holds histograms and summaries, never per-call
//! details).

pub mod embedded;
pub mod redis;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The version a user was served: its index in the routemap and its signature.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Served {
    pub version: u32,
    pub signature: String,
}

/// Running statistics of a stream of values, updated in O(1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    pub count: u64,
    pub sum: f64,
    pub sum_sq: f64,
    /// Meaningless while `count` is 0.
    pub min: f64,
    pub max: f64,
}

impl Aggregate {
    pub fn add(&mut self, x: f64) {
        if self.count == 0 {
            self.min = x;
            self.max = x;
        } else {
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
        self.count += 1;
        self.sum += x;
        self.sum_sq += x * x;
    }

    pub fn of(values: impl IntoIterator<Item = f64>) -> Aggregate {
        let mut a = Aggregate::default();
        for x in values {
            a.add(x);
        }
        a
    }

    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        }
    }

    /// Population standard deviation (divides by N), as the original's dashboard.
    pub fn std_dev(&self) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let n = self.count as f64;
        let mean = self.sum / n;
        (self.sum_sq / n - mean * mean).max(0.0).sqrt()
    }
}

/// What a store holds for one metric of one series.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricData {
    /// Over every transaction (value written), exact.
    pub transactions: Aggregate,
    /// The most recent transaction values, at most `max_values` of them (for histograms).
    pub recent: Vec<f64>,
    /// Each user's sum over their transactions, for the users who wrote this metric, in
    /// user order (deterministic).
    pub user_sums: Vec<f64>,
}

/// What a store holds for one series (application, version, signature).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SeriesData {
    /// Users served this version (by Lookup or by a metric credited to it).
    pub users: u64,
    /// By metric name.
    pub metrics: BTreeMap<String, MetricData>,
}

/// How the store is configured (the `metrics` section of the controller's values).
#[derive(Clone, Debug, PartialEq)]
pub struct StoreConfig {
    pub backend: Backend,
    /// Data expires this long after its last write.
    pub ttl: Duration,
    /// Most assignments (application, user) kept; new users beyond it are refused.
    pub max_users: u64,
    /// Most recent values kept per metric and series, for histograms.
    pub max_values: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Backend {
    /// One file, crash-safe; for one replica.
    Embedded { path: PathBuf },
    /// A Redis server shared by every replica.
    Redis {
        address: String,
        username: Option<String>,
        password: Option<String>,
        db: i64,
    },
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            backend: Backend::Embedded {
                path: PathBuf::from("/metrics/abn.redb"),
            },
            ttl: Duration::from_secs(24 * 3600),
            max_users: 1_000_000,
            max_values: 10_000,
        }
    }
}

/// Largest test result a store keeps, in bytes of JSON.
pub const MAX_RESULT_BYTES: usize = 4 << 20;

/// Refuses a result over [`MAX_RESULT_BYTES`] as [`StoreError::Full`].
fn check_result_size(len: usize) -> Result<(), StoreError> {
    if len > MAX_RESULT_BYTES {
        return Err(StoreError::Full(format!(
            "a test result of {len} bytes is refused: a result is kept only up to {MAX_RESULT_BYTES} bytes ({} MiB)",
            MAX_RESULT_BYTES >> 20
        )));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or failed; nothing was written.
    #[error("metrics store unavailable: {0}")]
    Unavailable(String),
    /// The store holds `max_users` users already, or a test result is too big, or Redis is
    /// out of memory; nothing was written.
    #[error("metrics store full: {0}")]
    Full(String),
}

/// The configured store.
#[derive(Clone)]
pub enum Store {
    Embedded(embedded::EmbeddedStore),
    Redis(redis::RedisStore),
    /// A store that could not be opened: every operation says why. Lookup keeps answering
    /// (the assignment needs no store), and routing is not affected.
    Broken(String),
}

impl Store {
    /// Opens (or connects to) the configured store.
    pub async fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        Ok(match &config.backend {
            Backend::Embedded { .. } => Store::Embedded(embedded::EmbeddedStore::open(config)?),
            Backend::Redis { .. } => Store::Redis(redis::RedisStore::connect(config).await?),
        })
    }

    fn broken(why: &str) -> StoreError {
        StoreError::Unavailable(why.to_string())
    }

    /// Records that Lookup served `served` to `user` of `app` (`"namespace/name"`).
    pub async fn record_lookup(
        &self,
        app: &str,
        user: &str,
        served: &Served,
    ) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => s.record_lookup(app, user, served).await,
            Store::Redis(s) => s.record_lookup(app, user, served).await,
            Store::Broken(why) => Err(Store::broken(why)),
        }
    }

    /// The version Lookup last served `user` of `app`, if recorded and not expired.
    pub async fn assignment(&self, app: &str, user: &str) -> Result<Option<Served>, StoreError> {
        match self {
            Store::Embedded(s) => s.assignment(app, user).await,
            Store::Redis(s) => s.assignment(app, user).await,
            Store::Broken(why) => Err(Store::broken(why)),
        }
    }

    /// Adds one value of `metric` for `user` to the series of `served`, all or nothing, and
    /// durably before it returns Ok.
    pub async fn write_metric(
        &self,
        app: &str,
        served: &Served,
        metric: &str,
        user: &str,
        value: f64,
    ) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => s.write_metric(app, served, metric, user, value).await,
            Store::Redis(s) => s.write_metric(app, served, metric, user, value).await,
            Store::Broken(why) => Err(Store::broken(why)),
        }
    }

    /// What is stored for the series of `served`.
    pub async fn series(&self, app: &str, served: &Served) -> Result<SeriesData, StoreError> {
        match self {
            Store::Embedded(s) => s.series(app, served).await,
            Store::Redis(s) => s.series(app, served).await,
            Store::Broken(why) => Err(Store::broken(why)),
        }
    }

    /// Stores (replaces) the result of test `test` in `namespace`, durably before it returns
    /// Ok; it expires `ttl` after this write. A result over [`MAX_RESULT_BYTES`] is refused
    /// ([`StoreError::Full`]) and the stored one is left as it was.
    pub async fn put_result(
        &self,
        namespace: &str,
        test: &str,
        json: &[u8],
    ) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => s.put_result(namespace, test, json).await,
            Store::Redis(s) => s.put_result(namespace, test, json).await,
            Store::Broken(why) => Err(Store::broken(why)),
        }
    }

    /// The result of test `test` in `namespace`, if stored and not expired.
    pub async fn result(&self, namespace: &str, test: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Store::Embedded(s) => s.result(namespace, test).await,
            Store::Redis(s) => s.result(namespace, test).await,
            Store::Broken(why) => Err(Store::broken(why)),
        }
    }
}

/// At most 100 characters of `s`, for error messages (names can be long).
fn short(s: &str) -> String {
    match s.char_indices().nth(100) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_matches_direct_computation() {
        let a = Aggregate::of([1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!((a.count, a.min, a.max, a.mean()), (5, 1.0, 5.0, 3.0));
        assert!((a.std_dev() - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(Aggregate::default().std_dev(), 0.0);
    }
}
