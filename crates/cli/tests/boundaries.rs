//! What a routemap can do to the controller, tried as an attacker would, with the real
//! `iter8` binary running as the controller chart's ServiceAccount: it can write nothing but
//! routing objects, its template bombs end in Warning Events within a memory bound, and a
//! well-behaved routemap next to it keeps following readiness meanwhile.

#![allow(clippy::unwrap_used)]

mod e2e;

use std::time::Instant;

use e2e::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use testenv::{fixtures, objects};

/// Peak resident memory the controller may reach while the bombs are handled, well inside
/// the chart's 256Mi limit.
const RSS_BOUND_KIB: u64 = 128 * 1024;

async fn apply_routemap(client: &Client, ns: &str, name: &str, str_spec: &str) {
    let cm = fixtures::routemap_object(name, json!({"strSpec": str_spec}));
    objects::apply(client, &cm_ar(), Some(ns), &cm, "helm")
        .await
        .unwrap();
}

/// A routemap with one version and `templates` (name, gvrShort, body).
fn spec_with(templates: &[(&str, &str, String)]) -> String {
    let mut s = String::from(
        "versions:\n- resources:\n  - gvrShort: isvc\n    name: wisdom-0\nroutingTemplates:\n",
    );
    for (name, short, body) in templates {
        s.push_str(&format!(
            "  {name}:\n    gvrShort: {short}\n    template: |\n"
        ));
        for line in body.lines() {
            s.push_str(&format!("      {line}\n"));
        }
    }
    s
}

async fn warning_with(client: &Client, ns: &str, routemap: &str, needles: &[&str]) -> String {
    testenv::events::wait_warning(client, ns, routemap, needles, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

#[tokio::test]
async fn a_routemap_writes_nothing_but_routing_objects() {
    let cp = testenv::shared().unwrap();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("write-boundary").await.unwrap();
    let iter8 = install_controller(cp, &ns, false, &[]).await;

    // A victim application: its Deployment and its routemap.
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "victim"},
        "spec": {"selector": {"matchLabels": {"app": "victim"}},
                 "template": {"metadata": {"labels": {"app": "victim"}},
                              "spec": {"containers": [{"name": "app", "image": "good:1"}]}}},
    }))
    .unwrap();
    let deploy = Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deploy)
        .await
        .unwrap();
    apply_routemap(&client, &ns, "victim-routemap", &spec_with(&[])).await;
    let victim_cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("victim-routemap")
        .await
        .unwrap();

    // The attacker's routemap rewrites both, with the controller's credentials if it could.
    let evil_deploy = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: victim\nspec:\n  selector:\n    matchLabels: {app: victim}\n  template:\n    metadata:\n      labels: {app: victim}\n    spec:\n      containers:\n      - name: app\n        image: evil:1\n".to_string();
    let evil_cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: victim-routemap\ndata:\n  strSpec: hijacked\n".to_string();
    apply_routemap(
        &client,
        &ns,
        "attacker",
        &spec_with(&[("deploy", "deploy", evil_deploy), ("cm", "cm", evil_cm)]),
    )
    .await;
    warning_with(
        &client,
        &ns,
        "attacker",
        &[
            "RefusedObject",
            "routing template deploy",
            "not a routing resource",
        ],
    )
    .await;
    warning_with(
        &client,
        &ns,
        "attacker",
        &[
            "RefusedObject",
            "routing template cm",
            "not a routing resource",
        ],
    )
    .await;

    let after = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("victim")
        .await
        .unwrap();
    assert_eq!(after.resource_version(), deploy.resource_version());
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("victim-routemap")
        .await
        .unwrap();
    assert_eq!(cm.resource_version(), victim_cm.resource_version());
    iter8.assert_clean_log();
}

/// `levels` nested ranges over the two versions: 2^levels iterations of `body`.
fn nested(levels: usize, body: &str) -> String {
    let mut s = String::from("{{- range $.Versions }}").repeat(levels);
    s.push_str(body);
    s.push_str(&"{{- end }}".repeat(levels));
    s
}

#[tokio::test]
async fn template_bombs_end_in_warnings_and_the_others_keep_being_served() {
    let cp = testenv::shared().unwrap();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("bombs").await.unwrap();
    let mut iter8 = install_controller(cp, &ns, false, &[]).await;
    let idle_rss = iter8.peak_rss_kib();

    // A well-behaved application: the tutorial, primary ready, candidate not yet.
    for name in ["wisdom-0", "wisdom-1"] {
        let isvc = fixtures::inference_service_object("wisdom", name, "gs://m");
        objects::apply(&client, &isvc_ar(), Some(&ns), &isvc, "helm")
            .await
            .unwrap();
    }
    kserve_ready(&client, &ns, "wisdom-0").await;
    kserve_not_ready(&client, &ns, "wisdom-1").await;
    apply_routemap(
        &client,
        &ns,
        "wisdom-routemap",
        &fixtures::tutorial_routemap("wisdom", &ns, 2).unwrap(),
    )
    .await;
    wait_obj(
        &client,
        &vs_ar(),
        &ns,
        "wisdom",
        "the primary route",
        |vs| route_names(vs) == ["wisdom-0"],
    )
    .await;

    // The bombs, each in its own template of one routemap.
    let doubling = format!(
        "{{{{- $s := \"x\" }}}}{}\nname: {{{{ len $s }}}}",
        "{{- range 1000 }}{{- $s = printf \"%s%s\" $s $s }}{{- end }}"
    );
    let widths = format!(
        "{}\nname: w",
        "{{- range 1000 }}{{- $w := printf \"%65535d%65535d\" 1 2 }}{{- end }}"
    );
    let recursion =
        "{{- define \"a\" }}{{ template \"a\" . }}{{ template \"a\" . }}{{ end }}{{ template \"a\" . }}"
            .to_string();
    // 1024 aliases of a 10240-item anchor: ten million nodes once expanded.
    let aliases = format!(
        "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata:\n  name: aliases\nspec:\n  a: &a [{}0]\n  b: [{}*a]\n",
        "{{- range 1024 }}0,0,0,0,0,0,0,0,0,0,{{- end }}",
        "{{- range 1024 }}*a,{{- end }}"
    );
    // The html escaper's analysis doubles with each nested block: 26 take minutes.
    let nesting = nested(26, "x");
    let started = Instant::now();
    apply_routemap(
        &client,
        &ns,
        "bomb",
        &spec_with(&[
            ("doubling", "vs", doubling),
            ("widths", "vs", widths),
            ("recursion", "vs", recursion),
            ("aliases", "vs", aliases),
            ("nesting", "vs", nesting),
        ]),
    )
    .await;
    warning_with(
        &client,
        &ns,
        "bomb",
        &["TemplateError", "routing template doubling", "MiB"],
    )
    .await;
    warning_with(
        &client,
        &ns,
        "bomb",
        &["TemplateError", "routing template widths", "MiB"],
    )
    .await;
    warning_with(
        &client,
        &ns,
        "bomb",
        &["routing template recursion", "invokes itself"],
    )
    .await;
    warning_with(
        &client,
        &ns,
        "bomb",
        &["routing template aliases", "(aliases?)"],
    )
    .await;
    warning_with(
        &client,
        &ns,
        "bomb",
        &["routing template nesting", "nested more than 10 deep"],
    )
    .await;
    println!(
        "all bombs reported {:?} after the routemap was applied",
        started.elapsed()
    );

    // Meanwhile the good routemap follows readiness as usual.
    let ready = Instant::now();
    kserve_ready(&client, &ns, "wisdom-1").await;
    wait_obj(
        &client,
        &vs_ar(),
        &ns,
        "wisdom",
        "the candidate route",
        |vs| route_names(vs) == ["wisdom-1", "wisdom-0"],
    )
    .await;
    println!(
        "candidate routed {:?} after it became ready",
        ready.elapsed()
    );

    assert!(iter8.running(), "the controller died");
    let peak = iter8.peak_rss_kib();
    println!(
        "peak RSS: {} KiB idle, {peak} KiB after the bombs (bound {RSS_BOUND_KIB} KiB)",
        idle_rss
    );
    assert!(peak < RSS_BOUND_KIB, "peak RSS {peak} KiB");

    // A restart meets the same routemaps from its first list: it must come up all the same.
    drop(iter8);
    let mut again = install_controller(cp, &ns, false, &[]).await;
    let reconciled = "iter8_reconciles_total";
    testenv::wait_for(
        "the restarted controller to reconcile both routemaps",
        WAIT,
        || async { (again.metric(reconciled).await >= 2.0).then_some(()) },
    )
    .await
    .unwrap();
    assert!(again.running(), "the restarted controller died");
    let peak = again.peak_rss_kib();
    println!("after a restart: peak RSS {peak} KiB");
    assert!(peak < RSS_BOUND_KIB, "peak RSS {peak} KiB after a restart");
}

/// The templates `spec_with` renders must parse as routemaps.
#[test]
fn spec_with_renders_a_routemap() {
    let spec = spec_with(&[("t", "vs", "a: 1\nb: 2".into())]);
    let v: Value = serde_yaml::from_str(&spec).unwrap();
    assert_eq!(v["routingTemplates"]["t"]["template"], "a: 1\nb: 2\n");
}

/// The tutorial with wisdom-0 ready and wisdom-1 not yet, routed to wisdom-0.
async fn good_application(client: &Client, ns: &str) {
    for name in ["wisdom-0", "wisdom-1"] {
        let isvc = fixtures::inference_service_object("wisdom", name, "gs://m");
        objects::apply(client, &isvc_ar(), Some(ns), &isvc, "helm")
            .await
            .unwrap();
    }
    kserve_ready(client, ns, "wisdom-0").await;
    kserve_not_ready(client, ns, "wisdom-1").await;
    apply_routemap(
        client,
        ns,
        "wisdom-routemap",
        &fixtures::tutorial_routemap("wisdom", ns, 2).unwrap(),
    )
    .await;
    wait_obj(client, &vs_ar(), ns, "wisdom", "the primary route", |vs| {
        route_names(vs) == ["wisdom-0"]
    })
    .await;
}

/// Marks wisdom-1 ready and waits for its route; returns how long that took.
async fn candidate_latency(client: &Client, ns: &str) -> std::time::Duration {
    let ready = Instant::now();
    kserve_ready(client, ns, "wisdom-1").await;
    wait_obj(
        client,
        &vs_ar(),
        ns,
        "wisdom",
        "the candidate route",
        |vs| route_names(vs) == ["wisdom-1", "wisdom-0"],
    )
    .await;
    ready.elapsed()
}

#[tokio::test]
async fn routemaps_that_do_not_parse_are_refused_quickly() {
    let cp = testenv::shared().unwrap();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("parse-bombs").await.unwrap();
    let iter8 = install_controller(cp, &ns, false, &[]).await;
    good_application(&client, &ns).await;

    let deep = format!("versions: {}", "[".repeat(500_000));
    let wide = format!(
        "x: &a [{}]\ny: [{}]\nversions: []\n",
        vec!["0"; 10_000].join(","),
        vec!["*a"; 10_000].join(",")
    );
    let started = Instant::now();
    apply_routemap(&client, &ns, "deep", &deep).await;
    apply_routemap(&client, &ns, "wide", &wide).await;
    warning_with(&client, &ns, "deep", &["InvalidRoutemap", "strSpec"]).await;
    warning_with(&client, &ns, "wide", &["InvalidRoutemap", "(aliases?)"]).await;
    println!("refused {:?} after they were applied", started.elapsed());
    let latency = candidate_latency(&client, &ns).await;
    println!("candidate routed {latency:?} after it became ready");
    let peak = iter8.peak_rss_kib();
    println!("peak RSS {peak} KiB (bound {RSS_BOUND_KIB} KiB)");
    assert!(peak < RSS_BOUND_KIB, "peak RSS {peak} KiB");
}

#[tokio::test]
async fn a_routemap_that_renders_slowly_does_not_hold_up_the_others() {
    let cp = testenv::shared().unwrap();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("head-of-line").await.unwrap();
    let iter8 = install_controller(cp, &ns, false, &[]).await;
    good_application(&client, &ns).await;

    // As many templates as a routemap may have, each busy within its limits before it renders
    // its object: seconds of rendering for the one routemap.
    const MANY: usize = 64;
    let templates: Vec<(String, String)> = (0..MANY)
        .map(|i| {
            (
                format!("t{i:02}"),
                format!("{{{{- range 10000 }}}}{{{{- $x := printf \"%d\" 1 }}}}{{{{- end }}}}\napiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata:\n  name: slow-{i:02}\nspec:\n  hosts: [\"slow-{i}.example.com\"]\n"),
            )
        })
        .collect();
    let refs: Vec<(&str, &str, String)> = templates
        .iter()
        .map(|(n, b)| (n.as_str(), "vs", b.clone()))
        .collect();
    let reconciles = iter8.metric("iter8_reconciles_total").await;
    apply_routemap(&client, &ns, "slow", &spec_with(&refs)).await;
    // Its reconcile has begun...
    testenv::wait_for("the slow routemap's reconcile to start", WAIT, || async {
        (iter8.metric("iter8_reconciles_total").await > reconciles).then_some(())
    })
    .await
    .unwrap();
    // ...and the good application's readiness change does not wait for it to finish.
    let latency = candidate_latency(&client, &ns).await;
    let written = names(&client, &vs_ar(), &ns)
        .await
        .iter()
        .filter(|n| n.starts_with("slow-"))
        .count();
    println!("candidate routed {latency:?} after it became ready, while {written} of {MANY} objects of the slow routemap were written");
    assert!(
        written < MANY,
        "the slow routemap finished first; nothing was shown"
    );
    // And it does finish.
    wait_obj(
        &client,
        &vs_ar(),
        &ns,
        &format!("slow-{:02}", MANY - 1),
        "the slow routemap's last object",
        |_| true,
    )
    .await;
}
