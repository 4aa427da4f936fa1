//! Rendering of routing templates into routing objects (spec 2.5) and the guard that keeps
//! a routemap from making the controller write arbitrary objects (spec 2.6). Pure.
//!
//! Templates are Go templates with `html/template` semantics (the original controller used
//! Go's `html/template`), executed by the `gotmpl` crate. Missing map keys render as empty
//! text, like Go's `missingkey=zero` on the original's data. The template data is:
//!
//! | key | value |
//! |---|---|
//! | `.Name`, `.Namespace`, `.UID` | the routemap ConfigMap's metadata |
//! | `.Labels`, `.Annotations` | maps of strings |
//! | `.Versions` | list; each has `.Resources` (list of `.GVRShort`, `.Name`, `.Namespace`, the namespace defaulted to the routemap's), `.Weight` (the declared weight, empty when not declared, as in the original), `.Signature` |
//! | `.Weights` | effective weights, list of unsigned integers (a method in the original) |
//! | `.Promoted` | whether the analysis promoted the candidate (version 1) to take the primary's traffic (docs/analysis.md); new here, false without analysis |

use std::collections::BTreeMap;
use std::fmt;

use gotmpl::{TemplateError, Value as TValue};
use serde_json::Value;

use crate::availability::Weighing;
use crate::budget::{metered_funcs, Budget, WORK_BUDGET};
use crate::config::json_type;
use crate::gotemplate::{check_block_balance, check_template_calls, fix_left_trim_comments};
use crate::routemap::Routemap;

/// Largest accepted rendered output, in bytes.
pub const MAX_RENDERED_BYTES: usize = 1024 * 1024;

/// Budget of `{{range}}` iterations per execution; real templates use a handful.
const MAX_RANGE_ITERS: u64 = 10_000;

/// Routemap ConfigMap metadata visible to templates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutemapMeta {
    /// `.Name`
    pub name: String,
    /// `.Namespace`
    pub namespace: String,
    /// `.UID`
    pub uid: String,
    /// `.Labels`
    pub labels: BTreeMap<String, String>,
    /// `.Annotations`
    pub annotations: BTreeMap<String, String>,
}

/// The outcome of rendering one routing template.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// Template name (key of `routingTemplates`).
    pub template: String,
    /// Short name of the type the object is to be applied as.
    pub gvr_short: String,
    /// The object; `Ok(None)` means "nothing to apply".
    pub result: Result<Option<Value>, RenderError>,
}

/// Why a template produced no usable object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// The template does not parse (including html/template context errors and unknown
    /// functions, which Go reports before executing).
    #[error("routing template {template} does not parse: {message}")]
    Parse {
        /// Template name.
        template: String,
        /// The engine's message.
        message: String,
    },
    /// Executing the template failed.
    #[error("routing template {template} failed to execute: {message}")]
    Execute {
        /// Template name.
        template: String,
        /// The engine's message.
        message: String,
    },
    /// The output exceeded [`MAX_RENDERED_BYTES`].
    #[error("routing template {template} rendered more than {limit} bytes")]
    TooLarge {
        /// Template name.
        template: String,
        /// The limit.
        limit: usize,
    },
    /// The output is not YAML.
    #[error("routing template {template} rendered invalid yaml: {message}")]
    InvalidYaml {
        /// Template name.
        template: String,
        /// The YAML parser's message.
        message: String,
    },
    /// The output is YAML but not one mapping.
    #[error("routing template {template} rendered {found}, not a yaml mapping")]
    NotAMapping {
        /// Template name.
        template: String,
        /// What it rendered instead, e.g. "a list".
        found: &'static str,
    },
    /// The rendered object is not something this routemap may write.
    #[error("refusing rendered object: {0}")]
    Target(String),
}

impl RenderError {
    /// Static category for metrics labels: `template_parse`, `template_execute`,
    /// `rendered_yaml` or `target`.
    pub fn category(&self) -> &'static str {
        match self {
            RenderError::Parse { .. } => "template_parse",
            RenderError::Execute { .. } | RenderError::TooLarge { .. } => "template_execute",
            RenderError::InvalidYaml { .. } | RenderError::NotAMapping { .. } => "rendered_yaml",
            RenderError::Target(_) => "target",
        }
    }
}

/// Renders every routing template of `routemap`, in order of template name. A failing
/// template does not stop the others. Whitespace-only output (or a YAML document with no
/// content) gives `Ok(None)`: nothing to apply.
pub fn render(meta: &RoutemapMeta, routemap: &Routemap, weighing: &Weighing) -> Vec<Rendered> {
    let data = template_data(meta, routemap, weighing);
    // BTreeMap iteration is already sorted by name.
    routemap
        .routing_templates
        .iter()
        .map(|(name, t)| Rendered {
            template: name.clone(),
            gvr_short: t.gvr_short.clone(),
            result: render_template(name, &t.template, &data),
        })
        .collect()
}

/// Builds the template data described in the module docs.
fn template_data(meta: &RoutemapMeta, routemap: &Routemap, weighing: &Weighing) -> TValue {
    let strings = |m: &BTreeMap<String, String>| {
        TValue::from(
            m.iter()
                .map(|(k, v)| (k.clone(), TValue::from(v.as_str())))
                .collect::<BTreeMap<String, TValue>>(),
        )
    };
    let versions: Vec<TValue> = routemap
        .versions
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let resources: Vec<TValue> = v
                .resources
                .iter()
                .map(|r| {
                    map([
                        ("GVRShort", TValue::from(r.gvr_short.as_str())),
                        ("Name", TValue::from(r.name.as_str())),
                        ("Namespace", TValue::from(r.namespace_or(&meta.namespace))),
                    ])
                })
                .collect();
            let signature = weighing.signatures.get(i).map_or("", String::as_str);
            map([
                ("Resources", TValue::from(resources)),
                (
                    "Weight",
                    v.weight.map_or(TValue::Nil, |w| TValue::Uint(w.into())),
                ),
                ("Signature", TValue::from(signature)),
            ])
        })
        .collect();
    let weights: Vec<TValue> = weighing
        .weights
        .iter()
        .map(|w| TValue::Uint((*w).into()))
        .collect();
    map([
        ("Name", TValue::from(meta.name.as_str())),
        ("Namespace", TValue::from(meta.namespace.as_str())),
        ("UID", TValue::from(meta.uid.as_str())),
        ("Labels", strings(&meta.labels)),
        ("Annotations", strings(&meta.annotations)),
        ("Versions", TValue::from(versions)),
        ("Weights", TValue::from(weights)),
        ("Promoted", TValue::Bool(weighing.promoted)),
    ])
}

fn map<const N: usize>(entries: [(&str, TValue); N]) -> TValue {
    TValue::from(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<BTreeMap<String, TValue>>(),
    )
}

/// Parses, executes and decodes one template.
fn render_template(name: &str, source: &str, data: &TValue) -> Result<Option<Value>, RenderError> {
    check_block_balance(source).map_err(|message| RenderError::Parse {
        template: name.to_string(),
        message,
    })?;
    check_template_calls(source, name).map_err(|message| RenderError::Parse {
        template: name.to_string(),
        message,
    })?;
    let source = fix_left_trim_comments(source);
    let budget = Budget::new(WORK_BUDGET);
    let template = gotmpl::html::Template::new(name)
        .max_range_iters(MAX_RANGE_ITERS)
        .funcs(metered_funcs(&budget))
        .parse(&source)
        .map_err(|e| RenderError::Parse {
            template: name.to_string(),
            message: e.to_string(),
        })?;
    let mut out = LimitedWriter {
        buf: String::new(),
        limit: MAX_RENDERED_BYTES,
        exceeded: false,
    };
    if let Err(e) = template.execute_fmt(&mut out, data) {
        let template = name.to_string();
        return Err(if out.exceeded {
            RenderError::TooLarge {
                template,
                limit: MAX_RENDERED_BYTES,
            }
        } else if is_static_error(&e) {
            RenderError::Parse {
                template,
                message: e.to_string(),
            }
        } else {
            RenderError::Execute {
                template,
                message: e.to_string(),
            }
        });
    }
    decode_output(name, &out.buf)
}

/// Errors Go would report before executing anything; gotmpl finds some of them lazily.
fn is_static_error(e: &TemplateError) -> bool {
    matches!(
        e,
        TemplateError::Parse { .. }
            | TemplateError::Lex { .. }
            | TemplateError::Escape { .. }
            | TemplateError::UndefinedFunction(_)
            | TemplateError::UndefinedTemplate(_)
    )
}

/// A `fmt::Write` that refuses to grow past `limit`, so a runaway template stops early
/// instead of filling memory.
struct LimitedWriter {
    buf: String,
    limit: usize,
    exceeded: bool,
}

impl fmt::Write for LimitedWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.buf.len() + s.len() > self.limit {
            self.exceeded = true;
            return Err(fmt::Error);
        }
        self.buf.push_str(s);
        Ok(())
    }
}

/// Decodes rendered text as one YAML mapping; empty or content-free output is `None`.
/// Output that expands past [`crate::yaml::Limits::RENDERED`] (aliases, nesting) is invalid:
/// decoding stops there instead of filling memory.
pub fn decode_output(template: &str, text: &str) -> Result<Option<Value>, RenderError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let limits = crate::yaml::Limits::RENDERED;
    let value =
        crate::yaml::from_str_bounded(text, limits).map_err(|e| RenderError::InvalidYaml {
            template: template.to_string(),
            message: e.to_string(),
        })?;
    match value {
        Value::Null => Ok(None),
        Value::Object(_) => Ok(Some(value)),
        other => Err(RenderError::NotAMapping {
            template: template.to_string(),
            found: json_type(&other),
        }),
    }
}

/// Checks that a rendered object is one this routemap may write: `apiVersion` equals
/// `api_version`, `kind` equals `kind`, `metadata.name` is a non-empty string and
/// `metadata.namespace` is absent or equals `namespace` (the routemap's). Returns the object
/// with `metadata.namespace` set.
pub fn check_target(
    obj: Value,
    api_version: &str,
    kind: &str,
    namespace: &str,
) -> Result<Value, RenderError> {
    let refuse = |msg: String| Err(RenderError::Target(msg));
    let Value::Object(mut top) = obj else {
        return refuse("it is not an object".to_string());
    };
    let found_api = top
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let found_kind = top.get("kind").and_then(Value::as_str).unwrap_or_default();
    // Name the object, so that two refusals of one routemap can be told apart.
    let what = {
        let shown_kind = if found_kind.is_empty() {
            "object"
        } else {
            found_kind
        };
        match top
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
        {
            Some(n) if !n.is_empty() => format!("{shown_kind} {n}"),
            _ => shown_kind.to_string(),
        }
    };
    if found_api != api_version {
        return refuse(format!(
            "{what}: apiVersion {found_api:?} is not the template type's {api_version:?}"
        ));
    }
    if found_kind != kind {
        return refuse(format!(
            "{what}: kind {found_kind:?} is not the template type's {kind:?}"
        ));
    }
    let Some(Value::Object(metadata)) = top.get_mut("metadata") else {
        return refuse(format!("{kind} has no metadata"));
    };
    let name = match metadata.get("name") {
        Some(Value::String(n)) if !n.is_empty() => n.clone(),
        _ => return refuse(format!("{kind} has no metadata.name")),
    };
    // The name becomes part of a request path: nothing but a DNS-1123 subdomain passes.
    if let Err(why) = dns1123_subdomain(&name) {
        let shown: String = if name.chars().count() > 63 {
            name.chars().take(60).chain("...".chars()).collect()
        } else {
            name.clone()
        };
        return refuse(format!("{kind} name {shown:?} {why}"));
    }
    match metadata.get("namespace") {
        None | Some(Value::Null) => {}
        // Kubernetes treats an empty namespace as unset.
        Some(Value::String(ns)) if ns.is_empty() || ns == namespace => {}
        Some(other) => {
            let shown = other
                .as_str()
                .map_or_else(|| other.to_string(), str::to_string);
            return refuse(format!(
                "{kind} {name} is in namespace {shown:?}, not the routemap's namespace {namespace:?}"
            ));
        }
    }
    metadata.insert(
        "namespace".to_string(),
        Value::String(namespace.to_string()),
    );
    Ok(Value::Object(top))
}

/// Checks a Kubernetes object name (DNS-1123 subdomain): at most 253 characters, lower-case
/// alphanumerics, `-` and `.`, each dot-separated part starting and ending alphanumeric.
pub fn dns1123_subdomain(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err(format!("is {} characters long, more than 253", name.len()));
    }
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    for part in name.split('.') {
        let ok = part.starts_with(alnum)
            && part.ends_with(alnum)
            && part.chars().all(|c| alnum(c) || c == '-');
        if !ok {
            return Err(
                "is not a valid name (lower-case letters, digits, '-' and '.', starting and \
                 ending with a letter or digit)"
                    .to_string(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
