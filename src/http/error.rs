//! The one mapping from domain errors to HTTP answers for Warden's REST surfaces (admin
//! API, OAuth, AI proxy). Handlers return [`ApiError`]; nothing else in `http/` picks a
//! status code. (The MCP endpoint answers most failures in JSON-RPC instead; see
//! `mcp/`.)

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::AuthRejection;
use crate::policy::Denial;

#[derive(Debug)]
pub enum ApiError {
    /// 401 with `WWW-Authenticate: Bearer resource_metadata=…` so clients can discover
    /// the authorization server.
    Unauthorized {
        rejection: AuthRejection,
        resource_metadata: String,
    },
    /// 403; for a missing scope, `WWW-Authenticate` names it (`insufficient_scope`) so a
    /// client can step up.
    Forbidden {
        denial: Denial,
        resource_metadata: String,
    },
    BadRequest(String),
    NotFound(String),
    Conflict(String),
    PayloadTooLarge {
        limit: usize,
    },
    /// 429 with `Retry-After` (whole seconds, rounded up).
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    /// 503: a dependency (database, upstream, audit trail) cannot serve right now.
    Unavailable(String),
    /// An upstream's failure passed on (AI proxy): the status is chosen by the caller
    /// (`http/ai.rs`) — the provider's own for most errors, 502 when it could not be
    /// reached or read, 504 when it did not answer in time. The provider's `Retry-After`
    /// is passed on whatever the status (503 and Anthropic's 529 carry one too); a 429
    /// always has one.
    Upstream {
        status: StatusCode,
        message: String,
        retry_after_secs: Option<u64>,
    },
    Internal(String),
    /// An OAuth 2.1 protocol error (RFC 6749 §5.2, RFC 7591 §3.2.2, RFC 8707):
    /// `{"error", "error_description"}`; `invalid_client` is 401, `server_error` 500,
    /// `temporarily_unavailable` 503, the rest 400.
    OAuth {
        error: &'static str,
        description: String,
    },
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized {
                rejection: AuthRejection::Unavailable(_),
                ..
            } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Upstream { status, .. } => *status,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::OAuth { error, .. } => match *error {
                "invalid_client" => StatusCode::UNAUTHORIZED,
                "server_error" => StatusCode::INTERNAL_SERVER_ERROR,
                "temporarily_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            },
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized {
                rejection: AuthRejection::MissingToken,
                ..
            } => "unauthorized",
            ApiError::Unauthorized { .. } => "invalid_token",
            ApiError::Forbidden {
                denial: Denial::InsufficientScope { .. },
                ..
            } => "insufficient_scope",
            ApiError::Forbidden { .. } => "forbidden",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Upstream { status, .. } => match status.as_u16() {
                429 => "rate_limited",
                502 => "bad_gateway",
                504 => "gateway_timeout",
                _ => "upstream_error",
            },
            ApiError::Internal(_) => "internal_error",
            ApiError::OAuth { error, .. } => error,
        }
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::Unauthorized { rejection, .. } => rejection.to_string(),
            ApiError::Forbidden { denial, .. } => denial.to_string(),
            ApiError::PayloadTooLarge { limit } => {
                format!("request body larger than {limit} bytes (server.max_body_bytes)")
            }
            ApiError::BadRequest(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::Unavailable(m)
            | ApiError::Internal(m) => m.clone(),
            ApiError::RateLimited { message, .. } | ApiError::Upstream { message, .. } => {
                message.clone()
            }
            ApiError::OAuth { description, .. } => description.clone(),
        }
    }
}

/// The `WWW-Authenticate` value for a 401 or 403 (RFC 6750, RFC 9728).
pub fn www_authenticate(error: &ApiError) -> Option<String> {
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    match error {
        ApiError::Unauthorized {
            rejection: AuthRejection::MissingToken,
            resource_metadata,
        } => Some(format!(
            "Bearer resource_metadata=\"{}\"",
            quote(resource_metadata)
        )),
        ApiError::Unauthorized {
            rejection,
            resource_metadata,
        } => Some(format!(
            "Bearer resource_metadata=\"{}\", error=\"invalid_token\", error_description=\"{}\"",
            quote(resource_metadata),
            quote(&rejection.to_string())
        )),
        ApiError::Forbidden {
            denial: Denial::InsufficientScope { required },
            resource_metadata,
        } => Some(format!(
            "Bearer resource_metadata=\"{}\", error=\"insufficient_scope\", scope=\"{}\"",
            quote(resource_metadata),
            quote(required)
        )),
        _ => None,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(message) = &self {
            tracing::error!(%message, "internal error answered with 500");
        }
        let body = if matches!(self, ApiError::OAuth { .. }) {
            json!({"error": self.code(), "error_description": self.message()})
        } else {
            json!({"error": self.code(), "message": self.message()})
        };
        let mut response = (self.status(), Json(body)).into_response();
        if let ApiError::OAuth { error, .. } = &self {
            let headers = response.headers_mut();
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            if *error == "invalid_client" {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"warden\""),
                );
            }
        }
        if let Some(value) = www_authenticate(&self).and_then(|v| HeaderValue::from_str(&v).ok()) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        let retry_after = match self {
            ApiError::RateLimited {
                retry_after_secs, ..
            } => Some(retry_after_secs),
            ApiError::Upstream {
                retry_after_secs: Some(secs),
                ..
            } => Some(secs),
            ApiError::Upstream { status, .. } if status == StatusCode::TOO_MANY_REQUESTS => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}
