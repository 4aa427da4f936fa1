//! Routemaps: which resources make each version of an application and which templates
//! route traffic among the versions. Pure: parses and validates the `strSpec` text of a
//! routemap ConfigMap.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::config::Config;
use crate::yaml::{self, Limits};

/// ConfigMap data key holding the routemap YAML.
pub const STR_SPEC_KEY: &str = "strSpec";

/// Most routing templates in one routemap. The release chart renders one; every template is
/// rendered at each reconcile, so this bounds a routemap's work and memory together with the
/// per-template limits.
pub const MAX_TEMPLATES: usize = 64;

/// Largest accepted routing template, in bytes. Far above any real template; it bounds the
/// work a single routemap can make the controller do.
pub const MAX_TEMPLATE_BYTES: usize = 256 * 1024;

/// Largest accepted `strSpec`, in bytes: what a ConfigMap can hold at most.
pub const MAX_SPEC_BYTES: usize = 1024 * 1024;

/// Errors that make a routemap unusable. Shown to users as Warning Events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutemapError {
    /// The ConfigMap has no `strSpec` key (for callers reading the ConfigMap).
    #[error("routemap has no {STR_SPEC_KEY} key")]
    MissingSpec,
    /// `strSpec` is not YAML of the expected shape, or expands past [`Limits::DEFAULT`].
    #[error("invalid routemap {STR_SPEC_KEY}: {0}")]
    Yaml(String),
    /// `strSpec` exceeds [`MAX_SPEC_BYTES`].
    #[error(
        "invalid routemap {STR_SPEC_KEY}: it is {size} bytes, more than the limit of {limit} bytes"
    )]
    SpecTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// `versions` is empty or absent.
    #[error("routemap must have at least one version")]
    NoVersions,
    /// A resource lacks `gvrShort` or `name`.
    #[error("version {version} resource {resource}: {field} is empty")]
    EmptyField {
        /// Index of the version.
        version: usize,
        /// Index of the resource within the version.
        resource: usize,
        /// `gvrShort` or `name`.
        field: &'static str,
    },
    /// A resource lives in another namespace while the controller is namespace-scoped.
    #[error(
        "version {version} resource {name}: namespace {namespace} differs from the routemap \
         namespace {routemap_ns} and the controller is not cluster-scoped"
    )]
    ForeignNamespace {
        /// Index of the version.
        version: usize,
        /// Name of the resource.
        name: String,
        /// The resource's namespace.
        namespace: String,
        /// The routemap's namespace.
        routemap_ns: String,
    },
    /// A routing template lacks its `gvrShort`.
    #[error("routing template {name}: gvrShort is empty")]
    TemplateWithoutType {
        /// Template name.
        name: String,
    },
    /// More routing templates than [`MAX_TEMPLATES`].
    #[error("routemap has {count} routing templates, more than the limit of {limit}")]
    TooManyTemplates {
        /// How many it has.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A routing template exceeds [`MAX_TEMPLATE_BYTES`].
    #[error("routing template {name} is {size} bytes, more than the limit of {limit} bytes")]
    TemplateTooLarge {
        /// Template name.
        name: String,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

impl RoutemapError {
    /// Static category for metrics labels.
    pub fn category(&self) -> &'static str {
        "routemap"
    }
}

/// A resource that is part of a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRef {
    /// Short name of the resource type (a key of [`Config::resource_types`]).
    pub gvr_short: String,
    /// Object name.
    pub name: String,
    /// Object namespace; absent (or empty) means the routemap's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl ResourceRef {
    /// The namespace of the resource, defaulted to the routemap's.
    pub fn namespace_or<'a>(&'a self, routemap_ns: &'a str) -> &'a str {
        self.namespace.as_deref().unwrap_or(routemap_ns)
    }
}

/// One version of the application. Its index in [`Routemap::versions`] is its number;
/// version 0 is the primary.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Version {
    /// The resources that must all be ready for the version to be available.
    #[serde(default, deserialize_with = "null_as_default")]
    pub resources: Vec<ResourceRef>,
    /// Declared relative weight; see [`crate::availability::weigh`] for how the effective
    /// weight is derived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// A Go template producing one routing object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutingTemplate {
    /// Short name of the type the rendered object is applied as.
    pub gvr_short: String,
    /// The template text.
    #[serde(default, deserialize_with = "null_as_default")]
    pub template: String,
}

/// A parsed and validated routemap.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Routemap {
    /// Ordered versions; index 0 is the primary.
    #[serde(default, deserialize_with = "null_as_default")]
    pub versions: Vec<Version>,
    /// Routing templates by name.
    #[serde(default, deserialize_with = "null_as_default")]
    pub routing_templates: BTreeMap<String, RoutingTemplate>,
    /// The automated analysis block (docs/analysis.md), checked by the analysis crate: a
    /// broken block must not make the routing unusable, so it is kept as written here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<serde_yaml::Value>,
}

/// Go's YAML decoding treats an explicit `null` like an absent field; so do we.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Parses the `strSpec` value of a routemap ConfigMap in namespace `routemap_ns` and
/// validates it: at least one version, every resource has a `gvrShort` and a `name`, when
/// the controller is not cluster-scoped every resource namespace (if given) equals
/// `routemap_ns`, and no template is larger than [`MAX_TEMPLATE_BYTES`].
///
/// The work is bounded: a `strSpec` over [`MAX_SPEC_BYTES`] is refused unread, and one that
/// expands past [`Limits::DEFAULT`] (aliases, nesting) is refused once the limit is reached.
///
/// Unknown fields are ignored, as the original did. An empty `namespace` is treated as
/// absent. Unknown `gvrShort`s are not errors (see [`Routemap::warnings`]).
pub fn parse(
    str_spec: &str,
    routemap_ns: &str,
    config: &Config,
) -> Result<Routemap, RoutemapError> {
    if str_spec.len() > MAX_SPEC_BYTES {
        return Err(RoutemapError::SpecTooLarge {
            size: str_spec.len(),
            limit: MAX_SPEC_BYTES,
        });
    }
    let mut routemap: Routemap = if str_spec.trim().is_empty() {
        Routemap::default()
    } else {
        // The bounded decoding walks every node, aliases expanded, and stops at the limits;
        // once it has passed, decoding the same text again costs no more than it did. The
        // second pass keeps serde_yaml's errors, which name the field, line and column
        // (`serde_json::from_value` would name neither, and would let duplicate fields
        // through).
        yaml::from_str_bounded(str_spec, Limits::DEFAULT)
            .map_err(|e| RoutemapError::Yaml(e.to_string()))?;
        serde_yaml::from_str::<Option<Routemap>>(str_spec)
            .map_err(|e| RoutemapError::Yaml(e.to_string()))?
            .unwrap_or_default()
    };
    if routemap.versions.is_empty() {
        return Err(RoutemapError::NoVersions);
    }
    for (vi, version) in routemap.versions.iter_mut().enumerate() {
        for (ri, resource) in version.resources.iter_mut().enumerate() {
            if resource.namespace.as_deref() == Some("") {
                resource.namespace = None;
            }
            for (field, value) in [("gvrShort", &resource.gvr_short), ("name", &resource.name)] {
                if value.is_empty() {
                    return Err(RoutemapError::EmptyField {
                        version: vi,
                        resource: ri,
                        field,
                    });
                }
            }
            if let Some(ns) = &resource.namespace {
                if !config.cluster_scoped && ns != routemap_ns {
                    return Err(RoutemapError::ForeignNamespace {
                        version: vi,
                        name: resource.name.clone(),
                        namespace: ns.clone(),
                        routemap_ns: routemap_ns.to_string(),
                    });
                }
            }
        }
    }
    if routemap.routing_templates.len() > MAX_TEMPLATES {
        return Err(RoutemapError::TooManyTemplates {
            count: routemap.routing_templates.len(),
            limit: MAX_TEMPLATES,
        });
    }
    for (name, template) in &routemap.routing_templates {
        if template.gvr_short.is_empty() {
            return Err(RoutemapError::TemplateWithoutType { name: name.clone() });
        }
        if template.template.len() > MAX_TEMPLATE_BYTES {
            return Err(RoutemapError::TemplateTooLarge {
                name: name.clone(),
                size: template.template.len(),
                limit: MAX_TEMPLATE_BYTES,
            });
        }
    }
    Ok(routemap)
}

impl Routemap {
    /// Problems that do not stop serving but deserve a warning: resource types the config
    /// does not know (such a version is never available, such a template is never applied)
    /// and versions without resources (always available).
    pub fn warnings(&self, config: &Config) -> Vec<String> {
        let mut out = Vec::new();
        for (vi, version) in self.versions.iter().enumerate() {
            if version.resources.is_empty() {
                out.push(format!("version {vi} has no resources"));
            }
            for r in &version.resources {
                if !config.resource_types.contains_key(&r.gvr_short) {
                    out.push(format!(
                        "version {vi} resource {}: unknown gvrShort {:?}",
                        r.name, r.gvr_short
                    ));
                }
            }
        }
        for (name, template) in &self.routing_templates {
            if !config.resource_types.contains_key(&template.gvr_short) {
                out.push(format!(
                    "routing template {name}: unknown gvrShort {:?}",
                    template.gvr_short
                ));
            }
        }
        out
    }

    /// Every `(gvr_short, namespace, name)` this routemap references, namespaces defaulted
    /// to `routemap_ns`, in order of appearance and without duplicates.
    pub fn references(&self, routemap_ns: &str) -> Vec<(String, String, String)> {
        let mut out: Vec<(String, String, String)> = Vec::new();
        for r in self.versions.iter().flat_map(|v| &v.resources) {
            let key = (
                r.gvr_short.clone(),
                r.namespace_or(routemap_ns).to_string(),
                r.name.clone(),
            );
            if !out.contains(&key) {
                out.push(key);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
versions:
- resources:
  - gvrShort: isvc
    name: wisdom-0
    namespace: default
  weight: 50
- resources:
  - gvrShort: isvc
    name: wisdom-1
  - gvrShort: cm
    name: wisdom-1-weight-config
    namespace: ""
routingTemplates:
  canary:
    gvrShort: vs
    template: |
      kind: VirtualService
unknownTopLevel: ignored
"#;

    #[test]
    fn parses_routemap() {
        let rm = parse(SPEC, "default", &Config::default()).unwrap();
        assert_eq!(rm.versions.len(), 2);
        assert_eq!(rm.versions[0].weight, Some(50));
        assert_eq!(rm.versions[1].weight, None);
        assert_eq!(
            rm.versions[0].resources[0],
            ResourceRef {
                gvr_short: "isvc".into(),
                name: "wisdom-0".into(),
                namespace: Some("default".into()),
            }
        );
        assert_eq!(
            rm.versions[1].resources[1].namespace, None,
            "empty is absent"
        );
        assert_eq!(rm.routing_templates["canary"].gvr_short, "vs");
        assert_eq!(
            rm.routing_templates["canary"].template,
            "kind: VirtualService\n"
        );
        assert!(rm.warnings(&Config::default()).is_empty());
        assert_eq!(
            rm.references("default"),
            [
                ("isvc".into(), "default".into(), "wisdom-0".into()),
                ("isvc".into(), "default".into(), "wisdom-1".into()),
                (
                    "cm".into(),
                    "default".into(),
                    "wisdom-1-weight-config".into()
                ),
            ]
        );
    }

    #[test]
    fn nulls_are_absent() {
        let rm = parse(
            "versions:\n- resources:\n  weight:\nroutingTemplates:\n",
            "ns",
            &Config::default(),
        )
        .unwrap();
        assert_eq!(rm.versions, [Version::default()]);
        assert!(rm.routing_templates.is_empty());
        assert_eq!(
            rm.warnings(&Config::default()),
            ["version 0 has no resources"]
        );
    }

    #[test]
    fn routemap_errors() {
        let big = format!(
            "versions: [{{}}]\nroutingTemplates:\n  t:\n    gvrShort: vs\n    template: \"{}\"\n",
            "x".repeat(MAX_TEMPLATE_BYTES + 1)
        );
        let cases: Vec<(&str, String)> = vec![
            ("", "routemap must have at least one version".into()),
            ("versions: []", "routemap must have at least one version".into()),
            ("routingTemplates: {}", "routemap must have at least one version".into()),
            (
                "versions: [{resources: [{gvrShort: isvc, name: a, namespace: other}]}]",
                "version 0 resource a: namespace other differs from the routemap namespace \
                 default and the controller is not cluster-scoped"
                    .into(),
            ),
            (
                "versions: [{resources: [{gvrShort: isvc, name: a}]}, {resources: [{gvrShort: isvc, name: ''}]}]",
                "version 1 resource 0: name is empty".into(),
            ),
            (
                "versions: [{resources: [{name: a}]}]",
                "invalid routemap strSpec: versions[0].resources[0]: missing field `gvrShort` at line 1 column 25".into(),
            ),
            (
                "versions: [{weight: -1}]",
                "invalid routemap strSpec: versions[0].weight: invalid type: integer `-1`, expected u32 at line 1 column 21".into(),
            ),
            (
                "versions: [{}]\nroutingTemplates: {t: {gvrShort: '', template: x}}",
                "routing template t: gvrShort is empty".into(),
            ),
            (
                big.as_str(),
                format!(
                    "routing template t is {} bytes, more than the limit of 262144 bytes",
                    MAX_TEMPLATE_BYTES + 1
                ),
            ),
        ];
        for (spec, want) in cases {
            let err = parse(spec, "default", &Config::default()).unwrap_err();
            assert_eq!(err.to_string(), want, "for {spec:.80}");
            assert_eq!(err.category(), "routemap");
        }
        assert!(matches!(
            parse("versions: [", "default", &Config::default()),
            Err(RoutemapError::Yaml(_))
        ));
    }

    #[test]
    fn work_is_bounded() {
        let config = Config::default();
        // An alias bomb in a field the routemap does not even read.
        let items = vec!["x"; 1000].join(", ");
        let aliases = vec!["*a"; 1000].join(", ");
        let bomb = format!("versions: [{{}}]\nx: &a [{items}]\ny: [{aliases}]\n");
        let deep = format!(
            "versions: [{{}}]\nx: {}{}",
            "[".repeat(100),
            "]".repeat(100)
        );
        let huge = format!("versions: [{{}}]\nx: '{}'", "x".repeat(MAX_SPEC_BYTES));
        let cases = [
            (
                bomb.as_str(),
                "invalid routemap strSpec: yaml expands to more than 200000 nodes (aliases?) \
                 at line 2 column 2387",
            ),
            (
                deep.as_str(),
                "invalid routemap strSpec: yaml is nested deeper than 64 levels at line 2 \
                 column 67",
            ),
            (
                huge.as_str(),
                "invalid routemap strSpec: it is 1048596 bytes, more than the limit of \
                 1048576 bytes",
            ),
        ];
        for (spec, want) in cases {
            let err = parse(spec, "default", &config).unwrap_err();
            assert_eq!(err.to_string(), want, "for {spec:.80}");
            assert_eq!(err.category(), "routemap");
        }
        // Aliases within the limits work as they always did.
        let rm = parse(
            "versions: [{resources: &r [{gvrShort: isvc, name: a}]}, {resources: *r}]",
            "default",
            &config,
        )
        .unwrap();
        assert_eq!(rm.versions[0], rm.versions[1]);
        // What has no JSON form (local tags, sequence or mapping keys) is refused, even in
        // fields the routemap does not read: the bounded decoding builds JSON.
        for spec in ["versions: [{}]\nx: !foo bar", "versions: [{}]\nx: {[a]: b}"] {
            let err = parse(spec, "default", &config).unwrap_err().to_string();
            assert!(err.starts_with("invalid routemap strSpec: x"), "{err}");
            assert!(err.contains(": invalid type: "), "{err}");
        }
        // serde_yaml's errors stay, which the bounded decoding alone would not give.
        assert_eq!(
            parse("versions: [{}]\nversions: [{}]", "default", &config)
                .unwrap_err()
                .to_string(),
            "invalid routemap strSpec: duplicate field `versions`"
        );
    }

    #[test]
    fn cluster_scoped_allows_other_namespaces() {
        let config = Config {
            cluster_scoped: true,
            ..Config::default()
        };
        let rm = parse(
            "versions: [{resources: [{gvrShort: isvc, name: a, namespace: other}]}]",
            "default",
            &config,
        )
        .unwrap();
        assert_eq!(
            rm.references("default"),
            [("isvc".into(), "other".into(), "a".into())]
        );
    }

    #[test]
    fn warnings_name_unknown_types() {
        let rm = parse(
            "versions: [{resources: [{gvrShort: foo, name: a}, {gvrShort: foo, name: a}]}]\n\
             routingTemplates: {t: {gvrShort: bar, template: x}}",
            "default",
            &Config::default(),
        )
        .unwrap();
        assert_eq!(
            rm.warnings(&Config::default()),
            [
                "version 0 resource a: unknown gvrShort \"foo\"",
                "version 0 resource a: unknown gvrShort \"foo\"",
                "routing template t: unknown gvrShort \"bar\"",
            ]
        );
        assert_eq!(rm.references("ns").len(), 1, "duplicates collapse");
    }
}
