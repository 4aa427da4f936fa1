//! The same behavioural checks against both stores: the embedded file and a real
//! redis-server (from testenv, one per test).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use iter8_abn::store::embedded::{Clock, EmbeddedStore};
use iter8_abn::store::redis::RedisStore;
use iter8_abn::store::{
    Aggregate, Backend, MetricData, SeriesData, Served, Store, StoreConfig, StoreError,
    MAX_RESULT_BYTES,
};
use testenv::redis::RedisServer;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Embedded,
    Redis,
}

/// A store and what it runs on.
struct Env {
    store: Store,
    config: StoreConfig,
    redis: Option<RedisServer>,
    dir: tempfile::TempDir,
}

impl Env {
    async fn new(kind: Kind, tweak: impl FnOnce(&mut StoreConfig)) -> Env {
        Env::with(kind, false, tweak).await
    }

    async fn with(kind: Kind, persistent: bool, tweak: impl FnOnce(&mut StoreConfig)) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let redis = (kind == Kind::Redis).then(|| {
            if persistent {
                RedisServer::start_persistent()
            } else {
                RedisServer::start()
            }
            .expect("redis-server")
        });
        let backend = match &redis {
            None => Backend::Embedded {
                path: dir.path().join("abn.redb"),
            },
            Some(r) => Backend::Redis {
                address: r.address(),
                username: None,
                password: None,
                db: 0,
            },
        };
        let mut config = StoreConfig {
            backend,
            ttl: Duration::from_secs(3600),
            max_users: 100_000,
            max_values: 1000,
        };
        tweak(&mut config);
        let store = Store::open(&config).await.expect("open store");
        Env {
            store,
            config,
            redis,
            dir,
        }
    }

    /// Closes the store and opens it again (the embedded file; Redis restarts).
    async fn reopen(self) -> Env {
        let Env {
            store,
            config,
            mut redis,
            dir,
        } = self;
        // Dropping the last handle of the embedded store releases its file.
        drop(store);
        if let Some(r) = &mut redis {
            r.restart().expect("restart redis");
        }
        let store = Store::open(&config).await.expect("reopen store");
        Env {
            store,
            config,
            redis,
            dir,
        }
    }
}

fn served(version: u32) -> Served {
    Served {
        version,
        signature: format!("sig-{version}"),
    }
}

const APP: &str = "default/backend";

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Kind::Embedded).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Kind::Redis).await
                }
            )*
        }
    };
}

both!(
    aggregates_are_exact,
    users_include_lookup_only_users,
    order_is_deterministic,
    assignment_follows_lookups,
    data_survives_reopening,
    full_refuses_new_users_and_writes_nothing,
    concurrent_writes_are_all_counted,
    huge_names_do_not_panic,
    throughput_with_64_writers,
    results_are_kept_replaced_and_bounded,
    results_survive_reopening,
);

/// Values with long binary expansions, so any rounding difference would show.
fn value(i: usize) -> f64 {
    (i as f64) * 0.1 + 1.0 / 3.0 - (i % 5) as f64 * 1e-7
}

async fn aggregates_are_exact(kind: Kind) {
    let env = Env::new(kind, |c| c.max_values = 50).await;
    let s = &env.store;
    let mut all: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut per_user: BTreeMap<&str, BTreeMap<String, f64>> = BTreeMap::new();
    for i in 0..300 {
        let metric = if i % 3 == 0 { "latency" } else { "revenue" };
        let user = format!("user-{}", i % 7);
        let x = value(i);
        s.write_metric(APP, &served(1), metric, &user, x)
            .await
            .expect("write");
        all.entry(metric).or_default().push(x);
        *per_user
            .entry(metric)
            .or_default()
            .entry(user)
            .or_insert(0.0) += x;
    }
    let got = s.series(APP, &served(1)).await.expect("series");
    assert_eq!(got.users, 7);
    assert_eq!(
        got.metrics.keys().collect::<Vec<_>>(),
        vec!["latency", "revenue"]
    );
    for (metric, values) in &all {
        let m = &got.metrics[*metric];
        assert_eq!(
            m.transactions,
            Aggregate::of(values.iter().copied()),
            "{metric}"
        );
        assert_eq!(m.recent, values[values.len() - 50..].to_vec(), "{metric}");
        let sums: Vec<f64> = per_user[metric].values().copied().collect();
        assert_eq!(m.user_sums, sums, "{metric}");
    }
    // Another version's series is separate.
    assert_eq!(
        s.series(APP, &served(0)).await.expect("series"),
        SeriesData::default()
    );
}

async fn users_include_lookup_only_users(kind: Kind) {
    let env = Env::new(kind, |_| {}).await;
    let s = &env.store;
    for u in ["a", "b", "c"] {
        s.record_lookup(APP, u, &served(0)).await.expect("lookup");
    }
    s.record_lookup(APP, "z", &served(1)).await.expect("lookup");
    s.write_metric(APP, &served(0), "m", "c", 2.0)
        .await
        .expect("write");
    s.write_metric(APP, &served(0), "m", "d", 3.0)
        .await
        .expect("write");
    s.write_metric(APP, &served(0), "m", "d", 4.0)
        .await
        .expect("write");
    let got = s.series(APP, &served(0)).await.expect("series");
    assert_eq!(got.users, 4, "a, b, c (looked up) and d (wrote)");
    assert_eq!(got.metrics["m"].user_sums, vec![2.0, 7.0]);
    assert_eq!(got.metrics["m"].transactions.count, 3);
    assert_eq!(s.series(APP, &served(1)).await.expect("series").users, 1);
}

async fn order_is_deterministic(kind: Kind) {
    let env = Env::new(kind, |_| {}).await;
    let s = &env.store;
    let writes = [
        ("zeta", "u3", 3.0),
        ("alpha", "u1", 1.0),
        ("mid", "u2", 2.0),
        ("alpha", "u3", 30.0),
        ("alpha", "u0", 0.5),
        ("zeta", "u1", 10.0),
        ("alpha", "u2", 20.0),
    ];
    for (metric, user, x) in writes {
        s.write_metric(APP, &served(0), metric, user, x)
            .await
            .expect("write");
    }
    let first = s.series(APP, &served(0)).await.expect("series");
    for _ in 0..5 {
        assert_eq!(s.series(APP, &served(0)).await.expect("series"), first);
    }
    assert_eq!(
        first.metrics.keys().collect::<Vec<_>>(),
        vec!["alpha", "mid", "zeta"]
    );
    assert_eq!(
        first.metrics["alpha"],
        MetricData {
            transactions: Aggregate::of([1.0, 30.0, 0.5, 20.0]),
            recent: vec![1.0, 30.0, 0.5, 20.0],
            // By user id: u0, u1, u2, u3.
            user_sums: vec![0.5, 1.0, 20.0, 30.0],
        }
    );
    assert_eq!(first.metrics["zeta"].user_sums, vec![10.0, 3.0]);
}

async fn assignment_follows_lookups(kind: Kind) {
    let env = Env::new(kind, |_| {}).await;
    let s = &env.store;
    assert_eq!(s.assignment(APP, "u").await.expect("get"), None);
    s.record_lookup(APP, "u", &served(0)).await.expect("lookup");
    assert_eq!(s.assignment(APP, "u").await.expect("get"), Some(served(0)));
    s.record_lookup(APP, "u", &served(2)).await.expect("lookup");
    assert_eq!(s.assignment(APP, "u").await.expect("get"), Some(served(2)));
    assert_eq!(s.assignment("default/other", "u").await.expect("get"), None);
    // A metric for a user without an assignment records what it was served; a metric
    // never moves an existing assignment.
    s.write_metric(APP, &served(1), "m", "w", 1.0)
        .await
        .expect("write");
    assert_eq!(s.assignment(APP, "w").await.expect("get"), Some(served(1)));
    s.write_metric(APP, &served(0), "m", "u", 1.0)
        .await
        .expect("write");
    assert_eq!(s.assignment(APP, "u").await.expect("get"), Some(served(2)));
    // Separators in names cannot make two keys meet.
    s.record_lookup("a:b", "c", &served(0))
        .await
        .expect("lookup");
    assert_eq!(s.assignment("a", "b:c").await.expect("get"), None);
    let colon = Served {
        version: 4,
        signature: "x:y".into(),
    };
    s.record_lookup(APP, "colon", &colon).await.expect("lookup");
    assert_eq!(s.assignment(APP, "colon").await.expect("get"), Some(colon));
}

async fn data_survives_reopening(kind: Kind) {
    let env = Env::with(kind, true, |_| {}).await;
    env.store
        .record_lookup(APP, "looked", &served(1))
        .await
        .expect("lookup");
    for i in 0..20 {
        env.store
            .write_metric(APP, &served(1), "m", &format!("u{}", i % 3), value(i))
            .await
            .expect("write");
    }
    let before = env.store.series(APP, &served(1)).await.expect("series");
    let env = env.reopen().await;
    assert_eq!(
        env.store.series(APP, &served(1)).await.expect("series"),
        before
    );
    assert_eq!(
        env.store.assignment(APP, "looked").await.expect("get"),
        Some(served(1))
    );
    assert_eq!(before.users, 4);
}

async fn full_refuses_new_users_and_writes_nothing(kind: Kind) {
    let env = Env::new(kind, |c| c.max_users = 3).await;
    let s = &env.store;
    for u in ["u1", "u2", "u3"] {
        s.record_lookup(APP, u, &served(0)).await.expect("lookup");
    }
    s.write_metric(APP, &served(0), "m", "u1", 1.0)
        .await
        .expect("write");
    let before = s.series(APP, &served(0)).await.expect("series");
    match s.record_lookup(APP, "u4", &served(0)).await {
        Err(StoreError::Full(msg)) => assert!(msg.contains("max_users"), "{msg}"),
        other => panic!("expected Full, got {other:?}"),
    }
    match s.write_metric(APP, &served(0), "m", "u4", 5.0).await {
        Err(StoreError::Full(_)) => {}
        other => panic!("expected Full, got {other:?}"),
    }
    match s.write_metric(APP, &served(1), "other", "u5", 5.0).await {
        Err(StoreError::Full(_)) => {}
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(s.series(APP, &served(0)).await.expect("series"), before);
    assert_eq!(
        s.series(APP, &served(1)).await.expect("series"),
        SeriesData::default()
    );
    assert_eq!(s.assignment(APP, "u4").await.expect("get"), None);
    // Existing users keep working.
    s.record_lookup(APP, "u2", &served(1))
        .await
        .expect("lookup");
    s.write_metric(APP, &served(0), "m", "u3", 2.0)
        .await
        .expect("write");
    assert_eq!(
        s.series(APP, &served(0)).await.expect("series").metrics["m"]
            .transactions
            .count,
        2
    );
}

async fn concurrent_writes_are_all_counted(kind: Kind) {
    let env = Env::new(kind, |c| c.max_values = 100).await;
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let s = env.store.clone();
            tokio::spawn(async move {
                let user = format!("user-{t}");
                for _ in 0..500 {
                    s.write_metric(APP, &served(0), "m", &user, f64::from(t + 1))
                        .await
                        .expect("write");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let got = env.store.series(APP, &served(0)).await.expect("series");
    let m = &got.metrics["m"];
    assert_eq!(got.users, 8);
    assert_eq!(m.transactions.count, 4000);
    // Small integers: exact whatever the order.
    assert_eq!(m.transactions.sum, 500.0 * 36.0);
    assert_eq!((m.transactions.min, m.transactions.max), (1.0, 8.0));
    assert_eq!(m.recent.len(), 100);
    assert_eq!(
        m.user_sums,
        (1..=8).map(|v| 500.0 * f64::from(v)).collect::<Vec<_>>()
    );
}

async fn huge_names_do_not_panic(kind: Kind) {
    let env = Env::new(kind, |_| {}).await;
    let s = &env.store;
    let huge = "x".repeat(1 << 20);
    let big_served = Served {
        version: u32::MAX,
        signature: huge.clone(),
    };
    // Whatever the answers, no panic and the store keeps working.
    let _ = s.record_lookup(&huge, &huge, &big_served).await;
    let _ = s.write_metric(&huge, &big_served, &huge, &huge, 1.0).await;
    let _ = s.write_metric(APP, &served(0), &huge, "u", f64::MAX).await;
    let _ = s.assignment(&huge, &huge).await;
    let _ = s.series(&huge, &big_served).await;
    let _ = s.series(APP, &served(0)).await;
    s.record_lookup(APP, "after", &served(0))
        .await
        .expect("still works");
}

/// Prints writes per second with 64 concurrent writers (no assertion on timing).
async fn throughput_with_64_writers(kind: Kind) {
    let env = Env::new(kind, |_| {}).await;
    let per_writer: u32 = 150;
    let start = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let s = env.store.clone();
            tokio::spawn(async move {
                for i in 0..per_writer {
                    s.write_metric(APP, &served(t % 2), "m", &format!("u{t}"), f64::from(i))
                        .await
                        .expect("write");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let secs = start.elapsed().as_secs_f64();
    let n = 64 * per_writer;
    println!(
        "{kind:?} store: {n} write_metric calls from 64 writers in {secs:.2} s = {:.0} writes/s",
        f64::from(n) / secs
    );
    let a = env.store.series(APP, &served(0)).await.expect("series");
    let b = env.store.series(APP, &served(1)).await.expect("series");
    assert_eq!(
        a.metrics["m"].transactions.count + b.metrics["m"].transactions.count,
        u64::from(n)
    );
}

async fn results_are_kept_replaced_and_bounded(kind: Kind) {
    let env = Env::new(kind, |_| {}).await;
    let s = &env.store;
    assert_eq!(s.result("default", "t").await.expect("get"), None);
    s.put_result("default", "t", br#"{"numCompletedTasks":1}"#)
        .await
        .expect("put");
    s.put_result("default", "t", br#"{"numCompletedTasks":2}"#)
        .await
        .expect("replace");
    assert_eq!(
        s.result("default", "t").await.expect("get"),
        Some(br#"{"numCompletedTasks":2}"#.to_vec())
    );
    // Another namespace or test is another result; separators cannot make keys meet.
    assert_eq!(s.result("other", "t").await.expect("get"), None);
    assert_eq!(s.result("default", "t2").await.expect("get"), None);
    s.put_result("a:1:b", "c", b"1").await.expect("put");
    s.put_result("a", "b:1:c", b"2").await.expect("put");
    s.put_result("a::b", "c", b"3").await.expect("put");
    s.put_result("a", "b::c", b"4").await.expect("put");
    for (ns, test, json) in [
        ("a:1:b", "c", b"1"),
        ("a", "b:1:c", b"2"),
        ("a::b", "c", b"3"),
        ("a", "b::c", b"4"),
    ] {
        assert_eq!(
            s.result(ns, test).await.expect("get"),
            Some(json.to_vec()),
            "{ns} {test}"
        );
    }
    // The largest result is kept; one byte more is refused and leaves the stored one.
    let max = vec![b'x'; MAX_RESULT_BYTES];
    s.put_result("default", "big", &max).await.expect("max");
    assert_eq!(
        s.result("default", "big")
            .await
            .expect("get")
            .map(|j| j.len()),
        Some(MAX_RESULT_BYTES)
    );
    let over = vec![b'y'; MAX_RESULT_BYTES + 1];
    match s.put_result("default", "big", &over).await {
        Err(StoreError::Full(msg)) => {
            assert!(msg.contains(&(MAX_RESULT_BYTES + 1).to_string()), "{msg}");
            assert!(msg.contains("4 MiB"), "{msg}");
        }
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(
        s.result("default", "big").await.expect("get"),
        Some(max),
        "a refused result leaves the stored one"
    );
    // Results do not touch the A/B/n data.
    assert_eq!(
        s.series(APP, &served(0)).await.expect("series"),
        SeriesData::default()
    );
}

async fn results_survive_reopening(kind: Kind) {
    let env = Env::with(kind, true, |_| {}).await;
    env.store
        .put_result("perf", "load-test", b"{\"failure\":false}")
        .await
        .expect("put");
    let env = env.reopen().await;
    assert_eq!(
        env.store.result("perf", "load-test").await.expect("get"),
        Some(b"{\"failure\":false}".to_vec())
    );
}

// Expiry and outages: the mechanisms differ per backend.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_results_expire_with_the_injected_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ms = Arc::new(AtomicU64::new(1_800_000_000_000));
    let read = ms.clone();
    let clock: Clock =
        Arc::new(move || UNIX_EPOCH + Duration::from_millis(read.load(Ordering::SeqCst)));
    let ttl = Duration::from_secs(600);
    let config = StoreConfig {
        backend: Backend::Embedded {
            path: dir.path().join("abn.redb"),
        },
        ttl,
        max_users: 2,
        max_values: 10,
    };
    let embedded = EmbeddedStore::open_with_clock(&config, clock).expect("open");
    let s = Store::Embedded(embedded.clone());
    s.put_result("ns", "old", b"1").await.expect("put");
    ms.fetch_add(ttl.as_millis() as u64 / 2, Ordering::SeqCst);
    s.put_result("ns", "new", b"2").await.expect("put");
    ms.fetch_add(ttl.as_millis() as u64 / 2, Ordering::SeqCst);
    // Gone for reads before any sweep; the newer one lives on.
    assert_eq!(s.result("ns", "old").await.expect("get"), None);
    assert_eq!(
        s.result("ns", "new").await.expect("get"),
        Some(b"2".to_vec())
    );
    assert_eq!(embedded.sweep().await.expect("sweep"), 1);
    ms.fetch_add(ttl.as_millis() as u64, Ordering::SeqCst);
    assert_eq!(s.result("ns", "new").await.expect("get"), None);
    assert_eq!(embedded.sweep().await.expect("sweep"), 1);
    assert_eq!(embedded.sweep().await.expect("sweep"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_results_expire_after_the_ttl() {
    let env = Env::new(Kind::Redis, |c| c.ttl = Duration::from_secs(1)).await;
    let s = &env.store;
    s.put_result("ns", "t", b"{}").await.expect("put");
    let redis = env.redis.as_ref().expect("redis");
    let client = ::redis::Client::open(redis.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .expect("keys");
    assert_eq!(keys, vec!["iter8:result:2:ns:1:t".to_string()]);
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .expect("pttl");
    assert!(ttl > 0 && ttl <= 1000, "PTTL {ttl}");
    testenv::wait_for("the result to expire", Duration::from_secs(10), || {
        let s = s.clone();
        async move { s.result("ns", "t").await.ok()?.is_none().then_some(()) }
    })
    .await
    .expect("expiry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_expiry_follows_the_injected_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ms = Arc::new(AtomicU64::new(1_800_000_000_000));
    let read = ms.clone();
    let clock: Clock =
        Arc::new(move || UNIX_EPOCH + Duration::from_millis(read.load(Ordering::SeqCst)));
    let ttl = Duration::from_secs(600);
    let config = StoreConfig {
        backend: Backend::Embedded {
            path: dir.path().join("abn.redb"),
        },
        ttl,
        max_users: 2,
        max_values: 10,
    };
    let s = Store::Embedded(EmbeddedStore::open_with_clock(&config, clock).expect("open"));
    s.record_lookup(APP, "u1", &served(0))
        .await
        .expect("lookup");
    s.write_metric(APP, &served(0), "m", "u2", 1.0)
        .await
        .expect("write");
    assert!(matches!(
        s.record_lookup(APP, "u3", &served(0)).await,
        Err(StoreError::Full(_))
    ));
    ms.fetch_add(ttl.as_millis() as u64, Ordering::SeqCst);
    // Expired: gone for reads before any sweep, and the places are free again.
    assert_eq!(s.assignment(APP, "u1").await.expect("get"), None);
    assert_eq!(
        s.series(APP, &served(0)).await.expect("series"),
        SeriesData::default()
    );
    s.record_lookup(APP, "u3", &served(0))
        .await
        .expect("lookup");
    s.record_lookup(APP, "u4", &served(0))
        .await
        .expect("lookup");
    let got = s.series(APP, &served(0)).await.expect("series");
    assert_eq!((got.users, got.metrics.len()), (2, 0));
    if let Store::Embedded(e) = &s {
        e.sweep().await.expect("sweep");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_keys_expire_after_the_ttl() {
    let env = Env::new(Kind::Redis, |c| c.ttl = Duration::from_secs(1)).await;
    let s = &env.store;
    s.record_lookup(APP, "u1", &served(0))
        .await
        .expect("lookup");
    s.write_metric(APP, &served(0), "m", "u2", 1.0)
        .await
        .expect("write");
    let redis = env.redis.as_ref().expect("redis");
    let client = ::redis::Client::open(redis.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .expect("keys");
    // assignment x2, app users, series users + metrics, agg, sums, recent.
    assert_eq!(keys.len(), 8, "{keys:?}");
    for key in &keys {
        let ttl: i64 = ::redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("pttl");
        assert!(ttl > 0 && ttl <= 1000, "{key} has PTTL {ttl}");
    }
    testenv::wait_for("the data to expire", Duration::from_secs(10), || {
        let s = s.clone();
        let mut conn = conn.clone();
        async move {
            let gone = s.assignment(APP, "u1").await.ok()?.is_none()
                && s.series(APP, &served(0)).await.ok()? == SeriesData::default();
            let size: u64 = ::redis::cmd("DBSIZE").query_async(&mut conn).await.ok()?;
            (gone && size == 0).then_some(())
        }
    })
    .await
    .expect("expiry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_is_unavailable_and_recovers() {
    let mut env = Env::new(Kind::Redis, |_| {}).await;
    env.store
        .write_metric(APP, &served(0), "m", "u", 1.0)
        .await
        .expect("write");
    let address = env.redis.as_ref().expect("redis").address();
    env.redis.as_mut().expect("redis").stop();
    for _ in 0..3 {
        match env.store.write_metric(APP, &served(0), "m", "u", 1.0).await {
            Err(StoreError::Unavailable(msg)) => assert!(msg.contains(&address), "{msg}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(matches!(
            env.store.series(APP, &served(0)).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            env.store.assignment(APP, "u").await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            env.store.put_result("ns", "t", b"{}").await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            env.store.result("ns", "t").await,
            Err(StoreError::Unavailable(_))
        ));
    }
    // Connecting while it is down fails too, naming the address.
    match RedisStore::connect(&env.config).await {
        Err(StoreError::Unavailable(msg)) => assert!(msg.contains(&address), "{msg}"),
        Err(e) => panic!("expected Unavailable, got {e}"),
        Ok(_) => panic!("expected Unavailable, got a store"),
    }
    env.redis
        .as_mut()
        .expect("redis")
        .restart()
        .expect("restart");
    let store = env.store.clone();
    testenv::wait_for("the store to recover", Duration::from_secs(15), || {
        let s = store.clone();
        async move { s.write_metric(APP, &served(0), "m", "u", 2.0).await.ok() }
    })
    .await
    .expect("recovery");
    // Not persistent: only what was written after the restart.
    let got = env.store.series(APP, &served(0)).await.expect("series");
    assert_eq!(got.metrics["m"].transactions, Aggregate::of([2.0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_out_of_memory_is_reported_and_writes_nothing() {
    let env = Env::new(Kind::Redis, |_| {}).await;
    let redis = env.redis.as_ref().expect("redis");
    let client = ::redis::Client::open(redis.url()).expect("client");
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let set = |limit: &'static str| {
        let mut conn = conn.clone();
        async move {
            let () = ::redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory")
                .arg(limit)
                .query_async(&mut conn)
                .await
                .expect("config set");
        }
    };
    env.store
        .write_metric(APP, &served(0), "m", "old", 1.0)
        .await
        .expect("write");
    let before = env.store.series(APP, &served(0)).await.expect("series");
    let keys = |mut conn: ::redis::aio::MultiplexedConnection| async move {
        let mut keys: Vec<String> = ::redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut conn)
            .await
            .expect("keys");
        keys.sort();
        keys
    };
    let keys_before = keys(conn.clone()).await;
    set("1").await;
    for user in ["old", "new"] {
        match env
            .store
            .write_metric(APP, &served(0), "m", user, 1.0)
            .await
        {
            Err(StoreError::Full(msg)) => assert!(msg.contains("out of memory"), "{msg}"),
            other => panic!("expected Full for {user}, got {other:?}"),
        }
        match env.store.record_lookup(APP, user, &served(0)).await {
            Err(StoreError::Full(msg)) => assert!(msg.contains("out of memory"), "{msg}"),
            other => panic!("expected Full for {user}, got {other:?}"),
        }
    }
    match env.store.put_result("ns", "t", &[b'x'; 4096]).await {
        Err(StoreError::Full(msg)) => assert!(msg.contains("out of memory"), "{msg}"),
        other => panic!("expected Full for a result, got {other:?}"),
    }
    // Reads still work, and nothing was written.
    assert_eq!(
        env.store.series(APP, &served(0)).await.expect("series"),
        before
    );
    assert_eq!(keys(conn.clone()).await, keys_before);
    set("0").await;
    env.store
        .write_metric(APP, &served(0), "m", "new", 1.0)
        .await
        .expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_url_with_db_and_password() {
    let server = RedisServer::start().expect("redis-server");
    let client = ::redis::Client::open(server.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let () = ::redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cret")
        .query_async(&mut conn)
        .await
        .expect("requirepass");
    let mut config = StoreConfig {
        backend: Backend::Redis {
            address: format!("{}/5", server.url()),
            username: None,
            password: None,
            db: 0,
        },
        ..StoreConfig::default()
    };
    assert!(matches!(
        Store::open(&config).await,
        Err(StoreError::Unavailable(_))
    ));
    if let Backend::Redis { password, .. } = &mut config.backend {
        *password = Some("s3cret".into());
    }
    let store = Store::open(&config).await.expect("open with password");
    store
        .record_lookup(APP, "u", &served(0))
        .await
        .expect("lookup");
    let client =
        ::redis::Client::open(format!("redis://:s3cret@{}/5", server.address())).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let size: u64 = ::redis::cmd("DBSIZE")
        .query_async(&mut conn)
        .await
        .expect("dbsize");
    assert!(size > 0, "written to db 5");
}
