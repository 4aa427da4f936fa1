//! The embedded store: one redb file (ACID, crash-safe), for a single replica.
//!
//! **Writes** go over a channel to one writer thread, which commits whatever has queued up in
//! one transaction (group commit): a batch holding a `write_metric` commits with
//! `Durability::Immediate` and its callers hear Ok only after that; a batch of lookups only
//! commits with `Durability::None` (visible at once, durable with the next durable commit, at
//! most a second later: a crash may forget the last second of lookups, never an acknowledged
//! metric). Every request is applied in channel order.
//!
//! **Reads** run in read transactions (MVCC) on the blocking pool; a read sees every write
//! whose future completed, since replies are sent after the commit.
//!
//! **Layout.** Keys are redb tuples (length-prefixed, so no separator can be forged):
//! - `assign (app, user) -> (version, signature, expires_ms)`, indexed by
//!   `assign_expiry (expires_ms, app, user)`;
//! - `series (app, version, signature) -> (id, expires_ms, users)`, indexed by
//!   `series_expiry (expires_ms, app, version, signature)`; the series' data is keyed by its
//!   numeric `id`, so dropping an expired series is a range delete and a series created again
//!   after expiry (new id) can never see old data:
//!   `series_users (id, user)`, `metrics (id, metric) -> aggregate`,
//!   `recent (id, metric, seq) -> value` (seq = transaction number, the ring keeps the last
//!   `max_values`), `user_sums (id, metric, user) -> sum`;
//! - `results (namespace, test) -> (expires_ms, json)`, indexed by
//!   `result_expiry (expires_ms, namespace, test)`: test results, each replaced whole by a PUT
//!   (committed durably before the PUT is answered).
//!
//! **Expiry.** Everything carries `expires_ms`; reads ignore what has expired, and the writer
//! sweeps the expiry indexes (assignments, series, results) periodically (every `min(ttl/10, 60 s)`) and before refusing a
//! new user as [`StoreError::Full`].

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{
    Database, DatabaseError, Durability, ReadTransaction, ReadableDatabase, ReadableTable,
    StorageError, Table, TableDefinition, WriteTransaction,
};
use tokio::sync::oneshot;

use super::*;

/// Where "now" comes from; injectable so tests can move time without sleeping.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const ASSIGN: TableDefinition<(&str, &str), (u32, &str, u64)> = TableDefinition::new("assign");
const ASSIGN_EXPIRY: TableDefinition<(u64, &str, &str), ()> = TableDefinition::new("assign_expiry");
const SERIES: TableDefinition<(&str, u32, &str), (u64, u64, u64)> = TableDefinition::new("series");
const SERIES_EXPIRY: TableDefinition<(u64, &str, u32, &str), ()> =
    TableDefinition::new("series_expiry");
const SERIES_USERS: TableDefinition<(u64, &str), ()> = TableDefinition::new("series_users");
/// An [`Aggregate`] as stored: (count, sum, sum_sq, min, max).
type StoredAggregate = (u64, f64, f64, f64, f64);
const METRICS: TableDefinition<(u64, &str), StoredAggregate> = TableDefinition::new("metrics");
const RECENT: TableDefinition<(u64, &str, u64), f64> = TableDefinition::new("recent");
const USER_SUMS: TableDefinition<(u64, &str, &str), f64> = TableDefinition::new("user_sums");
const RESULTS: TableDefinition<(&str, &str), (u64, &[u8])> = TableDefinition::new("results");
const RESULT_EXPIRY: TableDefinition<(u64, &str, &str), ()> = TableDefinition::new("result_expiry");

const SCHEMA: &str = "schema";
const SCHEMA_VERSION: u64 = 1;
/// Rows in `assign` (live or expired but not swept yet).
const ASSIGNMENTS: &str = "assignments";
const NEXT_SERIES_ID: &str = "next_series_id";

/// Most requests committed in one transaction.
const MAX_BATCH: usize = 1024;
/// Lookups committed non-durably become durable at most this long after.
const FLUSH_AFTER: Duration = Duration::from_secs(1);
/// Most expired entries one periodic sweep transaction deletes (it loops for more).
const SWEEP_CHUNK: usize = 10_000;
/// redb's page cache; its default (1 GiB) is a lot for a pod's memory limit.
const CACHE_BYTES: usize = 128 << 20;

/// The embedded store. Clones share one database and one writer thread; the last clone
/// dropped stops the thread and releases the file.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    tx: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    clock: Clock,
    path: PathBuf,
    max_values: usize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the writer after its last batch; joining it releases the
        // file lock before the store's owner reopens the file.
        drop(self.tx.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

enum Op {
    Lookup {
        app: String,
        user: String,
        served: Served,
    },
    Metric {
        app: String,
        served: Served,
        metric: String,
        user: String,
        value: f64,
    },
    PutResult {
        namespace: String,
        test: String,
        json: Vec<u8>,
    },
    Sweep,
}

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<u64, StoreError>>,
}

impl EmbeddedStore {
    /// Opens (creating it and its folders if needed) the file of `config.backend`.
    pub fn open(config: &StoreConfig) -> Result<EmbeddedStore, StoreError> {
        Self::open_with_clock(config, Arc::new(SystemTime::now))
    }

    /// Like [`EmbeddedStore::open`], with the time taken from `clock`.
    pub fn open_with_clock(
        config: &StoreConfig,
        clock: Clock,
    ) -> Result<EmbeddedStore, StoreError> {
        let Backend::Embedded { path } = &config.backend else {
            return Err(StoreError::Unavailable(
                "the embedded store needs an embedded backend configuration".into(),
            ));
        };
        let db = Arc::new(open_database(path)?);
        let (tx, rx) = mpsc::channel();
        let ttl_ms = u64::try_from(config.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let sweep_every =
            (config.ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
        let mut writer = Writer {
            db: db.clone(),
            rx,
            clock: clock.clone(),
            path: path.clone(),
            limits: Limits {
                ttl_ms,
                max_users: config.max_users,
                max_values: config.max_values as u64,
            },
            dirty: false,
            last_durable: Instant::now(),
            next_sweep: Instant::now() + sweep_every,
            sweep_every,
        };
        let handle = std::thread::Builder::new()
            .name("abn-store-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "metrics store {}: cannot start its writer thread: {e}",
                    path.display()
                ))
            })?;
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db,
                tx: Some(tx),
                writer: Some(handle),
                clock,
                path: path.clone(),
                max_values: config.max_values,
            }),
        })
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub async fn record_lookup(
        &self,
        app: &str,
        user: &str,
        served: &Served,
    ) -> Result<(), StoreError> {
        self.request(Op::Lookup {
            app: app.to_owned(),
            user: user.to_owned(),
            served: served.clone(),
        })
        .await
        .map(drop)
    }

    pub async fn assignment(&self, app: &str, user: &str) -> Result<Option<Served>, StoreError> {
        let (app, user) = (app.to_owned(), user.to_owned());
        self.read(move |txn, now| {
            let table = txn.open_table(ASSIGN)?;
            let found = table.get((app.as_str(), user.as_str()))?;
            Ok(found.and_then(|g| {
                let (version, signature, expires) = g.value();
                (expires > now).then(|| Served {
                    version,
                    signature: signature.to_owned(),
                })
            }))
        })
        .await
    }

    pub async fn write_metric(
        &self,
        app: &str,
        served: &Served,
        metric: &str,
        user: &str,
        value: f64,
    ) -> Result<(), StoreError> {
        self.request(Op::Metric {
            app: app.to_owned(),
            served: served.clone(),
            metric: metric.to_owned(),
            user: user.to_owned(),
            value,
        })
        .await
        .map(drop)
    }

    pub async fn series(&self, app: &str, served: &Served) -> Result<SeriesData, StoreError> {
        let (app, served) = (app.to_owned(), served.clone());
        let max_values = self.inner.max_values;
        self.read(move |txn, now| read_series(txn, now, &app, &served, max_values))
            .await
    }

    /// Stores (replaces) the result of `test` in `namespace`, durably; see
    /// [`Store::put_result`].
    pub async fn put_result(
        &self,
        namespace: &str,
        test: &str,
        json: &[u8],
    ) -> Result<(), StoreError> {
        check_result_size(json.len())?;
        self.request(Op::PutResult {
            namespace: namespace.to_owned(),
            test: test.to_owned(),
            json: json.to_vec(),
        })
        .await
        .map(drop)
    }

    /// The result of `test` in `namespace`, if stored and not expired.
    pub async fn result(&self, namespace: &str, test: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (namespace, test) = (namespace.to_owned(), test.to_owned());
        self.read(move |txn, now| {
            let table = txn.open_table(RESULTS)?;
            let found = table.get((namespace.as_str(), test.as_str()))?;
            Ok(found.and_then(|g| {
                let (expires, json) = g.value();
                (expires > now).then(|| json.to_vec())
            }))
        })
        .await
    }

    /// Deletes what has expired now (the writer also does it periodically); returns how many
    /// assignments, series and test results it deleted.
    pub async fn sweep(&self) -> Result<u64, StoreError> {
        self.request(Op::Sweep).await
    }

    async fn request(&self, op: Op) -> Result<u64, StoreError> {
        let stopped = || {
            StoreError::Unavailable(format!(
                "metrics store {}: its writer thread stopped",
                self.inner.path.display()
            ))
        };
        let (reply, answer) = oneshot::channel();
        self.inner
            .tx
            .as_ref()
            .ok_or_else(stopped)?
            .send(Request { op, reply })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction, u64) -> Result<T, redb::Error> + Send + 'static,
    {
        let db = self.inner.db.clone();
        let now = now_ms(&self.inner.clock);
        let path = self.inner.path.clone();
        let unavailable = move |e: &dyn std::fmt::Display| {
            StoreError::Unavailable(format!("metrics store {}: {e}", path.display()))
        };
        let res = tokio::task::spawn_blocking(move || -> Result<T, redb::Error> {
            let txn = db.begin_read()?;
            f(&txn, now)
        })
        .await;
        match res {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(&e)),
            Err(e) => Err(unavailable(&e)),
        }
    }
}

fn open_database(path: &Path) -> Result<Database, StoreError> {
    let unavailable =
        |what: String| StoreError::Unavailable(format!("metrics store {}: {what}", path.display()));
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| unavailable(format!("cannot create folder {}: {e}", parent.display())))?;
    }
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => {
                unavailable("the file is locked: another process (or store) has it open".into())
            }
            e => unavailable(format!("cannot open: {e}")),
        })?;
    // Create every table up front so reads never meet a missing one, and check the layout.
    let init = || -> Result<Result<(), String>, redb::Error> {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut meta = txn.open_table(META)?;
            let schema = meta.get(SCHEMA)?.map(|g| g.value());
            match schema {
                None => {
                    meta.insert(SCHEMA, SCHEMA_VERSION)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(v) => {
                    return Ok(Err(format!(
                        "layout version {v}, this build reads version {SCHEMA_VERSION}"
                    )))
                }
            }
            txn.open_table(ASSIGN)?;
            txn.open_table(ASSIGN_EXPIRY)?;
            txn.open_table(SERIES)?;
            txn.open_table(SERIES_EXPIRY)?;
            txn.open_table(SERIES_USERS)?;
            txn.open_table(METRICS)?;
            txn.open_table(RECENT)?;
            txn.open_table(USER_SUMS)?;
            txn.open_table(RESULTS)?;
            txn.open_table(RESULT_EXPIRY)?;
        }
        txn.commit()?;
        Ok(Ok(()))
    };
    match init() {
        Ok(Ok(())) => Ok(db),
        Ok(Err(what)) => Err(unavailable(what)),
        Err(e) => Err(unavailable(format!("cannot initialise: {e}"))),
    }
}

fn now_ms(clock: &Clock) -> u64 {
    clock()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn read_series(
    txn: &ReadTransaction,
    now: u64,
    app: &str,
    served: &Served,
    max_values: usize,
) -> Result<SeriesData, redb::Error> {
    let series = txn.open_table(SERIES)?;
    let found = series
        .get((app, served.version, served.signature.as_str()))?
        .map(|g| g.value());
    let Some((id, expires, users)) = found else {
        return Ok(SeriesData::default());
    };
    if expires <= now {
        return Ok(SeriesData::default());
    }
    let metrics = txn.open_table(METRICS)?;
    let recent = txn.open_table(RECENT)?;
    let user_sums = txn.open_table(USER_SUMS)?;
    let mut out = SeriesData {
        users,
        metrics: BTreeMap::new(),
    };
    for item in metrics.range((id, "")..(id + 1, ""))? {
        let (k, v) = item?;
        let name = k.value().1.to_owned();
        let (count, sum, sum_sq, min, max) = v.value();
        let mut values = Vec::new();
        for item in recent.range((id, name.as_str(), 0)..=(id, name.as_str(), u64::MAX))? {
            values.push(item?.1.value());
        }
        // More than max_values are kept only if the limit was lowered since they were written.
        if values.len() > max_values {
            values.drain(..values.len() - max_values);
        }
        let mut sums = Vec::new();
        for item in user_sums.range((id, name.as_str(), "")..)? {
            let (k, v) = item?;
            let (kid, kmetric, _) = k.value();
            if kid != id || kmetric != name {
                break;
            }
            sums.push(v.value());
        }
        out.metrics.insert(
            name,
            MetricData {
                transactions: Aggregate {
                    count,
                    sum,
                    sum_sq,
                    min,
                    max,
                },
                recent: values,
                user_sums: sums,
            },
        );
    }
    Ok(out)
}

#[derive(Clone, Copy)]
struct Limits {
    ttl_ms: u64,
    max_users: u64,
    max_values: u64,
}

struct Writer {
    db: Arc<Database>,
    rx: mpsc::Receiver<Request>,
    clock: Clock,
    path: PathBuf,
    limits: Limits,
    /// Non-durable commits happened since the last durable one.
    dirty: bool,
    last_durable: Instant,
    next_sweep: Instant,
    sweep_every: Duration,
}

impl Writer {
    fn run(&mut self) {
        loop {
            let mut wait = self.next_sweep.saturating_duration_since(Instant::now());
            if self.dirty {
                wait = wait.min(FLUSH_AFTER.saturating_sub(self.last_durable.elapsed()));
            }
            match self.rx.recv_timeout(wait) {
                Ok(first) => {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match self.rx.try_recv() {
                            Ok(req) => batch.push(req),
                            Err(_) => break,
                        }
                    }
                    self.run_batch(batch);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= self.next_sweep {
                self.periodic_sweep();
                self.next_sweep = Instant::now() + self.sweep_every;
            }
            if self.dirty && self.last_durable.elapsed() >= FLUSH_AFTER {
                self.flush();
            }
        }
        if self.dirty {
            self.flush();
        }
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable(format!("metrics store {}: {e}", self.path.display()))
    }

    fn begin(&self, durable: bool) -> Result<WriteTransaction, redb::Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        Ok(txn)
    }

    fn committed(&mut self, durable: bool) {
        if durable {
            self.dirty = false;
            self.last_durable = Instant::now();
        } else {
            self.dirty = true;
        }
    }

    fn run_batch(&mut self, batch: Vec<Request>) {
        let durable = batch.iter().any(|r| !matches!(r.op, Op::Lookup { .. }))
            || (self.dirty && self.last_durable.elapsed() >= FLUSH_AFTER);
        let now = now_ms(&self.clock);
        let limits = self.limits;
        let result = (|| -> Result<(Vec<Result<u64, String>>, bool), redb::Error> {
            let txn = self.begin(durable)?;
            let mut outcomes = Vec::with_capacity(batch.len());
            let changed = {
                let mut t = Tables::open(&txn, now, limits)?;
                for req in &batch {
                    outcomes.push(t.apply(&req.op)?);
                }
                t.changed
            };
            // Nothing to write: no commit (redb's non-durable commits are not free, and
            // they add up until the next durable one).
            if changed || durable {
                txn.commit()?;
            } else {
                txn.abort()?;
            }
            Ok((outcomes, changed || durable))
        })();
        match result {
            Ok((outcomes, committed)) => {
                if committed {
                    self.committed(durable);
                }
                for (req, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = req.reply.send(outcome.map_err(StoreError::Full));
                }
            }
            // The transaction was dropped, so nothing of the batch was written. Retry one by
            // one, so that a request that cannot be stored fails alone.
            Err(_) if batch.len() > 1 => {
                for req in batch {
                    self.run_batch(vec![req]);
                }
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "metrics store write failed");
                let err = self.unavailable(e);
                for req in batch {
                    let _ = req.reply.send(Err(err.clone()));
                }
            }
        }
    }

    fn periodic_sweep(&mut self) {
        loop {
            let now = now_ms(&self.clock);
            let limits = self.limits;
            let result = (|| -> Result<u64, redb::Error> {
                let txn = self.begin(false)?;
                let n = {
                    let mut t = Tables::open(&txn, now, limits)?;
                    t.sweep(SWEEP_CHUNK)?
                };
                txn.commit()?;
                Ok(n)
            })();
            match result {
                Ok(n) => {
                    self.committed(false);
                    if n < SWEEP_CHUNK as u64 {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "metrics store sweep failed");
                    return;
                }
            }
        }
    }

    /// Makes earlier non-durable commits durable with an empty durable commit.
    fn flush(&mut self) {
        let result = self.begin(true).and_then(|txn| Ok(txn.commit()?));
        match result {
            Ok(()) => self.committed(true),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "metrics store flush failed")
            }
        }
    }
}

/// The tables of one write transaction, and what every request in it shares.
struct Tables<'t> {
    now: u64,
    /// Whether a request wrote anything (a batch of repeated lookups may not).
    changed: bool,
    limits: Limits,
    meta: Table<'t, &'static str, u64>,
    assign: Table<'t, (&'static str, &'static str), (u32, &'static str, u64)>,
    assign_expiry: Table<'t, (u64, &'static str, &'static str), ()>,
    series: Table<'t, (&'static str, u32, &'static str), (u64, u64, u64)>,
    series_expiry: Table<'t, (u64, &'static str, u32, &'static str), ()>,
    series_users: Table<'t, (u64, &'static str), ()>,
    metrics: Table<'t, (u64, &'static str), StoredAggregate>,
    recent: Table<'t, (u64, &'static str, u64), f64>,
    user_sums: Table<'t, (u64, &'static str, &'static str), f64>,
    results: Table<'t, (&'static str, &'static str), (u64, &'static [u8])>,
    result_expiry: Table<'t, (u64, &'static str, &'static str), ()>,
}

/// Inner `Err` = the request was refused as full (nothing of it written); outer = storage.
type Outcome = Result<Result<u64, String>, StorageError>;

impl<'t> Tables<'t> {
    fn open(
        txn: &'t WriteTransaction,
        now: u64,
        limits: Limits,
    ) -> Result<Tables<'t>, redb::Error> {
        Ok(Tables {
            now,
            changed: false,
            limits,
            meta: txn.open_table(META)?,
            assign: txn.open_table(ASSIGN)?,
            assign_expiry: txn.open_table(ASSIGN_EXPIRY)?,
            series: txn.open_table(SERIES)?,
            series_expiry: txn.open_table(SERIES_EXPIRY)?,
            series_users: txn.open_table(SERIES_USERS)?,
            metrics: txn.open_table(METRICS)?,
            recent: txn.open_table(RECENT)?,
            user_sums: txn.open_table(USER_SUMS)?,
            results: txn.open_table(RESULTS)?,
            result_expiry: txn.open_table(RESULT_EXPIRY)?,
        })
    }

    fn apply(&mut self, op: &Op) -> Outcome {
        if !matches!(op, Op::Lookup { .. }) {
            self.changed = true;
        }
        match op {
            Op::Lookup { app, user, served } => self.lookup(app, user, served),
            Op::Metric {
                app,
                served,
                metric,
                user,
                value,
            } => self.metric(app, served, metric, user, *value),
            Op::PutResult {
                namespace,
                test,
                json,
            } => self.put_result(namespace, test, json),
            Op::Sweep => Ok(Ok(self.sweep(usize::MAX)?)),
        }
    }

    fn expires(&self) -> u64 {
        self.now.saturating_add(self.limits.ttl_ms)
    }

    fn counter(&self, name: &str) -> Result<u64, StorageError> {
        Ok(self.meta.get(name)?.map(|g| g.value()).unwrap_or(0))
    }

    fn add_assignments(&mut self, delta: i64) -> Result<(), StorageError> {
        let n = self.counter(ASSIGNMENTS)?.saturating_add_signed(delta);
        self.meta.insert(ASSIGNMENTS, n)?;
        Ok(())
    }

    fn full(&self, app: &str) -> String {
        format!(
            "it holds max_users = {} users; a new user of application {} is refused",
            self.limits.max_users,
            short(app)
        )
    }

    /// Whether one more assignment fits, after sweeping expired ones if needed.
    fn room_for_user(&mut self) -> Result<bool, StorageError> {
        if self.counter(ASSIGNMENTS)? < self.limits.max_users {
            return Ok(true);
        }
        self.sweep_assignments(usize::MAX)?;
        Ok(self.counter(ASSIGNMENTS)? < self.limits.max_users)
    }

    /// Records `served` for (app, user), replacing an earlier assignment that expired at
    /// `old_expiry` (if any).
    fn set_assignment(
        &mut self,
        app: &str,
        user: &str,
        served: &Served,
        old_expiry: Option<u64>,
    ) -> Result<(), StorageError> {
        let expires = self.expires();
        if let Some(old) = old_expiry {
            if old != expires {
                self.assign_expiry.remove((old, app, user))?;
            }
        }
        self.assign.insert(
            (app, user),
            (served.version, served.signature.as_str(), expires),
        )?;
        self.assign_expiry.insert((expires, app, user), ())?;
        Ok(())
    }

    fn assignment_expiry(&self, app: &str, user: &str) -> Result<Option<u64>, StorageError> {
        Ok(self.assign.get((app, user))?.map(|g| g.value().2))
    }

    fn lookup(&mut self, app: &str, user: &str, served: &Served) -> Outcome {
        // A user asks on every request: the same answer, refreshed a moment ago, is not
        // written again (its expiry is at most a hundredth of the TTL, or a minute, early).
        let refresh_ms = (self.limits.ttl_ms / 100).min(60_000);
        if let Some(g) = self.assign.get((app, user))? {
            let (version, signature, expires) = g.value();
            if version == served.version
                && signature == served.signature
                && expires > self.now
                && expires.saturating_add(refresh_ms) >= self.expires()
            {
                return Ok(Ok(0));
            }
        }
        self.changed = true;
        let old = self.assignment_expiry(app, user)?;
        if old.is_none() {
            if !self.room_for_user()? {
                return Ok(Err(self.full(app)));
            }
            self.add_assignments(1)?;
        }
        self.set_assignment(app, user, served, old)?;
        self.touch_series(app, served, user)?;
        Ok(Ok(0))
    }

    fn metric(&mut self, app: &str, served: &Served, metric: &str, user: &str, x: f64) -> Outcome {
        // A user without a live assignment gets one (what it was served), so metric writers
        // count against max_users too; a live assignment is Lookup's and is left alone.
        match self.assignment_expiry(app, user)? {
            Some(e) if e > self.now => {}
            Some(e) => self.set_assignment(app, user, served, Some(e))?,
            None => {
                if !self.room_for_user()? {
                    return Ok(Err(self.full(app)));
                }
                self.add_assignments(1)?;
                self.set_assignment(app, user, served, None)?;
            }
        }
        let id = self.touch_series(app, served, user)?;

        let mut agg = match self.metrics.get((id, metric))? {
            Some(g) => {
                let (count, sum, sum_sq, min, max) = g.value();
                Aggregate {
                    count,
                    sum,
                    sum_sq,
                    min,
                    max,
                }
            }
            None => Aggregate::default(),
        };
        let seq = agg.count;
        agg.add(x);
        self.metrics.insert(
            (id, metric),
            (agg.count, agg.sum, agg.sum_sq, agg.min, agg.max),
        )?;

        let max_values = self.limits.max_values;
        if max_values > 0 {
            self.recent.insert((id, metric, seq), x)?;
        }
        let keep_from = agg.count.saturating_sub(max_values);
        if keep_from > 0 {
            self.recent
                .retain_in((id, metric, 0)..(id, metric, keep_from), |_, _| false)?;
        }

        let sum = self.user_sums.get((id, metric, user))?.map(|g| g.value());
        self.user_sums
            .insert((id, metric, user), sum.unwrap_or(0.0) + x)?;
        Ok(Ok(0))
    }

    /// The live series of `served` (created, or recreated if expired), its expiry pushed to
    /// now + ttl and `user` counted among its users; returns its id.
    fn touch_series(
        &mut self,
        app: &str,
        served: &Served,
        user: &str,
    ) -> Result<u64, StorageError> {
        let sig = served.signature.as_str();
        let key = (app, served.version, sig);
        let expires = self.expires();
        let found = self.series.get(key)?.map(|g| g.value());
        let (id, mut users) = match found {
            Some((id, old, users)) if old > self.now => {
                if old != expires {
                    self.series_expiry.remove((old, app, served.version, sig))?;
                }
                (id, users)
            }
            Some((id, old, _)) => {
                self.series_expiry.remove((old, app, served.version, sig))?;
                self.purge_series(id)?;
                (self.new_series_id()?, 0)
            }
            None => (self.new_series_id()?, 0),
        };
        if self.series_users.insert((id, user), ())?.is_none() {
            users += 1;
        }
        self.series.insert(key, (id, expires, users))?;
        self.series_expiry
            .insert((expires, app, served.version, sig), ())?;
        Ok(id)
    }

    fn new_series_id(&mut self) -> Result<u64, StorageError> {
        let id = self.counter(NEXT_SERIES_ID)?;
        self.meta.insert(NEXT_SERIES_ID, id + 1)?;
        Ok(id)
    }

    fn purge_series(&mut self, id: u64) -> Result<(), StorageError> {
        self.series_users
            .retain_in((id, "")..(id + 1, ""), |_, _| false)?;
        self.metrics
            .retain_in((id, "")..(id + 1, ""), |_, _| false)?;
        self.recent
            .retain_in((id, "", 0)..(id + 1, "", 0), |_, _| false)?;
        self.user_sums
            .retain_in((id, "", "")..(id + 1, "", ""), |_, _| false)?;
        Ok(())
    }

    /// Replaces the result of (namespace, test), with a fresh expiry.
    fn put_result(&mut self, namespace: &str, test: &str, json: &[u8]) -> Outcome {
        let expires = self.expires();
        let old = self.results.get((namespace, test))?.map(|g| g.value().0);
        if let Some(old) = old.filter(|old| *old != expires) {
            self.result_expiry.remove((old, namespace, test))?;
        }
        self.results.insert((namespace, test), (expires, json))?;
        self.result_expiry.insert((expires, namespace, test), ())?;
        Ok(Ok(0))
    }

    /// Deletes up to `limit` expired assignments, up to `limit` expired series and up to
    /// `limit` expired results.
    fn sweep(&mut self, limit: usize) -> Result<u64, StorageError> {
        Ok(self.sweep_assignments(limit)?
            + self.sweep_series(limit)?
            + self.sweep_results(limit)?)
    }

    fn sweep_results(&mut self, limit: usize) -> Result<u64, StorageError> {
        let mut expired = Vec::new();
        for item in self
            .result_expiry
            .range(..(self.now.saturating_add(1), "", ""))?
            .take(limit)
        {
            let (k, _) = item?;
            let (e, namespace, test) = k.value();
            expired.push((e, namespace.to_owned(), test.to_owned()));
        }
        let mut removed = 0;
        for (e, namespace, test) in &expired {
            let key = (namespace.as_str(), test.as_str());
            self.result_expiry.remove((*e, key.0, key.1))?;
            let current = self.results.get(key)?.map(|g| g.value().0);
            if current == Some(*e) {
                self.results.remove(key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn sweep_assignments(&mut self, limit: usize) -> Result<u64, StorageError> {
        let mut expired = Vec::new();
        for item in self
            .assign_expiry
            .range(..(self.now.saturating_add(1), "", ""))?
            .take(limit)
        {
            let (k, _) = item?;
            let (e, app, user) = k.value();
            expired.push((e, app.to_owned(), user.to_owned()));
        }
        let mut removed = 0;
        for (e, app, user) in &expired {
            self.assign_expiry
                .remove((*e, app.as_str(), user.as_str()))?;
            let current = self.assignment_expiry(app, user)?;
            if current == Some(*e) {
                self.assign.remove((app.as_str(), user.as_str()))?;
                removed += 1;
            }
        }
        self.add_assignments(-(removed as i64))?;
        Ok(removed)
    }

    fn sweep_series(&mut self, limit: usize) -> Result<u64, StorageError> {
        let mut expired = Vec::new();
        for item in self
            .series_expiry
            .range(..(self.now.saturating_add(1), "", 0, ""))?
            .take(limit)
        {
            let (k, _) = item?;
            let (e, app, version, sig) = k.value();
            expired.push((e, app.to_owned(), version, sig.to_owned()));
        }
        let mut removed = 0;
        for (e, app, version, sig) in &expired {
            self.series_expiry
                .remove((*e, app.as_str(), *version, sig.as_str()))?;
            let key = (app.as_str(), *version, sig.as_str());
            let found = self.series.get(key)?.map(|g| g.value());
            if let Some((id, current, _)) = found {
                if current == *e {
                    self.series.remove(key)?;
                    self.purge_series(id)?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    const TTL: Duration = Duration::from_secs(100);

    /// A clock tests move by hand.
    struct FakeClock(Arc<AtomicU64>);

    impl FakeClock {
        fn new() -> (FakeClock, Clock) {
            let ms = Arc::new(AtomicU64::new(1_700_000_000_000));
            let read = ms.clone();
            let clock: Clock =
                Arc::new(move || UNIX_EPOCH + Duration::from_millis(read.load(Ordering::SeqCst)));
            (FakeClock(ms), clock)
        }
        fn advance(&self, by: Duration) {
            self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
        }
    }

    fn config(path: &Path) -> StoreConfig {
        StoreConfig {
            backend: Backend::Embedded {
                path: path.to_path_buf(),
            },
            ttl: TTL,
            max_users: 1000,
            max_values: 5,
        }
    }

    fn served(version: u32) -> Served {
        Served {
            version,
            signature: format!("sig{version}"),
        }
    }

    /// Rows in each table, in declaration order.
    fn rows(store: &EmbeddedStore) -> Vec<u64> {
        use redb::ReadableTableMetadata;
        let txn = store.inner.db.begin_read().expect("read");
        vec![
            txn.open_table(ASSIGN).expect("t").len().expect("len"),
            txn.open_table(ASSIGN_EXPIRY)
                .expect("t")
                .len()
                .expect("len"),
            txn.open_table(SERIES).expect("t").len().expect("len"),
            txn.open_table(SERIES_EXPIRY)
                .expect("t")
                .len()
                .expect("len"),
            txn.open_table(SERIES_USERS).expect("t").len().expect("len"),
            txn.open_table(METRICS).expect("t").len().expect("len"),
            txn.open_table(RECENT).expect("t").len().expect("len"),
            txn.open_table(USER_SUMS).expect("t").len().expect("len"),
        ]
    }

    fn assignments_counter(store: &EmbeddedStore) -> u64 {
        let txn = store.inner.db.begin_read().expect("read");
        let meta = txn.open_table(META).expect("meta");
        let n = meta.get(ASSIGNMENTS).expect("get").map(|g| g.value());
        n.unwrap_or(0)
    }

    #[tokio::test]
    async fn open_creates_folders_and_names_the_path_when_it_cannot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b/abn.redb");
        let store = EmbeddedStore::open(&config(&path)).expect("open");
        assert!(path.is_file());

        // Locked while open.
        match EmbeddedStore::open(&config(&path)) {
            Err(StoreError::Unavailable(msg)) => {
                assert!(msg.contains(&path.display().to_string()), "{msg}");
                assert!(msg.contains("locked"), "{msg}");
            }
            _ => panic!("a second open of the same file must fail"),
        }
        // Dropping the store releases it.
        drop(store);
        EmbeddedStore::open(&config(&path)).expect("reopen");

        // A folder that cannot be created (its parent is a file).
        let blocked = dir.path().join("file");
        std::fs::write(&blocked, "x").expect("write");
        let bad = blocked.join("sub/abn.redb");
        match EmbeddedStore::open(&config(&bad)) {
            Err(StoreError::Unavailable(msg)) => {
                assert!(msg.contains(&bad.display().to_string()), "{msg}")
            }
            _ => panic!("opening under a file must fail"),
        }
        // Not a redb file.
        let junk = dir.path().join("junk.redb");
        std::fs::write(&junk, vec![7u8; 4096]).expect("write");
        assert!(matches!(
            EmbeddedStore::open(&config(&junk)),
            Err(StoreError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn expired_data_is_hidden_before_the_sweep_and_deleted_by_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (time, clock) = FakeClock::new();
        let store = EmbeddedStore::open_with_clock(&config(&dir.path().join("s.redb")), clock)
            .expect("open");
        store
            .record_lookup("ns/app", "u1", &served(0))
            .await
            .expect("lookup");
        store
            .write_metric("ns/app", &served(0), "m", "u2", 1.5)
            .await
            .expect("write");
        assert_eq!(rows(&store), vec![2, 2, 1, 1, 2, 1, 1, 1]);

        time.advance(TTL - Duration::from_millis(1));
        assert!(store
            .assignment("ns/app", "u1")
            .await
            .expect("get")
            .is_some());
        assert_eq!(
            store
                .series("ns/app", &served(0))
                .await
                .expect("series")
                .users,
            2
        );

        time.advance(Duration::from_millis(1));
        assert_eq!(store.assignment("ns/app", "u1").await.expect("get"), None);
        assert_eq!(store.assignment("ns/app", "u2").await.expect("get"), None);
        assert_eq!(
            store.series("ns/app", &served(0)).await.expect("series"),
            SeriesData::default()
        );
        // Still on disk until swept; the sweep deletes 2 assignments and 1 series.
        assert_eq!(rows(&store), vec![2, 2, 1, 1, 2, 1, 1, 1]);
        assert_eq!(store.sweep().await.expect("sweep"), 3);
        assert_eq!(rows(&store), vec![0; 8]);
        assert_eq!(assignments_counter(&store), 0);
        assert_eq!(store.sweep().await.expect("sweep"), 0);
    }

    #[tokio::test]
    async fn the_writer_sweeps_by_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (time, clock) = FakeClock::new();
        let mut cfg = config(&dir.path().join("s.redb"));
        // Swept every 100 ms of real time.
        cfg.ttl = Duration::from_millis(500);
        let store = EmbeddedStore::open_with_clock(&cfg, clock).expect("open");
        store
            .write_metric("a", &served(0), "m", "u", 1.0)
            .await
            .expect("write");
        time.advance(Duration::from_secs(1));
        let deadline = Instant::now() + Duration::from_secs(10);
        while rows(&store) != vec![0; 8] {
            assert!(Instant::now() < deadline, "not swept: {:?}", rows(&store));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(assignments_counter(&store), 0);
    }

    #[tokio::test]
    async fn writes_refresh_what_they_touch_and_the_index_stays_one_entry_per_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (time, clock) = FakeClock::new();
        let store = EmbeddedStore::open_with_clock(&config(&dir.path().join("s.redb")), clock)
            .expect("open");
        store
            .record_lookup("a", "u1", &served(0))
            .await
            .expect("lookup");
        for _ in 0..5 {
            time.advance(TTL / 2);
            // Refreshes the series, not u1's assignment (a metric never moves Lookup's); u2's
            // assignment is made again each time it has expired.
            store
                .write_metric("a", &served(0), "m", "u2", 1.0)
                .await
                .expect("write");
        }
        assert_eq!(store.assignment("a", "u1").await.expect("get"), None);
        assert_eq!(
            store.assignment("a", "u2").await.expect("get"),
            Some(served(0))
        );
        let s = store.series("a", &served(0)).await.expect("series");
        assert_eq!((s.users, s.metrics["m"].transactions.count), (2, 5));
        let r = rows(&store);
        assert_eq!((r[0], r[1], r[2], r[3]), (2, 2, 1, 1), "{r:?}");
        assert_eq!(store.sweep().await.expect("sweep"), 1);
        assert_eq!(assignments_counter(&store), 1);

        // A lookup refreshes the assignment.
        store
            .record_lookup("a", "u3", &served(1))
            .await
            .expect("lookup");
        time.advance(TTL / 2);
        store
            .record_lookup("a", "u3", &served(1))
            .await
            .expect("lookup");
        time.advance(TTL / 2);
        assert_eq!(
            store.assignment("a", "u3").await.expect("get"),
            Some(served(1))
        );
        let r = rows(&store);
        assert_eq!((r[0], r[1]), (2, 2), "{r:?}");
    }

    #[tokio::test]
    async fn a_series_written_after_expiry_starts_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (time, clock) = FakeClock::new();
        let store = EmbeddedStore::open_with_clock(&config(&dir.path().join("s.redb")), clock)
            .expect("open");
        for u in ["u1", "u2", "u3"] {
            store
                .write_metric("a", &served(0), "m", u, 10.0)
                .await
                .expect("write");
        }
        time.advance(TTL);
        // Not swept yet: the write must not resurrect the old data.
        store
            .write_metric("a", &served(0), "m", "u4", 2.0)
            .await
            .expect("write");
        let s = store.series("a", &served(0)).await.expect("series");
        assert_eq!(s.users, 1);
        assert_eq!(s.metrics["m"].transactions, Aggregate::of([2.0]));
        assert_eq!(s.metrics["m"].recent, vec![2.0]);
        assert_eq!(s.metrics["m"].user_sums, vec![2.0]);
        assert_eq!(rows(&store)[4..], [1, 1, 1, 1]);
    }

    #[tokio::test]
    async fn the_ring_keeps_the_newest_max_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(&config(&dir.path().join("s.redb"))).expect("open");
        for i in 0..12 {
            store
                .write_metric("a", &served(0), "m", "u", f64::from(i))
                .await
                .expect("write");
        }
        let s = store.series("a", &served(0)).await.expect("series");
        assert_eq!(s.metrics["m"].recent, vec![7.0, 8.0, 9.0, 10.0, 11.0]);
        assert_eq!(s.metrics["m"].transactions.count, 12);
        assert_eq!(rows(&store)[6], 5);

        // A lower limit after reopening applies to reads and is restored by the next write.
        let path = store.path().to_path_buf();
        drop(store);
        let mut cfg = config(&path);
        cfg.max_values = 2;
        let store = EmbeddedStore::open(&cfg).expect("reopen");
        let s = store.series("a", &served(0)).await.expect("series");
        assert_eq!(s.metrics["m"].recent, vec![10.0, 11.0]);
        store
            .write_metric("a", &served(0), "m", "u", 12.0)
            .await
            .expect("write");
        assert_eq!(rows(&store)[6], 2);

        cfg.max_values = 0;
        drop(store);
        let store = EmbeddedStore::open(&cfg).expect("reopen");
        store
            .write_metric("a", &served(0), "m", "u", 13.0)
            .await
            .expect("write");
        let s = store.series("a", &served(0)).await.expect("series");
        assert!(s.metrics["m"].recent.is_empty());
        assert_eq!(rows(&store)[6], 0);
    }

    #[tokio::test]
    async fn full_refuses_new_users_only_after_sweeping_expired_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (time, clock) = FakeClock::new();
        let mut cfg = config(&dir.path().join("s.redb"));
        cfg.max_users = 2;
        let store = EmbeddedStore::open_with_clock(&cfg, clock).expect("open");
        store
            .record_lookup("a", "u1", &served(0))
            .await
            .expect("u1");
        store
            .write_metric("b", &served(0), "m", "u2", 1.0)
            .await
            .expect("u2");
        let before = rows(&store);
        assert!(matches!(
            store.record_lookup("a", "u3", &served(0)).await,
            Err(StoreError::Full(_))
        ));
        assert!(matches!(
            store.write_metric("a", &served(1), "m", "u3", 1.0).await,
            Err(StoreError::Full(_))
        ));
        assert_eq!(rows(&store), before, "a refused request writes nothing");
        // Existing users keep working; u1's lookup refreshes it, u2's metric does not.
        time.advance(TTL / 2);
        store
            .record_lookup("a", "u1", &served(1))
            .await
            .expect("u1 again");
        store
            .write_metric("b", &served(0), "m", "u2", 1.0)
            .await
            .expect("u2 again");
        // u2 has expired (not swept yet): its place goes to u3, and then it is full again.
        time.advance(TTL / 2);
        store
            .record_lookup("a", "u3", &served(0))
            .await
            .expect("u3 after u2 expired");
        assert_eq!(assignments_counter(&store), 2);
        assert!(matches!(
            store.record_lookup("a", "u4", &served(0)).await,
            Err(StoreError::Full(_))
        ));
        assert_eq!(assignments_counter(&store), 2);
    }

    #[tokio::test]
    async fn concurrent_new_users_get_exactly_the_free_places() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(&dir.path().join("s.redb"));
        cfg.max_users = 10;
        let store = EmbeddedStore::open(&cfg).expect("open");
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(
                    async move { store.record_lookup("a", &format!("u{i}"), &served(0)).await },
                )
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            match t.await.expect("join") {
                Ok(()) => ok += 1,
                Err(StoreError::Full(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(ok, 10);
        assert_eq!(
            store.series("a", &served(0)).await.expect("series").users,
            10
        );
        assert_eq!(assignments_counter(&store), 10);
    }

    #[tokio::test]
    async fn keys_cannot_collide_through_separators() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(&config(&dir.path().join("s.redb"))).expect("open");
        let s1 = Served {
            version: 0,
            signature: "x::y".into(),
        };
        store.record_lookup("a::b", "c", &s1).await.expect("lookup");
        assert_eq!(store.assignment("a", "b::c").await.expect("get"), None);
        assert_eq!(
            store.assignment("a::b", "c").await.expect("get"),
            Some(s1.clone())
        );
        store
            .write_metric("a", &s1, "m::u", "v", 1.0)
            .await
            .expect("write");
        store
            .write_metric("a", &s1, "m", "u::v", 2.0)
            .await
            .expect("write");
        let s = store.series("a", &s1).await.expect("series");
        assert_eq!(s.metrics.len(), 2);
        assert_eq!(s.metrics["m::u"].user_sums, vec![1.0]);
        assert_eq!(s.metrics["m"].user_sums, vec![2.0]);
        assert_eq!(
            store
                .series("a::b", &s1)
                .await
                .expect("series")
                .metrics
                .len(),
            0
        );
    }

    /// Rows in the results table and its expiry index.
    fn result_rows(store: &EmbeddedStore) -> (u64, u64) {
        use redb::ReadableTableMetadata;
        let txn = store.inner.db.begin_read().expect("read");
        (
            txn.open_table(RESULTS).expect("t").len().expect("len"),
            txn.open_table(RESULT_EXPIRY)
                .expect("t")
                .len()
                .expect("len"),
        )
    }

    #[tokio::test]
    async fn results_are_replaced_expire_and_are_swept_with_one_index_entry_each() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (time, clock) = FakeClock::new();
        let store = EmbeddedStore::open_with_clock(&config(&dir.path().join("s.redb")), clock)
            .expect("open");
        store.put_result("ns", "t", b"1").await.expect("put");
        store.put_result("ns", "u", b"u").await.expect("put");
        for i in 2..5 {
            time.advance(TTL / 4);
            store
                .put_result("ns", "t", format!("{i}").as_bytes())
                .await
                .expect("put");
        }
        assert_eq!(result_rows(&store), (2, 2));
        assert_eq!(
            store.result("ns", "t").await.expect("get"),
            Some(b"4".to_vec())
        );
        // u expired (written a TTL ago), t was refreshed by its last write.
        time.advance(TTL / 4);
        assert_eq!(store.result("ns", "u").await.expect("get"), None);
        assert_eq!(store.sweep().await.expect("sweep"), 1);
        assert_eq!(result_rows(&store), (1, 1));
        time.advance(TTL);
        assert_eq!(store.result("ns", "t").await.expect("get"), None);
        assert_eq!(store.sweep().await.expect("sweep"), 1);
        assert_eq!(result_rows(&store), (0, 0));
        // The A/B/n tables were never touched.
        assert_eq!(rows(&store), vec![0; 8]);
    }

    #[tokio::test]
    async fn lookups_survive_reopening_without_a_later_metric() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        let store = EmbeddedStore::open(&config(&path)).expect("open");
        store
            .record_lookup("a", "u", &served(3))
            .await
            .expect("lookup");
        drop(store);
        let store = EmbeddedStore::open(&config(&path)).expect("reopen");
        assert_eq!(
            store.assignment("a", "u").await.expect("get"),
            Some(served(3))
        );
    }
}
