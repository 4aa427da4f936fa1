//! `iter8 status [APP]`: per application, each version with its objects, readiness (and, when
//! not ready, what blocks it, in words), the weight the controller gives it, the routes of the
//! live routing object that reach it, the last routing change and the analysis phase. Also
//! `kubectl iter8 status`. `--watch` prints the state again each time it changes.
//!
//! [`report`] builds the document from what [`crate::observe`] read (pure, `now` handed in);
//! [`text`] renders it (pure); [`run`] and the watch loop do the I/O.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::time::Duration;

use anyhow::Result;
use futures::{stream, StreamExt};
use iter8_core::availability::object_ready;
use iter8_core::config::{Config, ResourceType};
use iter8_k8s::analysis as glue;
use iter8_k8s::keys::Gvr;
use iter8_k8s::state::{self, FIELD_MANAGER};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use serde::Serialize;
use serde_json::Value;

use crate::observe::{self, App, ClusterArgs, Fetched, Resource, Routing};
use crate::routes::{self, End, Table};

/// Version of the `-o json|yaml` document's shape; bumped only when a field changes meaning
/// or goes away (new fields may be added).
pub const SCHEMA_VERSION: u32 = 1;

#[derive(clap::Args)]
pub struct StatusArgs {
    /// The application (its routemap is the ConfigMap APP-routemap); all of the namespace's
    /// applications when absent.
    app: Option<String>,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Print the state again each time it changes, until Ctrl-C.
    #[arg(short = 'w', long)]
    watch: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// `-o`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Text for people: a compact tree with colour on a terminal, plain text when piped.
    Table,
    Json,
    Yaml,
}

/// The `-o json|yaml` document.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub schema_version: u32,
    pub namespace: String,
    pub applications: Vec<AppStatus>,
}

/// One application.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppStatus {
    pub name: String,
    pub namespace: String,
    pub routemap: String,
    /// Why the controller does not reconcile this routemap (it keeps the routing applied
    /// before), if it does not.
    pub held: Option<String>,
    /// Problems with the versions' objects (malformed conditions, bad weight annotations).
    pub problems: Vec<String>,
    pub versions: Vec<VersionStatus>,
    pub routing: Vec<RoutingStatus>,
    pub analysis: Option<AnalysisStatus>,
    pub last_event: Option<EventStatus>,
}

/// One version.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionStatus {
    pub index: usize,
    /// Its first resource's name.
    pub name: String,
    /// Available: every object exists, is not being deleted and meets its conditions.
    pub ready: bool,
    /// What keeps it from being ready, one sentence per object.
    pub blocked_by: Vec<String>,
    /// The weight the controller gives it (the routing templates' `.Weights`).
    pub weight: u32,
    pub objects: Vec<ObjectStatus>,
    /// The routes of the live routing objects that reach it.
    pub routes: Vec<RouteRef>,
}

/// One object of a version.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    pub gvr_short: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub ready: bool,
    /// Why not ready, in words.
    pub reason: Option<String>,
}

/// A route that reaches a version.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRef {
    /// `VirtualService wisdom`.
    pub object: String,
    /// `route wisdom-1`, `rule 0`.
    pub route: String,
    /// Its match conditions in words.
    #[serde(rename = "match")]
    pub match_text: String,
    /// The share of the route's requests that reach the version (0..1).
    pub share: f64,
}

/// A routing object.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutingStatus {
    pub template: String,
    pub kind: String,
    pub name: String,
    /// Whether it exists.
    pub found: bool,
    /// Whether it holds what the controller would apply now.
    pub in_sync: bool,
    /// Why it cannot be shown (template error, read error).
    pub error: Option<String>,
    pub last_change: Option<LastChange>,
    pub routes: Vec<RouteStatus>,
}

/// When the routing last changed.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastChange {
    /// RFC 3339.
    pub time: String,
    /// `managedFields`: the time of the controller's (field manager `iter8-controller`)
    /// managedFields entry, which the API server updates with each write that changes a
    /// value the controller owns; `creationTimestamp` when the controller never wrote it.
    pub source: String,
}

/// A route (rule) of a routing object.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    pub route: String,
    #[serde(rename = "match")]
    pub match_text: String,
    /// Where its requests go: a version's name (or a destination in words) and the share.
    pub to: Vec<Share>,
    /// Mirrors, redirects, in words.
    pub notes: Vec<String>,
}

/// A share of a route's requests.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Share {
    /// The version's index; `None`: no version of the routemap.
    pub version: Option<usize>,
    pub name: String,
    pub share: f64,
}

/// The automated analysis (docs/analysis.md).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStatus {
    /// `Waiting`, `Progressing`, `AwaitingGate`, `Promoted`, `RolledBack`, or `Invalid` for a
    /// block the controller cannot use.
    pub phase: String,
    /// `blue-green` or `canary`.
    pub strategy: Option<String>,
    /// Blue-green: the current step (0-based) and every step's candidate weight.
    pub step: Option<usize>,
    pub steps: Vec<u32>,
    pub message: String,
}

/// The newest Event about the routemap.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventStatus {
    #[serde(rename = "type")]
    pub kind: String,
    pub reason: String,
    pub note: String,
    pub time: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Building the report (pure).

/// Why an object is not ready, in words (`None`: ready).
pub fn blocking(
    kind: &str,
    name: &str,
    rtype: &ResourceType,
    obj: &DynamicObject,
) -> Option<String> {
    let observed = state::observe(obj);
    let why = match object_ready(rtype, &observed) {
        Ok(true) => return None,
        Ok(false) if observed.deleting => "being deleted".to_string(),
        Ok(false) => unmet_condition(rtype, observed.generation, obj.data.get("status"))
            .unwrap_or_else(|| "not ready".to_string()),
        Err(problem) => problem,
    };
    Some(format!("{kind} {name}: {why}"))
}

/// The first configured condition an object at `generation` with `status` does not meet,
/// in words.
fn unmet_condition(
    rtype: &ResourceType,
    generation: Option<i64>,
    status: Option<&Value>,
) -> Option<String> {
    let raw = status.filter(|s| !s.is_null());
    let conditions: Vec<&Value> = raw
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let text = |c: &Value, k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    for wanted in &rtype.conditions {
        let of_type: Vec<&&Value> = conditions
            .iter()
            .filter(|c| text(c, "type").eq_ignore_ascii_case(wanted))
            .collect();
        if of_type.is_empty() {
            return Some(if raw.is_none() {
                format!("no status yet (waiting for a {wanted} condition)")
            } else {
                format!("no {wanted} condition yet")
            });
        }
        for c in of_type {
            let status = text(c, "status");
            if !status.eq_ignore_ascii_case("true") {
                let mut why = format!("{} is {status}", text(c, "type"));
                let (reason, message) = (text(c, "reason"), text(c, "message"));
                match (reason.is_empty(), message.is_empty()) {
                    (false, true) => write!(why, " (reason: {reason})"),
                    (false, false) => write!(why, " (reason: {reason}; message: {message})"),
                    (true, false) => write!(why, " (message: {message})"),
                    (true, true) => Ok(()),
                }
                .ok()?;
                return Some(why);
            }
            let observed = c
                .get("observedGeneration")
                .or_else(|| raw?.get("observedGeneration"))
                .and_then(Value::as_i64);
            if let (true, Some(g), Some(o)) = (rtype.check_generation, generation, observed) {
                if o < g {
                    return Some(format!(
                        "{} is True but describes generation {o}; the object is at generation {g} (its controller has not caught up)",
                        text(c, "type")
                    ));
                }
            }
        }
    }
    None
}

fn object_status(app_ns: &str, r: &Resource) -> ObjectStatus {
    let name = &r.reference.name;
    let reason = match (&r.object, &r.rtype) {
        (Fetched::Found(o), Some(rt)) => blocking(&r.kind, name, rt, o),
        (Fetched::Found(_), None) => Some(format!("{} {name}: unknown resource type", r.kind)),
        (Fetched::Missing, _) => Some(format!("{} {name}: not found", r.kind)),
        (Fetched::Failed(why), _) => Some(format!("{} {name}: {why}", r.kind)),
    };
    ObjectStatus {
        gvr_short: r.reference.gvr_short.clone(),
        kind: r.kind.clone(),
        namespace: r.reference.namespace_or(app_ns).to_string(),
        name: name.clone(),
        ready: reason.is_none(),
        reason,
    }
}

/// The time of the last routing change of a live routing object.
fn last_change(obj: &DynamicObject) -> Option<LastChange> {
    let managed = obj
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some(FIELD_MANAGER))
        .filter_map(|m| m.time.as_ref().map(|t| t.0))
        .max();
    match managed {
        Some(t) => Some(LastChange {
            time: t.to_string(),
            source: "managedFields".to_string(),
        }),
        None => obj
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| LastChange {
                time: t.0.to_string(),
                source: "creationTimestamp".to_string(),
            }),
    }
}

/// Rounds a share so the document does not carry float noise (0.30000000000000004).
pub fn round(p: f64) -> f64 {
    (p * 1e6).round() / 1e6
}

fn routing_status(r: &Routing, versions: &routes::Versions) -> (RoutingStatus, Option<Table>) {
    let mut out = RoutingStatus {
        template: r.template.clone(),
        kind: r.kind.clone(),
        name: r.name.clone(),
        found: false,
        in_sync: false,
        error: None,
        last_change: None,
        routes: Vec::new(),
    };
    let desired = match &r.rendered {
        Ok(d) => d.as_ref(),
        Err(e) => {
            out.error = Some(e.clone());
            None
        }
    };
    let live = match &r.live {
        Fetched::Found(o) => Some(o),
        Fetched::Missing => None,
        Fetched::Failed(why) => {
            out.error = Some(format!("{} {}: {why}", r.kind, r.name));
            None
        }
    };
    let Some(live) = live else {
        out.in_sync = desired.is_none() && out.error.is_none();
        return (out, None);
    };
    out.found = true;
    out.last_change = last_change(live);
    let value = serde_json::to_value(live.as_ref()).unwrap_or(Value::Null);
    out.in_sync = desired.is_some_and(|d| state::contains(&value["spec"], &d["spec"]));
    let table = Table::read(&value);
    if let Some(t) = &table {
        for (i, paths) in t.reach(versions).iter().enumerate() {
            let to = routes::merge(paths)
                .into_iter()
                .map(|(end, p)| {
                    let (version, name) = match end {
                        End::Version(v) => (Some(v), versions.name(v)),
                        End::Named(n) => (
                            None,
                            format!("app-version {n} (no version of the routemap)"),
                        ),
                        End::Unknown(u) => (None, u),
                    };
                    Share {
                        version,
                        name,
                        share: round(p),
                    }
                })
                .collect();
            out.routes.push(RouteStatus {
                route: t.rule_label(i),
                match_text: t.rules[i].match_text(),
                to,
                notes: t.rules[i].notes.clone(),
            });
        }
    }
    (out, table)
}

fn analysis_status(app: &App) -> Option<AnalysisStatus> {
    let block = app.record.analysis.as_ref()?;
    let analysis = match block {
        Ok(a) => a,
        Err(e) => {
            return Some(AnalysisStatus {
                phase: "Invalid".to_string(),
                strategy: None,
                step: None,
                steps: Vec::new(),
                message: format!(
                    "the analysis block cannot be used: {e}; the candidate gets no traffic"
                ),
            })
        }
    };
    let strategy = serde_json::to_value(analysis.strategy)
        .ok()
        .and_then(|v| v.as_str().map(String::from));
    let signatures = app
        .weighing
        .as_ref()
        .map(|w| w.signatures.clone())
        .unwrap_or_default();
    let state = glue::current(app.analysis.as_ref().map(|a| &a.0), &signatures);
    let blue_green = !analysis.steps.is_empty();
    Some(match state {
        Some(s) => AnalysisStatus {
            phase: s.phase.as_str().to_string(),
            strategy,
            step: blue_green.then_some(s.step),
            steps: analysis.steps.clone(),
            message: s.message.clone(),
        },
        None => AnalysisStatus {
            phase: "Waiting".to_string(),
            strategy,
            step: blue_green.then_some(0),
            steps: analysis.steps.clone(),
            message: "no decision about these versions yet: the candidate gets no traffic"
                .to_string(),
        },
    })
}

/// The status of one application.
pub fn app_status(app: &App) -> AppStatus {
    let versions = app.version_names();
    let mut routing = Vec::new();
    let mut refs: BTreeMap<usize, Vec<RouteRef>> = BTreeMap::new();
    for r in &app.routing {
        let (status, table) = routing_status(r, &versions);
        if let Some(t) = table {
            for (i, route) in status.routes.iter().enumerate() {
                for s in &route.to {
                    let Some(v) = s.version else { continue };
                    refs.entry(v).or_default().push(RouteRef {
                        object: format!("{} {}", r.kind, r.name),
                        route: route.route.clone(),
                        match_text: t.rules[i].match_text(),
                        share: s.share,
                    });
                }
            }
        }
        routing.push(status);
    }
    let weighing = app.weighing.as_ref();
    let version_status = app
        .versions
        .iter()
        .enumerate()
        .map(|(i, resources)| {
            let objects: Vec<ObjectStatus> = resources
                .iter()
                .map(|r| object_status(&app.namespace, r))
                .collect();
            let ready = weighing
                .and_then(|w| w.available.get(i).copied())
                .unwrap_or(false);
            VersionStatus {
                index: i,
                name: versions.name(i),
                ready,
                blocked_by: objects.iter().filter_map(|o| o.reason.clone()).collect(),
                weight: weighing
                    .and_then(|w| w.weights.get(i).copied())
                    .unwrap_or(0),
                objects,
                routes: refs.remove(&i).unwrap_or_default(),
            }
        })
        .collect();
    AppStatus {
        name: app.name().to_string(),
        namespace: app.namespace.clone(),
        routemap: app.routemap.clone(),
        held: app.record.spec.as_ref().err().map(ToString::to_string),
        problems: weighing.map(|w| w.problems.clone()).unwrap_or_default(),
        versions: version_status,
        routing,
        analysis: analysis_status(app),
        last_event: app.last_event.as_ref().map(|e| EventStatus {
            kind: e.kind.clone(),
            reason: e.reason.clone(),
            note: e.note.clone(),
            time: e.time.map(|t| t.to_string()),
        }),
    }
}

/// The document for these applications.
pub fn report(namespace: &str, apps: &[App]) -> Report {
    Report {
        schema_version: SCHEMA_VERSION,
        namespace: namespace.to_string(),
        applications: apps.iter().map(app_status).collect(),
    }
}

// ---------------------------------------------------------------------------------------
// Text (pure).

/// How text is drawn: a tree with colour on a terminal, indented plain text when piped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    pub tree: bool,
    pub color: bool,
}

impl Style {
    /// Plain text (pipes, files, tests).
    pub const PLAIN: Style = Style {
        tree: false,
        color: false,
    };

    /// For standard output: a tree on a terminal, colour too unless `NO_COLOR` is set.
    pub fn for_stdout() -> Style {
        if !std::io::stdout().is_terminal() {
            return Style::PLAIN;
        }
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style {
            tree: true,
            color: !no_color,
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

const BOLD: &str = "1";
const DIM: &str = "2";
const RED: &str = "31";
const GREEN: &str = "32";
const YELLOW: &str = "33";

/// A line with lines under it.
#[derive(Default)]
struct Node {
    line: String,
    children: Vec<Node>,
}

impl Node {
    fn new(line: String) -> Node {
        Node {
            line,
            children: Vec::new(),
        }
    }

    fn child(&mut self, line: String) -> &mut Node {
        self.children.push(Node::new(line));
        let last = self.children.len() - 1;
        &mut self.children[last]
    }

    fn draw(&self, style: Style, out: &mut String) {
        out.push_str(&self.line);
        out.push('\n');
        self.draw_children(style, "", out);
    }

    fn draw_children(&self, style: Style, prefix: &str, out: &mut String) {
        let n = self.children.len();
        for (i, c) in self.children.iter().enumerate() {
            let last = i + 1 == n;
            let (branch, more) = match (style.tree, last) {
                (true, false) => ("├─ ", "│  "),
                (true, true) => ("└─ ", "   "),
                (false, _) => ("  ", "  "),
            };
            out.push_str(prefix);
            out.push_str(&style.paint(DIM, branch));
            out.push_str(&c.line);
            out.push('\n');
            c.draw_children(style, &format!("{prefix}{more}"), out);
        }
    }
}

/// `12s ago`, `3m ago`, `2h ago`, `4d ago`.
pub fn ago(time: &str, now: Timestamp) -> Option<String> {
    let t: Timestamp = time.parse().ok()?;
    let secs = now.duration_since(t).as_secs().max(0);
    Some(match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    })
}

/// `30%`, `33.3%`.
pub fn percent(share: f64) -> String {
    let p = (share * 1000.0).round() / 10.0;
    if p.fract() == 0.0 {
        format!("{p:.0}%")
    } else {
        format!("{p:.1}%")
    }
}

fn shorten(text: &str, max: usize) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let cut: String = one_line.chars().take(max).collect();
    format!("{cut}…")
}

/// The text of one application.
fn app_text(app: &AppStatus, style: Style, now: Timestamp) -> String {
    let mut root = Node::new(format!(
        "{} {} (namespace {}, routemap {})",
        style.paint(BOLD, "application"),
        style.paint(BOLD, &app.name),
        app.namespace,
        app.routemap
    ));
    if let Some(held) = &app.held {
        root.child(format!("{}: {held}", style.paint(RED, "held")));
    }
    for p in &app.problems {
        root.child(format!("{}: {p}", style.paint(YELLOW, "problem")));
    }
    let many = app.routing.len() > 1;
    for r in &app.routing {
        let what = format!("{} {}", r.kind, r.name);
        let mut line = format!("routing: {what} (template {})", r.template);
        if let Some(e) = &r.error {
            line = format!("routing: template {}: {}", r.template, style.paint(RED, e));
        } else if !r.found && r.name.is_empty() {
            line = format!("routing: template {} renders no object now", r.template);
        } else if !r.found {
            let _ = write!(
                line,
                ": {}",
                style.paint(YELLOW, "not found (not applied yet)")
            );
        } else {
            if let Some(c) = &r.last_change {
                let by = match c.source.as_str() {
                    "managedFields" => format!("by {FIELD_MANAGER}"),
                    _ => "created".to_string(),
                };
                let when = ago(&c.time, now)
                    .map(|a| format!("{a}, "))
                    .unwrap_or_default();
                let _ = write!(
                    line,
                    ", last change {} ({when}{by})",
                    style.paint(DIM, &c.time)
                );
            }
            if !r.in_sync {
                let _ = write!(
                    line,
                    "; {}",
                    style.paint(
                        YELLOW,
                        "differs from what the controller would apply now (is it running?)"
                    )
                );
            }
        }
        let node = root.child(line);
        // Routes that reach no version are shown here; the others under their versions.
        for route in &r.routes {
            for s in route.to.iter().filter(|s| s.version.is_none()) {
                node.child(format!(
                    "{} ({}) sends {} to {}",
                    route.route,
                    route.match_text,
                    percent(s.share),
                    s.name
                ));
            }
            for note in &route.notes {
                node.child(format!("{} {note}", route.route));
            }
        }
    }
    for v in &app.versions {
        let state = if v.ready {
            style.paint(GREEN, "ready")
        } else {
            style.paint(RED, "not ready")
        };
        let node = root.child(format!(
            "version {} {}: {state}, weight {}",
            v.index,
            style.paint(BOLD, &v.name),
            v.weight
        ));
        for o in &v.objects {
            let line = match &o.reason {
                None => format!(
                    "{}/{}: {}",
                    o.gvr_short,
                    o.name,
                    style.paint(GREEN, "ready")
                ),
                Some(why) => format!("{}/{}: {}", o.gvr_short, o.name, style.paint(RED, why)),
            };
            node.child(line);
        }
        for r in &v.routes {
            let of = if many {
                format!(" of {}", r.object)
            } else {
                String::new()
            };
            let share = if r.share < 1.0 {
                format!(", {} of its requests", percent(r.share))
            } else {
                String::new()
            };
            node.child(format!(
                "reached by {}{of} ({}){share}",
                r.route, r.match_text
            ));
        }
        if v.routes.is_empty() {
            let why = if !v.ready {
                "it is not ready".to_string()
            } else if v.weight == 0 {
                "its weight is 0".to_string()
            } else if app.routing.iter().any(|r| !r.in_sync) {
                "the live routing is not what the controller would apply now".to_string()
            } else {
                "the routing templates give it no route".to_string()
            };
            node.child(format!(
                "{}: {why}",
                style.paint(YELLOW, "no route reaches it")
            ));
        }
    }
    if let Some(a) = &app.analysis {
        let step = match (a.step, a.steps.get(a.step.unwrap_or(0))) {
            (Some(s), Some(w)) => format!(", step {} of {} ({w}%)", s + 1, a.steps.len()),
            _ => String::new(),
        };
        root.child(format!(
            "analysis: {}{step}: {}",
            style.paint(BOLD, &a.phase),
            a.message
        ));
    }
    if let Some(e) = &app.last_event {
        let when = e
            .time
            .as_deref()
            .and_then(|t| ago(t, now))
            .map(|a| format!(" ({a})"))
            .unwrap_or_default();
        let kind = if e.kind == "Warning" {
            style.paint(YELLOW, &e.kind)
        } else {
            e.kind.clone()
        };
        root.child(format!(
            "last event: {kind} {}{when}: {}",
            e.reason,
            shorten(&e.note, 160)
        ));
    }
    let mut out = String::new();
    root.draw(style, &mut out);
    out
}

/// The report as text; `now` for relative times.
pub fn text(report: &Report, style: Style, now: Timestamp) -> String {
    if report.applications.is_empty() {
        return format!(
            "no applications in namespace {} (no ConfigMap labelled {})\n",
            report.namespace,
            iter8_k8s::controller::ROUTEMAP_KIND_LABEL
        );
    }
    report
        .applications
        .iter()
        .map(|a| app_text(a, style, now))
        .collect::<Vec<_>>()
        .join("\n")
}

fn format(report: &Report, output: Output, style: Style, compact: bool) -> Result<String> {
    Ok(match output {
        Output::Table => text(report, style, Timestamp::now()),
        Output::Json if compact => serde_json::to_string(report)? + "\n",
        Output::Json => serde_json::to_string_pretty(report)? + "\n",
        Output::Yaml => serde_yaml::to_string(report)?,
    })
}

// ---------------------------------------------------------------------------------------
// I/O.

/// Reads the applications (`app`, or all of the namespace's).
async fn observe_all(
    client: &Client,
    ns: &str,
    app: Option<&str>,
    config: &Config,
) -> Result<Vec<App>> {
    let cms = match app {
        Some(a) => vec![observe::routemap(client, ns, a).await?],
        None => observe::routemaps(client, ns).await?,
    };
    let mut apps = Vec::with_capacity(cms.len());
    for cm in &cms {
        apps.push(observe::app(client, cm, config).await?);
    }
    Ok(apps)
}

/// `iter8 status`.
pub async fn run(args: StatusArgs) -> Result<()> {
    let (client, ns, config) = args.cluster.connect().await?;
    let style = Style::for_stdout();
    if args.watch {
        return watch(
            &client,
            &ns,
            args.app.as_deref(),
            &config,
            args.output,
            style,
        )
        .await;
    }
    let apps = observe_all(&client, &ns, args.app.as_deref(), &config).await?;
    let out = format(&report(&ns, &apps), args.output, style, false)?;
    print!("{out}");
    Ok(())
}

/// One stream of "something changed" signals from every watch (errors in words).
fn change_streams(
    client: &Client,
    ns: &str,
    types: &[(Gvr, String)],
) -> stream::SelectAll<stream::BoxStream<'static, Result<(), String>>> {
    let mut all: Vec<stream::BoxStream<'static, Result<(), String>>> = Vec::new();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cfg = watcher::Config::default().labels("iter8.tools/kind in (routemap,analysis-status)");
    all.push(
        watcher(cms, cfg)
            .default_backoff()
            .filter_map(|e| async move { relevant(e.map_err(|e| format!("ConfigMaps: {e}"))) })
            .boxed(),
    );
    for (gvr, kind) in types {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &gvr.api_resource(kind));
        let what = gvr.to_string();
        all.push(
            watcher(api, watcher::Config::default())
                .default_backoff()
                .filter_map(move |e| {
                    let what = what.clone();
                    async move { relevant(e.map_err(|e| format!("{what}: {e}"))) }
                })
                .boxed(),
        );
    }
    stream::select_all(all)
}

/// A watch event that may change what is shown: changes, and the end of each (re)list.
fn relevant<K>(event: Result<watcher::Event<K>, String>) -> Option<Result<(), String>> {
    match event {
        Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) => {
            Some(Ok(()))
        }
        Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => None,
        Err(e) => Some(Err(e)),
    }
}

/// `--watch`: prints the state, then again each time it differs, until Ctrl-C.
async fn watch(
    client: &Client,
    ns: &str,
    app: Option<&str>,
    config: &Config,
    output: Output,
    style: Style,
) -> Result<()> {
    let mut shown: Option<Result<Report, String>> = None;
    let mut types: Option<Vec<(Gvr, String)>> = None;
    let mut changes = stream::select_all(Vec::new());
    let mut warned: Vec<String> = Vec::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let state = match observe_all(client, ns, app, config).await {
            Ok(apps) => {
                let want = watched_types(&apps, config);
                if types.as_ref() != Some(&want) {
                    changes = change_streams(client, ns, &want);
                    types = Some(want);
                }
                Ok(report(ns, &apps))
            }
            Err(e) => Err(format!("{e:#}")),
        };
        if shown.as_ref() != Some(&state) {
            // Each state on its own: redrawn on a terminal, after a `--- <time>` line when
            // piped, a YAML document, or one JSON document per line.
            let now = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ");
            let mut out = match output {
                Output::Table if style.tree => "\x1b[H\x1b[2J".to_string(),
                Output::Table => format!("--- {now}\n"),
                Output::Yaml => format!("---\n# {now}\n"),
                Output::Json => String::new(),
            };
            match (&state, output) {
                (Ok(r), _) => out.push_str(&format(r, output, style, true)?),
                (Err(e), Output::Json) => {
                    out.push_str(&serde_json::to_string(&serde_json::json!({"error": e}))?);
                    out.push('\n');
                }
                (Err(e), _) => {
                    let _ = writeln!(out, "{e}");
                }
            }
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(out.as_bytes())?;
            stdout.flush()?;
            shown = Some(state);
        }
        if types.is_none() {
            // Nothing read yet (no routemap): watch the ConfigMaps for one to appear.
            changes = change_streams(client, ns, &[]);
            types = Some(Vec::new());
        }
        // Wait for a change, then let a burst of changes settle before reading again.
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            event = changes.next() => match event {
                Some(Err(e)) if !warned.contains(&e) => {
                    eprintln!("iter8 status --watch: watch failed, retrying: {e}");
                    warned.push(e);
                }
                None => return Ok(()),
                _ => {}
            },
        }
        while let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(100), changes.next()).await
        {}
    }
}

/// What `--watch` watches besides the routemap and analysis ConfigMaps: the types of the
/// versions' objects and of the routing objects.
fn watched_types(apps: &[App], config: &Config) -> Vec<(Gvr, String)> {
    let mut out: Vec<(Gvr, String)> = Vec::new();
    for app in apps {
        out.extend(app.watched_types());
        for r in &app.routing {
            if let Some(rt) = config.resource_types.get(&r.gvr_short) {
                out.push((Gvr::of(rt), r.kind.clone()));
            }
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{LastEvent, Resource};
    use iter8_core::render::render;
    use serde_json::json;

    const STEP2: &str = include_str!("../../../testdata/charts/tutorial-step2/expected.yaml");
    const BLUE_GREEN: &str =
        include_str!("../../../testdata/charts/kserve-blue-green/expected.yaml");
    const NOW: &str = "2026-08-20T10:01:00Z";
    const APPLIED: &str = "2026-08-20T10:00:45Z";

    /// The routemap ConfigMap of a golden chart output.
    fn routemap(chart: &str) -> ConfigMap {
        let doc = serde_yaml::Deserializer::from_str(chart)
            .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
            .find(|d| d["kind"] == "ConfigMap")
            .unwrap();
        serde_json::from_value(doc).unwrap()
    }

    /// KServe's status (shared/spec/kserve-status.md): ready, or just created.
    fn isvc(name: &str, ready: bool) -> DynamicObject {
        let conditions = if ready {
            json!([{"type": "Ready", "status": "True"}, {"type": "PredictorReady", "status": "True"}])
        } else {
            json!([
                {"type": "IngressReady", "status": "Unknown", "reason": "Predictor ingress not created"},
                {"type": "PredictorReady", "status": "Unknown", "reason": "RevisionMissing",
                 "message": format!("Configuration \"{name}-predictor\" is waiting for a Revision to become ready.")},
                {"type": "Ready", "status": "Unknown", "reason": "Predictor ingress not created"},
            ])
        };
        serde_json::from_value(json!({
            "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": "default", "generation": 1},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}}}},
            "status": {"conditions": conditions, "observedGeneration": 1},
        }))
        .unwrap()
    }

    /// An application as `observe::app` reads it, offline: the version objects given, and the
    /// routing object as the controller applies it (rendered with the weights, written by its
    /// field manager at `APPLIED`).
    fn app(chart: &str, objects: &[Option<DynamicObject>]) -> App {
        let config = Config::default();
        let record = iter8_k8s::state::RoutemapRecord::read(&routemap(chart), &config);
        let rm = record.spec.clone().unwrap();
        let mut objects = objects.iter();
        let versions: Vec<Vec<Resource>> = rm
            .versions
            .iter()
            .map(|v| {
                v.resources
                    .iter()
                    .map(|r| Resource {
                        reference: r.clone(),
                        rtype: config.resource_types.get(&r.gvr_short).cloned(),
                        kind: "InferenceService".into(),
                        object: match objects.next().cloned().flatten() {
                            Some(o) => Fetched::Found(Box::new(o)),
                            None => Fetched::Missing,
                        },
                    })
                    .collect()
            })
            .collect();
        let weighing = observe::weigh_versions(&record, &versions, None, &config).unwrap();
        let routing = render(&record.meta, &rm, &weighing)
            .into_iter()
            .map(|r| {
                let desired = r.result.clone().unwrap().unwrap();
                let mut live = desired.clone();
                live["metadata"]["managedFields"] = json!([
                    {"manager": "helm", "operation": "Update", "time": "2026-08-20T09:00:00Z"},
                    {"manager": FIELD_MANAGER, "operation": "Apply", "time": APPLIED},
                ]);
                Routing {
                    template: r.template,
                    gvr_short: r.gvr_short,
                    kind: desired["kind"].as_str().unwrap().into(),
                    name: desired["metadata"]["name"].as_str().unwrap().into(),
                    rendered: Ok(Some(desired)),
                    live: Fetched::Found(Box::new(serde_json::from_value(live).unwrap())),
                }
            })
            .collect();
        App {
            namespace: "default".into(),
            routemap: "wisdom-routemap".into(),
            record,
            versions,
            weighing: Some(weighing),
            analysis: None,
            routing,
            last_event: Some(LastEvent {
                kind: "Normal".into(),
                reason: "Applied".into(),
                note: "applied VirtualService default/wisdom (weights [1, 0])".into(),
                time: Some(APPLIED.parse().unwrap()),
            }),
        }
    }

    fn plain(app: &App) -> String {
        text(
            &report("default", std::slice::from_ref(app)),
            Style::PLAIN,
            NOW.parse().unwrap(),
        )
    }

    #[test]
    fn the_candidate_not_ready_says_why_and_that_no_route_reaches_it() {
        let a = app(
            STEP2,
            &[Some(isvc("wisdom-0", true)), Some(isvc("wisdom-1", false))],
        );
        assert_eq!(
            plain(&a),
            "\
application wisdom (namespace default, routemap wisdom-routemap)
  routing: VirtualService wisdom (template canary), last change 2026-08-20T10:00:45Z (15s ago, by iter8-controller)
  version 0 wisdom-0: ready, weight 1
    isvc/wisdom-0: ready
    reached by route wisdom-0 (every request)
  version 1 wisdom-1: not ready, weight 0
    isvc/wisdom-1: InferenceService wisdom-1: Ready is Unknown (reason: Predictor ingress not created)
    no route reaches it: it is not ready
  last event: Normal Applied (15s ago): applied VirtualService default/wisdom (weights [1, 0])
"
        );
        let r = report("default", &[a]);
        let v1 = &r.applications[0].versions[1];
        assert!(!v1.ready);
        assert_eq!(
            v1.blocked_by,
            ["InferenceService wisdom-1: Ready is Unknown (reason: Predictor ingress not created)"]
        );
        assert!(r.applications[0].routing[0].in_sync);
    }

    #[test]
    fn both_ready_the_header_route_reaches_the_candidate() {
        let a = app(
            STEP2,
            &[Some(isvc("wisdom-0", true)), Some(isvc("wisdom-1", true))],
        );
        let t = plain(&a);
        assert!(t.contains("  version 1 wisdom-1: ready, weight 1\n    isvc/wisdom-1: ready\n    reached by route wisdom-1 (headers traffic exact test)\n"), "{t}");
        assert!(
            t.contains("    reached by route wisdom-0 (every request)\n"),
            "{t}"
        );
        let json = serde_json::to_value(report("default", &[a])).unwrap();
        assert_eq!(json["schemaVersion"], 1);
        let v1 = &json["applications"][0]["versions"][1];
        assert_eq!(v1["routes"][0]["route"], "route wisdom-1");
        assert_eq!(v1["routes"][0]["match"], "headers traffic exact test");
        assert_eq!(v1["routes"][0]["share"], 1.0);
        assert_eq!(
            json["applications"][0]["routing"][0]["lastChange"]["source"],
            "managedFields"
        );
        assert_eq!(
            json["applications"][0]["routing"][0]["lastChange"]["time"],
            APPLIED
        );
    }

    #[test]
    fn blue_green_shares_come_through_the_split_route() {
        let a = app(
            BLUE_GREEN,
            &[Some(isvc("wisdom-0", true)), Some(isvc("wisdom-1", true))],
        );
        let t = plain(&a);
        assert!(t.contains("version 0 wisdom-0: ready, weight 80\n    isvc/wisdom-0: ready\n    reached by route wisdom-0 (headers branch exact wisdom-0)\n    reached by route split (every request), 80% of its requests\n"), "{t}");
        assert!(
            t.contains("reached by route split (every request), 20% of its requests\n"),
            "{t}"
        );
    }

    #[test]
    fn a_stale_routing_object_and_a_missing_one_are_said_so() {
        let mut a = app(
            STEP2,
            &[Some(isvc("wisdom-0", true)), Some(isvc("wisdom-1", true))],
        );
        // The live object still has the step-1 routes: the controller has not caught up.
        let stale = app(
            STEP2,
            &[Some(isvc("wisdom-0", true)), Some(isvc("wisdom-1", false))],
        );
        a.routing[0].live = stale.routing[0].live.clone();
        let t = plain(&a);
        assert!(
            t.contains("differs from what the controller would apply now (is it running?)"),
            "{t}"
        );
        assert!(t.contains("version 1 wisdom-1: ready, weight 1\n    isvc/wisdom-1: ready\n    no route reaches it: the live routing is not what the controller would apply now\n"), "{t}");
        a.routing[0].live = Fetched::Missing;
        assert!(plain(&a).contains(
            "routing: VirtualService wisdom (template canary): not found (not applied yet)\n"
        ));
    }

    #[test]
    fn the_tree_has_glyphs_and_colour_only_when_asked() {
        let a = app(STEP2, &[Some(isvc("wisdom-0", true)), None]);
        let r = report("default", &[a]);
        let now = NOW.parse().unwrap();
        let tree = text(
            &r,
            Style {
                tree: true,
                color: false,
            },
            now,
        );
        assert!(tree.contains("├─ version 0 wisdom-0: ready, weight 1\n│  ├─ isvc/wisdom-0: ready\n│  └─ reached by"), "{tree}");
        assert!(tree.contains("└─ last event"), "{tree}");
        assert!(
            tree.contains("isvc/wisdom-1: InferenceService wisdom-1: not found"),
            "{tree}"
        );
        assert!(!tree.contains('\x1b'));
        let coloured = text(
            &r,
            Style {
                tree: true,
                color: true,
            },
            now,
        );
        assert!(coloured.contains("\x1b[32mready\x1b[0m"));
        assert!(!text(&r, Style::PLAIN, now).contains('│'));
    }

    #[test]
    fn blocking_conditions_in_words() {
        let config = Config::default();
        let isvc_type = &config.resource_types["isvc"];
        let deploy_type = &config.resource_types["deploy"];
        let obj = |v: Value| -> DynamicObject { serde_json::from_value(v).unwrap() };
        let cases = [
            (isvc_type, json!({"metadata": {"name": "a"}}), Some("InferenceService a: no status yet (waiting for a Ready condition)")),
            (isvc_type, json!({"metadata": {"name": "a"}, "status": {"conditions": [{"type": "PredictorReady", "status": "True"}]}}), Some("InferenceService a: no Ready condition yet")),
            (isvc_type, json!({"metadata": {"name": "a"}, "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "RevisionFailed", "message": "boom"}]}}), Some("InferenceService a: Ready is False (reason: RevisionFailed; message: boom)")),
            (isvc_type, json!({"metadata": {"name": "a", "deletionTimestamp": "2026-08-20T10:00:00Z"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}), Some("InferenceService a: being deleted")),
            (isvc_type, json!({"metadata": {"name": "a"}, "status": {"conditions": "Ready"}}), Some("InferenceService a: status.conditions is not a list")),
            (isvc_type, json!({"metadata": {"name": "a", "generation": 3}, "status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}}), None),
            (deploy_type, json!({"metadata": {"name": "a", "generation": 3}, "status": {"observedGeneration": 2, "conditions": [{"type": "Available", "status": "True"}]}}), Some("InferenceService a: Available is True but describes generation 2; the object is at generation 3 (its controller has not caught up)")),
        ];
        for (rt, o, want) in cases {
            let o = obj(o);
            assert_eq!(
                blocking("InferenceService", "a", rt, &o).as_deref(),
                want,
                "{o:?}"
            );
        }
    }

    #[test]
    fn relative_times_and_percentages() {
        let now: Timestamp = NOW.parse().unwrap();
        assert_eq!(ago("2026-08-20T10:00:58Z", now).unwrap(), "2s ago");
        assert_eq!(ago("2026-08-20T09:57:00Z", now).unwrap(), "4m ago");
        assert_eq!(ago("2026-08-20T07:00:00Z", now).unwrap(), "3h ago");
        assert_eq!(ago("2026-08-18T10:00:00Z", now).unwrap(), "2d ago");
        assert_eq!(ago("2026-08-20T10:02:00Z", now).unwrap(), "0s ago");
        assert_eq!(percent(0.3), "30%");
        assert_eq!(percent(1.0 / 3.0), "33.3%");
        assert_eq!(round(0.1 + 0.2), 0.3);
    }
}
