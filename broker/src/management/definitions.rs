//! `/api/definitions`: RabbitMQ's definitions JSON, exported (GET) and
//! imported (POST) by administrators, through [`crate::definitions`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::Value;

use super::error::ApiError;
use super::Shared;
use crate::definitions::Definitions;

/// `GET /api/definitions`.
pub(crate) async fn export(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    s.caller(&headers)?.require_administrator()?;
    Ok(Json(Definitions::export(&s.core)?.to_json()))
}

/// `POST /api/definitions`: 204 once imported; 400 naming the bad field.
pub(crate) async fn import(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    s.caller(&headers)?.require_administrator()?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("definitions must be UTF-8 JSON"))?;
    let definitions = Definitions::parse(text).map_err(|e| ApiError::bad_request(e.to_string()))?;
    definitions
        .import(&s.core)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}
