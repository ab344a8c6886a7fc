//! `GET /v1/models` and `GET /v1/models/{id}`, in the shape of the API that asks.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::errors::{self, Api};
use crate::time::{rfc3339, unix_seconds};

/// The models this gateway answers for (all by the echo model).
#[derive(Debug)]
pub(crate) struct Catalog {
    ids: Vec<String>,
    listed_since: SystemTime,
}

impl Catalog {
    /// A catalog of `ids`, blank and repeated ids dropped.
    pub(crate) fn new(ids: impl IntoIterator<Item = String>) -> Self {
        let mut kept: Vec<String> = Vec::new();
        for id in ids {
            let id = id.trim().to_owned();
            if !id.is_empty() && !kept.contains(&id) {
                kept.push(id);
            }
        }
        Self {
            ids: kept,
            listed_since: SystemTime::now(),
        }
    }

    /// Whether `model` is served.
    pub(crate) fn serves(&self, model: &str) -> bool {
        self.ids.iter().any(|id| id == model)
    }

    /// The ids, in the order configured.
    pub(crate) fn ids(&self) -> &[String] {
        &self.ids
    }

    fn openai_entry(&self, id: &str) -> Value {
        json!({
            "id": id,
            "object": "model",
            "created": unix_seconds(self.listed_since),
            "owned_by": id.split_once('/').map_or("crossmodel", |(owner, _)| owner),
        })
    }

    fn anthropic_entry(&self, id: &str) -> Value {
        json!({
            "type": "model",
            "id": id,
            "display_name": display_name(id),
            "created_at": rfc3339(self.listed_since),
        })
    }
}

/// `GET /v1/models`.
pub(crate) async fn list(State(catalog): State<Arc<Catalog>>, headers: HeaderMap) -> Response {
    let ids = catalog.ids();
    let body = match Api::of(&headers) {
        Api::OpenAi => json!({
            "object": "list",
            "data": ids.iter().map(|id| catalog.openai_entry(id)).collect::<Vec<_>>(),
        }),
        Api::Anthropic => json!({
            "data": ids.iter().map(|id| catalog.anthropic_entry(id)).collect::<Vec<_>>(),
            "has_more": false,
            "first_id": ids.first(),
            "last_id": ids.last(),
        }),
    };
    Json(body).into_response()
}

/// `GET /v1/models/{id}`; ids hold a slash (`anthropic/claude-sonnet-4.6`).
pub(crate) async fn retrieve(
    State(catalog): State<Arc<Catalog>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let api = Api::of(&headers);
    if !catalog.serves(&id) {
        return errors::unknown_model(api, &id, &headers);
    }

    let body = match api {
        Api::OpenAi => catalog.openai_entry(&id),
        Api::Anthropic => catalog.anthropic_entry(&id),
    };
    Json(body).into_response()
}

/// `anthropic/claude-sonnet-4.6` reads `Claude Sonnet 4.6`.
fn display_name(id: &str) -> String {
    let name = id.rsplit_once('/').map_or(id, |(_, name)| name);
    name.split(['-', '_'])
        .filter(|word| !word.is_empty())
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_uppercase().chain(chars).collect()
            })
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_read_as_titles() {
        assert_eq!(
            display_name("anthropic/claude-sonnet-4.6"),
            "Claude Sonnet 4.6"
        );
        assert_eq!(display_name("deepseek/deepseek-v4-pro"), "Deepseek V4 Pro");
        assert_eq!(display_name("echo"), "Echo");
    }

    #[test]
    fn the_catalog_drops_blank_and_repeated_ids() {
        let catalog = Catalog::new(["a/b".to_owned(), " ".to_owned(), "a/b ".to_owned()]);

        assert_eq!(catalog.ids(), ["a/b"]);
        assert!(catalog.serves("a/b"));
        assert!(!catalog.serves("a/c"));
    }
}
