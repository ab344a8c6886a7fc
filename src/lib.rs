//! API-key authentication for any tower service, as an LLM gateway does it.
//!
//! Add [`ApiKeyLayer`] to an axum router, a hyper service or any `tower` stack, and
//! every request must carry a `cm-` key: `Authorization: Bearer cm-…` (OpenAI-style)
//! or `x-api-key: cm-…` (Anthropic-style). Handlers then find the caller's
//! [`Identity`] in the request extensions. Failures get the exact 401 bodies the
//! official OpenAI and Anthropic SDKs understand.
//!
//! # Example
//!
//! ```
//! use axum::{Router, body::Body, routing::get};
//! use crossmodel_auth::{ApiKeyLayer, Identity, KeyManager, MemoryKeyStore, NewKey};
//! use http::{Request, StatusCode};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryKeyStore::new();
//! let key = store.create_key(NewKey::for_user("alice")).await?.key;
//!
//! let app = Router::new()
//!     .route("/v1/models", get(|who: Identity| async move { who.user_id().to_owned() }))
//!     .layer(ApiKeyLayer::new(store));
//!
//! // OpenAI style.
//! let request = Request::get("/v1/models")
//!     .header("authorization", format!("Bearer {}", key.expose()))
//!     .body(Body::empty())?;
//! assert_eq!(app.clone().oneshot(request).await?.status(), StatusCode::OK);
//!
//! // Anthropic style.
//! let request = Request::get("/v1/models")
//!     .header("x-api-key", key.expose())
//!     .header("anthropic-version", "2023-06-01")
//!     .body(Body::empty())?;
//! assert_eq!(app.clone().oneshot(request).await?.status(), StatusCode::OK);
//!
//! // No key: a 401 in the OpenAI envelope.
//! let response = app.oneshot(Request::get("/v1/models").body(Body::empty())?).await?;
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//! let body = axum::body::to_bytes(response.into_body(), 1024).await?;
//! let body: serde_json::Value = serde_json::from_slice(&body)?;
//! assert_eq!(body["error"]["code"], "missing_api_key");
//! assert_eq!(body["error"]["type"], "authentication_error");
//! # Ok(())
//! # }
//! ```
//!
//! # Keys
//!
//! `cm-<12-char id>_<22-char secret><6-char checksum>`, 44 characters; see [`key`]
//! for the layout, the regular expression and the digest stores keep.
//!
//! # Errors
//!
//! | situation | status | `type` | `code` |
//! | --- | --- | --- | --- |
//! | no API key provided | 401 | `authentication_error` | `missing_api_key` |
//! | key doesn't exist, or secret/checksum mismatch | 401 | `authentication_error` | `invalid_api_key` |
//! | key disabled, revoked or expired | 401 | `authentication_error` | `api_key_inactive` |
//! | account disabled | 401 | `authentication_error` | `user_inactive` |
//! | key store unavailable | 503 | `server_error` / `api_error` | `auth_service_unavailable` |
//!
//! # Security
//!
//! - Stores keep only SHA-256 of each secret. The digest comparison runs in constant
//!   time (`subtle`), and an unknown id is compared against a dummy digest so that
//!   timing does not tell which ids exist.
//! - A key's state is revealed only to a caller who holds its secret.
//! - Malformed keys and failed checksums are rejected before any store call; with a
//!   signing secret ([`KeyFormat::signed`]) forged keys are too.
//! - Nothing this crate logs, prints or formats shows more of a key than `cm-`, the
//!   id of a checksum-valid key and its last four characters. Request paths are
//!   logged without their query string.
//! - A failing, slow or panicking store is answered with 503, never 401 and never by
//!   letting the request through.
//!
//! # Limitations
//!
//! - The layer needs a Tokio runtime with time enabled for store lookups that do
//!   not answer at once (the deadline is a Tokio timer).
//! - The inner service must be `Clone`, and its response body must implement
//!   `From<Bytes>`.
//! - Memory is wiped only where the crate owns it: a generated [`ApiKey`] and a
//!   [`SigningSecret`] are zeroed on drop. A presented key lives in the request's
//!   header values, which belong to the server and are freed without wiping; the
//!   keyed HMAC state made from a signing secret is not wiped either (the `hmac`
//!   crate does not offer it).
//! - The layer records one `tracing` event per decision (target `crossmodel_auth`),
//!   not a span per request; add `key.id`/`user.id` to your own request span from
//!   the [`Identity`] if you want them there.
//!
//! # Feature flags
//!
//! - `axum`: [`Identity`] as an axum extractor.
//! - `tower-http`: error responses reuse tower-http's `RequestId` extension.
//! - `sqlite`: `SqliteKeyStore`, one file, the embedded default (sqlx).
//! - `postgres`: `PostgresKeyStore`, many replicas sharing one key table, with
//!   revocation pushed to every replica over LISTEN/NOTIFY (sqlx).
//! - `cache`: `CachedKeyStore`, a bounded TTL cache around any store, with one store
//!   call for many concurrent misses of one id (moka).
//!
//! The default build depends only on what the middleware itself needs.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

mod future;
pub mod header;
mod identity;
pub mod key;
mod layer;
mod redact;
pub mod rejection;
mod response;
mod service;
pub mod store;
mod verify;

pub use future::ResponseFuture;
pub use header::{Envelope, RouteFamily};
pub use identity::Identity;
#[cfg(feature = "axum")]
pub use identity::MissingIdentity;
pub use key::{ApiKey, KeyDigest, KeyFormat, KeyId, PresentedKey, SigningSecret};
pub use layer::ApiKeyLayer;
pub use redact::{looks_like_key, redact_method, redact_path};
pub use rejection::{JsonEnvelope, Rejection, RejectionKind, RenderRejection, RenderedBody};
pub use service::ApiKeyService;
#[cfg(feature = "cache")]
#[cfg_attr(docsrs, doc(cfg(feature = "cache")))]
pub use store::CachedKeyStore;
pub use store::{
    ChangeWatcher, CreatedKey, KeyManager, KeyRecord, KeyState, KeyStore, MemoryKeyStore, NewKey,
    StoreChange, StoreError, StoreErrorKind, UserRecord, UserState,
};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use store::{PostgresKeyStore, PostgresOptions};
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use store::{SqliteKeyStore, SqliteOptions};
pub use verify::{DEFAULT_DEADLINE, Verifier};

// Compiles the README's Rust examples with the doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
