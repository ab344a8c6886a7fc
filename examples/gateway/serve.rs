//! `serve`: the HTTP server, its routes, and the layers around them.
//!
//! Outside in: credential headers marked sensitive, a request id, the request log,
//! then either `GET /healthz` or `ApiKeyLayer` around the API router. The key is
//! checked before routing, so an unknown path without a key gets the 401.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderName, HeaderValue, Response};
use axum::middleware::{self, Next};
use axum::routing::{get, post};
use crossmodel_auth::store::CachedKeyStore;
use crossmodel_auth::{
    ApiKeyLayer, Identity, KeyStore, NewKey, RejectionKind, looks_like_key, redact_method,
    redact_path,
};
use tokio::net::TcpListener;
use tower::Layer;
use tower_http::request_id::RequestId;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;
use tracing::field::Empty;

use crate::cli::ServeArgs;
use crate::ids::new_id;
use crate::keys::{describe, print_out};
use crate::models::{self, Catalog};
use crate::store::Database;
use crate::{anthropic, openai};
use crate::{connections, errors};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Runs the server until Ctrl-C or SIGTERM.
pub(crate) async fn run(store: impl Database, args: ServeArgs) -> Result<(), String> {
    let shutdown = shutdown_signal()?;

    // Listen first: a start that cannot listen must not have made and printed the
    // first key, which nothing would then use.
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", args.listen))?;
    let address = listener
        .local_addr()
        .map_err(|error| format!("cannot read the listening address: {error}"))?;
    announce_first_key(&store).await?;

    let catalog = Arc::new(Catalog::new(args.models));
    tracing::info!(models = ?catalog.ids(), "listening on http://{address}");

    // The cache keeps lookups off the database; the store tells it of every change
    // (from this process or any other), so a disabled key is refused within a second.
    let app = app(catalog, CachedKeyStore::new(store.clone()));
    connections::serve(listener, app, shutdown).await;

    // Last-use times are written in batches; keep the last batch.
    if let Err(error) = store.flush().await {
        tracing::warn!(error = %describe(&error), "could not record the last uses of keys");
    }
    Ok(())
}

/// On the start that created the database, makes the `default` user's key and
/// prints it, alone, on standard output (never through the log).
async fn announce_first_key(store: &impl Database) -> Result<(), String> {
    let new = NewKey::for_user("default").name("default");
    let created = store
        .create_first_key(new)
        .await
        .map_err(|error| format!("cannot create the first key: {}", describe(&error)))?;

    if let Some(created) = created {
        eprintln!(
            "created key {} for user `default`; it follows on standard output and \
             will not be shown again, so store it now",
            created.record.id
        );
        print_out(created.key.expose())?;
    }
    Ok(())
}

/// The whole service: health check, authentication, routes, logs.
pub(crate) fn app<K: KeyStore + Clone>(catalog: Arc<Catalog>, store: K) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{*id}", get(models::retrieve))
        .fallback(errors::not_found)
        .method_not_allowed_fallback(errors::method_not_allowed)
        .layer(middleware::from_fn(record_caller))
        .with_state(catalog);
    let api = ApiKeyLayer::new(store).layer(api);

    Router::new()
        .route("/healthz", get(healthz).fallback_service(api.clone()))
        .fallback_service(api)
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(log_response)
                .on_failure(()),
        )
        .layer(middleware::from_fn(connections::body_deadline))
        .layer(middleware::from_fn(request_id))
        .layer(SetSensitiveRequestHeadersLayer::new([
            AUTHORIZATION,
            X_API_KEY,
        ]))
}

async fn healthz() -> &'static str {
    "ok"
}

/// The span every request's log lines sit in. The path goes without its query, and
/// with any key pasted into it cut; a method outside the standard ones (a client
/// may send any token, a key included) reads `OTHER`. The key id and user are
/// filled in once the key is verified.
fn request_span(request: &Request) -> Span {
    let request_id = request
        .headers()
        .get(X_REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!(
        "request",
        method = %redact_method(request.method()),
        path = &*redact_path(request.uri().path()),
        request_id,
        key.id = Empty,
        user.id = Empty,
    )
}

fn log_response(response: &Response<Body>, latency: Duration, _: &Span) {
    let rejected = response
        .extensions()
        .get::<RejectionKind>()
        .map(|kind| kind.code());
    tracing::info!(
        status = response.status().as_u16(),
        latency_ms = %format!("{:.3}", latency.as_secs_f64() * 1_000.0),
        auth.error = rejected,
        "response"
    );
}

/// Records who is calling in the request's span (inside the layer, so only for
/// verified keys).
async fn record_caller(request: Request, next: Next) -> Response<Body> {
    if let Some(identity) = request.extensions().get::<Identity>() {
        let span = Span::current();
        span.record("key.id", identity.key_id().as_str());
        span.record("user.id", identity.user_id());
    }
    next.run(request).await
}

/// Gives every request one id: the client's `x-request-id` when it is short and
/// visible ASCII, else a new `req_…`. Handlers and `ApiKeyLayer` reuse it, and the
/// response carries it as `x-request-id` (OpenAI SDKs) and `request-id` (Anthropic).
///
/// A client id that looks like a key (a key pasted into the wrong header) is
/// replaced too: the id is logged with every line and echoed in every response.
async fn request_id(mut request: Request, next: Next) -> Response<Body> {
    let id = request
        .headers()
        .get(X_REQUEST_ID)
        .filter(|value| is_usable_request_id(value))
        .cloned()
        .or_else(|| HeaderValue::from_str(&new_id("req_")).ok());

    if let Some(id) = &id {
        request.headers_mut().insert(X_REQUEST_ID, id.clone());
        request.extensions_mut().insert(RequestId::new(id.clone()));
    }
    let mut response = next.run(request).await;

    if let Some(id) = id {
        let headers = response.headers_mut();
        headers.entry(X_REQUEST_ID).or_insert_with(|| id.clone());
        headers.entry(REQUEST_ID).or_insert(id);
    }
    response
}

/// Whether a client's request id may be kept: 1 to 64 visible ASCII characters,
/// nothing shaped like a key.
fn is_usable_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    let visible = (1..=64).contains(&bytes.len()) && bytes.iter().all(u8::is_ascii_graphic);

    visible && value.to_str().is_ok_and(|text| !looks_like_key(text))
}

/// Listens for Ctrl-C (SIGINT) and SIGTERM from now on; the future resolves on
/// either, and requests in flight then finish (for up to
/// [`connections::SHUTDOWN_GRACE`]). Installed before the server says it
/// listens, so that a signal sent right after never meets the default handler.
fn shutdown_signal() -> Result<impl Future<Output = ()>, String> {
    use tokio::signal::unix::{SignalKind, signal};

    let listen = |kind: SignalKind| {
        signal(kind).map_err(|error| format!("cannot listen for shutdown signals: {error}"))
    };
    let mut interrupt = listen(SignalKind::interrupt())?;
    let mut terminate = listen(SignalKind::terminate())?;

    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down");
    })
}
