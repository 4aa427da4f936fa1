//! Query templates: Jinja syntax (minijinja), the syntax of Flagger's MetricTemplates, so
//! their queries port unchanged. Pure.

use std::time::Duration;

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

use crate::duration;

/// What a query is rendered with, for one version.
#[derive(Clone, Debug, Serialize)]
pub struct Context<'a> {
    pub namespace: &'a str,
    pub application: &'a str,
    pub version: VersionVars<'a>,
    pub interval: String,
    pub variables: &'a serde_json::Map<String, serde_json::Value>,
}

/// `{{ version.* }}`.
#[derive(Clone, Debug, Serialize)]
pub struct VersionVars<'a> {
    pub index: usize,
    pub name: &'a str,
}

impl<'a> Context<'a> {
    pub fn new(
        namespace: &'a str,
        application: &'a str,
        index: usize,
        name: &'a str,
        interval: Duration,
        variables: &'a serde_json::Map<String, serde_json::Value>,
    ) -> Self {
        Context {
            namespace,
            application,
            version: VersionVars { index, name },
            interval: duration::prometheus(interval),
            variables,
        }
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // A misspelt variable is an error, not an empty string in the middle of a query.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
}

/// Whether `template` parses.
pub fn check(template: &str) -> Result<(), String> {
    environment()
        .template_from_str(template)
        .map(|_| ())
        .map_err(|e| describe(&e))
}

/// Renders `template` with `ctx`.
pub fn render(template: &str, ctx: &Context<'_>) -> Result<String, String> {
    let env = environment();
    let t = env.template_from_str(template).map_err(|e| describe(&e))?;
    t.render(minijinja::value::Serde(ctx))
        .map_err(|e| describe(&e))
}

fn describe(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_documented_variables() {
        let vars = serde_json::json!({"job": "mlserver"});
        let vars = vars.as_object().expect("object");
        let ctx = Context::new("ns", "wisdom", 1, "wisdom-1", Duration::from_secs(30), vars);
        let q = r#"rate(x{namespace="{{ namespace }}",app="{{ application }}",isvc="{{ version.name }}",i="{{ version.index }}",job="{{ variables.job }}"}[{{ interval }}])"#;
        assert_eq!(
            render(q, &ctx).expect("renders"),
            r#"rate(x{namespace="ns",app="wisdom",isvc="wisdom-1",i="1",job="mlserver"}[30s])"#
        );
    }

    #[test]
    fn refuses_unknown_variables_and_bad_syntax() {
        let vars = serde_json::Map::new();
        let ctx = Context::new("ns", "app", 0, "v", Duration::from_secs(1), &vars);
        let err = render("{{ versoin.name }}", &ctx).expect_err("unknown variable");
        assert!(err.contains("undefined"), "{err}");
        assert!(check("{{ oops").is_err());
        assert!(check("sum(up)").is_ok());
    }
}
