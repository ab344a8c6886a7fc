//! The error bodies of each API, for what the gateway itself refuses (bad JSON, an
//! unknown model or path). Authentication errors come from `ApiKeyLayer`.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use crossmodel_auth::{looks_like_key, redact_method, redact_path};
use serde_json::{Value, json};

use crate::connections::is_body_stalled;

/// Which API's conventions a response follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    OpenAi,
    Anthropic,
}

impl Api {
    /// On paths both APIs share, a request speaks Anthropic when it says which
    /// Anthropic version it wants.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        if headers.contains_key("anthropic-version") {
            Self::Anthropic
        } else {
            Self::OpenAi
        }
    }
}

/// An error of the OpenAI API: `{"error":{"message","type","param","code"}}`.
pub(crate) fn openai(
    status: StatusCode,
    message: impl Into<String>,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    let body = json!({
        "error": {
            "message": message.into(),
            "type": "invalid_request_error",
            "param": param,
            "code": code,
        }
    });
    (status, Json(body)).into_response()
}

/// An error of the Anthropic API: `{"type":"error","error":{"type","message"},
/// "request_id"}`.
pub(crate) fn anthropic(
    status: StatusCode,
    error_type: &str,
    message: impl Into<String>,
    headers: &HeaderMap,
) -> Response {
    let body = json!({
        "type": "error",
        "error": { "type": error_type, "message": message.into() },
        "request_id": request_id(headers),
    });
    (status, Json(body)).into_response()
}

/// A body that is not JSON, or not the object the route needs.
pub(crate) fn bad_json(api: Api, error: &serde_json::Error, headers: &HeaderMap) -> Response {
    let message = format!(
        "The request body is not valid JSON ({error}); send a JSON object with \
         `content-type: application/json`."
    );
    match api {
        Api::OpenAi => openai(StatusCode::BAD_REQUEST, message, None, None),
        Api::Anthropic => anthropic(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            message,
            headers,
        ),
    }
}

/// A body the gateway could not read: larger than it accepts (2 MB), stalled (see
/// `connections::body_deadline`), or cut off.
pub(crate) fn unreadable_body(
    api: Api,
    rejection: &BytesRejection,
    headers: &HeaderMap,
) -> Response {
    let (status, anthropic_type, message) = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            "The request body is too large; send at most 2 MB.",
        )
    } else if is_body_stalled(rejection) {
        (
            StatusCode::REQUEST_TIMEOUT,
            "timeout_error",
            "The request body stopped arriving; send it again without pauses.",
        )
    } else {
        (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "The request body could not be read; send it again.",
        )
    };
    match api {
        Api::OpenAi => openai(status, message, None, None),
        Api::Anthropic => anthropic(status, anthropic_type, message, headers),
    }
}

/// A model this gateway does not serve: each API's 404. The model is named unless it
/// looks like a key (pasted into the wrong field), which no reply repeats.
pub(crate) fn unknown_model(api: Api, model: &str, headers: &HeaderMap) -> Response {
    let model = if looks_like_key(model) {
        "the requested model"
    } else {
        model
    };
    match api {
        Api::OpenAi => openai(
            StatusCode::NOT_FOUND,
            format!(
                "The model `{model}` does not exist or you do not have access to it; \
                 GET /v1/models lists the models."
            ),
            Some("model"),
            Some("model_not_found"),
        ),
        Api::Anthropic => anthropic(
            StatusCode::NOT_FOUND,
            "not_found_error",
            format!("model: {model}"),
            headers,
        ),
    }
}

/// An authenticated request for a path no route serves. The method and path are
/// shown as the request log shows them: a key sent in either is cut.
pub(crate) async fn not_found(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    match Api::of(&headers) {
        Api::OpenAi => openai(
            StatusCode::NOT_FOUND,
            format!(
                "Invalid URL ({} {})",
                redact_method(&method),
                redact_path(uri.path())
            ),
            None,
            None,
        ),
        Api::Anthropic => anthropic(
            StatusCode::NOT_FOUND,
            "not_found_error",
            "Not found",
            &headers,
        ),
    }
}

/// A known path asked with the wrong method; method and path shown as in
/// [`not_found`].
pub(crate) async fn method_not_allowed(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let message = format!(
        "{} is not allowed on {}",
        redact_method(&method),
        redact_path(uri.path())
    );
    match Api::of(&headers) {
        Api::OpenAi => openai(StatusCode::METHOD_NOT_ALLOWED, message, None, None),
        Api::Anthropic => anthropic(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            message,
            &headers,
        ),
    }
}

/// The request id the gateway gave this request (see `serve::request_id`).
pub(crate) fn request_id(headers: &HeaderMap) -> Value {
    headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .map_or(Value::Null, |id| Value::String(id.to_owned()))
}
