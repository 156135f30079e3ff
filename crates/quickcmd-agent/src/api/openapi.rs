//! `GET /api/v1/openapi.json`: `docs/openapi.yaml`, compiled in and converted to JSON once.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use quickcmd_protocol::ErrorCode;

use super::ApiError;

/// The description of the whole API, as written (YAML).
pub(super) const OPENAPI_YAML: &str = include_str!("../../../../docs/openapi.yaml");

/// The description as compact JSON, or why the embedded YAML could not be converted.
pub(super) fn openapi_json() -> Result<&'static str, &'static str> {
    static JSON: OnceLock<Result<String, String>> = OnceLock::new();
    JSON.get_or_init(|| {
        let value: serde_json::Value = serde_yaml::from_str(OPENAPI_YAML)
            .map_err(|e| format!("docs/openapi.yaml does not convert to JSON: {e}"))?;
        serde_json::to_string(&value).map_err(|e| format!("docs/openapi.yaml: {e}"))
    })
    .as_ref()
    .map(String::as_str)
    .map_err(String::as_str)
}

pub(super) async fn openapi() -> Response {
    match openapi_json() {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot serve the API description");
            ApiError::new(
                ErrorCode::Internal,
                "the agent's API description is unavailable; see the agent log",
            )
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_description_converts_to_json() {
        let json = openapi_json().unwrap_or_else(|e| panic!("{e}"));
        let value: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
        assert_eq!(value["openapi"], "3.1.0");
        assert!(value["paths"]["/api/v1/openapi.json"]["get"].is_object());
    }

    #[test]
    fn every_error_code_is_in_the_description_with_its_status() {
        let value: serde_json::Value =
            serde_json::from_str(openapi_json().unwrap_or_default()).unwrap_or_default();
        let schema = &value["components"]["schemas"]["ErrorCode"];
        let listed: Vec<&str> = schema["enum"]
            .as_array()
            .map(|codes| codes.iter().filter_map(|c| c.as_str()).collect())
            .unwrap_or_default();
        let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(listed, codes, "ErrorCode enum in docs/openapi.yaml");
        for code in ErrorCode::ALL {
            assert_eq!(
                schema["x-quickcmd-http-status"][code.as_str()].as_u64(),
                Some(u64::from(code.http_status())),
                "status of {code} in docs/openapi.yaml"
            );
        }
    }
}
