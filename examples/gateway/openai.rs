//! `POST /v1/chat/completions`: the OpenAI chat API, answered by the echo model.

use std::sync::Arc;
use std::time::SystemTime;

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
use crate::time::unix_seconds;

/// What a chat request asks, once checked.
struct Chat {
    model: String,
    stream: bool,
    include_usage: bool,
    reply: Reply,
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    State(catalog): State<Arc<Catalog>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return errors::unreadable_body(Api::OpenAi, &rejection, &headers),
    };
    let request: Value = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => return errors::bad_json(Api::OpenAi, &error, &headers),
    };

    let chat = match read_chat(&request) {
        Ok(chat) => chat,
        Err(param) => return missing(param),
    };
    if !catalog.serves(&chat.model) {
        return errors::unknown_model(Api::OpenAi, &chat.model, &headers);
    }

    if chat.stream {
        stream(&chat).into_response()
    } else {
        Json(completion(&chat)).into_response()
    }
}

/// The checked request, or the name of the required parameter it lacks.
fn read_chat(request: &Value) -> Result<Chat, &'static str> {
    let empty = Map::new();
    let fields = request.as_object().unwrap_or(&empty);

    let Some(model) = fields.get("model").and_then(Value::as_str) else {
        return Err("model");
    };
    let Some(messages) = fields.get("messages").and_then(Value::as_array) else {
        return Err("messages");
    };

    let max_tokens = fields
        .get("max_completion_tokens")
        .or_else(|| fields.get("max_tokens"))
        .and_then(Value::as_u64);
    Ok(Chat {
        model: model.to_owned(),
        stream: fields.get("stream").and_then(Value::as_bool) == Some(true),
        include_usage: request["stream_options"]["include_usage"] == true,
        reply: echo::reply(None, messages, max_tokens),
    })
}

fn missing(param: &str) -> Response {
    errors::openai(
        StatusCode::BAD_REQUEST,
        format!("Missing required parameter: '{param}'."),
        Some(param),
        Some("missing_required_parameter"),
    )
}

fn finish_reason(reply: &Reply) -> &'static str {
    if reply.truncated { "length" } else { "stop" }
}

fn usage(reply: &Reply) -> Value {
    json!({
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens(),
        "total_tokens": reply.prompt_tokens + reply.completion_tokens(),
    })
}

/// A `chat.completion` object.
fn completion(chat: &Chat) -> Value {
    json!({
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": unix_seconds(SystemTime::now()),
        "model": chat.model,
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": chat.reply.text(),
                "refusal": null,
                "annotations": [],
            },
            "logprobs": null,
            "finish_reason": finish_reason(&chat.reply),
        }],
        "usage": usage(&chat.reply),
        "system_fingerprint": null,
    })
}

/// `chat.completion.chunk` events: the role, one delta per piece, the finish
/// reason, the usage when asked for, then `[DONE]`.
fn stream(chat: &Chat) -> EventStream {
    let id = new_id("chatcmpl-");
    let created = unix_seconds(SystemTime::now());
    let chunk = |delta: Value, finish_reason: Option<&str>| {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": chat.model,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
        })
    };

    let mut events = EventStream::default();
    events.data(&chunk(json!({"role": "assistant", "content": ""}), None));
    for piece in &chat.reply.pieces {
        events.data(&chunk(json!({"content": piece}), None));
    }
    events.data(&chunk(json!({}), Some(finish_reason(&chat.reply))));

    if chat.include_usage {
        events.data(&json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": chat.model,
            "system_fingerprint": null,
            "choices": [],
            "usage": usage(&chat.reply),
        }));
    }
    events.raw_data("[DONE]");
    events
}
