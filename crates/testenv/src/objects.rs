//! Reading and writing objects of any kind for tests and benchmarks, through
//! [`DynamicObject`]: server-side apply (as Helm or the harness would), get, wait until an
//! object looks right, and status writes through the status subresource. Does API I/O.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use kube::Client;
use serde_json::{json, Value};

/// The API of `ar` in `ns` (cluster-wide when `None`).
fn api(client: &Client, ar: &ApiResource, ns: Option<&str>) -> Api<DynamicObject> {
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    }
}

/// Server-side applies `obj` (with apiVersion, kind and name) into `ns` as field manager
/// `manager`, forcing conflicts, as Helm 4 does; returns the object as stored.
pub async fn apply(
    client: &Client,
    ar: &ApiResource,
    ns: Option<&str>,
    obj: &Value,
    manager: &str,
) -> Result<DynamicObject> {
    let name = obj["metadata"]["name"]
        .as_str()
        .ok_or_else(|| anyhow!("object without a name: {obj}"))?;
    api(client, ar, ns)
        .patch(
            name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(obj),
        )
        .await
        .with_context(|| format!("applying {} {}/{name}", ar.kind, ns.unwrap_or("")))
}

/// Object `ns/name`, if it exists.
pub async fn get(
    client: &Client,
    ar: &ApiResource,
    ns: &str,
    name: &str,
) -> Result<Option<DynamicObject>> {
    api(client, ar, Some(ns))
        .get_opt(name)
        .await
        .with_context(|| format!("reading {} {ns}/{name}", ar.kind))
}

/// `metadata.generation` of object `ns/name`, which must exist.
pub async fn generation(client: &Client, ar: &ApiResource, ns: &str, name: &str) -> Result<i64> {
    get(client, ar, ns, name)
        .await?
        .ok_or_else(|| anyhow!("{} {ns}/{name} does not exist", ar.kind))?
        .metadata
        .generation
        .ok_or_else(|| anyhow!("{} {ns}/{name} has no generation", ar.kind))
}

/// Waits until object `ns/name` exists and `check` accepts it; returns it. Failed reads are
/// retried (the API server may be restarting); fails naming `what` after `timeout`.
pub async fn wait(
    client: &Client,
    ar: &ApiResource,
    ns: &str,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&DynamicObject) -> bool,
) -> Result<DynamicObject> {
    crate::wait_for(what, timeout, || async {
        get(client, ar, ns, name)
            .await
            .ok()
            .flatten()
            .filter(|o| check(o))
    })
    .await
}

/// Merges `status` into object `ns/name`'s status through the status subresource (a JSON
/// merge patch: lists, such as `conditions`, are replaced whole; a `null` removes a field).
pub async fn patch_status(
    client: &Client,
    ar: &ApiResource,
    ns: &str,
    name: &str,
    status: &Value,
) -> Result<()> {
    api(client, ar, Some(ns))
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": status })),
        )
        .await
        .with_context(|| format!("writing the status of {} {ns}/{name}", ar.kind))?;
    Ok(())
}

/// Makes object `ns/name`'s status exactly `status`, as a controller that owns the whole
/// status writes it: like [`patch_status`], with every field in `fields` that `status` does
/// not set removed (a merge patch cannot otherwise remove what an earlier write set).
pub async fn replace_status(
    client: &Client,
    ar: &ApiResource,
    ns: &str,
    name: &str,
    status: &Value,
    fields: &[&str],
) -> Result<()> {
    let mut patch = status.clone();
    if let Some(map) = patch.as_object_mut() {
        for f in fields {
            map.entry(*f).or_insert(Value::Null);
        }
    }
    patch_status(client, ar, ns, name, &patch).await
}

/// Names of the field managers of an object, in the order the API server lists them.
pub fn field_managers(obj: &DynamicObject) -> Vec<String> {
    obj.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect()
}

/// (type, status, reason) of each condition of a status, for comparing states in tests.
#[cfg(test)]
pub(crate) fn condition_summary(status: &Value) -> Vec<(String, String, String)> {
    status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let field = |k: &str| c[k].as_str().unwrap_or("").to_string();
            (field("type"), field("status"), field("reason"))
        })
        .collect()
}

/// When the conditions of a status last changed (`lastTransitionTime`, RFC 3339 to the
/// second).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Times {
    /// When the controller first wrote the status: conditions unchanged since keep it.
    pub created: String,
    /// When the state being written was reached: conditions that changed to it get it.
    pub changed: String,
}

impl Times {
    /// Fixed times, as in the examples of shared/spec/kserve-status.md (tests compare
    /// nothing by time; fixed times make a rewrite of the same state a no-op).
    pub fn fixed(created: &str, changed: &str) -> Times {
        Times {
            created: created.to_string(),
            changed: changed.to_string(),
        }
    }

    /// `changed` is now; `created` as given (e.g. the object's `creationTimestamp`).
    pub fn now_since(created: &str) -> Times {
        Times {
            created: created.to_string(),
            changed: now(),
        }
    }
}

/// The current time as Kubernetes writes it in conditions.
pub fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}
