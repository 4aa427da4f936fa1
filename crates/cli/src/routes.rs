//! Routing objects as the data plane reads them, for `iter8 status` and `iter8 explain`: an
//! Istio VirtualService (`spec.http`) or a Gateway API HTTPRoute (`spec.rules`) reduced to
//! rules with match conditions and weighted destinations; which rule a request takes; and the
//! versions it can end at, with their probabilities. Pure: plain values in, plain values out.
//!
//! A destination is mapped to a version, in this order, by the `app-version` response header
//! it (or its route) adds or sets, by its host or Service name (a version resource's name, or
//! KServe's `<name>-predictor`), or by the `Host` request header it sets. A destination that
//! names no version but sets request headers sends the request back through the gateway with
//! them (the release chart's KServe blue-green: the `split` route or weighted HTTPRoute rule sets
//! `branch`, per-version routes or rules match it): the rules are evaluated once more with
//! those headers, and no further.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

/// The response header the release chart's routes add to say which version answered.
pub const VERSION_HEADER: &str = "app-version";

/// How many times a request may be sent back through the gateway by a destination.
const MAX_HOPS: usize = 1;

/// The versions of an application, for mapping destinations: each version's resource names
/// (the first is the version's name).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Versions {
    pub resources: Vec<Vec<String>>,
}

impl Versions {
    /// The version's name: its first resource's name.
    pub fn name(&self, i: usize) -> String {
        self.resources
            .get(i)
            .and_then(|r| r.first())
            .cloned()
            .unwrap_or_else(|| format!("version {i}"))
    }

    /// The version one of whose resources is called `name`.
    fn by_name(&self, name: &str) -> Option<usize> {
        self.resources
            .iter()
            .position(|names| names.iter().any(|n| n == name))
    }

    /// The version a host or Service name points at: its first DNS label is a version
    /// resource's name, or KServe's predictor Service of one (`<name>-predictor`).
    fn by_host(&self, host: &str) -> Option<usize> {
        let label = host.split('.').next().unwrap_or(host);
        self.by_name(label).or_else(|| {
            label
                .strip_suffix("-predictor")
                .and_then(|name| self.by_name(name))
        })
    }
}

/// A request, as `explain` is asked about it. Header names are lower case.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: BTreeMap<String, String>,
    /// The `Host` (`:authority`).
    pub host: String,
}

impl Request {
    /// A request for `host` with `method` and `target` (a path with an optional query string)
    /// and `headers` (`name: value`, names in any case).
    pub fn new(method: &str, target: &str, host: &str, headers: &[(String, String)]) -> Request {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let query = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_string(), v.to_string())
            })
            .collect();
        let mut req = Request {
            method: method.to_uppercase(),
            path: if path.is_empty() { "/" } else { path }.to_string(),
            query,
            headers: BTreeMap::new(),
            host: host.to_string(),
        };
        for (name, value) in headers {
            req.set_header(name, value);
        }
        req
    }

    fn set_header(&mut self, name: &str, value: &str) {
        let name = name.to_lowercase();
        if name == "host" || name == ":authority" {
            self.host = value.to_string();
        } else {
            self.headers.insert(name, value.to_string());
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        match name {
            "host" | ":authority" => Some(self.host.as_str()),
            ":method" => Some(self.method.as_str()),
            ":path" => Some(self.path.as_str()),
            _ => self.headers.get(name).map(String::as_str),
        }
    }
}

/// The two kinds of routing objects this module reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Istio: the first route whose match holds wins.
    VirtualService,
    /// Gateway API: the most specific matching rule wins (path, method, headers, query).
    HttpRoute,
}

impl Kind {
    /// The object's kind, if this module reads it.
    pub fn of(kind: &str) -> Option<Kind> {
        match kind {
            "VirtualService" => Some(Kind::VirtualService),
            "HTTPRoute" => Some(Kind::HttpRoute),
            _ => None,
        }
    }

    fn rule_word(self) -> &'static str {
        match self {
            Kind::VirtualService => "route",
            Kind::HttpRoute => "rule",
        }
    }
}

/// A string comparison of a match condition.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Exact(String),
    Prefix(String),
    Regex(String),
    /// Gateway API's `PathPrefix`: whole path elements.
    PathPrefix(String),
    /// The header is present, whatever its value.
    Present,
}

impl Op {
    /// Istio's StringMatch (`exact`, `prefix`, `regex`; empty: present).
    fn istio(v: &Value) -> Option<Op> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(String::from);
        if let Some(x) = s("exact") {
            Some(Op::Exact(x))
        } else if let Some(x) = s("prefix") {
            Some(Op::Prefix(x))
        } else if let Some(x) = s("regex") {
            Some(Op::Regex(x))
        } else if v.as_object().is_some_and(|o| o.is_empty()) {
            Some(Op::Present)
        } else {
            None
        }
    }

    /// Gateway API's `{type, value}` (type `Exact` by default).
    fn gateway(v: &Value, default: &str) -> Option<Op> {
        let value = v.get("value").and_then(Value::as_str)?.to_string();
        match v.get("type").and_then(Value::as_str).unwrap_or(default) {
            "Exact" => Some(Op::Exact(value)),
            "PathPrefix" => Some(Op::PathPrefix(value)),
            "RegularExpression" => Some(Op::Regex(value)),
            _ => None,
        }
    }

    fn holds(&self, found: &str, ignore_case: bool) -> Result<bool, String> {
        let fold = |s: &str| {
            if ignore_case {
                s.to_lowercase()
            } else {
                s.to_string()
            }
        };
        Ok(match self {
            Op::Exact(x) => fold(found) == fold(x),
            Op::Prefix(x) => fold(found).starts_with(&fold(x)),
            Op::Regex(x) => {
                // Envoy's safe_regex and the Gateway API match the whole value.
                let re = regex::RegexBuilder::new(&format!("^(?:{x})$"))
                    .case_insensitive(ignore_case)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| format!("invalid regex {x:?}: {e}"))?;
                re.is_match(found)
            }
            Op::PathPrefix(x) => {
                let prefix = x.trim_end_matches('/');
                prefix.is_empty()
                    || found == prefix
                    || found
                        .strip_prefix(prefix)
                        .is_some_and(|rest| rest.starts_with('/'))
            }
            Op::Present => true,
        })
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Exact(x) => write!(f, "exact {x}"),
            Op::Prefix(x) => write!(f, "prefix {x}"),
            Op::Regex(x) => write!(f, "regex {x}"),
            Op::PathPrefix(x) => write!(f, "prefix {x}"),
            Op::Present => write!(f, "present"),
        }
    }
}

/// What a condition looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Subject {
    Header(String),
    /// Istio's `withoutHeaders`: the condition holds when the header does not match.
    NotHeader(String),
    Path,
    Query(String),
    Method,
    Authority,
    Scheme,
    /// A condition on where the request comes from (gateway, port, source labels or
    /// namespace): `explain` does not know, and assumes it does not hold.
    Unknown(String),
}

/// One condition of a match.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Cond {
    subject: Subject,
    op: Op,
    ignore_case: bool,
}

impl Cond {
    /// `Ok` when the request satisfies it, else why not.
    fn check(&self, req: &Request) -> Result<(), String> {
        let found: Option<String> = match &self.subject {
            Subject::Header(n) | Subject::NotHeader(n) => req.header(n).map(String::from),
            Subject::Path => Some(req.path.clone()),
            Subject::Query(n) => req
                .query
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone()),
            Subject::Method => Some(req.method.clone()),
            Subject::Authority => Some(req.host.clone()),
            Subject::Scheme => Some("http".to_string()),
            Subject::Unknown(field) => {
                return Err(format!(
                    "it matches on {field}, which explain cannot know; assumed not to match"
                ))
            }
        };
        let holds = match &found {
            Some(v) => self.op.holds(v, self.ignore_case)?,
            None => false,
        };
        let negated = matches!(self.subject, Subject::NotHeader(_));
        if holds != negated {
            return Ok(());
        }
        let what = match &self.subject {
            Subject::Header(n) | Subject::NotHeader(n) => format!("header {n}"),
            Subject::Path => "the path".to_string(),
            Subject::Query(n) => format!("query parameter {n}"),
            Subject::Method => "the method".to_string(),
            Subject::Authority => "the host".to_string(),
            Subject::Scheme => "the scheme".to_string(),
            Subject::Unknown(f) => f.clone(),
        };
        Err(match (negated, found) {
            (true, Some(v)) => format!("{what} is {v:?} (wants not {})", self.op),
            (_, None) => format!("{what} is absent (wants {})", self.op),
            (false, Some(v)) => format!("{what} is {v:?} (wants {})", self.op),
        })
    }
}

impl fmt::Display for Cond {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let case = if self.ignore_case {
            " (ignoring case)"
        } else {
            ""
        };
        match &self.subject {
            Subject::Header(n) => write!(f, "headers {n} {}", self.op),
            Subject::NotHeader(n) => write!(f, "withoutHeaders {n} {}", self.op),
            Subject::Path => write!(f, "uri {}{case}", self.op),
            Subject::Query(n) => write!(f, "queryParams {n} {}", self.op),
            Subject::Method => write!(f, "method {}", self.op),
            Subject::Authority => write!(f, "authority {}", self.op),
            Subject::Scheme => write!(f, "scheme {}", self.op),
            Subject::Unknown(field) => write!(f, "{field} (not evaluated)"),
        }
    }
}

/// Gateway API precedence of a match, most significant first: the path (exact over prefix
/// over regex) and the prefix's length, a method, the number of header and of query matches.
type Precedence = (u8, usize, bool, usize, usize);

/// One match block: all its conditions must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Match {
    conds: Vec<Cond>,
}

impl Match {
    fn check(&self, req: &Request) -> Result<(), String> {
        self.conds.iter().try_for_each(|c| c.check(req))
    }

    /// Gateway API precedence of this match (larger is more specific).
    fn precedence(&self) -> Precedence {
        let mut path = (1, 1); // no path: PathPrefix "/"
        let (mut method, mut headers, mut query) = (false, 0, 0);
        for c in &self.conds {
            match (&c.subject, &c.op) {
                (Subject::Path, Op::Exact(_)) => path = (3, 0),
                (Subject::Path, Op::PathPrefix(p) | Op::Prefix(p)) => path = (2, p.len()),
                (Subject::Path, _) => path = (0, 0),
                (Subject::Method, _) => method = true,
                (Subject::Header(_), _) => headers += 1,
                (Subject::Query(_), _) => query += 1,
                _ => {}
            }
        }
        (path.0, path.1, method, headers, query)
    }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.conds.is_empty() {
            return write!(f, "every request");
        }
        let parts: Vec<String> = self.conds.iter().map(Cond::to_string).collect();
        write!(f, "{}", parts.join(", "))
    }
}

/// A weighted destination of a rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Destination {
    /// The host (Istio) or Service name (Gateway API).
    pub host: String,
    pub weight: u32,
    /// The `app-version` response header it adds or sets.
    app_version: Option<String>,
    /// Request headers it sets or adds (lower-case names).
    set: Vec<(String, String)>,
    /// Request headers it removes (lower-case names).
    remove: Vec<String>,
}

/// One rule (a VirtualService `http` route, an HTTPRoute rule).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub index: usize,
    pub name: Option<String>,
    /// Any one must hold; none: every request.
    pub matches: Vec<Match>,
    pub destinations: Vec<Destination>,
    /// What else happens to the requests it takes (mirrors, redirects), in words.
    pub notes: Vec<String>,
}

impl Rule {
    /// The match conditions in words: `headers traffic exact test`, `every request`.
    pub fn match_text(&self) -> String {
        if self.matches.is_empty() {
            return "every request".to_string();
        }
        let parts: Vec<String> = self.matches.iter().map(Match::to_string).collect();
        parts.join(" or ")
    }
}

/// A routing object reduced to its rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub kind: Kind,
    pub name: String,
    pub rules: Vec<Rule>,
}

impl Table {
    /// Reads a VirtualService or an HTTPRoute (`kind`, `metadata.name`, `spec`); `None` for
    /// other kinds.
    pub fn read(obj: &Value) -> Option<Table> {
        let kind = Kind::of(obj.get("kind").and_then(Value::as_str).unwrap_or(""))?;
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
        let rules = match kind {
            Kind::VirtualService => items(&spec, "http")
                .iter()
                .enumerate()
                .map(|(i, r)| istio_rule(i, r))
                .collect(),
            Kind::HttpRoute => items(&spec, "rules")
                .iter()
                .enumerate()
                .map(|(i, r)| gateway_rule(i, r))
                .collect(),
        };
        Some(Table { kind, name, rules })
    }

    /// How a rule is called in words: `route wisdom-1`, `rule 0`.
    pub fn rule_label(&self, i: usize) -> String {
        let word = self.kind.rule_word();
        match self.rules.get(i).and_then(|r| r.name.as_deref()) {
            Some(name) => format!("{word} {name}"),
            None => format!("{word} {i}"),
        }
    }

    /// The rule `req` takes, and for each rule it passed over (VirtualService: those before
    /// it; HTTPRoute: those that do not match), why.
    pub fn choose(&self, req: &Request) -> (Option<usize>, Vec<(usize, String)>) {
        let mut skipped = Vec::new();
        let mut best: Option<(usize, Precedence)> = None;
        for rule in &self.rules {
            let outcome = if rule.matches.is_empty() {
                Ok(Match::default().precedence())
            } else {
                let mut why = Vec::new();
                let mut found = None;
                for m in &rule.matches {
                    match m.check(req) {
                        Ok(()) => {
                            let p = m.precedence();
                            if found.is_none_or(|f| p > f) {
                                found = Some(p);
                            }
                        }
                        Err(e) => why.push(e),
                    }
                }
                found.ok_or_else(|| why.join("; or "))
            };
            match (self.kind, outcome) {
                (Kind::VirtualService, Ok(_)) => return (Some(rule.index), skipped),
                (Kind::HttpRoute, Ok(p)) => {
                    // Strictly more specific: the earlier rule wins a tie.
                    if best.is_none_or(|(_, b)| p > b) {
                        best = Some((rule.index, p));
                    }
                }
                (_, Err(why)) => skipped.push((rule.index, why)),
            }
        }
        (best.map(|(i, _)| i), skipped)
    }

    /// Where `req` ends: the rule it takes and each version (or unmapped destination) with
    /// its probability.
    pub fn decide(&self, req: &Request, versions: &Versions) -> Decision {
        let (rule, skipped) = self.choose(req);
        let paths = match rule {
            Some(i) => self.follow(i, req, versions, MAX_HOPS),
            None => Vec::new(),
        };
        Decision {
            rule,
            skipped,
            paths,
        }
    }

    /// For each rule, where the requests it takes end (following one hop through the
    /// gateway), for `status`.
    pub fn reach(&self, versions: &Versions) -> Vec<Vec<Path>> {
        let req = Request::new("GET", "/", "", &[]);
        (0..self.rules.len())
            .map(|i| self.follow(i, &req, versions, MAX_HOPS))
            .collect()
    }

    /// The paths from rule `i` to versions.
    fn follow(&self, i: usize, req: &Request, versions: &Versions, hops: usize) -> Vec<Path> {
        let Some(rule) = self.rules.get(i) else {
            return Vec::new();
        };
        let total: u64 = rule.destinations.iter().map(|d| u64::from(d.weight)).sum();
        let share = |d: &Destination| -> f64 {
            if rule.destinations.len() == 1 && self.kind == Kind::VirtualService {
                // Istio: a single destination takes everything, whatever its weight.
                1.0
            } else if total == 0 {
                0.0
            } else {
                f64::from(d.weight) / total as f64
            }
        };
        let mut out = Vec::new();
        for d in &rule.destinations {
            let p = share(d);
            if p == 0.0 {
                continue;
            }
            let step = Step {
                rule: i,
                label: self.rule_label(i),
                match_text: rule.match_text(),
                share: p,
                via: String::new(),
            };
            match resolve(d, versions) {
                Some(end) => out.push(Path {
                    steps: vec![step],
                    end,
                    probability: p,
                }),
                None if hops > 0 && !d.set.is_empty() => {
                    let mut next = req.clone();
                    for name in &d.remove {
                        next.headers.remove(name);
                    }
                    for (name, value) in &d.set {
                        next.set_header(name, value);
                    }
                    let sets: Vec<String> =
                        d.set.iter().map(|(n, v)| format!("{n}: {v}")).collect();
                    let step = Step {
                        via: format!("sets {}, back through the gateway", sets.join(", ")),
                        ..step
                    };
                    match self.choose(&next).0 {
                        Some(j) => {
                            for mut path in self.follow(j, &next, versions, hops - 1) {
                                path.steps.insert(0, step.clone());
                                path.probability *= p;
                                out.push(path);
                            }
                        }
                        None => out.push(Path {
                            steps: vec![step],
                            end: End::Unknown("no route matches after the hop".to_string()),
                            probability: p,
                        }),
                    }
                }
                None => out.push(Path {
                    steps: vec![step],
                    end: End::Unknown(format!("destination {}", d.host)),
                    probability: p,
                }),
            }
        }
        out
    }
}

/// Where a path ends.
#[derive(Clone, Debug, PartialEq)]
pub enum End {
    /// A version of the routemap, by index.
    Version(usize),
    /// An `app-version` header naming no version of the routemap.
    Named(String),
    /// A destination that maps to no version, in words.
    Unknown(String),
}

/// One rule on the way to a version.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub rule: usize,
    /// `route split`.
    pub label: String,
    pub match_text: String,
    /// The destination's share of the rule's traffic.
    pub share: f64,
    /// What the destination does to go on (a hop), in words; empty at the end.
    pub via: String,
}

/// A way a request can go, and how likely it is.
#[derive(Clone, Debug, PartialEq)]
pub struct Path {
    pub steps: Vec<Step>,
    pub end: End,
    pub probability: f64,
}

/// What [`Table::decide`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The rule the request takes; `None`: no rule matches (the gateway answers 404).
    pub rule: Option<usize>,
    /// Rules passed over, with why.
    pub skipped: Vec<(usize, String)>,
    pub paths: Vec<Path>,
}

impl Decision {
    /// The probability of each end, merged over paths, in order of first appearance.
    pub fn outcomes(&self) -> Vec<(End, f64)> {
        merge(&self.paths)
    }
}

/// The probability of each end of `paths`, merged, in order of first appearance.
pub fn merge(paths: &[Path]) -> Vec<(End, f64)> {
    let mut out: Vec<(End, f64)> = Vec::new();
    for p in paths {
        match out.iter_mut().find(|(e, _)| *e == p.end) {
            Some((_, sum)) => *sum += p.probability,
            None => out.push((p.end.clone(), p.probability)),
        }
    }
    out
}

/// The version a destination answers from, if it says.
fn resolve(d: &Destination, versions: &Versions) -> Option<End> {
    if let Some(v) = &d.app_version {
        return Some(match versions.by_name(v) {
            Some(i) => End::Version(i),
            None => End::Named(v.clone()),
        });
    }
    if let Some(i) = versions.by_host(&d.host) {
        return Some(End::Version(i));
    }
    d.set
        .iter()
        .find(|(n, _)| n == "host" || n == ":authority")
        .and_then(|(_, h)| versions.by_host(h))
        .map(End::Version)
}

fn items<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn string_map(v: Option<&Value>) -> Vec<(String, String)> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.to_lowercase(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Istio's `headers` operations (`request`/`response` with `set`, `add`, `remove`) of a
/// route or destination, merged into `d` (later ones win).
fn istio_headers(h: &Value, d: &mut Destination) {
    for op in ["add", "set"] {
        for (n, v) in string_map(h.pointer(&format!("/response/{op}"))) {
            if n == VERSION_HEADER {
                d.app_version = Some(v);
            }
        }
        for (n, v) in string_map(h.pointer(&format!("/request/{op}"))) {
            d.set.retain(|(k, _)| *k != n);
            d.set.push((n, v));
        }
    }
    let removed = h.pointer("/request/remove").and_then(Value::as_array);
    for n in removed.into_iter().flatten().filter_map(Value::as_str) {
        d.remove.push(n.to_lowercase());
    }
}

fn istio_rule(index: usize, r: &Value) -> Rule {
    let mut matches = Vec::new();
    for m in items(r, "match") {
        let ignore_case = m.get("ignoreUriCase").and_then(Value::as_bool) == Some(true);
        let mut conds = Vec::new();
        let mut push = |subject: Subject, v: &Value, ignore_case: bool| {
            let op = Op::istio(v).unwrap_or(Op::Present);
            conds.push(Cond {
                subject,
                op,
                ignore_case,
            });
        };
        if let Some(v) = m.get("uri") {
            push(Subject::Path, v, ignore_case);
        }
        if let Some(v) = m.get("method") {
            push(Subject::Method, v, false);
        }
        if let Some(v) = m.get("authority") {
            push(Subject::Authority, v, false);
        }
        if let Some(v) = m.get("scheme") {
            push(Subject::Scheme, v, false);
        }
        for (key, negated) in [("headers", false), ("withoutHeaders", true)] {
            if let Some(hs) = m.get(key).and_then(Value::as_object) {
                for (name, v) in hs {
                    let name = name.to_lowercase();
                    let subject = if negated {
                        Subject::NotHeader(name)
                    } else {
                        Subject::Header(name)
                    };
                    push(subject, v, false);
                }
            }
        }
        if let Some(qs) = m.get("queryParams").and_then(Value::as_object) {
            for (name, v) in qs {
                push(Subject::Query(name.clone()), v, false);
            }
        }
        for field in ["port", "sourceLabels", "gateways", "sourceNamespace"] {
            if m.get(field).is_some_and(|v| !v.is_null()) {
                push(Subject::Unknown(field.to_string()), &Value::Null, false);
            }
        }
        matches.push(Match { conds });
    }
    let mut base = Destination::default();
    if let Some(h) = r.get("headers") {
        istio_headers(h, &mut base);
    }
    let routes = items(r, "route");
    let destinations = routes
        .iter()
        .map(|rd| {
            let mut d = base.clone();
            d.host = rd
                .pointer("/destination/host")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            d.weight = weight_of(rd, 0);
            if let Some(h) = rd.get("headers") {
                istio_headers(h, &mut d);
            }
            d
        })
        .collect();
    let mut notes = Vec::new();
    if let Some(host) = r.pointer("/mirror/host").and_then(Value::as_str) {
        let pct = r
            .pointer("/mirrorPercentage/value")
            .and_then(Value::as_f64)
            .unwrap_or(100.0);
        notes.push(format!("copies {pct}% of its requests to {host} (mirror)"));
    }
    for m in items(r, "mirrors") {
        if let Some(host) = m.pointer("/destination/host").and_then(Value::as_str) {
            let pct = m
                .pointer("/percentage/value")
                .and_then(Value::as_f64)
                .unwrap_or(100.0);
            notes.push(format!("copies {pct}% of its requests to {host} (mirror)"));
        }
    }
    if r.get("redirect").is_some() {
        notes.push("answers with a redirect".to_string());
    }
    if let Some(status) = r.pointer("/directResponse/status") {
        notes.push(format!("answers {status} itself (directResponse)"));
    }
    Rule {
        index,
        name: r.get("name").and_then(Value::as_str).map(String::from),
        matches,
        destinations,
        notes,
    }
}

/// A Gateway API `ResponseHeaderModifier`/`RequestHeaderModifier` filter's effect on `d`.
fn gateway_filters(filters: &[Value], d: &mut Destination, notes: &mut Vec<String>) {
    for f in filters {
        match f.get("type").and_then(Value::as_str) {
            Some("ResponseHeaderModifier") => {
                for op in ["add", "set"] {
                    for h in items(&f["responseHeaderModifier"], op) {
                        if h.get("name").and_then(Value::as_str).map(str::to_lowercase)
                            == Some(VERSION_HEADER.to_string())
                        {
                            d.app_version =
                                h.get("value").and_then(Value::as_str).map(String::from);
                        }
                    }
                }
            }
            Some("RequestHeaderModifier") => {
                for op in ["add", "set"] {
                    for h in items(&f["requestHeaderModifier"], op) {
                        let (Some(n), Some(v)) = (
                            h.get("name").and_then(Value::as_str),
                            h.get("value").and_then(Value::as_str),
                        ) else {
                            continue;
                        };
                        let n = n.to_lowercase();
                        d.set.retain(|(k, _)| *k != n);
                        d.set.push((n, v.to_string()));
                    }
                }
                let removed = items(&f["requestHeaderModifier"], "remove");
                d.remove.extend(
                    removed
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_lowercase),
                );
            }
            Some("RequestMirror") => {
                let to = f
                    .pointer("/requestMirror/backendRef/name")
                    .and_then(Value::as_str)
                    .unwrap_or("?");
                notes.push(format!("copies its requests to {to} (mirror)"));
            }
            Some("RequestRedirect") => notes.push("answers with a redirect".to_string()),
            _ => {}
        }
    }
}

fn gateway_rule(index: usize, r: &Value) -> Rule {
    let matches = items(r, "matches")
        .iter()
        .map(|m| {
            let mut conds = Vec::new();
            if let Some(op) = m.get("path").and_then(|p| Op::gateway(p, "PathPrefix")) {
                conds.push(Cond {
                    subject: Subject::Path,
                    op,
                    ignore_case: false,
                });
            }
            if let Some(method) = m.get("method").and_then(Value::as_str) {
                conds.push(Cond {
                    subject: Subject::Method,
                    op: Op::Exact(method.to_string()),
                    ignore_case: false,
                });
            }
            for (key, header) in [("headers", true), ("queryParams", false)] {
                for h in items(m, key) {
                    let (Some(name), Some(op)) = (
                        h.get("name").and_then(Value::as_str),
                        Op::gateway(h, "Exact"),
                    ) else {
                        continue;
                    };
                    let subject = if header {
                        Subject::Header(name.to_lowercase())
                    } else {
                        Subject::Query(name.to_string())
                    };
                    conds.push(Cond {
                        subject,
                        op,
                        ignore_case: false,
                    });
                }
            }
            Match { conds }
        })
        .collect();
    let mut notes = Vec::new();
    let mut base = Destination::default();
    gateway_filters(items(r, "filters"), &mut base, &mut notes);
    let destinations = items(r, "backendRefs")
        .iter()
        .map(|b| {
            let mut d = base.clone();
            d.host = b
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            d.weight = weight_of(b, 1);
            gateway_filters(items(b, "filters"), &mut d, &mut notes);
            d
        })
        .collect();
    Rule {
        index,
        name: r.get("name").and_then(Value::as_str).map(String::from),
        matches,
        destinations,
        notes,
    }
}

/// A destination's or backendRef's `weight`, or `default` when absent or not a u32.
fn weight_of(v: &Value, default: u32) -> u32 {
    v.get("weight")
        .and_then(Value::as_u64)
        .and_then(|w| u32::try_from(w).ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        serde_yaml::from_str(text).unwrap()
    }

    fn wisdom() -> Versions {
        Versions {
            resources: vec![vec!["wisdom-0".into()], vec!["wisdom-1".into()]],
        }
    }

    fn req(headers: &[(&str, &str)]) -> Request {
        let h: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        Request::new("POST", "/", "wisdom.default", &h)
    }

    /// Probabilities by version name, rounded to 1e-9.
    fn answer(t: &Table, r: &Request, v: &Versions) -> Vec<(String, f64)> {
        t.decide(r, v)
            .outcomes()
            .into_iter()
            .map(|(e, p)| {
                let name = match e {
                    End::Version(i) => v.name(i),
                    End::Named(n) => format!("named {n}"),
                    End::Unknown(u) => format!("unknown {u}"),
                };
                (name, (p * 1e9).round() / 1e9)
            })
            .collect()
    }

    // The tutorial's step-2 VirtualService (release chart, canary, both versions ready).
    const CANARY: &str = r#"
kind: VirtualService
metadata: {name: wisdom}
spec:
  http:
  - name: wisdom-1
    match:
    - headers: {traffic: {exact: test}}
    rewrite: {uri: /v2/models/wisdom-1/infer}
    route:
    - destination: {host: knative-local-gateway.istio-system.svc.cluster.local}
      headers:
        request: {set: {Host: wisdom-1-predictor.default.svc.cluster.local}}
        response: {add: {app-version: wisdom-1}}
  - name: wisdom-0
    route:
    - destination: {host: knative-local-gateway.istio-system.svc.cluster.local}
      headers:
        request: {set: {Host: wisdom-0-predictor.default.svc.cluster.local}}
        response: {add: {app-version: wisdom-0}}
"#;

    // The release chart's KServe blue-green, weights 30/70.
    const BLUE_GREEN: &str = r#"
kind: VirtualService
metadata: {name: wisdom}
spec:
  http:
  - name: wisdom-0
    match: [{headers: {branch: {exact: wisdom-0}}}]
    route:
    - destination: {host: knative-local-gateway.istio-system.svc.cluster.local}
      headers:
        request: {set: {Host: wisdom-0-predictor.default.svc.cluster.local}, remove: [branch]}
        response: {add: {app-version: wisdom-0}}
  - name: wisdom-1
    match: [{headers: {branch: {exact: wisdom-1}}}]
    route:
    - destination: {host: knative-local-gateway.istio-system.svc.cluster.local}
      headers:
        request: {set: {Host: wisdom-1-predictor.default.svc.cluster.local}, remove: [branch]}
        response: {add: {app-version: wisdom-1}}
  - name: split
    route:
    - destination: {host: knative-local-gateway.istio-system.svc.cluster.local}
      weight: 30
      headers: {request: {set: {branch: wisdom-0, host: wisdom.default}}}
    - destination: {host: knative-local-gateway.istio-system.svc.cluster.local}
      weight: 70
      headers: {request: {set: {branch: wisdom-1, host: wisdom.default}}}
"#;

    #[test]
    fn canary_header_decides_and_the_default_route_takes_the_rest() {
        let t = Table::read(&yaml(CANARY)).unwrap();
        let with = t.decide(&req(&[("Traffic", "test")]), &wisdom());
        assert_eq!(with.rule, Some(0));
        assert!(with.skipped.is_empty());
        assert_eq!(
            answer(&t, &req(&[("traffic", "test")]), &wisdom()),
            [("wisdom-1".to_string(), 1.0)]
        );
        let without = t.decide(&req(&[]), &wisdom());
        assert_eq!(without.rule, Some(1));
        assert_eq!(
            without.skipped,
            [(0, "header traffic is absent (wants exact test)".to_string())]
        );
        assert_eq!(
            answer(&t, &req(&[("traffic", "prod")]), &wisdom()),
            [("wisdom-0".to_string(), 1.0)]
        );
        assert_eq!(
            t.decide(&req(&[("traffic", "prod")]), &wisdom()).skipped[0].1,
            "header traffic is \"prod\" (wants exact test)"
        );
        assert_eq!(t.rules[0].match_text(), "headers traffic exact test");
        assert_eq!(t.rules[1].match_text(), "every request");
        assert_eq!(t.rule_label(0), "route wisdom-1");
    }

    #[test]
    fn a_split_route_is_followed_through_the_gateway_once() {
        let t = Table::read(&yaml(BLUE_GREEN)).unwrap();
        let d = t.decide(&req(&[]), &wisdom());
        assert_eq!(d.rule, Some(2));
        assert_eq!(
            answer(&t, &req(&[]), &wisdom()),
            [("wisdom-0".to_string(), 0.3), ("wisdom-1".to_string(), 0.7)]
        );
        assert_eq!(d.paths[1].steps.len(), 2);
        assert_eq!(
            d.paths[1].steps[0].via,
            "sets branch: wisdom-1, host: wisdom.default, back through the gateway"
        );
        assert_eq!(d.paths[1].steps[1].label, "route wisdom-1");
        // A request that carries the header itself goes straight to that version.
        assert_eq!(
            answer(&t, &req(&[("branch", "wisdom-1")]), &wisdom()),
            [("wisdom-1".to_string(), 1.0)]
        );
        // Every rule's reach, for status.
        let reach = t.reach(&wisdom());
        assert_eq!(reach[0][0].end, End::Version(0));
        assert_eq!(reach[1][0].end, End::Version(1));
        let split = merge(&reach[2]);
        assert_eq!(split, [(End::Version(0), 0.3), (End::Version(1), 0.7)]);
    }

    /// The release chart's kserve-standard-gtw blue-green, as the controller renders it.
    const GATEWAY_BLUE_GREEN: &str = r#"
kind: HTTPRoute
metadata: {name: wisdom}
spec:
  rules:
  - matches: [{headers: [{name: branch, value: wisdom-0}]}]
    filters:
    - {type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /v2/models/wisdom-0/infer}}}
    - {type: RequestHeaderModifier, requestHeaderModifier: {remove: [branch]}}
    backendRefs:
    - name: wisdom-0-predictor
      port: 80
      filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: app-version, value: wisdom-0}]}}]
  - matches: [{headers: [{name: branch, value: wisdom-1}]}]
    filters:
    - {type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /v2/models/wisdom-1/infer}}}
    - {type: RequestHeaderModifier, requestHeaderModifier: {remove: [branch]}}
    backendRefs:
    - name: wisdom-1-predictor
      port: 80
      filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: app-version, value: wisdom-1}]}}]
  - backendRefs:
    - name: wisdom-gateway-istio
      port: 80
      weight: 80
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: branch, value: wisdom-0}]}}]
    - name: wisdom-gateway-istio
      port: 80
      weight: 20
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: branch, value: wisdom-1}]}}]
"#;

    #[test]
    fn a_weighted_http_route_rule_is_followed_through_the_gateway_once() {
        let t = Table::read(&yaml(GATEWAY_BLUE_GREEN)).unwrap();
        let d = t.decide(&req(&[]), &wisdom());
        assert_eq!(d.rule, Some(2));
        assert_eq!(
            answer(&t, &req(&[]), &wisdom()),
            [("wisdom-0".to_string(), 0.8), ("wisdom-1".to_string(), 0.2)]
        );
        assert_eq!(
            d.paths[1].steps[0].via,
            "sets branch: wisdom-1, back through the gateway"
        );
        assert_eq!(d.paths[1].steps[1].label, "rule 1");
        // The version's rule removes the header it matched.
        assert_eq!(t.rules[1].destinations[0].remove, ["branch"]);
        assert_eq!(
            answer(&t, &req(&[("branch", "wisdom-0")]), &wisdom()),
            [("wisdom-0".to_string(), 1.0)]
        );
    }

    #[test]
    fn a_hop_is_followed_only_once() {
        // A destination that sets a header matched by a route that sets another: the second
        // hop is not followed.
        let t = Table::read(&yaml(
            r#"
kind: VirtualService
metadata: {name: loop}
spec:
  http:
  - match: [{headers: {a: {exact: "1"}}}]
    route: [{destination: {host: gw}, headers: {request: {set: {b: "1"}}}}]
  - route: [{destination: {host: gw}, headers: {request: {set: {a: "1"}}}}]
"#,
        ))
        .unwrap();
        let d = t.decide(&req(&[]), &wisdom());
        assert_eq!(d.rule, Some(1));
        assert_eq!(
            d.outcomes(),
            [(End::Unknown("destination gw".to_string()), 1.0)]
        );
        assert_eq!(d.paths[0].steps.len(), 2);
    }

    #[test]
    fn istio_matches() {
        let t = Table::read(&yaml(
            r#"
kind: VirtualService
metadata: {name: m}
spec:
  http:
  - name: uri-and-header
    match:
    - uri: {prefix: /get}
      headers: {traffic: {exact: test}}
    - queryParams: {canary: {exact: "true"}}
    route: [{destination: {host: httpbin-1.default.svc.cluster.local}}]
  - name: regex
    match: [{headers: {user: {regex: "a.*z"}}, method: {exact: PUT}}]
    route: [{destination: {host: httpbin-2}}]
  - name: without
    match: [{withoutHeaders: {x: {}}, uri: {exact: /Only}, ignoreUriCase: true}]
    route: [{destination: {host: httpbin-2}}]
  - name: gateway
    match: [{gateways: [mesh]}]
    route: [{destination: {host: httpbin-1}}]
  - name: httpbin-0
    route: [{destination: {host: httpbin-0.default.svc.cluster.local, port: {number: 80}}}]
"#,
        ))
        .unwrap();
        let v = Versions {
            resources: (0..3).map(|i| vec![format!("httpbin-{i}")]).collect(),
        };
        let at = |method: &str, path: &str, h: &[(&str, &str)]| {
            let h: Vec<(String, String)> = h
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            let r = Request::new(method, path, "httpbin.default", &h);
            t.decide(&r, &v).rule
        };
        assert_eq!(at("GET", "/get/x", &[("traffic", "test")]), Some(0));
        assert_eq!(at("GET", "/other", &[("traffic", "test")]), Some(4));
        assert_eq!(at("GET", "/other?canary=true&b=1", &[]), Some(0));
        assert_eq!(at("PUT", "/", &[("user", "abcz")]), Some(1));
        assert_eq!(
            at("PUT", "/", &[("user", "abczx")]),
            Some(4),
            "regex is anchored"
        );
        assert_eq!(at("GET", "/", &[("user", "abcz")]), Some(4));
        assert_eq!(at("GET", "/only", &[]), Some(2));
        assert_eq!(at("GET", "/only", &[("x", "")]), Some(4));
        let r = Request::new("GET", "/nothing", "h", &[]);
        let d = t.decide(&r, &v);
        assert_eq!(
            d.skipped.iter().find(|(i, _)| *i == 3).unwrap().1,
            "it matches on gateways, which explain cannot know; assumed not to match"
        );
        assert_eq!(
            t.rules[0].match_text(),
            "uri prefix /get, headers traffic exact test or queryParams canary exact true"
        );
        assert_eq!(
            t.decide(&r, &v).outcomes(),
            [(End::Version(0), 1.0)],
            "a host maps to a version by its first label"
        );
    }

    #[test]
    fn istio_weights() {
        let t = Table::read(&yaml(
            r#"
kind: VirtualService
metadata: {name: w}
spec:
  http:
  - route:
    - {destination: {host: a}, weight: 0}
  - route:
    - {destination: {host: a}, weight: 1}
    - {destination: {host: b}, weight: 3}
    - {destination: {host: c}}
"#,
        ))
        .unwrap();
        let v = Versions {
            resources: vec![vec!["a".into()], vec!["b".into()], vec!["c".into()]],
        };
        let reach = t.reach(&v);
        // A single destination takes everything, whatever its weight.
        assert_eq!(merge(&reach[0]), [(End::Version(0), 1.0)]);
        // Several: their weights, a missing one being 0.
        assert_eq!(
            merge(&reach[1]),
            [(End::Version(0), 0.25), (End::Version(1), 0.75)]
        );
    }

    #[test]
    fn unmapped_destinations_are_said_so() {
        let t = Table::read(&yaml(
            r#"
kind: VirtualService
metadata: {name: u}
spec:
  http:
  - headers: {response: {set: {App-Version: other}}}
    route: [{destination: {host: x}}]
  - route: [{destination: {host: somewhere.else}}]
"#,
        ))
        .unwrap();
        let reach = t.reach(&wisdom());
        assert_eq!(reach[0][0].end, End::Named("other".into()));
        assert_eq!(
            reach[1][0].end,
            End::Unknown("destination somewhere.else".into())
        );
    }

    const GATEWAY_CANARY: &str = r#"
kind: HTTPRoute
metadata: {name: httpbin}
spec:
  rules:
  - backendRefs:
    - name: httpbin-0
      port: 80
      filters:
      - type: ResponseHeaderModifier
        responseHeaderModifier: {add: [{name: app-version, value: httpbin-0}]}
  - matches:
    - headers: [{name: traffic, value: test}]
    - path: {type: PathPrefix, value: /canary}
    backendRefs:
    - {name: httpbin-1, port: 80}
  - name: exact
    matches:
    - path: {type: Exact, value: /canary/exact}
    backendRefs:
    - {name: httpbin-0, port: 80, weight: 1}
    - {name: httpbin-1, port: 80, weight: 3}
"#;

    #[test]
    fn gateway_api_the_most_specific_match_wins() {
        let t = Table::read(&yaml(GATEWAY_CANARY)).unwrap();
        let v = Versions {
            resources: vec![
                vec!["httpbin-0".into(), "httpbin-0".into()],
                vec!["httpbin-1".into()],
            ],
        };
        let rule = |path: &str, h: &[(&str, &str)]| {
            let h: Vec<(String, String)> = h
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            t.decide(&Request::new("GET", path, "httpbin", &h), &v)
        };
        // The catch-all rule comes first, yet a header match is more specific.
        assert_eq!(rule("/", &[("Traffic", "test")]).rule, Some(1));
        assert_eq!(rule("/", &[]).rule, Some(0));
        // Path prefix by whole elements.
        assert_eq!(rule("/canary/x", &[]).rule, Some(1));
        assert_eq!(rule("/canaryx", &[]).rule, Some(0));
        // Exact beats prefix.
        let d = rule("/canary/exact", &[("traffic", "test")]);
        assert_eq!(d.rule, Some(2));
        assert_eq!(
            d.outcomes(),
            [(End::Version(0), 0.25), (End::Version(1), 0.75)]
        );
        assert_eq!(t.rule_label(2), "rule exact");
        assert_eq!(t.rule_label(1), "rule 1");
        assert_eq!(
            t.rules[1].match_text(),
            "headers traffic exact test or uri prefix /canary"
        );
        assert_eq!(rule("/", &[]).outcomes(), [(End::Version(0), 1.0)]);
    }

    #[test]
    fn no_matching_rule_and_other_kinds() {
        let t = Table::read(&yaml(CANARY)).unwrap();
        let only_header = Table {
            rules: t.rules[..1].to_vec(),
            ..t
        };
        let d = only_header.decide(&req(&[]), &wisdom());
        assert_eq!(d.rule, None);
        assert!(d.paths.is_empty());
        assert!(Table::read(&yaml("kind: ServiceEntry\nspec: {}")).is_none());
    }
}
