//! The tutorial's inference request as a client outside the cluster sends it: POST
//! input.json to a gateway's address with `Host: <app>.<ns>`, and what the answer says about
//! who served it. Shared by the data-plane tests (`mod infer;`).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::Value;

/// The tutorial's input.json (iter8-tools/docs samples/kserve-serving/input.json).
pub const INPUT: &str = r#"{"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP32", "data": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]}]}"#;

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

pub type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

pub fn http_client() -> HttpClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// The header the tutorial's candidate requests carry, or none.
pub fn traffic(test: bool) -> &'static [(&'static str, &'static str)] {
    if test {
        &[("traffic", "test")]
    } else {
        &[]
    }
}

/// What a client sees of one answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// The `app-version` response header the routing object adds.
    pub app_version: Option<String>,
    /// The JSON body, or the text as a JSON string when it is not JSON.
    pub body: Value,
}

impl Answer {
    /// The model that answered (MLServer's V2 `model_name`).
    pub fn model_name(&self) -> Option<&str> {
        self.body["model_name"].as_str()
    }

    /// A 200 from `version`: its `app-version` header and the model that answered both name
    /// it (KServe names a version's model after its InferenceService).
    pub fn is_from(&self, version: &str) -> bool {
        self.status == 200
            && self.app_version.as_deref() == Some(version)
            && self.model_name() == Some(version)
    }

    /// The trained variant that answered (`model_version`: `v0` or `v1`).
    pub fn model_version(&self) -> Option<&str> {
        self.body["model_version"].as_str()
    }
}

/// Sends the tutorial's request to `gateway` with `Host: host` and `headers`; an error is a
/// request that got no HTTP answer (in words).
pub async fn infer(
    client: &HttpClient,
    gateway: SocketAddr,
    host: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, String> {
    let mut req = hyper::Request::post(format!("http://{gateway}/"))
        .header("Host", host)
        .header("Content-Type", "application/json");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req
        .body(Full::new(Bytes::from_static(INPUT.as_bytes())))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(TIMEOUT, client.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let app_version = resp
        .headers()
        .get("app-version")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Ok(Answer {
        status,
        app_version,
        body,
    })
}
