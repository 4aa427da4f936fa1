use super::*;

fn parse_yaml(text: &str) -> Result<Analysis, String> {
    parse(&serde_yaml::from_str(text).expect("yaml"))
}

const FULL: &str = r#"
strategy: blue-green
mode: dryRun
interval: 30s
progressDeadline: 5m
steps: [10, 25, 50, 100]
passesPerStep: 2
failureLimit: 3
inconclusiveLimit: 5
errorLimit: 4
onInconclusive: rollback
provider:
  prometheus: {address: "http://prometheus:9090/", timeout: 2s}
variables: {job: mlserver, quantile: 0.99}
sampleSize: {query: "sum(x)", min: 100}
metrics:
- name: error-rate
  query: 'sum(rate(e{isvc="{{ version.name }}"}[{{ interval }}]))'
  thresholdRange: {max: 0.01}
  onNoData: pass
- name: latency
  query: q
  relativeRange: {min: 0.5, max: 1.2}
- name: sample_metric
  source: abn
  statistic: userMean
  minSamples: 200
gates:
  confirmPromotion: {url: "https://approver/confirm", timeout: 3s}
notify: {url: "http://hooks/iter8"}
"#;

#[test]
fn every_field_is_read() {
    let a = parse_yaml(FULL).expect("valid");
    assert_eq!(a.strategy, Strategy::BlueGreen);
    assert_eq!(a.mode, Mode::DryRun);
    assert_eq!(a.interval, Duration::from_secs(30));
    assert_eq!(a.progress_deadline, Duration::from_secs(300));
    assert_eq!(a.steps, vec![10, 25, 50, 100]);
    assert_eq!((a.passes_per_step, a.failure_limit), (2, 3));
    assert_eq!((a.inconclusive_limit, a.error_limit), (5, 4));
    assert_eq!(a.on_inconclusive, OnInconclusive::Rollback);
    let p = a.prometheus.as_ref().expect("prometheus");
    assert_eq!(p.address, "http://prometheus:9090");
    assert_eq!(p.timeout, Duration::from_secs(2));
    assert_eq!(a.variables["quantile"], serde_json::json!(0.99));
    assert_eq!(a.sample_size.as_ref().map(|s| s.min), Some(100.0));
    assert_eq!(a.metrics.len(), 3);
    assert_eq!(a.metrics[0].on_no_data, OnNoData::Pass);
    assert_eq!(
        a.metrics[1].relative,
        Some(Range {
            min: Some(0.5),
            max: Some(1.2)
        })
    );
    assert_eq!(
        a.metrics[2].source,
        Source::Abn {
            statistic: Statistic::UserMean,
            min_samples: 200
        }
    );
    assert_eq!(
        a.confirm_promotion.as_ref().map(|h| h.timeout),
        Some(Duration::from_secs(3))
    );
    assert_eq!(
        a.notify.as_ref().map(|h| h.timeout),
        Some(DEFAULT_HOOK_TIMEOUT)
    );
}

#[test]
fn defaults() {
    let a = parse_yaml("strategy: blue-green").expect("valid");
    assert_eq!(a.mode, Mode::Auto);
    assert_eq!(a.interval, Duration::from_secs(60));
    assert_eq!(a.progress_deadline, Duration::from_secs(600));
    assert_eq!(a.steps, vec![100]);
    assert_eq!((a.passes_per_step, a.failure_limit), (1, 1));
    assert_eq!((a.inconclusive_limit, a.error_limit), (0, 0));
    assert_eq!(a.on_inconclusive, OnInconclusive::Hold);
    assert!(a.metrics.is_empty() && a.prometheus.is_none());
    let c = parse_yaml("strategy: canary").expect("valid");
    assert!(c.steps.is_empty());
}

#[test]
fn errors_name_the_field() {
    let prom = "provider: {prometheus: {address: 'http://p:9090'}}\n";
    for (text, expected) in [
        ("mode: auto", "analysis.strategy is required"),
        ("strategy: mirror", "unknown variant `mirror`"),
        ("strategy: canary\nintervall: 1m", "unknown field `intervall`"),
        ("strategy: canary\ninterval: 500ms", "analysis.interval must be at least 1s"),
        ("strategy: canary\ninterval: soon", "analysis.interval: \"soon\" is not a duration"),
        ("strategy: canary\nsteps: [50]", "analysis.steps applies to strategy blue-green only"),
        ("strategy: blue-green\nsteps: [10, 50, 50]", "analysis.steps must be strictly increasing: 50 follows 50"),
        ("strategy: blue-green\nsteps: [0, 50]", "analysis.steps[0] must be within 1..100, not 0"),
        ("strategy: blue-green\nsteps: [10, 101]", "analysis.steps[1] must be within 1..100, not 101"),
        ("strategy: blue-green\nsteps: []", "analysis.steps must list at least one weight"),
        ("strategy: canary\npassesPerStep: 0", "analysis.passesPerStep must be at least 1"),
        ("strategy: canary\nfailureLimit: 0", "analysis.failureLimit must be at least 1"),
        ("strategy: canary\nmetrics: [{name: m, query: 'up'}]", "analysis.metrics[0].query is a Prometheus query, but analysis.provider.prometheus.address is not set"),
        (&format!("strategy: canary\n{prom}metrics: [{{name: m, source: datadog}}]"), "analysis.metrics[0].source \"datadog\" is unknown (prometheus or abn)"),
        (&format!("strategy: canary\n{prom}metrics: [{{name: m, query: ' '}}]"), "analysis.metrics[0].query is empty"),
        (&format!("strategy: canary\n{prom}metrics: [{{name: m}}]"), "analysis.metrics[0].query is empty"),
        (&format!("strategy: canary\n{prom}metrics: [{{name: m, query: '{{{{ x'}}]"), "analysis.metrics[0].query: syntax error"),
        (&format!("strategy: canary\n{prom}metrics: [{{name: m, query: up, thresholdRange: {{}}}}]"), "analysis.metrics[0].thresholdRange needs a min or a max"),
        (&format!("strategy: canary\n{prom}metrics: [{{name: m, query: up, relativeRange: {{min: 2, max: 1}}}}]"), "analysis.metrics[0].relativeRange: min 2 is greater than max 1"),
        (&format!("strategy: canary\n{prom}metrics: [{{name: m, query: up}}, {{name: m, query: up}}]"), "analysis.metrics[1].name \"m\" is used twice"),
        (&format!("strategy: canary\n{prom}metrics: [{{name: 'a b', query: up}}]"), "analysis.metrics[0].name \"a b\" must start with a letter"),
        ("strategy: canary\nmetrics: [{name: m, source: abn, query: up}]", "analysis.metrics[0].query applies to source prometheus only"),
        (&format!("strategy: canary\n{prom}metrics: [{{name: m, query: up, statistic: mean}}]"), "analysis.metrics[0]: statistic and minSamples apply to source abn only"),
        ("strategy: canary\nprovider: {prometheus: {address: 'prometheus:9090'}}", "analysis.provider.prometheus.address \"prometheus:9090\" is not an http:// or https:// URL"),
        ("strategy: canary\nnotify: {url: ''}", "analysis.notify.url \"\" is not an http:// or https:// URL"),
        ("strategy: canary\ngates: {confirmPromotion: {url: 'http://a', timeout: x}}", "analysis.gates.confirmPromotion.timeout: \"x\" is not a duration"),
    ] {
        let err = parse_yaml(text).expect_err(text);
        assert!(err.contains(expected), "{text}\n  gave: {err}\n  expected: {expected}");
    }
}
