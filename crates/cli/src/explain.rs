//! `iter8 explain APP [-H 'name: value']... [--user ID]`: which version answers a request with
//! these headers, from the live routing objects' rules and weights, and which rule decided;
//! with `--user`, the version the A/B/n service assigns that user. Also `kubectl iter8
//! explain`.
//!
//! [`explain`] builds the answer from what [`crate::observe`] read (pure); [`text`] renders
//! it; [`run`] does the I/O.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{bail, Result};
use serde::Serialize;
use serde_json::Value;

use crate::observe::{self, App, ClusterArgs, Fetched};
use crate::routes::{End, Request, Table};
use crate::status::{percent, round};

#[derive(clap::Args)]
pub struct ExplainArgs {
    /// The application (its routemap is the ConfigMap APP-routemap).
    app: String,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// A request header, `name: value`; repeat for more.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// The request's path, with an optional query string.
    #[arg(long, default_value = "/")]
    path: String,
    /// The request's method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// The request's Host (default: APP.NAMESPACE, as the tutorial's requests).
    #[arg(long)]
    host: Option<String>,
    /// Also say which version the A/B/n service (Lookup) assigns this user.
    #[arg(long)]
    user: Option<String>,
    /// Seed of the A/B/n assignment (the controller's --abn-seed).
    #[arg(long, default_value_t = 0)]
    abn_seed: u64,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// `-o`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// The answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub application: String,
    pub namespace: String,
    pub request: RequestOut,
    /// Each routing object the application's templates render, evaluated.
    pub routing: Vec<ObjectAnswer>,
    /// The probability of each version answering (from the first routing object that could be
    /// evaluated), by version name; empty when none could.
    pub versions: BTreeMap<String, f64>,
    /// With `--user`: the A/B/n assignment.
    pub abn: Option<AbnAnswer>,
}

/// The request asked about.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestOut {
    pub method: String,
    pub path: String,
    pub host: String,
    pub headers: BTreeMap<String, String>,
}

/// One routing object's answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectAnswer {
    pub kind: String,
    pub name: String,
    /// Why it could not be evaluated (not found, unreadable, a kind explain does not read).
    pub error: Option<String>,
    /// Whether the live object holds what the controller would apply now.
    pub in_sync: bool,
    /// The rule that decided; `None` with no error: no rule matches (404).
    pub decided_by: Option<RuleOut>,
    /// Rules passed over, with why.
    pub skipped: Vec<Skipped>,
    /// Each way the request can go.
    pub paths: Vec<PathOut>,
    /// The probability of each version (or unmapped destination), by name.
    pub outcomes: BTreeMap<String, f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleOut {
    pub index: usize,
    pub name: Option<String>,
    /// `route wisdom-1`.
    pub label: String,
    #[serde(rename = "match")]
    pub match_text: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Skipped {
    pub rule: String,
    pub why: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PathOut {
    pub probability: f64,
    /// The version's index; `None`: not a version of the routemap.
    pub version: Option<usize>,
    pub name: String,
    /// The rules on the way, in words.
    pub via: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AbnAnswer {
    pub user: String,
    /// `None`: every version has weight 0.
    pub version: Option<usize>,
    pub name: Option<String>,
    pub weights: Vec<u32>,
    pub seed: u64,
}

/// Splits `name: value`.
pub fn parse_header(text: &str) -> Result<(String, String)> {
    match text.split_once(':') {
        Some((n, v)) if !n.trim().is_empty() => Ok((n.trim().to_string(), v.trim().to_string())),
        _ => bail!("invalid header {text:?}: write it as 'name: value'"),
    }
}

/// The answer for `req` to application `app` (pure).
pub fn explain(app: &App, req: &Request, user: Option<&str>, seed: u64) -> Explanation {
    let versions = app.version_names();
    let mut routing = Vec::new();
    for r in &app.routing {
        let mut answer = ObjectAnswer {
            kind: r.kind.clone(),
            name: r.name.clone(),
            error: None,
            in_sync: false,
            decided_by: None,
            skipped: Vec::new(),
            paths: Vec::new(),
            outcomes: BTreeMap::new(),
        };
        let live = match (&r.rendered, &r.live) {
            (Err(e), _) => {
                answer.error = Some(e.clone());
                None
            }
            (_, Fetched::Found(o)) => Some(o),
            (Ok(None), Fetched::Missing) => {
                answer.error = Some(format!("template {} renders no object now", r.template));
                None
            }
            (_, Fetched::Missing) => {
                answer.error = Some(format!("{} {} not found (not applied yet)", r.kind, r.name));
                None
            }
            (_, Fetched::Failed(why)) => {
                answer.error = Some(format!("{} {}: {why}", r.kind, r.name));
                None
            }
        };
        let Some(live) = live else {
            routing.push(answer);
            continue;
        };
        let value = serde_json::to_value(live.as_ref()).unwrap_or(Value::Null);
        answer.in_sync = matches!(&r.rendered, Ok(Some(d)) if iter8_k8s::state::contains(&value["spec"], &d["spec"]));
        let Some(table) = Table::read(&value) else {
            answer.error = Some(format!("explain does not read {} objects", r.kind));
            routing.push(answer);
            continue;
        };
        let decision = table.decide(req, &versions);
        answer.decided_by = decision.rule.map(|i| RuleOut {
            index: i,
            name: table.rules[i].name.clone(),
            label: table.rule_label(i),
            match_text: table.rules[i].match_text(),
        });
        answer.skipped = decision
            .skipped
            .iter()
            .map(|(i, why)| Skipped {
                rule: table.rule_label(*i),
                why: why.clone(),
            })
            .collect();
        let name_of = |end: &End| match end {
            End::Version(v) => (Some(*v), versions.name(*v)),
            End::Named(n) => (None, n.clone()),
            End::Unknown(u) => (None, u.clone()),
        };
        answer.paths = decision
            .paths
            .iter()
            .map(|p| {
                let (version, name) = name_of(&p.end);
                PathOut {
                    probability: round(p.probability),
                    version,
                    name,
                    via: p
                        .steps
                        .iter()
                        .map(|s| {
                            let mut t = format!("{} ({})", s.label, s.match_text);
                            if s.share < 1.0 {
                                let _ = write!(t, " {}", percent(s.share));
                            }
                            if !s.via.is_empty() {
                                let _ = write!(t, ", {}", s.via);
                            }
                            t
                        })
                        .collect(),
                }
            })
            .collect();
        for (end, p) in decision.outcomes() {
            answer.outcomes.insert(name_of(&end).1, round(p));
        }
        routing.push(answer);
    }
    let versions_out = routing
        .iter()
        .find(|r| r.error.is_none())
        .map(|r| r.outcomes.clone())
        .unwrap_or_default();
    let abn = user.map(|user| {
        let (weights, signatures) = app
            .weighing
            .as_ref()
            .map(|w| (w.weights.clone(), w.signatures.clone()))
            .unwrap_or_default();
        let version = iter8_abn::assign::choose(user, &weights, &signatures, seed);
        AbnAnswer {
            user: user.to_string(),
            version,
            name: version.map(|v| versions.name(v)),
            weights,
            seed,
        }
    });
    Explanation {
        application: app.name().to_string(),
        namespace: app.namespace.clone(),
        request: RequestOut {
            method: req.method.clone(),
            path: req.path.clone(),
            host: req.host.clone(),
            headers: req.headers.clone(),
        },
        routing,
        versions: versions_out,
        abn,
    }
}

/// The answer as text (pure).
pub fn text(e: &Explanation) -> String {
    let mut out = String::new();
    let headers = if e.request.headers.is_empty() {
        "no headers".to_string()
    } else {
        let hs: Vec<String> = e
            .request
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {v}"))
            .collect();
        format!("headers {}", hs.join(", "))
    };
    let _ = writeln!(
        out,
        "request: {} {} to {} with {headers}",
        e.request.method, e.request.path, e.request.host
    );
    for r in &e.routing {
        if let Some(err) = &r.error {
            let _ = writeln!(out, "{} {}: {err}", r.kind, r.name);
            continue;
        }
        match &r.decided_by {
            Some(d) => {
                let _ = writeln!(
                    out,
                    "{} {}: decided by {} ({})",
                    r.kind, r.name, d.label, d.match_text
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "{} {}: no rule matches: the gateway answers 404",
                    r.kind, r.name
                );
            }
        }
        for s in &r.skipped {
            let _ = writeln!(out, "  {} does not match: {}", s.rule, s.why);
        }
        for p in &r.paths {
            let _ = writeln!(
                out,
                "  {:>6}  {}  via {}",
                percent(p.probability),
                p.name,
                p.via.join(" -> ")
            );
        }
        if !r.in_sync {
            let _ = writeln!(
                out,
                "  note: the live {} differs from what the controller would apply now",
                r.kind
            );
        }
    }
    if e.versions.is_empty() {
        let _ = writeln!(out, "answer: no routing object could be evaluated");
    } else {
        let parts: Vec<String> = e
            .versions
            .iter()
            .map(|(n, p)| format!("{n} {}", percent(*p)))
            .collect();
        let _ = writeln!(out, "answer: {}", parts.join(", "));
    }
    if let Some(a) = &e.abn {
        let weights: Vec<String> = a.weights.iter().map(u32::to_string).collect();
        match &a.name {
            Some(n) => {
                let _ = writeln!(
                    out,
                    "A/B/n: user {} is assigned {n} (Lookup; weights {}, seed {})",
                    a.user,
                    weights.join("/"),
                    a.seed
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "A/B/n: user {}: no version has a weight above 0",
                    a.user
                );
            }
        }
    }
    out
}

/// `iter8 explain`.
pub async fn run(args: ExplainArgs) -> Result<()> {
    let headers = args
        .headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<Result<Vec<_>>>()?;
    let (client, ns, config) = args.cluster.connect().await?;
    let cm = observe::routemap(&client, &ns, &args.app).await?;
    let app = observe::app(&client, &cm, &config).await?;
    let host = args
        .host
        .clone()
        .unwrap_or_else(|| format!("{}.{ns}", app.name()));
    let req = Request::new(&args.method, &args.path, &host, &headers);
    let e = explain(&app, &req, args.user.as_deref(), args.abn_seed);
    match args.output {
        Output::Text => print!("{}", text(&e)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&e)?),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::Routing;
    use crate::routes::Versions;
    use iter8_core::availability::Weighing;
    use iter8_core::render::RoutemapMeta;
    use iter8_k8s::state::RoutemapRecord;
    use serde_json::json;

    /// An application with two versions whose live routing object is `vs`.
    fn app(vs: Value, weights: Vec<u32>) -> App {
        App {
            namespace: "ns".into(),
            routemap: "wisdom-routemap".into(),
            record: RoutemapRecord::new(RoutemapMeta::default(), Ok(Default::default())),
            versions: (0..2)
                .map(|i| {
                    vec![crate::observe::Resource {
                        reference: iter8_core::routemap::ResourceRef {
                            gvr_short: "isvc".into(),
                            name: format!("wisdom-{i}"),
                            namespace: None,
                        },
                        rtype: None,
                        kind: "InferenceService".into(),
                        object: Fetched::Missing,
                    }]
                })
                .collect(),
            weighing: Some(Weighing {
                available: vec![true, true],
                weights,
                signatures: vec!["s0".into(), "s1".into()],
                ..Default::default()
            }),
            analysis: None,
            routing: vec![Routing {
                template: "blue-green".into(),
                gvr_short: "vs".into(),
                kind: "VirtualService".into(),
                name: "wisdom".into(),
                rendered: Ok(Some(vs.clone())),
                live: Fetched::Found(Box::new(serde_json::from_value(vs).unwrap())),
            }],
            last_event: None,
        }
    }

    fn split(w0: u32, w1: u32) -> Value {
        let dest = |v: &str, w: u32| {
            json!({"destination": {"host": "knative-local-gateway.istio-system.svc.cluster.local"}, "weight": w,
                   "headers": {"request": {"set": {"branch": v, "host": "wisdom.ns"}}}})
        };
        let version = |v: &str| {
            json!({"name": v, "match": [{"headers": {"branch": {"exact": v}}}],
                   "route": [{"destination": {"host": "knative-local-gateway.istio-system.svc.cluster.local"},
                              "headers": {"request": {"remove": ["branch"]}, "response": {"add": {"app-version": v}}}}]})
        };
        json!({"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
               "metadata": {"name": "wisdom", "namespace": "ns"},
               "spec": {"http": [version("wisdom-0"), version("wisdom-1"),
                                 {"name": "split", "route": [dest("wisdom-0", w0), dest("wisdom-1", w1)]}]}})
    }

    #[test]
    fn blue_green_gives_the_weights_as_probabilities_and_says_how() {
        let a = app(split(30, 70), vec![30, 70]);
        let e = explain(
            &a,
            &Request::new("POST", "/", "wisdom.ns", &[]),
            Some("alice"),
            0,
        );
        assert_eq!(
            e.versions,
            BTreeMap::from([("wisdom-0".to_string(), 0.3), ("wisdom-1".to_string(), 0.7)])
        );
        let r = &e.routing[0];
        assert_eq!(r.decided_by.as_ref().unwrap().label, "route split");
        assert!(r.in_sync);
        assert_eq!(
            r.paths[1].via,
            [
                "route split (every request) 70%, sets branch: wisdom-1, host: wisdom.ns, back through the gateway",
                "route wisdom-1 (headers branch exact wisdom-1)"
            ]
        );
        let abn = e.abn.as_ref().unwrap();
        let want = iter8_abn::assign::choose("alice", &[30, 70], &["s0".into(), "s1".into()], 0);
        assert_eq!(abn.version, want);
        let t = text(&e);
        assert!(
            t.starts_with("request: POST / to wisdom.ns with no headers\n"),
            "{t}"
        );
        assert!(
            t.contains(
                "  route wisdom-0 does not match: header branch is absent (wants exact wisdom-0)\n"
            ),
            "{t}"
        );
        assert!(
            t.contains("VirtualService wisdom: decided by route split (every request)\n"),
            "{t}"
        );
        assert!(t.contains("     70%  wisdom-1  via route split (every request) 70%, sets branch: wisdom-1, host: wisdom.ns, back through the gateway -> route wisdom-1 (headers branch exact wisdom-1)\n"), "{t}");
        assert!(t.contains("answer: wisdom-0 30%, wisdom-1 70%\n"), "{t}");
        assert!(
            t.contains(&format!(
                "A/B/n: user alice is assigned wisdom-{} (Lookup; weights 30/70, seed 0)\n",
                want.unwrap()
            )),
            "{t}"
        );
    }

    #[test]
    fn a_missing_routing_object_is_no_answer() {
        let mut a = app(split(1, 0), vec![1, 0]);
        a.routing[0].live = Fetched::Missing;
        let e = explain(&a, &Request::new("GET", "/", "wisdom.ns", &[]), None, 0);
        assert!(e.versions.is_empty());
        assert_eq!(
            e.routing[0].error.as_deref(),
            Some("VirtualService wisdom not found (not applied yet)")
        );
        assert!(text(&e).contains("answer: no routing object could be evaluated\n"));
        let _ = Versions::default();
    }

    #[test]
    fn headers_are_name_colon_value() {
        assert_eq!(
            parse_header("traffic: test").unwrap(),
            ("traffic".into(), "test".into())
        );
        assert_eq!(
            parse_header("X-A:b:c").unwrap(),
            ("X-A".into(), "b:c".into())
        );
        assert!(parse_header("traffic=test").is_err());
        assert!(parse_header(": x").is_err());
    }
}
