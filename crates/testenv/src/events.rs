//! Events the controller publishes on routemaps, read the way a user reads them
//! (`kubectl events --for cm/NAME`): all of them, the Warnings as "Reason: note", and a wait for
//! a Warning that says something.

use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::api::Api;
use kube::Client;

/// Every events.k8s.io Event regarding object `name` in `ns` (empty when they cannot be read).
pub async fn about(client: &Client, ns: &str, name: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

/// The Warning Events regarding `name`, as "Reason: note".
pub async fn warnings(client: &Client, ns: &str, name: &str) -> Vec<String> {
    about(client, ns, name)
        .await
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default()
            )
        })
        .collect()
}

/// Waits up to `timeout` for a Warning regarding `name` whose "Reason: note" contains every
/// needle; returns it, or an error listing the Warnings there are.
pub async fn wait_warning(
    client: &Client,
    ns: &str,
    name: &str,
    needles: &[&str],
    timeout: Duration,
) -> anyhow::Result<String> {
    let what = format!("a Warning Event on {name} containing {needles:?}");
    let found = crate::wait_for(&what, timeout, || async {
        warnings(client, ns, name)
            .await
            .into_iter()
            .find(|w| needles.iter().all(|n| w.contains(n)))
    })
    .await;
    match found {
        Ok(w) => Ok(w),
        Err(e) => Err(e.context(format!(
            "Warnings there are: {:#?}",
            warnings(client, ns, name).await
        ))),
    }
}
