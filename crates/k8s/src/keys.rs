//! Names of things in the cluster: resource types, objects and routemaps. No I/O.

use std::fmt;

use iter8_core::config::ResourceType;
use kube::core::ApiResource;

/// A group/version/resource, the identity of a watched type.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gvr {
    pub group: String,
    pub version: String,
    pub resource: String,
}

impl Gvr {
    /// The type a config entry names (its `Group`, `Version`, `Resource`).
    pub fn of(rt: &ResourceType) -> Gvr {
        Gvr {
            group: rt.group.clone(),
            version: rt.version.clone(),
            resource: rt.resource.to_lowercase(),
        }
    }

    /// `v1` or `group/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Enough to list, watch, patch and delete; `kind` comes from discovery when needed.
    pub fn api_resource(&self, kind: &str) -> ApiResource {
        ApiResource {
            group: self.group.clone(),
            version: self.version.clone(),
            api_version: self.api_version(),
            kind: kind.to_string(),
            plural: self.resource.clone(),
        }
    }
}

impl fmt::Display for Gvr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}", self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

/// One object of a watched type.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub gvr: Gvr,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.gvr, self.namespace, self.name)
    }
}

/// A routemap ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoutemapKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for RoutemapKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}
