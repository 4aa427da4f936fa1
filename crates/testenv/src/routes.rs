//! What a routing object routes to, as tests check it: the route names of an Istio
//! VirtualService and the backends of a Gateway API HTTPRoute's rules (whose rules the release
//! chart does not name). Pure; a missing or odd field reads as empty.

use kube::api::DynamicObject;

/// Names of a VirtualService's HTTP routes (`spec.http[].name`), in order.
pub fn route_names(vs: &DynamicObject) -> Vec<String> {
    vs.data["spec"]["http"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str().map(String::from))
        .collect()
}

/// Backends of an HTTPRoute's rules: per rule, (Service name, weight; 0 when unset).
pub fn backends(route: &DynamicObject) -> Vec<Vec<(String, u64)>> {
    route.data["spec"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            r["backendRefs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| {
                    (
                        b["name"].as_str().unwrap_or_default().to_string(),
                        b["weight"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .collect()
}

/// Backend (Service) names of an HTTPRoute's rules, per rule.
pub fn backend_names(route: &DynamicObject) -> Vec<Vec<String>> {
    backends(route)
        .into_iter()
        .map(|rule| rule.into_iter().map(|(name, _)| name).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(spec: serde_json::Value) -> DynamicObject {
        serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "x"}, "spec": spec}),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn reads_virtual_service_routes_and_http_route_backends() {
        let vs =
            object(json!({"http": [{"name": "wisdom-1"}, {"route": []}, {"name": "wisdom-0"}]}));
        assert_eq!(route_names(&vs), ["wisdom-1", "wisdom-0"]);
        assert!(route_names(&object(json!({}))).is_empty());

        let route = object(json!({"rules": [
            {"backendRefs": [{"name": "httpbin-1", "weight": 30}]},
            {"backendRefs": [{"name": "httpbin-0"}]}]}));
        assert_eq!(
            backends(&route),
            [
                vec![("httpbin-1".to_string(), 30)],
                vec![("httpbin-0".to_string(), 0)]
            ]
        );
        assert_eq!(
            backend_names(&route),
            [vec!["httpbin-1"], vec!["httpbin-0"]]
        );
    }
}
