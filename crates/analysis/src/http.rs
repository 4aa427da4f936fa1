//! The HTTP the analysis speaks: Prometheus instant queries, and the POSTs of the promotion
//! gate and notifications. One pooled client (http and https, the system's roots).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use crate::judge::Reading;

/// Largest response body read (a Prometheus answer with one series is a few hundred bytes).
const MAX_BODY: usize = 1 << 20;

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// A pooled HTTP client.
#[derive(Clone)]
pub struct Http {
    client: Client<Https, Full<Bytes>>,
}

/// An answer: status and body.
struct Answer {
    status: StatusCode,
    body: Bytes,
}

impl Http {
    pub fn new() -> Result<Http, String> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| format!("loading the system's TLS roots: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Http {
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Answer, String> {
        let mut req = Request::builder().method(method).uri(url);
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| format!("{url}: {e}"))?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                // The innermost cause says what happened (connection refused, DNS, TLS).
                let mut cause: &dyn std::error::Error = &e;
                while let Some(inner) = cause.source() {
                    cause = inner;
                }
                format!("{url} unreachable: {cause}")
            })?;
            let status = resp.status();
            let limited = http_body_util::Limited::new(resp.into_body(), MAX_BODY);
            let body = limited
                .collect()
                .await
                .map_err(|e| format!("{url}: reading the answer: {e}"))?
                .to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(timeout, exchange).await.map_err(|_| {
            format!(
                "{url} did not answer within {}",
                crate::duration::display(timeout)
            )
        })?
    }

    /// An instant query at `address` (Prometheus's HTTP API).
    pub async fn query(&self, address: &str, query: &str, timeout: Duration) -> Reading {
        let mut url = match url::Url::parse(&format!("{address}/api/v1/query")) {
            Ok(u) => u,
            Err(e) => return Reading::Error(format!("Prometheus address {address:?}: {e}")),
        };
        url.query_pairs_mut()
            .append_pair("query", query)
            .append_pair("timeout", &crate::duration::prometheus(timeout));
        match self.send(Method::GET, url.as_str(), None, timeout).await {
            Err(e) => Reading::Error(format!("Prometheus: {e}")),
            Ok(a) => parse_instant(a.status, &a.body),
        }
    }

    /// POSTs `payload`; `Ok` for a 2xx answer, else why not.
    pub async fn post(
        &self,
        url: &str,
        payload: &serde_json::Value,
        timeout: Duration,
    ) -> Result<(), String> {
        let body = serde_json::to_vec(payload).map_err(|e| e.to_string())?;
        let a = self.send(Method::POST, url, Some(body), timeout).await?;
        if a.status.is_success() {
            Ok(())
        } else {
            let text = String::from_utf8_lossy(&a.body);
            let text = text.trim();
            let text: String = text.chars().take(200).collect();
            Err(format!("{url} answered {}: {text}", a.status))
        }
    }
}

/// Reads Prometheus's answer to an instant query: one sample (a scalar, or a vector of exactly
/// one series) is a value; an empty vector is no data; more series, a range result or an error
/// answer are errors (a refused query names Prometheus's reason).
pub fn parse_instant(status: StatusCode, body: &[u8]) -> Reading {
    let json: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => {
            let text: String = String::from_utf8_lossy(body).chars().take(200).collect();
            return Reading::Error(format!("Prometheus answered {status}: {}", text.trim()));
        }
    };
    if json["status"] != "success" {
        let kind = json["errorType"].as_str().unwrap_or("error");
        let error = json["error"].as_str().unwrap_or("no reason given");
        let what = if status == StatusCode::BAD_REQUEST || kind == "bad_data" {
            "refused the query"
        } else {
            "failed"
        };
        return Reading::Error(format!("Prometheus {what} ({kind}): {error}"));
    }
    let data = &json["data"];
    let sample = match data["resultType"].as_str() {
        Some("scalar") => &data["result"],
        Some("vector") => {
            let series = data["result"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            match series {
                [] => return Reading::NoData,
                [one] => &one["value"],
                more => {
                    return Reading::Error(format!(
                        "the query returned {} series, not one (aggregate it, e.g. with sum())",
                        more.len()
                    ))
                }
            }
        }
        other => {
            return Reading::Error(format!(
                "the query returned a {}, not an instant vector or scalar",
                other.unwrap_or("result of unknown type")
            ))
        }
    };
    match sample[1].as_str().map(str::parse::<f64>) {
        Some(Ok(v)) => Reading::Value(v),
        _ => Reading::Error(format!(
            "Prometheus answered a sample that is not a number: {sample}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(values: &[&str]) -> Vec<u8> {
        let result: Vec<_> = values
            .iter()
            .enumerate()
            .map(|(i, v)| serde_json::json!({"metric": {"i": i.to_string()}, "value": [1.5, v]}))
            .collect();
        serde_json::to_vec(&serde_json::json!({"status": "success",
            "data": {"resultType": "vector", "result": result}}))
        .expect("json")
    }

    #[test]
    fn one_series_is_a_value() {
        assert_eq!(
            parse_instant(StatusCode::OK, &vector(&["0.25"])),
            Reading::Value(0.25)
        );
        let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"3"]}}"#;
        assert_eq!(parse_instant(StatusCode::OK, scalar), Reading::Value(3.0));
        let Reading::Value(nan) = parse_instant(StatusCode::OK, &vector(&["NaN"])) else {
            panic!("NaN is a value");
        };
        assert!(nan.is_nan());
        assert_eq!(
            parse_instant(StatusCode::OK, &vector(&["+Inf"])),
            Reading::Value(f64::INFINITY)
        );
    }

    #[test]
    fn empty_is_no_data_and_many_is_an_error() {
        assert_eq!(parse_instant(StatusCode::OK, &vector(&[])), Reading::NoData);
        let Reading::Error(e) = parse_instant(StatusCode::OK, &vector(&["1", "2"])) else {
            panic!("two series accepted");
        };
        assert!(e.contains("2 series"), "{e}");
        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(matches!(
            parse_instant(StatusCode::OK, matrix),
            Reading::Error(_)
        ));
    }

    #[test]
    fn refusals_and_garbage_are_errors_with_the_reason() {
        let bad = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#;
        let Reading::Error(e) = parse_instant(StatusCode::BAD_REQUEST, bad) else {
            panic!("accepted");
        };
        assert_eq!(
            e,
            "Prometheus refused the query (bad_data): parse error at char 5"
        );
        let Reading::Error(e) = parse_instant(StatusCode::BAD_GATEWAY, b"<html>proxy</html>")
        else {
            panic!("accepted");
        };
        assert!(e.contains("502"), "{e}");
    }
}
