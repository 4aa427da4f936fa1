//! `ExperimentResult`, the document a test PUTs to the controller's `/testResult` after each
//! task and the dashboards read back, in Iter8 v1.1's JSON shape (`base/experiment.go`).
//! The per-endpoint results stay JSON values here: [`crate::http`] writes Fortio's shape,
//! [`crate::grpc`] ghz's, and the dashboards read only the fields they need.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What Iter8 v1.1 calls its results' version.
pub const ITER8_VERSION: &str = "v1.1";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentResult {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revision: i64,
    /// RFC 3339 with nanoseconds; `""` when unknown (as Helm's time type marshals zero).
    #[serde(default, deserialize_with = "null_as_default")]
    pub start_time: String,
    #[serde(default)]
    pub num_completed_tasks: i64,
    #[serde(default)]
    pub failure: bool,
    /// Absent until the first load task ran (v1.1's dashboards crashed on that).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insights: Option<Insights>,
    #[serde(default)]
    pub iter8_version: String,
    /// Service-level objectives and whether each held (an addition; v1.1 had none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slos: Vec<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Insights {
    #[serde(default)]
    pub num_versions: i64,
    #[serde(default)]
    pub version_names: Option<Vec<Value>>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub task_data: TaskData,
}

/// Results by task and endpoint key (the URL or gRPC call, or the user's endpoint id).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<BTreeMap<String, Value>>,
}

/// v1.1 accepted `null` for these (Go's zero values); so do we.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn is_zero(x: &i64) -> bool {
    *x == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nulls_read_as_v1_1_read_them() {
        let r: ExperimentResult = serde_json::from_str(
            r#"{"startTime": null, "numCompletedTasks": 1, "insights": {"taskData": null}}"#,
        )
        .expect("v1.1 accepted it");
        assert_eq!(r.start_time, "");
        assert_eq!(r.insights.expect("insights").task_data, TaskData::default());
    }
}
