//! Controller configuration: which resource types are watched, how their readiness is
//! judged, and a few switches. Pure: parses a YAML string handed in by the caller; reading
//! the file is the binary's job.
//!
//! The format is the original Iter8 controller's (`resourceTypes`, `defaultResync`,
//! `clusterScoped`) plus our additions (`routemapVersions`, `addFinalizer`, and per type
//! `checkGeneration`). Keys are matched case-insensitively, as Go's `encoding/json` did, and
//! unknown keys are ignored so that config files written for the original keep working.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

/// API group of KServe, whose `status.observedGeneration` is not its own (see
/// [`ResourceType::check_generation`]).
pub const KSERVE_GROUP: &str = "serving.kserve.io";

/// Default `defaultResync`: how often everything is reconciled even without changes.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(15 * 60);

/// Default `routingResources`: the kinds Iter8's routing templates write.
pub const DEFAULT_ROUTING_RESOURCES: [&str; 3] =
    ["virtualservices", "httproutes", "serviceentries"];

/// Default accepted value of the routemap label `iter8.tools/version`.
pub const DEFAULT_ROUTEMAP_VERSION: &str = "v1.1";

/// Errors found while reading the controller configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The text is not YAML.
    #[error("invalid config yaml: {0}")]
    Yaml(String),
    /// The document is YAML but not a mapping.
    #[error("config must be a yaml mapping, found {0}")]
    NotAMapping(&'static str),
    /// A field has the wrong shape or value.
    #[error("invalid config field {field}: {reason}")]
    Field {
        /// Path of the field, e.g. `resourceTypes.isvc.version`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ConfigError {
    /// Static category for metrics labels.
    pub fn category(&self) -> &'static str {
        "config"
    }

    fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Field {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// One watched resource type, keyed in [`Config::resource_types`] by its short name
/// (the `gvrShort` of routemaps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: String,
    /// API version, e.g. `v1beta1`.
    pub version: String,
    /// Plural resource name, e.g. `inferenceservices`.
    pub resource: String,
    /// Status condition types that must all be `True` for an object to count as ready.
    /// Empty: existing is enough.
    pub conditions: Vec<String>,
    /// Whether a satisfied condition must also have been observed at the object's current
    /// `metadata.generation` (the condition's `observedGeneration`, else
    /// `status.observedGeneration`, must not be older).
    ///
    /// YAML key `checkGeneration`. When absent it defaults to `false` for the group
    /// `serving.kserve.io` and `true` for every other group: an InferenceService copies
    /// `status.observedGeneration` from a child object (its Knative Service or Deployment),
    /// so comparing it with the InferenceService's own generation can keep a version
    /// unready forever, while KServe's `Ready` condition already tracks rollouts.
    /// Deployments report their own observedGeneration, so the check is right for them.
    pub check_generation: bool,
}

impl ResourceType {
    /// A type without conditions; `check_generation` takes its default for `group`.
    pub fn new(group: &str, version: &str, resource: &str) -> Self {
        ResourceType {
            group: group.to_string(),
            version: version.to_string(),
            resource: resource.to_string(),
            conditions: Vec::new(),
            check_generation: Self::default_check_generation(group),
        }
    }

    /// The same type with the given readiness conditions.
    pub fn with_conditions(mut self, conditions: &[&str]) -> Self {
        self.conditions = conditions.iter().map(|c| c.to_string()).collect();
        self
    }

    /// Default of [`ResourceType::check_generation`] for a group: off for KServe only.
    pub fn default_check_generation(group: &str) -> bool {
        group != KSERVE_GROUP
    }

    /// The `apiVersion` of objects of this type: `v1` for the core group, else `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// The controller configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Watched types by short name.
    pub resource_types: BTreeMap<String, ResourceType>,
    /// How often everything is reconciled anyway.
    pub default_resync: Duration,
    /// Watch all namespaces (else only the controller's own).
    pub cluster_scoped: bool,
    /// Accepted values of the routemap label `iter8.tools/version`.
    pub routemap_versions: Vec<String>,
    /// Add finalizer `iter8.tools/finalizer` to watched objects, as the original did.
    /// Off by default: the finalizer makes `helm delete` hang while the controller is down.
    pub add_finalizer: bool,
    /// Plural resource names that routing templates write (YAML key `routingResources`, as
    /// the controller chart's value of the same name). The controller watches the configured
    /// types with these resources for drift from the start, and writes no other kind.
    pub routing_resources: Vec<String>,
}

impl Default for Config {
    /// The resource types table of the original controller chart (spec 2.1), resync 15m.
    fn default() -> Self {
        Config {
            resource_types: default_resource_types(),
            default_resync: DEFAULT_RESYNC,
            cluster_scoped: false,
            routemap_versions: vec![DEFAULT_ROUTEMAP_VERSION.to_string()],
            add_finalizer: false,
            routing_resources: DEFAULT_ROUTING_RESOURCES
                .iter()
                .map(|r| r.to_string())
                .collect(),
        }
    }
}

/// The default `resourceTypes` table.
pub fn default_resource_types() -> BTreeMap<String, ResourceType> {
    let table = [
        ("svc", ResourceType::new("", "v1", "services")),
        ("service", ResourceType::new("", "v1", "services")),
        ("cm", ResourceType::new("", "v1", "configmaps")),
        (
            "deploy",
            ResourceType::new("apps", "v1", "deployments").with_conditions(&["Available"]),
        ),
        (
            "isvc",
            ResourceType::new(KSERVE_GROUP, "v1beta1", "inferenceservices")
                .with_conditions(&["Ready"]),
        ),
        (
            "vs",
            ResourceType::new("networking.istio.io", "v1beta1", "virtualservices"),
        ),
        (
            "httproute",
            ResourceType::new("gateway.networking.k8s.io", "v1", "httproutes"),
        ),
        (
            "se",
            ResourceType::new("networking.istio.io", "v1beta1", "serviceentries"),
        ),
    ];
    table
        .into_iter()
        .map(|(short, rt)| (short.to_string(), rt))
        .collect()
}

impl Config {
    /// The configured types routing templates may write, by short name: those whose
    /// resource is listed in [`Config::routing_resources`].
    pub fn routing_types(&self) -> impl Iterator<Item = (&String, &ResourceType)> {
        self.resource_types
            .iter()
            .filter(|(_, rt)| self.is_routing(rt))
    }

    /// Whether routing templates may write objects of `rt`.
    pub fn is_routing(&self, rt: &ResourceType) -> bool {
        self.routing_resources
            .iter()
            .any(|r| r.eq_ignore_ascii_case(&rt.resource))
    }

    /// Parses a config file's text. Missing keys take their defaults; a present
    /// `resourceTypes` replaces the default table; unknown keys are ignored.
    /// An empty document gives [`Config::default`].
    pub fn from_yaml(s: &str) -> Result<Config, ConfigError> {
        let doc: Value = if s.trim().is_empty() {
            Value::Null
        } else {
            serde_yaml::from_str(s).map_err(|e| ConfigError::Yaml(e.to_string()))?
        };
        let mut config = Config::default();
        let top = match &doc {
            Value::Null => return Ok(config),
            Value::Object(m) => m,
            other => return Err(ConfigError::NotAMapping(json_type(other))),
        };

        if let Some(v) = get_ci(top, "resourceTypes") {
            config.resource_types = parse_resource_types(v)?;
        }
        if let Some(v) = get_ci(top, "defaultResync") {
            let text = v.as_str().ok_or_else(|| {
                ConfigError::field("defaultResync", "must be a duration string such as \"15m\"")
            })?;
            let d = parse_go_duration(text).map_err(|reason| {
                ConfigError::field("defaultResync", format!("{text:?}: {reason}"))
            })?;
            if d.is_zero() {
                return Err(ConfigError::field(
                    "defaultResync",
                    "must be greater than zero",
                ));
            }
            config.default_resync = d;
        }
        if let Some(v) = get_ci(top, "clusterScoped") {
            config.cluster_scoped = as_bool(v, "clusterScoped")?;
        }
        if let Some(v) = get_ci(top, "addFinalizer") {
            config.add_finalizer = as_bool(v, "addFinalizer")?;
        }
        if let Some(v) = get_ci(top, "routemapVersions") {
            let list = string_list(v, "routemapVersions")?;
            if list.is_empty() {
                return Err(ConfigError::field("routemapVersions", "must not be empty"));
            }
            config.routemap_versions = list;
        }
        if let Some(v) = get_ci(top, "routingResources") {
            config.routing_resources = string_list(v, "routingResources")?
                .into_iter()
                .map(|r| r.to_lowercase())
                .collect();
        }
        Ok(config)
    }
}

fn parse_resource_types(v: &Value) -> Result<BTreeMap<String, ResourceType>, ConfigError> {
    let map = v
        .as_object()
        .ok_or_else(|| ConfigError::field("resourceTypes", "must be a mapping of short names"))?;
    let mut out = BTreeMap::new();
    for (short, entry) in map {
        let path = format!("resourceTypes.{short}");
        if short.is_empty() {
            return Err(ConfigError::field(
                "resourceTypes",
                "short names must not be empty",
            ));
        }
        let entry = entry
            .as_object()
            .ok_or_else(|| ConfigError::field(&path, "must be a mapping"))?;
        let group = match get_ci(entry, "group") {
            None => String::new(),
            Some(g) => g
                .as_str()
                .ok_or_else(|| ConfigError::field(format!("{path}.group"), "must be a string"))?
                .to_string(),
        };
        let version = required_str(entry, "version", &path)?;
        let resource = required_str(entry, "resource", &path)?;
        let conditions = match get_ci(entry, "conditions") {
            None => Vec::new(),
            Some(c) => parse_conditions(c, &format!("{path}.conditions"))?,
        };
        let check_generation = match get_ci(entry, "checkGeneration") {
            None => ResourceType::default_check_generation(&group),
            Some(b) => as_bool(b, &format!("{path}.checkGeneration"))?,
        };
        out.insert(
            short.clone(),
            ResourceType {
                group,
                version,
                resource,
                conditions,
                check_generation,
            },
        );
    }
    Ok(out)
}

/// Conditions are strings (`- Ready`). Objects `{name: Ready, status: "True"}` from older
/// Iter8 configs are accepted too, as long as the wanted status is `True`.
fn parse_conditions(v: &Value, path: &str) -> Result<Vec<String>, ConfigError> {
    let list = v
        .as_array()
        .ok_or_else(|| ConfigError::field(path, "must be a list of condition types"))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let item_path = format!("{path}[{i}]");
        let name = match item {
            Value::String(s) => s.clone(),
            Value::Object(m) => {
                let name = required_str(m, "name", &item_path)?;
                if let Some(status) = get_ci(m, "status") {
                    let status = status.as_str().unwrap_or_default();
                    if !status.eq_ignore_ascii_case("true") {
                        return Err(ConfigError::field(
                            format!("{item_path}.status"),
                            "only status \"True\" is supported",
                        ));
                    }
                }
                name
            }
            _ => {
                return Err(ConfigError::field(
                    item_path,
                    "must be a condition type string",
                ))
            }
        };
        if name.is_empty() {
            return Err(ConfigError::field(item_path, "must not be empty"));
        }
        out.push(name);
    }
    Ok(out)
}

/// Case-insensitive key lookup, preferring an exact match; `null` counts as absent.
fn get_ci<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    let found = map.get(key).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    });
    found.filter(|v| !v.is_null())
}

fn required_str(map: &Map<String, Value>, key: &str, path: &str) -> Result<String, ConfigError> {
    match get_ci(map, key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) | None => {
            Err(ConfigError::field(format!("{path}.{key}"), "is required"))
        }
        Some(_) => Err(ConfigError::field(
            format!("{path}.{key}"),
            "must be a string",
        )),
    }
}

fn as_bool(v: &Value, path: &str) -> Result<bool, ConfigError> {
    v.as_bool()
        .ok_or_else(|| ConfigError::field(path, "must be true or false"))
}

fn string_list(v: &Value, path: &str) -> Result<Vec<String>, ConfigError> {
    let list = v
        .as_array()
        .ok_or_else(|| ConfigError::field(path, "must be a list of strings"))?;
    list.iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| {
                    ConfigError::field(format!("{path}[{i}]"), "must be a non-empty string")
                })
        })
        .collect()
}

/// Name of a JSON value's type, for error messages.
pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Parses a Go duration string (`time.ParseDuration`): an optional sign and a sequence of
/// decimal numbers, each with an optional fraction and a unit among `ns`, `us` (`µs`),
/// `ms`, `s`, `m`, `h`; e.g. `15m`, `1h30m`, `1.5s`, `500ms`. `0` needs no unit.
/// Negative durations are refused.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let mut rest = s;
    let mut negative = false;
    if let Some(r) = rest.strip_prefix('-') {
        negative = true;
        rest = r;
    } else if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err("invalid duration".to_string());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after_int) = rest.split_at(int_len);
        let (frac_part, after_num) = match after_int.strip_prefix('.') {
            Some(f) => {
                let frac_len = f.bytes().take_while(u8::is_ascii_digit).count();
                f.split_at(frac_len)
            }
            None => ("", after_int),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err("invalid duration".to_string());
        }
        let unit_len = after_num
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(after_num.len(), |(i, _)| i);
        let (unit, after_unit) = after_num.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err("missing unit in duration".to_string()),
            other => return Err(format!("unknown unit {other:?} in duration")),
        };
        let int_value: u128 = if int_part.is_empty() {
            0
        } else {
            int_part
                .parse()
                .map_err(|_| "duration out of range".to_string())?
        };
        let mut value = int_value
            .checked_mul(unit_nanos)
            .ok_or_else(|| "duration out of range".to_string())?;
        // Fractions beyond nanosecond precision do not matter; cap the digits we read.
        let frac_digits = &frac_part[..frac_part.len().min(18)];
        if !frac_digits.is_empty() {
            let frac: u128 = frac_digits
                .parse()
                .map_err(|_| "invalid duration".to_string())?;
            let scale = 10u128.pow(frac_digits.len() as u32);
            value += frac * unit_nanos / scale;
        }
        total = total
            .checked_add(value)
            .ok_or_else(|| "duration out of range".to_string())?;
        // Go durations are an i64 of nanoseconds.
        if total > i64::MAX as u128 {
            return Err("duration out of range".to_string());
        }
        rest = after_unit;
    }
    if negative && total > 0 {
        return Err("duration must not be negative".to_string());
    }
    let secs = (total / 1_000_000_000) as u64;
    let nanos = (total % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_table_matches_spec() {
        let c = Config::default();
        let keys: Vec<&str> = c.resource_types.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "cm",
                "deploy",
                "httproute",
                "isvc",
                "se",
                "service",
                "svc",
                "vs"
            ]
        );
        let isvc = &c.resource_types["isvc"];
        assert_eq!(isvc.api_version(), "serving.kserve.io/v1beta1");
        assert_eq!(isvc.conditions, ["Ready"]);
        assert!(!isvc.check_generation);
        let deploy = &c.resource_types["deploy"];
        assert_eq!(deploy.api_version(), "apps/v1");
        assert_eq!(deploy.conditions, ["Available"]);
        assert!(deploy.check_generation);
        assert_eq!(c.resource_types["svc"].api_version(), "v1");
        assert_eq!(c.resource_types["service"], c.resource_types["svc"]);
        assert_eq!(c.resource_types["cm"].resource, "configmaps");
        assert_eq!(
            c.resource_types["httproute"].api_version(),
            "gateway.networking.k8s.io/v1"
        );
        assert_eq!(
            c.resource_types["vs"].api_version(),
            "networking.istio.io/v1beta1"
        );
        assert_eq!(c.resource_types["se"].resource, "serviceentries");
        assert_eq!(c.default_resync, Duration::from_secs(900));
        assert!(!c.cluster_scoped);
        assert!(!c.add_finalizer);
        assert_eq!(c.routemap_versions, ["v1.1"]);
    }

    #[test]
    fn empty_document_is_default() {
        assert_eq!(Config::from_yaml("").unwrap(), Config::default());
        assert_eq!(Config::from_yaml("# nothing\n").unwrap(), Config::default());
        assert_eq!(Config::from_yaml("{}").unwrap(), Config::default());
    }

    #[test]
    fn original_chart_config_parses() {
        // The original controller chart's config, including keys we do not use.
        let yaml = r#"
defaultResync: 15m
image: iter8/iter8:1.1
logLevel: info
resourceTypes:
  svc:
    Group: ""
    Version: v1
    Resource: services
  deploy:
    Group: apps
    Version: v1
    Resource: deployments
    conditions:
    - Available
  isvc:
    Group: serving.kserve.io
    Version: v1beta1
    Resource: inferenceservices
    conditions:
    - Ready
abn:
  port: 50051
persist: false
"#;
        let c = Config::from_yaml(yaml).unwrap();
        assert_eq!(c.resource_types.len(), 3, "replaces the default table");
        assert_eq!(
            c.resource_types["isvc"],
            ResourceType::new("serving.kserve.io", "v1beta1", "inferenceservices")
                .with_conditions(&["Ready"])
        );
        assert!(c.resource_types["deploy"].check_generation);
        assert!(!c.resource_types["isvc"].check_generation);
        assert_eq!(c.resource_types["svc"].api_version(), "v1");
    }

    #[test]
    fn keys_in_any_case_and_new_fields() {
        let yaml = r#"
resourcetypes:
  isvc:
    group: serving.kserve.io
    version: v1beta1
    RESOURCE: inferenceservices
    conditions: [Ready, {name: PredictorReady, status: "True"}]
    checkGeneration: true
  x:
    Version: v1
    Resource: things
clusterScoped: true
addFinalizer: true
routemapVersions: [v1.1, v1.2]
DefaultResync: 1h30m
"#;
        let c = Config::from_yaml(yaml).unwrap();
        let isvc = &c.resource_types["isvc"];
        assert_eq!(isvc.resource, "inferenceservices");
        assert_eq!(isvc.conditions, ["Ready", "PredictorReady"]);
        assert!(isvc.check_generation);
        assert_eq!(c.resource_types["x"].group, "");
        assert!(c.resource_types["x"].check_generation);
        assert!(c.cluster_scoped);
        assert!(c.add_finalizer);
        assert_eq!(c.routemap_versions, ["v1.1", "v1.2"]);
        assert_eq!(c.default_resync, Duration::from_secs(5400));
    }

    #[test]
    fn config_errors() {
        let cases = [
            ("[1, 2]", "config must be a yaml mapping, found a list"),
            (
                "resourceTypes: {a: {Resource: x}}",
                "invalid config field resourceTypes.a.version: is required",
            ),
            (
                "resourceTypes: {a: {Version: v1, Resource: x, conditions: Ready}}",
                "invalid config field resourceTypes.a.conditions: must be a list of condition types",
            ),
            (
                "resourceTypes: {a: {Version: v1, Resource: x, conditions: [{name: R, status: \"False\"}]}}",
                "invalid config field resourceTypes.a.conditions[0].status: only status \"True\" is supported",
            ),
            (
                "defaultResync: 15",
                "invalid config field defaultResync: must be a duration string such as \"15m\"",
            ),
            (
                "defaultResync: 15x",
                "invalid config field defaultResync: \"15x\": unknown unit \"x\" in duration",
            ),
            (
                "defaultResync: 0s",
                "invalid config field defaultResync: must be greater than zero",
            ),
            (
                "clusterScoped: maybe",
                "invalid config field clusterScoped: must be true or false",
            ),
            (
                "routemapVersions: []",
                "invalid config field routemapVersions: must not be empty",
            ),
        ];
        for (yaml, want) in cases {
            let err = Config::from_yaml(yaml).unwrap_err();
            assert_eq!(err.to_string(), want, "for {yaml}");
            assert_eq!(err.category(), "config");
        }
        assert!(matches!(
            Config::from_yaml("a: [").unwrap_err(),
            ConfigError::Yaml(_)
        ));
    }

    #[test]
    fn go_durations() {
        let ok = [
            ("15m", Duration::from_secs(900)),
            ("1h30m", Duration::from_secs(5400)),
            ("90s", Duration::from_secs(90)),
            ("500ms", Duration::from_millis(500)),
            ("1.5s", Duration::from_millis(1500)),
            (".5m", Duration::from_secs(30)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("1h1m1s1ms", Duration::from_millis(3_661_001)),
            ("+2m", Duration::from_secs(120)),
            ("0", Duration::ZERO),
            ("-0", Duration::ZERO),
        ];
        for (s, want) in ok {
            assert_eq!(parse_go_duration(s), Ok(want), "{s}");
        }
        for bad in ["", "15", "m", "1.m5", "-1s", "1d", "3000000h", ".s", "1s "] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} must fail");
        }
    }
}
