//! The Redis store, shared by every replica.
//!
//! Every write is one Lua script (atomic, one round trip); a series is read by one read-only
//! script too (a consistent snapshot in one round trip; no SCAN: every key is named).
//!
//! **Keys.** All keys of an application share one hash tag, `{<len>:<app>}` (never empty, the
//! same for every key of the app), so each script touches one slot and works on a cluster.
//! Every variable part is length-prefixed (`<len>:<text>`), so no value can forge a separator:
//! - `iter8:abn:{A}:assign:<len>:<user>` → `"<version>:<signature>"` (string, `PX ttl`);
//! - `iter8:abn:{A}:users` → sorted set user → expiry (ms): the application's users, for the
//!   `max_users` bound, which is **per application** here (a global count is not cheap in
//!   Redis): only members whose expiry is in the future count, and expired ones are dropped
//!   whenever a user is added;
//! - per series, `S = iter8:abn:{A}:series:<version>:<len>:<signature>`:
//!   `S:users` (set), `S:metrics` (set of names), and per metric `M = S:m:<len>:<metric>`:
//!   `M:agg` (hash count/sum/sum_sq/min/max, floats at full precision as `%.17g`),
//!   `M:sums` (hash user → running sum), `M:recent` (list, oldest first, trimmed to
//!   `max_values`).
//!
//! Scripts name the keys they write in `KEYS`, except the other metrics of a series, whose
//! expiry they refresh: those keys are built in the script from the series prefix and share
//! the application's hash tag, so they live in the same cluster slot.
//!
//! **Test results** are one string each, `iter8:result:<len>:<namespace>:<len>:<test>` →
//! the JSON, written with `SET ... PX ttl` (replaced whole, expiring `ttl` after the last PUT).
//!
//! **Expiry.** Every write gives every key of the series (and the assignment it sets) a TTL
//! of `ttl`, so a series expires as a whole `ttl` after its last write. Time is Redis's own
//! (`TIME`), the same for every replica.

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, IntoConnectionInfo, RedisError, Script};

use super::*;

/// Shared by both write scripts: `now`, `room` (the max_users check) and `refresh`.
const PRELUDE: &str = r#"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
-- Over maxmemory, Redis refuses a script's first write only if that command may grow memory
-- (once a script wrote, the rest runs), so each script writes with SET or HSET first, and the
-- Full check only reads: an OOM then leaves nothing written.
local function room(users_key, max_users)
  return redis.call('ZCOUNT', users_key, '(' .. now, '+inf') < max_users
end
local function assign(assign_key, users_key, user, served)
  redis.call('SET', assign_key, served, 'PX', ttl)
  redis.call('ZADD', users_key, now + ttl, user)
  redis.call('ZREMRANGEBYSCORE', users_key, '-inf', now)
  redis.call('PEXPIRE', users_key, ttl)
end
local function refresh(users_set, metrics_set, prefix)
  redis.call('PEXPIRE', users_set, ttl)
  redis.call('PEXPIRE', metrics_set, ttl)
  for _, m in ipairs(redis.call('SMEMBERS', metrics_set)) do
    local mk = prefix .. ':m:' .. string.len(m) .. ':' .. m
    redis.call('PEXPIRE', mk .. ':agg', ttl)
    redis.call('PEXPIRE', mk .. ':sums', ttl)
    redis.call('PEXPIRE', mk .. ':recent', ttl)
  end
end
"#;

/// KEYS: assignment, app users, series users, series metrics.
/// ARGV: user, "version:signature", ttl ms, max users, series prefix.
/// Returns 1, or 0 (nothing written) when the application is full.
const LOOKUP: &str = r#"
local user = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 0 and not room(KEYS[2], tonumber(ARGV[4])) then
  return 0
end
assign(KEYS[1], KEYS[2], user, ARGV[2])
redis.call('SADD', KEYS[3], user)
refresh(KEYS[3], KEYS[4], ARGV[5])
return 1
"#;

/// KEYS: assignment, app users, series users, series metrics, agg, sums, recent.
/// ARGV: user, "version:signature", ttl ms, max users, series prefix, metric, value,
/// max values. Returns 1, or 0 (nothing written) when the application is full.
const METRIC: &str = r#"
local user = ARGV[1]
-- A user without an assignment gets one (what it was served), so metric writers count
-- against max_users too; an existing assignment is Lookup's and is left alone.
if redis.call('EXISTS', KEYS[1]) == 0 then
  if not room(KEYS[2], tonumber(ARGV[4])) then
    return 0
  end
  assign(KEYS[1], KEYS[2], user, ARGV[2])
end
local x = tonumber(ARGV[7])
local a = redis.call('HMGET', KEYS[5], 'count', 'sum', 'sum_sq', 'min', 'max')
local count = tonumber(a[1] or '0')
local sum, sum_sq, mn, mx
if count == 0 then
  sum, sum_sq, mn, mx = 0, 0, x, x
else
  sum, sum_sq, mn, mx = tonumber(a[2]), tonumber(a[3]), tonumber(a[4]), tonumber(a[5])
  if x < mn then mn = x end
  if x > mx then mx = x end
end
sum = sum + x
sum_sq = sum_sq + x * x
local function f(v) return string.format('%.17g', v) end
redis.call('HSET', KEYS[5], 'count', string.format('%d', count + 1), 'sum', f(sum),
  'sum_sq', f(sum_sq), 'min', f(mn), 'max', f(mx))
local us = tonumber(redis.call('HGET', KEYS[6], user) or '0')
redis.call('HSET', KEYS[6], user, f(us + x))
local max_values = tonumber(ARGV[8])
if max_values > 0 then
  redis.call('RPUSH', KEYS[7], ARGV[7])
  redis.call('LTRIM', KEYS[7], -max_values, -1)
end
redis.call('SADD', KEYS[3], user)
redis.call('SADD', KEYS[4], ARGV[6])
refresh(KEYS[3], KEYS[4], ARGV[5])
return 1
"#;

/// KEYS: series users, series metrics. ARGV: series prefix, LRANGE start and stop.
/// Returns {user count, {{metric, agg fields, sums as [user, sum, ...], recent}, ...}}.
/// One script rather than MULTI: one round trip, a consistent snapshot, and it still runs
/// when Redis is over maxmemory (which refuses to queue commands in MULTI).
const READ: &str = r#"
local out = {}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local mk = ARGV[1] .. ':m:' .. string.len(m) .. ':' .. m
  out[#out + 1] = {
    m,
    redis.call('HMGET', mk .. ':agg', 'count', 'sum', 'sum_sq', 'min', 'max'),
    redis.call('HGETALL', mk .. ':sums'),
    redis.call('LRANGE', mk .. ':recent', ARGV[2], ARGV[3]),
  }
end
return {redis.call('SCARD', KEYS[1]), out}
"#;

/// The Redis store. Clones share one connection (multiplexed, reconnecting).
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    address: String,
    ttl_ms: u64,
    max_users: u64,
    max_values: usize,
    lookup: Arc<Script>,
    metric: Arc<Script>,
    read: Arc<Script>,
}

impl RedisStore {
    /// Connects to `config.backend`'s address: `host:port` (port 6379 if left out) or a
    /// `redis://` URL; the configured username, password and db (if not 0) override the URL's.
    pub async fn connect(config: &StoreConfig) -> Result<RedisStore, StoreError> {
        let Backend::Redis {
            address,
            username,
            password,
            db,
        } = &config.backend
        else {
            return Err(StoreError::Unavailable(
                "the redis store needs a redis backend configuration".into(),
            ));
        };
        let unavailable =
            |e: &dyn std::fmt::Display| StoreError::Unavailable(format!("redis at {address}: {e}"));
        let info = connection_info(address, username.as_deref(), password.as_deref(), *db)
            .map_err(|e| unavailable(&e))?;
        let client = Client::open(info).map_err(|e| unavailable(&e))?;
        // Fail fast when Redis is down instead of queueing callers behind long retries; the
        // manager reconnects on the next request.
        let manager_config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500))
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        let conn = ConnectionManager::new_with_config(client, manager_config)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(RedisStore {
            conn,
            address: address.clone(),
            // Redis refuses expiry times past i64 milliseconds; a century is "never" here.
            ttl_ms: u64::try_from(config.ttl.as_millis())
                .unwrap_or(u64::MAX)
                .clamp(1, 100 * 365 * 24 * 3600 * 1000),
            max_users: config.max_users,
            max_values: config.max_values,
            lookup: Arc::new(Script::new(&format!("{PRELUDE}{LOOKUP}"))),
            metric: Arc::new(Script::new(&format!("{PRELUDE}{METRIC}"))),
            read: Arc::new(Script::new(READ)),
        })
    }

    pub async fn record_lookup(
        &self,
        app: &str,
        user: &str,
        served: &Served,
    ) -> Result<(), StoreError> {
        let s = series_prefix(app, served);
        let written: i64 = self
            .lookup
            .key(assign_key(app, user))
            .key(app_users_key(app))
            .key(format!("{s}:users"))
            .key(format!("{s}:metrics"))
            .arg(user)
            .arg(served_value(served))
            .arg(self.ttl_ms)
            .arg(self.max_users)
            .arg(&s)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.error(e))?;
        self.written(written, app)
    }

    pub async fn assignment(&self, app: &str, user: &str) -> Result<Option<Served>, StoreError> {
        let value: Option<String> = ::redis::cmd("GET")
            .arg(assign_key(app, user))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.error(e))?;
        Ok(value.and_then(|v| {
            let (version, signature) = v.split_once(':')?;
            Some(Served {
                version: version.parse().ok()?,
                signature: signature.to_owned(),
            })
        }))
    }

    pub async fn write_metric(
        &self,
        app: &str,
        served: &Served,
        metric: &str,
        user: &str,
        value: f64,
    ) -> Result<(), StoreError> {
        let s = series_prefix(app, served);
        let m = metric_prefix(&s, metric);
        let written: i64 = self
            .metric
            .key(assign_key(app, user))
            .key(app_users_key(app))
            .key(format!("{s}:users"))
            .key(format!("{s}:metrics"))
            .key(format!("{m}:agg"))
            .key(format!("{m}:sums"))
            .key(format!("{m}:recent"))
            .arg(user)
            .arg(served_value(served))
            .arg(self.ttl_ms)
            .arg(self.max_users)
            .arg(&s)
            .arg(metric)
            // Shortest text that parses back to the same f64 (Lua's tonumber is strtod).
            .arg(format!("{value:e}"))
            .arg(self.max_values)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.error(e))?;
        self.written(written, app)
    }

    pub async fn series(&self, app: &str, served: &Served) -> Result<SeriesData, StoreError> {
        let s = series_prefix(app, served);
        // The newest max_values (even if the limit was lowered since they were written);
        // `LRANGE k 1 0` is empty, where `LRANGE k -0 -1` would be the whole list.
        let (first, last) = match i64::try_from(self.max_values) {
            Ok(0) => (1, 0),
            Ok(n) => (-n, -1),
            Err(_) => (0, -1),
        };
        type MetricReply = (String, Vec<Option<String>>, Vec<String>, Vec<String>);
        let (users, metrics): (u64, Vec<MetricReply>) = self
            .read
            .key(format!("{s}:users"))
            .key(format!("{s}:metrics"))
            .arg(&s)
            .arg(first)
            .arg(last)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.error(e))?;
        let mut out = SeriesData {
            users,
            metrics: BTreeMap::new(),
        };
        for (name, agg, sums, recent) in metrics {
            let field = |i: usize| agg.get(i).cloned().flatten();
            // A name whose aggregate is gone (cannot happen while keys expire together).
            let Some(count) = field(0).and_then(|c| c.parse::<u64>().ok()) else {
                continue;
            };
            let float = |i: usize| self.float(field(i).as_deref().unwrap_or("0"));
            let transactions = Aggregate {
                count,
                sum: float(1)?,
                sum_sq: float(2)?,
                min: float(3)?,
                max: float(4)?,
            };
            // HGETALL's flat [user, sum, ...] in hash order: sort by user id.
            let mut pairs: Vec<(&str, &str)> = sums
                .chunks_exact(2)
                .map(|p| (p[0].as_str(), p[1].as_str()))
                .collect();
            pairs.sort_unstable();
            out.metrics.insert(
                name,
                MetricData {
                    transactions,
                    recent: recent
                        .iter()
                        .map(|v| self.float(v))
                        .collect::<Result<_, _>>()?,
                    user_sums: pairs
                        .iter()
                        .map(|(_, v)| self.float(v))
                        .collect::<Result<_, _>>()?,
                },
            );
        }
        Ok(out)
    }

    /// Stores (replaces) the result of `test` in `namespace`; see [`Store::put_result`].
    pub async fn put_result(
        &self,
        namespace: &str,
        test: &str,
        json: &[u8],
    ) -> Result<(), StoreError> {
        check_result_size(json.len())?;
        let () = ::redis::cmd("SET")
            .arg(result_key(namespace, test))
            .arg(json)
            .arg("PX")
            .arg(self.ttl_ms)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// The result of `test` in `namespace`, if stored and not expired.
    pub async fn result(&self, namespace: &str, test: &str) -> Result<Option<Vec<u8>>, StoreError> {
        ::redis::cmd("GET")
            .arg(result_key(namespace, test))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.error(e))
    }

    fn float(&self, text: &str) -> Result<f64, StoreError> {
        text.parse().map_err(|_| {
            StoreError::Unavailable(format!(
                "redis at {}: stored value {:?} is not a number",
                self.address,
                short(text)
            ))
        })
    }

    fn written(&self, status: i64, app: &str) -> Result<(), StoreError> {
        if status == 1 {
            Ok(())
        } else {
            Err(StoreError::Full(format!(
                "application {} has max_users = {} users in redis at {}; a new user is refused",
                short(app),
                self.max_users,
                self.address
            )))
        }
    }

    fn error(&self, e: RedisError) -> StoreError {
        if e.code() == Some("OOM") {
            StoreError::Full(format!(
                "redis at {} is out of memory (maxmemory reached): {e}",
                self.address
            ))
        } else {
            StoreError::Unavailable(format!("redis at {}: {e}", self.address))
        }
    }
}

fn connection_info(
    address: &str,
    username: Option<&str>,
    password: Option<&str>,
    db: i64,
) -> Result<::redis::ConnectionInfo, RedisError> {
    let info = if address.contains("://") {
        address.into_connection_info()?
    } else {
        let (host, port) = match address.rsplit_once(':') {
            // A bare IPv6 address has colons but no port.
            Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
                let port = port.parse::<u16>().map_err(|_| {
                    RedisError::from((
                        ::redis::ErrorKind::InvalidClientConfig,
                        "the port is not a number",
                    ))
                })?;
                (host, port)
            }
            _ => (address, 6379),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        (host.to_owned(), port).into_connection_info()?
    };
    let mut settings = info.redis_settings().clone();
    if let Some(u) = username {
        settings = settings.set_username(u);
    }
    if let Some(p) = password {
        settings = settings.set_password(p);
    }
    if db != 0 {
        settings = settings.set_db(db);
    }
    Ok(info.set_redis_settings(settings))
}

/// `<len>:<text>`: unambiguous whatever the text holds.
fn lp(text: &str) -> String {
    format!("{}:{text}", text.len())
}

fn app_prefix(app: &str) -> String {
    format!("iter8:abn:{{{}}}", lp(app))
}

fn assign_key(app: &str, user: &str) -> String {
    format!("{}:assign:{}", app_prefix(app), lp(user))
}

fn app_users_key(app: &str) -> String {
    format!("{}:users", app_prefix(app))
}

fn series_prefix(app: &str, served: &Served) -> String {
    format!(
        "{}:series:{}:{}",
        app_prefix(app),
        served.version,
        lp(&served.signature)
    )
}

/// Must match the script's `refresh`: `prefix .. ':m:' .. len .. ':' .. metric`.
fn metric_prefix(series: &str, metric: &str) -> String {
    format!("{series}:m:{}", lp(metric))
}

fn result_key(namespace: &str, test: &str) -> String {
    format!("iter8:result:{}:{}", lp(namespace), lp(test))
}

fn served_value(served: &Served) -> String {
    format!("{}:{}", served.version, served.signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unambiguous_and_share_the_app_tag() {
        assert_ne!(assign_key("a:b", "c"), assign_key("a", "b:c"));
        let served = Served {
            version: 1,
            signature: "s".into(),
        };
        let s = series_prefix("ns/app", &served);
        assert_eq!(s, "iter8:abn:{6:ns/app}:series:1:1:s");
        assert!(assign_key("ns/app", "u").starts_with("iter8:abn:{6:ns/app}:"));
        assert_eq!(metric_prefix(&s, "m"), format!("{s}:m:1:m"));
        assert_eq!(result_key("ns", "t"), "iter8:result:2:ns:1:t");
        assert_ne!(result_key("a:1:b", "c"), result_key("a", "b:1:c"));
    }

    #[test]
    fn addresses_parse() {
        let info = connection_info("127.0.0.1:7000", Some("u"), Some("p"), 2).expect("info");
        assert_eq!(info.addr().to_string(), "127.0.0.1:7000");
        assert_eq!(info.redis_settings().db(), 2);
        assert_eq!(info.redis_settings().username(), Some("u"));
        let info = connection_info("redis-master", None, None, 0).expect("info");
        assert_eq!(info.addr().to_string(), "redis-master:6379");
        let info = connection_info("[::1]:7001", None, None, 0).expect("info");
        assert_eq!(info.addr().to_string(), "::1:7001");
        let info = connection_info("redis://h:1/3", None, None, 0).expect("info");
        assert_eq!(info.redis_settings().db(), 3);
    }
}
