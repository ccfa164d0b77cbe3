//! The management API's errors as RabbitMQ answers them: a status code and
//! a JSON body `{"error": …, "reason": …}`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::core::admin::AdminError;
use crate::core::error::codes;

/// An error answer.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    error: &'static str,
    reason: String,
    /// Ask the client for credentials (`WWW-Authenticate`).
    challenge: bool,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, reason: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            reason: reason.into(),
            challenge: false,
        }
    }

    /// 401 with a challenge: no or wrong credentials.
    pub fn unauthenticated(reason: impl Into<String>) -> Self {
        ApiError {
            challenge: true,
            ..ApiError::new(StatusCode::UNAUTHORIZED, "not_authorized", reason)
        }
    }

    /// 401 without a challenge: a known user without the right tag or
    /// permission (RabbitMQ answers those with 401 too).
    pub fn not_authorised(reason: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "not_authorised", reason)
    }

    /// 404.
    pub fn not_found() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "Object Not Found", "Not Found")
    }

    /// 400.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", reason)
    }

    /// 405.
    pub fn method_not_allowed() -> Self {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "bad_request",
            "Method Not Allowed",
        )
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match &e {
            AdminError::NoSuchUser(_) | AdminError::NoSuchVhost(_) | AdminError::NotFound(_) => {
                ApiError::not_found()
            }
            AdminError::UserExists(_) | AdminError::Invalid(_) => {
                ApiError::bad_request(e.to_string())
            }
            AdminError::Amqp(amqp) => match amqp.code {
                codes::NOT_FOUND => ApiError::not_found(),
                codes::ACCESS_REFUSED => ApiError::not_authorised(amqp.text.clone()),
                _ => ApiError::bad_request(amqp.text.clone()),
            },
        }
    }
}

impl From<String> for ApiError {
    fn from(reason: String) -> Self {
        ApiError::bad_request(reason)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = axum::Json(json!({"error": self.error, "reason": self.reason}));
        if self.challenge {
            (
                self.status,
                [(
                    header::WWW_AUTHENTICATE,
                    "Basic realm=\"RabbitMQ Management\"",
                )],
                body,
            )
                .into_response()
        } else {
            (self.status, body).into_response()
        }
    }
}
