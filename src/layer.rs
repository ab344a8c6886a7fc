//! [`ApiKeyLayer`]: the one line a service adds.

use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use crate::header::RouteFamily;
use crate::key::KeyFormat;
use crate::rejection::{JsonEnvelope, RenderRejection};
use crate::service::{ApiKeyService, Options, Shared};
use crate::store::KeyStore;
use crate::verify::Verifier;

/// Authenticates every request with a `cm-` API key before the inner service sees
/// it.
///
/// Reads the key from `Authorization: Bearer` and `x-api-key` (see
/// [`RouteFamily`]), verifies it against a [`KeyStore`], and either calls the inner
/// service with an [`Identity`](crate::Identity) in the request extensions and the
/// credential headers removed, or answers with the JSON error the OpenAI and
/// Anthropic SDKs expect. Cheap to clone.
///
/// # Example
///
/// ```
/// use axum::{Router, routing::post};
/// use crossmodel_auth::{ApiKeyLayer, Identity, MemoryKeyStore};
///
/// async fn chat(identity: Identity) -> String {
///     format!("hello, {}", identity.user_id())
/// }
///
/// let store = MemoryKeyStore::new();
/// let app: Router = Router::new()
///     .route("/v1/chat/completions", post(chat))
///     .layer(ApiKeyLayer::new(store));
/// ```
///
/// # Request ids
///
/// Every error response carries one request id, in `x-request-id`, `request-id` and
/// the Anthropic body: tower-http's `RequestId` when an outer layer set one (used as
/// it is, being the server's own), else the client's `x-request-id` when it is at
/// most 64 visible ASCII characters, else a new `req_` and 24 base62 characters.
///
/// # Requirements
///
/// The inner service must be `Clone` and its response body must implement
/// `From<Bytes>` (axum's `Body`, `http_body_util::Full<Bytes>` and most bodies do),
/// so error responses keep the inner body type. Lookups that wait run under a
/// Tokio timer: the service must run in a Tokio runtime with time enabled.
#[derive(Clone)]
pub struct ApiKeyLayer<K, R = JsonEnvelope> {
    verifier: Verifier<K>,
    options: Options,
    renderer: R,
}

impl<K: KeyStore> ApiKeyLayer<K> {
    /// A layer over `store` with the defaults: both headers (`x-api-key`
    /// preferred), public checksums, a 2 s store deadline, CORS preflights passed
    /// through, all credential headers stripped on success.
    pub fn new(store: K) -> Self {
        Self::from_verifier(Verifier::new(store))
    }

    /// A layer that runs `verifier`'s check (its store, format and deadline).
    pub fn from_verifier(verifier: Verifier<K>) -> Self {
        Self {
            verifier,
            options: Options::default(),
            renderer: JsonEnvelope,
        }
    }
}

impl<K: KeyStore, R> ApiKeyLayer<K, R> {
    /// Follows one API's conventions instead of guarding both.
    pub fn route_family(mut self, family: RouteFamily) -> Self {
        self.options.family = family;
        self
    }

    /// Accepts keys of `format` (public or signed); use the one the store issues.
    pub fn key_format(mut self, format: KeyFormat) -> Self {
        self.verifier = self.verifier.with_key_format(format);
        self
    }

    /// How long a store lookup may take before the request gets a 503.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.verifier = self.verifier.with_deadline(deadline);
        self
    }

    /// Whether CORS preflights (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`) pass unauthenticated, so that a CORS layer
    /// can answer them. On by default. A preflight that passes loses its credential
    /// headers as an authenticated request does: browsers send none, and a key it
    /// carries was never checked.
    pub fn pass_cors_preflight(mut self, pass: bool) -> Self {
        self.options.pass_preflight = pass;
        self
    }

    /// Whether credentials that are not ours (`Bearer sk-…` beside a `cm-` key)
    /// stay on the request for the inner service. Off by default: a gateway must
    /// not forward stray tokens upstream. Our own key is always removed, and so is
    /// any value holding a word that starts with `cm-` (a bare key, `Bearer Bearer
    /// cm-…`, a second key that lost to the preferred header).
    pub fn keep_foreign_credentials(mut self, keep: bool) -> Self {
        self.options.keep_foreign = keep;
        self
    }

    /// Writes error bodies with `renderer` instead of the JSON envelopes.
    pub fn renderer<R2: RenderRejection>(self, renderer: R2) -> ApiKeyLayer<K, R2> {
        ApiKeyLayer {
            verifier: self.verifier,
            options: self.options,
            renderer,
        }
    }

    /// The check this layer runs, for use outside HTTP.
    pub fn verifier(&self) -> &Verifier<K> {
        &self.verifier
    }
}

impl<K, R: std::fmt::Debug> std::fmt::Debug for ApiKeyLayer<K, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyLayer")
            .field("verifier", &self.verifier)
            .field("options", &self.options)
            .field("renderer", &self.renderer)
            .finish()
    }
}

impl<S, K: KeyStore, R: RenderRejection> Layer<S> for ApiKeyLayer<K, R> {
    type Service = ApiKeyService<S, K, R>;

    fn layer(&self, inner: S) -> Self::Service {
        let shared = Shared {
            verifier: self.verifier.clone(),
            options: self.options,
            renderer: self.renderer.clone(),
        };
        ApiKeyService::new(inner, Arc::new(shared))
    }
}
