//! `POST /v1/messages`: the Anthropic Messages API, answered by the echo model.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::echo::{self, Reply};
use crate::errors::{self, Api};
use crate::ids::new_id;
use crate::models::Catalog;
use crate::sse::EventStream;

/// What a messages request asks, once checked.
struct Messages {
    model: String,
    stream: bool,
    reply: Reply,
}

/// `POST /v1/messages`.
pub(crate) async fn messages(
    State(catalog): State<Arc<Catalog>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(message) = check_version(&headers) {
        return invalid(message, &headers);
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return errors::unreadable_body(Api::Anthropic, &rejection, &headers),
    };
    let request: Value = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => return errors::bad_json(Api::Anthropic, &error, &headers),
    };

    let messages = match read_messages(&request) {
        Ok(messages) => messages,
        Err(message) => return invalid(message, &headers),
    };
    if !catalog.serves(&messages.model) {
        return errors::unknown_model(Api::Anthropic, &messages.model, &headers);
    }

    if messages.stream {
        stream(&messages).into_response()
    } else {
        Json(message(&messages)).into_response()
    }
}

/// The API requires `anthropic-version`; any dated version (`2023-06-01`) is
/// accepted, since the echo model answers every version alike.
fn check_version(headers: &HeaderMap) -> Result<(), &'static str> {
    let Some(version) = headers.get("anthropic-version") else {
        return Err("anthropic-version: header is required");
    };

    let dated = version.as_bytes().len() == 10
        && version
            .as_bytes()
            .iter()
            .enumerate()
            .all(|(index, byte)| match index {
                4 | 7 => *byte == b'-',
                _ => byte.is_ascii_digit(),
            });
    if dated {
        Ok(())
    } else {
        Err("anthropic-version: must be a date such as 2023-06-01")
    }
}

fn read_messages(request: &Value) -> Result<Messages, String> {
    let empty = Map::new();
    let fields = request.as_object().unwrap_or(&empty);

    let model = fields.get("model").and_then(Value::as_str);
    let max_tokens = fields.get("max_tokens").and_then(Value::as_u64);
    let messages = fields.get("messages").and_then(Value::as_array);
    let (Some(model), Some(max_tokens), Some(messages)) = (model, max_tokens, messages) else {
        let absent = [
            ("model", model.is_none()),
            ("max_tokens", max_tokens.is_none()),
            ("messages", messages.is_none()),
        ];
        let field = absent
            .iter()
            .find(|(_, missing)| *missing)
            .map_or("", |(name, _)| name);
        return Err(format!("{field}: Field required"));
    };
    if max_tokens == 0 {
        return Err("max_tokens: must be at least 1".to_owned());
    }

    Ok(Messages {
        model: model.to_owned(),
        stream: fields.get("stream").and_then(Value::as_bool) == Some(true),
        reply: echo::reply(fields.get("system"), messages, Some(max_tokens)),
    })
}

fn invalid(message: impl Into<String>, headers: &HeaderMap) -> Response {
    errors::anthropic(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        message,
        headers,
    )
}

fn stop_reason(reply: &Reply) -> &'static str {
    if reply.truncated {
        "max_tokens"
    } else {
        "end_turn"
    }
}

/// A `message` object.
fn message(messages: &Messages) -> Value {
    let reply = &messages.reply;
    json!({
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": messages.model,
        "content": [{ "type": "text", "text": reply.text() }],
        "stop_reason": stop_reason(reply),
        "stop_sequence": null,
        "usage": {
            "input_tokens": reply.prompt_tokens,
            "output_tokens": reply.completion_tokens(),
        },
    })
}

/// The Messages streaming sequence: `message_start`, one text block (start, one
/// delta per piece, stop), `message_delta` with the stop reason, `message_stop`.
fn stream(messages: &Messages) -> EventStream {
    let reply = &messages.reply;
    let mut events = EventStream::default();

    events.event(
        "message_start",
        &json!({
            "type": "message_start",
            "message": {
                "id": new_id("msg_"),
                "type": "message",
                "role": "assistant",
                "model": messages.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": { "input_tokens": reply.prompt_tokens, "output_tokens": 0 },
            },
        }),
    );
    events.event(
        "content_block_start",
        &json!({
            "type": "content_block_start",
            "index": 0,
            "content_block": { "type": "text", "text": "" },
        }),
    );
    events.event("ping", &json!({ "type": "ping" }));

    for piece in &reply.pieces {
        events.event(
            "content_block_delta",
            &json!({
                "type": "content_block_delta",
                "index": 0,
                "delta": { "type": "text_delta", "text": piece },
            }),
        );
    }

    events.event(
        "content_block_stop",
        &json!({ "type": "content_block_stop", "index": 0 }),
    );
    events.event(
        "message_delta",
        &json!({
            "type": "message_delta",
            "delta": { "stop_reason": stop_reason(reply), "stop_sequence": null },
            "usage": { "output_tokens": reply.completion_tokens() },
        }),
    );
    events.event("message_stop", &json!({ "type": "message_stop" }));
    events
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn with_version(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("anthropic-version", HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn any_dated_version_is_accepted() {
        assert!(check_version(&with_version("2023-06-01")).is_ok());
        assert!(check_version(&with_version("2026-10-21")).is_ok());
        assert!(check_version(&with_version("latest")).is_err());
        assert!(check_version(&with_version("2023-6-1")).is_err());
        assert!(check_version(&HeaderMap::new()).is_err());
    }

    #[test]
    fn the_first_missing_field_is_named() {
        let request = json!({"model": "m", "messages": []});

        let error = read_messages(&request).err();

        assert_eq!(error.as_deref(), Some("max_tokens: Field required"));
    }
}
