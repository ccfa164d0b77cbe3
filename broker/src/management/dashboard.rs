//! The dashboard at `/`: one static page (compiled in, no build step)
//! whose scripts poll the management API. It opens with basic credentials
//! in the URL (`http://user:pass@host:port/`) or through its login form.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::Shared;

/// The page.
const PAGE: &str = include_str!("dashboard.html");

/// `GET /`: the page. Credentials sent with it must be valid (a browser
/// given them in the URL sends them); without any, the page asks for them.
pub(crate) async fn page(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if headers.contains_key(header::AUTHORIZATION) {
        s.caller(&headers)?;
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response())
}
