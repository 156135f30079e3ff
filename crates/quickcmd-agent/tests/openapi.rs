//! `GET /api/v1/openapi.json` from a real agent: it is `docs/openapi.yaml` as JSON, and it
//! describes every route the router serves with exactly the methods the agent answers.

use std::collections::BTreeSet;

use quickcmd_testkit::{Config, TestAgent};
use reqwest::Method;
use serde_json::Value;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn yaml_as_json() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_docs_openapi_yaml_and_it_covers_every_route() {
    let agent = TestAgent::start("openapi", Config::default());

    // Served without auth, as JSON, equal to the YAML in docs/.
    let reply = agent
        .request(Method::GET, "/api/v1/openapi.json", None)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        reply
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let served = reply.json();
    assert_eq!(
        served,
        yaml_as_json(),
        "/api/v1/openapi.json differs from docs/openapi.yaml"
    );
    assert!(
        served["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "not an OpenAPI 3 document"
    );

    // Every route the router serves is described, and nothing else is.
    let paths = served["paths"].as_object().expect("paths is an object");
    let served_routes: BTreeSet<&str> = quickcmd_agent::route_paths().into_iter().collect();
    // A later-version operation counts as not served unless it is also marked served.
    let since = |path: &str, method: &str| {
        let operation = &paths[path][method];
        operation["x-quickcmd-since"]
            .as_str()
            .filter(|_| operation["x-quickcmd-served"] != Value::Bool(true))
    };
    let described_routes: BTreeSet<&str> = paths
        .iter()
        .filter(|(path, item)| {
            METHODS
                .iter()
                .any(|m| item.get(*m).is_some() && since(path, m).is_none())
        })
        .map(|(path, _)| path.as_str())
        .collect();
    assert_eq!(
        served_routes, described_routes,
        "routes of api::router vs v1 paths of docs/openapi.yaml"
    );

    // Each described method is served and each other method is 405, on every route.
    for path in &served_routes {
        let concrete = path.replace("{id}", "openapi-probe");
        for method in METHODS {
            let http_method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let reply = agent.request(http_method, &concrete, None).await;
            let described = paths[*path].get(method).is_some() && since(path, method).is_none();
            let code = serde_json::from_str::<Value>(&reply.text)
                .ok()
                .and_then(|v| v["code"].as_str().map(str::to_string));
            if described {
                // (A GET on the stream over HTTP/2 is a plain-text 405 from the WebSocket
                // extractor, not the router's METHOD_NOT_ALLOWED.)
                assert!(
                    !matches!(code.as_deref(), Some("NOT_FOUND" | "METHOD_NOT_ALLOWED")),
                    "{method} {path} is described but not served: {} {}",
                    reply.status,
                    reply.text
                );
                let statuses = paths[*path][method]["responses"]
                    .as_object()
                    .expect("responses");
                assert!(
                    statuses.contains_key(&reply.status.to_string()),
                    "{method} {path} answered {} which the description does not list: {}",
                    reply.status,
                    reply.text
                );
            } else {
                reply.assert_error(405, "METHOD_NOT_ALLOWED");
            }
        }
    }

    // Operations marked as later versions are the ones this agent does not serve yet.
    for (path, item) in paths {
        for method in METHODS {
            if item.get(method).is_some() && since(path, method).is_some() {
                let http_method =
                    Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
                let reply = agent.request(http_method, path, None).await;
                reply.assert_error(404, "NOT_FOUND");
            }
        }
    }
}
