//! What Grafana reads of a stored test result: the JSON of Iter8 v1.1's `GET /httpDashboard`
//! and `GET /grpcDashboard` (`metrics/server.go`, `getHTTPDashboardHelper` and
//! `getGRPCDashboardHelper`), built from an [`ExperimentResult`]. Pure: no I/O.
//!
//! **Compatibility.** The answer is byte for byte what v1.1.2 answers for the same stored
//! result (checked against the original's own code on the fixtures under
//! `tests/fixtures/original_dashboards/`): the same keys (with their spaces), the same key
//! order (Go's struct order, map keys sorted), `Version: "0"`, bucket labels computed as v1.1
//! computes them (milliseconds, floored, not rounded), `Statistics` in milliseconds, `Start
//! time` in Go's layout `02 Jan 06 15:04 MST`, `Insights: null`, numbers and strings written
//! as Go's `encoding/json` writes them (`5` for a whole float, `1e-7`, `1e+22`, `<` as
//! `\u003c`), compact. v1.1 read the task data the way Go's `encoding/json` does, and so does
//! this module: field names match case-insensitively, `null` is the zero value, integers may
//! be written as whole floats (`5.0`, `1e2`) and are exact only up to 2^53.
//!
//! **Where it differs from v1.1**, each time where v1.1 crashed or hid a problem:
//! - A result **without `insights`** (a test PUTs its result after every task, so this is what
//!   is stored between the `ready` task and the end of the first load task) crashed v1.1's
//!   handlers with a nil dereference (fault F14), and Grafana saw a dropped connection. Here
//!   it gives the dashboard with **empty `Endpoints`** and the `ExperimentResult` part, exactly
//!   what v1.1 answers for `"insights": {}`: Grafana then shows the test's progress
//!   (completed tasks, failure) and no endpoint rows until a load task has written its data,
//!   instead of an error panel that would look like a broken data source.
//! - An endpoint whose result is `null` crashed v1.1 the same way; here it is an endpoint with
//!   no data (what v1.1 answers for `{}`).
//! - Task data that does not have the shape of Fortio's or ghz's results (a string where a
//!   histogram belongs, a fractional count) made v1.1 answer **every** endpoint empty, silently.
//!   Here it is a [`DashboardError`] that names the endpoint and the field; the controller
//!   refuses such a result when it is PUT (see [`check`]), so it is never stored.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map, Number, Value};

use crate::result::ExperimentResult;

/// Why a dashboard cannot be built from a result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DashboardError {
    /// `startTime` is neither `""` nor an RFC 3339 time (v1.1 refused such a result at PUT).
    #[error("startTime {value:?} is not an RFC 3339 time such as 2023-07-21T14:00:40Z: {why}")]
    StartTime { value: String, why: String },
    /// The task data of one endpoint does not have the shape of Fortio's (`http`) or ghz's
    /// (`grpc`) result.
    #[error("insights.taskData.{task}[{endpoint:?}]: {why}")]
    Endpoint {
        task: &'static str,
        endpoint: String,
        why: String,
    },
}

/// A dashboard's JSON, in v1.1's key order.
#[derive(Clone, Debug, PartialEq)]
pub struct Dashboard(GoJson);

impl Dashboard {
    /// Compact JSON, byte for byte as v1.1's handler writes it (Go's `json.Marshal`).
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        self.0.write(&mut out);
        out
    }

    /// The same document as a [`Value`] (whose maps sort their keys).
    pub fn to_value(&self) -> Value {
        self.0.to_value()
    }
}

/// The HTTP dashboard (`GET /httpDashboard`) of `result`, built from its Fortio results
/// (`insights.taskData.http`).
///
/// A result without `insights` (or without HTTP task data) gives empty `Endpoints` and the
/// `ExperimentResult` part, never an error: see the module documentation (fault F14).
pub fn http(result: &ExperimentResult) -> Result<Dashboard, DashboardError> {
    let data = result
        .insights
        .as_ref()
        .and_then(|i| i.task_data.http.as_ref());
    dashboard(result, "http", data, http_row)
}

/// The gRPC dashboard (`GET /grpcDashboard`) of `result`, built from its ghz reports
/// (`insights.taskData.grpc`).
///
/// A result without `insights` (or without gRPC task data) gives empty `Endpoints` and the
/// `ExperimentResult` part, never an error: see the module documentation (fault F14).
pub fn grpc(result: &ExperimentResult) -> Result<Dashboard, DashboardError> {
    let data = result
        .insights
        .as_ref()
        .and_then(|i| i.task_data.grpc.as_ref());
    dashboard(result, "grpc", data, grpc_row)
}

/// One row per endpoint of `task`'s results, then the `ExperimentResult` part.
fn dashboard<R>(
    result: &ExperimentResult,
    task: &'static str,
    data: Option<&BTreeMap<String, Value>>,
    row: R,
) -> Result<Dashboard, DashboardError>
where
    R: Fn(&Value) -> Result<GoJson, String>,
{
    let header = experiment_result(result)?;
    let mut endpoints = Vec::new();
    for (endpoint, data) in data.into_iter().flatten() {
        let row = row(data).map_err(|why| DashboardError::Endpoint {
            task,
            endpoint: endpoint.clone(),
            why,
        })?;
        endpoints.push((endpoint.clone(), row));
    }
    Ok(Dashboard(GoJson::Obj(vec![
        ("Endpoints".into(), GoJson::Obj(endpoints)),
        ("ExperimentResult".into(), header),
    ])))
}

/// [`http`] as a [`Value`].
pub fn http_dashboard(result: &ExperimentResult) -> Result<Value, DashboardError> {
    http(result).map(|d| d.to_value())
}

/// [`grpc`] as a [`Value`].
pub fn grpc_dashboard(result: &ExperimentResult) -> Result<Value, DashboardError> {
    grpc(result).map(|d| d.to_value())
}

/// Whether both dashboards can be built from `result`: what the controller checks before it
/// stores a result, so that a stored result always has its dashboards.
pub fn check(result: &ExperimentResult) -> Result<(), DashboardError> {
    http(result)?;
    grpc(result)?;
    Ok(())
}

/// Removes what no dashboard reads and can be huge: ghz's per-call `details` (one entry per
/// call; Iter8 v1.1's jobs send them). Returns how many endpoints had them.
pub fn drop_call_details(result: &mut ExperimentResult) -> usize {
    let Some(grpc) = result
        .insights
        .as_mut()
        .and_then(|i| i.task_data.grpc.as_mut())
    else {
        return 0;
    };
    grpc.values_mut()
        .filter_map(Value::as_object_mut)
        .filter_map(|report| report.remove("details"))
        .count()
}

/// `startTime` (RFC 3339, or `""` for the zero time) in Go's layout `02 Jan 06 15:04 MST`, as
/// v1.1 shows it: the wall clock as written; the zone is `UTC` for `Z` or a zero offset (the
/// controller's local zone is UTC), else the offset as `+hhmm`.
pub fn start_time_label(start_time: &str) -> Result<String, DashboardError> {
    if start_time.is_empty() {
        // Go's zero time: 0001-01-01 00:00 UTC.
        return Ok("01 Jan 01 00:00 UTC".into());
    }
    let t = parse_rfc3339(start_time).map_err(|why| DashboardError::StartTime {
        value: start_time.to_owned(),
        why,
    })?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS[usize::from(t.month - 1)];
    let zone = if t.offset_minutes == 0 {
        "UTC".to_string()
    } else {
        let sign = if t.offset_minutes < 0 { '-' } else { '+' };
        let m = t.offset_minutes.unsigned_abs();
        format!("{sign}{:02}{:02}", m / 60, m % 60)
    };
    Ok(format!(
        "{:02} {month} {:02} {:02}:{:02} {zone}",
        t.day,
        t.year % 100,
        t.hour,
        t.minute
    ))
}

struct DateTime {
    year: u16,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    offset_minutes: i32,
}

/// RFC 3339 as Go's `time.Time` reads it from JSON: `YYYY-MM-DDTHH:MM:SS`, optional
/// fractional seconds, then `Z` or `±hh:mm`; every field in range (the day for its month).
fn parse_rfc3339(s: &str) -> Result<DateTime, String> {
    let b = s.as_bytes();
    let num = |from: usize, to: usize, min: u32, max: u32, what: &str| -> Result<u32, String> {
        let digits = b
            .get(from..to)
            .ok_or_else(|| format!("too short for the {what}"))?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(format!("the {what} is not a number"));
        }
        let n = digits
            .iter()
            .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
        if n < min || n > max {
            return Err(format!("{what} {n} out of range"));
        }
        Ok(n)
    };
    if b.len() < 19 {
        return Err("too short".into());
    }
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if let Some((i, c)) = separators.iter().find(|(i, c)| b[*i] != *c) {
        return Err(format!(
            "expected {:?} at position {}",
            char::from(*c),
            i + 1
        ));
    }
    let year = num(0, 4, 0, 9999, "year")?;
    let month = num(5, 7, 1, 12, "month")?;
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    let day = num(8, 10, 1, days, "day")?;
    let hour = num(11, 13, 0, 23, "hour")?;
    let minute = num(14, 16, 0, 59, "minute")?;
    num(17, 19, 0, 59, "second")?;
    let mut rest = &b[19..];
    if rest.len() >= 2 && rest[0] == b'.' && rest[1].is_ascii_digit() {
        let digits = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        rest = &rest[1 + digits..];
    }
    let offset_minutes = match rest {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8, max: i32, what: &str| -> Result<i32, String> {
                if !a.is_ascii_digit() || !b.is_ascii_digit() {
                    return Err(format!("the offset's {what} is not a number"));
                }
                let n = i32::from(a - b'0') * 10 + i32::from(b - b'0');
                if n > max {
                    return Err(format!("the offset's {what} {n} out of range"));
                }
                Ok(n)
            };
            let m = two(*h1, *h2, 23, "hours")? * 60 + two(*m1, *m2, 59, "minutes")?;
            if *sign == b'-' {
                -m
            } else {
                m
            }
        }
        _ => return Err("expected Z or an offset such as +02:00 after the seconds".into()),
    };
    // Every value was checked against a range that fits.
    let small = |n: u32| u8::try_from(n).unwrap_or(u8::MAX);
    Ok(DateTime {
        year: u16::try_from(year).unwrap_or(u16::MAX),
        month: small(month),
        day: small(day),
        hour: small(hour),
        minute: small(minute),
        offset_minutes,
    })
}

/// v1.1's `dashboardExperimentResult`.
fn experiment_result(r: &ExperimentResult) -> Result<GoJson, DashboardError> {
    Ok(GoJson::Obj(vec![
        ("Name".into(), GoJson::Str(r.name.clone())),
        ("Namespace".into(), GoJson::Str(r.namespace.clone())),
        ("Revision".into(), GoJson::Int(r.revision)),
        (
            "Start time".into(),
            GoJson::Str(start_time_label(&r.start_time)?),
        ),
        ("Completed tasks".into(), GoJson::Int(r.num_completed_tasks)),
        ("Failure".into(), GoJson::Bool(r.failure)),
        // v1.1's helpers never fill it.
        ("Insights".into(), GoJson::Null),
        ("Iter8 version".into(), GoJson::Str(r.iter8_version.clone())),
    ]))
}

/// v1.1's `httpEndpointRow` of one Fortio `HTTPRunnerResults`.
fn http_row(data: &Value) -> Result<GoJson, String> {
    let empty = Map::new();
    let fortio = object(data, "the result")?.unwrap_or(&empty);
    let histogram = |name: &str| -> Result<(GoJson, GoJson), String> {
        let Some(h) = object_field(fortio, name)? else {
            return Ok((GoJson::Null, http_statistics(&empty, name)?));
        };
        let mut buckets = Vec::new();
        for (i, bucket) in array_field(h, "Data", name)?
            .into_iter()
            .flatten()
            .enumerate()
        {
            let what = format!("{name}.Data[{i}]");
            let bucket = object(bucket, &what)?.unwrap_or(&empty);
            let start = float(bucket, "Start", &what)? * 1000.0;
            let end = float(bucket, "End", &what)? * 1000.0;
            let count = int(bucket, "Count", &what, Int::I64)?;
            buckets.push(histogram_bucket(
                format!(
                    "{} - {}",
                    go_format_f(floor_decimals(start, 1)),
                    go_format_f(floor_decimals(end, 1))
                ),
                count as f64,
            ));
        }
        Ok((GoJson::Arr(buckets), http_statistics(h, name)?))
    };
    let (durations, statistics) = histogram("DurationHistogram")?;
    let (error_durations, error_statistics) = histogram("ErrorsDurationHistogram")?;
    let return_codes = match object_field(fortio, "RetCodes")? {
        None => GoJson::Null,
        Some(codes) => {
            // A map[int]int64 in Go: keys are integers, written back sorted as text.
            let mut sorted = BTreeMap::new();
            for (code, count) in codes {
                let what = format!("RetCodes[{code:?}]");
                let code: i64 = code
                    .parse()
                    .map_err(|_| format!("{what}: the return code is not an integer"))?;
                let count = to_int(count, &what, Int::I64)?;
                sorted.insert(code.to_string(), GoJson::Int(count as i64));
            }
            GoJson::Obj(sorted.into_iter().collect())
        }
    };
    Ok(GoJson::Obj(vec![
        ("Durations".into(), durations),
        ("Statistics".into(), statistics),
        ("Error durations".into(), error_durations),
        ("Error statistics".into(), error_statistics),
        ("Return codes".into(), return_codes),
    ]))
}

/// v1.1's `getHTTPStatistics`: Fortio's seconds as milliseconds (`Count` as Go's
/// `uint64(int64)`).
fn http_statistics(h: &Map<String, Value>, what: &str) -> Result<GoJson, String> {
    let ms = |name: &str| -> Result<GoJson, String> {
        Ok(GoJson::Float(float(h, name, what)? * 1000.0))
    };
    Ok(GoJson::Obj(vec![
        (
            "Count".into(),
            GoJson::Uint(int(h, "Count", what, Int::I64)? as u64),
        ),
        ("Mean".into(), ms("Avg")?),
        ("StdDev".into(), ms("StdDev")?),
        ("Min".into(), ms("Min")?),
        ("Max".into(), ms("Max")?),
    ]))
}

/// v1.1's `ghzEndpointRow` of one ghz `Report`.
fn grpc_row(data: &Value) -> Result<GoJson, String> {
    let empty = Map::new();
    let report = object(data, "the report")?.unwrap_or(&empty);
    // Go reads every field before any is used: a malformed one fails the row either way.
    // In 0..2^64 (checked).
    let count = int(report, "count", "the report", Int::U64)? as u64;
    let mut error_count = 0.0;
    if let Some(errors) = object_field(report, "errorDistribution")? {
        for (message, n) in errors {
            error_count += to_int(n, &format!("errorDistribution[{message:?}]"), Int::I64)? as f64;
        }
    }
    let status_codes = match object_field(report, "statusCodeDistribution")? {
        None => GoJson::Null,
        Some(codes) => GoJson::Obj(
            codes
                .iter()
                .map(|(code, n)| {
                    let n = to_int(n, &format!("statusCodeDistribution[{code:?}]"), Int::I64)?;
                    Ok((code.clone(), GoJson::Int(n as i64)))
                })
                .collect::<Result<_, String>>()?,
        ),
    };
    let (durations, statistics) = match array_field(report, "histogram", "the report")? {
        // Without a histogram v1.1 leaves the statistics at zero too.
        None => (GoJson::Null, grpc_statistics(0, 0.0)),
        Some(histogram) => {
            let mut buckets = Vec::new();
            for (i, bucket) in histogram.iter().enumerate() {
                let what = format!("histogram[{i}]");
                let bucket = object(bucket, &what)?.unwrap_or(&empty);
                let mark = float(bucket, "mark", &what)? * 1000.0;
                let n = int(bucket, "count", &what, Int::I64)?;
                buckets.push(histogram_bucket(
                    go_format_g(floor_decimals(mark, 3)),
                    n as f64,
                ));
            }
            (GoJson::Arr(buckets), grpc_statistics(count, error_count))
        }
    };
    Ok(GoJson::Obj(vec![
        ("Durations".into(), durations),
        ("Statistics".into(), statistics),
        ("Status codes".into(), status_codes),
    ]))
}

fn grpc_statistics(count: u64, error_count: f64) -> GoJson {
    GoJson::Obj(vec![
        ("Count".into(), GoJson::Uint(count)),
        ("ErrorCount".into(), GoJson::Float(error_count)),
    ])
}

/// v1.1's `grafanaHistogramBucket`; its version is always `"0"` for a test.
fn histogram_bucket(bucket: String, value: f64) -> GoJson {
    GoJson::Obj(vec![
        ("Version".into(), GoJson::Str("0".into())),
        ("Bucket".into(), GoJson::Str(bucket)),
        ("Value".into(), GoJson::Float(value)),
    ])
}

/// v1.1's `roundDecimal`: `floor(x * 10^d) / 10^d` (floor, not round).
fn floor_decimals(x: f64, decimals: i32) -> f64 {
    let y = 10f64.powi(decimals);
    (x * y).floor() / y
}

// Reading task data as Go's encoding/json reads it into Fortio's and ghz's structs.

/// A field by name: the exact name, else one that matches case-insensitively (as Go's
/// `encoding/json` does); `null` is absent.
fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name)
        .or_else(|| {
            obj.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
        .filter(|v| !v.is_null())
}

/// An object (`None` for `null`, which Go reads as the zero value).
fn object<'a>(v: &'a Value, what: &str) -> Result<Option<&'a Map<String, Value>>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Object(m) => Ok(Some(m)),
        other => Err(format!("{what} is {}, not an object", kind(other))),
    }
}

fn object_field<'a>(
    obj: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a Map<String, Value>>, String> {
    match field(obj, name) {
        None => Ok(None),
        Some(v) => object(v, name),
    }
}

fn array_field<'a>(
    obj: &'a Map<String, Value>,
    name: &str,
    what: &str,
) -> Result<Option<&'a Vec<Value>>, String> {
    match field(obj, name) {
        None => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(other) => Err(format!("{what}: {name} is {}, not an array", kind(other))),
    }
}

fn float(obj: &Map<String, Value>, name: &str, what: &str) -> Result<f64, String> {
    match field(obj, name) {
        None => Ok(0.0),
        Some(Value::Number(n)) => n
            .as_f64()
            .ok_or_else(|| format!("{what}: {name} is not a number")),
        Some(other) => Err(format!("{what}: {name} is {}, not a number", kind(other))),
    }
}

#[derive(Clone, Copy)]
enum Int {
    I64,
    U64,
}

fn int(obj: &Map<String, Value>, name: &str, what: &str, ty: Int) -> Result<i128, String> {
    match field(obj, name) {
        None => Ok(0),
        Some(v) => to_int(v, &format!("{what}: {name}"), ty),
    }
}

/// An integer as v1.1 got it: its task data went through Go's `interface{}` (a float64) before
/// it was read into an integer field, so a whole float is accepted and the value is rounded to
/// float64 precision.
fn to_int(v: &Value, what: &str, ty: Int) -> Result<i128, String> {
    let x = match v {
        Value::Null => return Ok(0),
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        other => return Err(format!("{what} is {}, not an integer", kind(other))),
    };
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    let (min, max, name) = match ty {
        Int::I64 => (-TWO_63, TWO_63, "a 64-bit integer"),
        Int::U64 => (0.0, 2.0 * TWO_63, "an unsigned 64-bit integer"),
    };
    if x.fract() != 0.0 || x < min || x >= max {
        return Err(format!("{what} is {v}, not {name}"));
    }
    // In range and whole: exact.
    Ok(x as i128)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// Writing JSON as Go's encoding/json writes it.

/// A JSON document that keeps its keys in order and writes numbers as Go does.
#[derive(Clone, Debug, PartialEq)]
enum GoJson {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    /// A Go `float64`.
    Float(f64),
    Str(String),
    Arr(Vec<GoJson>),
    Obj(Vec<(String, GoJson)>),
}

impl GoJson {
    fn write(&self, out: &mut String) {
        match self {
            GoJson::Null => out.push_str("null"),
            GoJson::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            GoJson::Int(n) => {
                let _ = write!(out, "{n}");
            }
            GoJson::Uint(n) => {
                let _ = write!(out, "{n}");
            }
            GoJson::Float(x) => write_go_float(*x, out),
            GoJson::Str(s) => write_go_string(s, out),
            GoJson::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            GoJson::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_go_string(k, out);
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }

    /// The value a JSON parser reads from [`GoJson::write`]'s text.
    fn to_value(&self) -> Value {
        match self {
            GoJson::Null => Value::Null,
            GoJson::Bool(b) => Value::Bool(*b),
            GoJson::Int(n) => Value::from(*n),
            GoJson::Uint(n) => Value::from(*n),
            GoJson::Float(x) => float_value(*x),
            GoJson::Str(s) => Value::String(s.clone()),
            GoJson::Arr(items) => Value::Array(items.iter().map(GoJson::to_value).collect()),
            GoJson::Obj(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_value()))
                    .collect(),
            ),
        }
    }
}

/// A float as a parser reads Go's text of it: whole numbers written without an exponent are
/// integers when they fit one.
fn float_value(x: f64) -> Value {
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e21 {
        if (0.0..2.0 * TWO_63).contains(&x) {
            return Value::from(x as u64);
        }
        if (-TWO_63..0.0).contains(&x) {
            return Value::from(x as i64);
        }
    }
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// Go's `encoding/json` float: shortest text that reads back the same, `%f` style from 1e-6
/// to 1e21 and `%e` style outside (`1e-7`, `1e+22`). Go refuses NaN and infinities (v1.1
/// then answered 500); they are written as `null` here.
fn write_go_float(x: f64, out: &mut String) {
    if !x.is_finite() {
        out.push_str("null");
        return;
    }
    let abs = x.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let (mantissa, exp) = split_exp(x);
        let _ = write!(
            out,
            "{mantissa}e{}{}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        );
        // Go writes at least two exponent digits and then trims `e-07` to `e-7`, so only
        // positive exponents keep two digits; they are 21 or more here anyway.
    } else {
        out.push_str(&go_format_f(x));
    }
}

/// Go's `strconv.FormatFloat(x, 'f', -1, 64)`: the shortest digits, never an exponent.
fn go_format_f(x: f64) -> String {
    // Rust's Display prints the shortest digits that read back the same, without exponent.
    format!("{x}")
}

/// Go's `fmt.Sprint(x)` of a float64 (`%g` with the shortest digits): `%e` style (`2e+06`,
/// `1e-05`, two exponent digits at least) when the exponent is below -4 or 6 or more.
fn go_format_g(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return go_format_f(x);
    }
    let (mantissa, exp) = split_exp(x);
    if !(-4..6).contains(&exp) {
        format!(
            "{mantissa}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        )
    } else {
        go_format_f(x)
    }
}

/// The shortest digits of `x` as a mantissa (`1.2345`) and a decimal exponent.
fn split_exp(x: f64) -> (String, i32) {
    let s = format!("{x:e}");
    match s.split_once('e') {
        Some((m, e)) => (m.to_owned(), e.parse().unwrap_or(0)),
        None => (s, 0),
    }
}

/// Go's `encoding/json` string: `<`, `>` and `&` as `\u003c`..., U+2028 and U+2029 escaped,
/// control characters as `\n`, `\b`... or `\u00XX`.
fn write_go_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(x: f64) -> String {
        let mut s = String::new();
        write_go_float(x, &mut s);
        s
    }

    #[test]
    fn floats_are_written_as_go_writes_them() {
        assert_eq!(json(5.0), "5");
        assert_eq!(json(0.0), "0");
        assert_eq!(json(15.977100850000001), "15.977100850000001");
        assert_eq!(json(1e-7), "1e-7");
        assert_eq!(json(1.0000000000000001e-7), "1.0000000000000001e-7");
        assert_eq!(json(1.5e-10), "1.5e-10");
        assert_eq!(json(1e-6), "0.000001");
        assert_eq!(json(1e20), "100000000000000000000");
        assert_eq!(json(1e21), "1e+21");
        assert_eq!(json(-3.3333333333333335e21), "-3.3333333333333335e+21");
        assert_eq!(json(f64::NAN), "null");
    }

    #[test]
    fn sprint_of_floats_is_gos() {
        assert_eq!(go_format_g(0.0), "0");
        assert_eq!(go_format_g(19.603), "19.603");
        assert_eq!(go_format_g(176.17), "176.17");
        assert_eq!(go_format_g(100000.0), "100000");
        assert_eq!(go_format_g(1e6), "1e+06");
        assert_eq!(go_format_g(1234567.8), "1.2345678e+06");
        assert_eq!(go_format_g(0.0001), "0.0001");
        assert_eq!(go_format_g(0.00001), "1e-05");
        assert_eq!(go_format_g(-2e-7), "-2e-07");
        assert_eq!(go_format_g(1.5e100), "1.5e+100");
    }

    #[test]
    fn labels_floor_and_do_not_round() {
        assert_eq!(go_format_f(floor_decimals(4.2238750000000005, 1)), "4.2");
        assert_eq!(go_format_f(floor_decimals(40.490041999999995, 1)), "40.4");
        assert_eq!(go_format_f(floor_decimals(0.032375, 3)), "0.032");
        assert_eq!(go_format_f(floor_decimals(-0.00001, 3)), "-0.001");
    }

    #[test]
    fn strings_are_escaped_as_go_escapes_them() {
        let mut s = String::new();
        write_go_string("a<b>&\"\\\n\t\u{1}\u{2028}é", &mut s);
        assert_eq!(s, r#""a\u003cb\u003e\u0026\"\\\n\t\u0001\u2028é""#);
    }

    #[test]
    fn start_times() {
        let label = |s: &str| start_time_label(s).map_err(|e| e.to_string());
        assert_eq!(label(""), Ok("01 Jan 01 00:00 UTC".into()));
        assert_eq!(
            label("2023-07-21T14:00:40.134434969Z"),
            Ok("21 Jul 23 14:00 UTC".into())
        );
        assert_eq!(
            label("2024-02-29T23:59:59.999+05:30"),
            Ok("29 Feb 24 23:59 +0530".into())
        );
        assert_eq!(
            label("1999-12-31T18:07:00-07:45"),
            Ok("31 Dec 99 18:07 -0745".into())
        );
        assert_eq!(
            label("2030-01-02T03:04:05-00:00"),
            Ok("02 Jan 30 03:04 UTC".into())
        );
        for bad in [
            "2023-02-29T14:00:40Z",
            "2023-07-21 14:00:40Z",
            "2023-07-21T24:00:40Z",
            "2023-07-21T14:00:60Z",
            "2023-07-21T14:00:40",
            "2023-07-21T14:00:40+24:00",
            "2023-07-21T14:00:40+02:60",
            "2023-07-21T14:00:40.Z",
            "2023-07-21T14:00:40z",
            "21 Jul 23 14:00 UTC",
            "２023-07-21T14:00:40Z",
        ] {
            let e = label(bad).expect_err(bad);
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn integers_follow_gos_float64_detour() {
        let v = |j: &str| serde_json::from_str::<Value>(j).expect("json");
        assert_eq!(to_int(&v("5.0"), "x", Int::I64), Ok(5));
        assert_eq!(to_int(&v("1e2"), "x", Int::U64), Ok(100));
        assert_eq!(to_int(&v("null"), "x", Int::U64), Ok(0));
        assert_eq!(
            to_int(&v("9007199254740993"), "x", Int::I64),
            Ok(9007199254740992)
        );
        assert!(to_int(&v("5.5"), "x", Int::I64).is_err());
        assert!(to_int(&v("-1"), "x", Int::U64).is_err());
        assert!(to_int(&v("18446744073709551615"), "x", Int::U64).is_err());
        assert!(to_int(&v("\"5\""), "x", Int::I64).is_err());
    }
}
