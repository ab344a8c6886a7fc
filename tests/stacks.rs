//! The layer in the stacks users build: an axum `Router` (`.layer` and
//! `.route_layer`), a plain hyper 1 server, a `tower::ServiceBuilder` beside
//! tower-http's request ids; the axum `Identity` extractor; and `Verifier::verify`
//! outside HTTP.
#![allow(clippy::unwrap_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::routing::{get, post};
use bytes::Bytes;
use crossmodel_auth::{
    ApiKeyLayer, Envelope, Identity, KeyId, KeyManager, MemoryKeyStore, NewKey, RejectionKind,
    RouteFamily, Verifier,
};
use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use support::{
    CLIENT_REQUEST_ID, Expected, Fault, FaultStore, Raw, assert_rejection, send, with_wrong_secret,
};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

async fn store_with_key(user: &str) -> (MemoryKeyStore, String) {
    let store = MemoryKeyStore::new();
    let created = store.create_key(NewKey::for_user(user)).await.unwrap();
    let key = created.key.expose().to_owned();
    (store, key)
}

async fn serve_router(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

async fn whoami(identity: Identity) -> String {
    format!("{} {}", identity.user_id(), identity.key_id())
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

fn body_text(reply: &support::Reply) -> String {
    String::from_utf8(reply.body.clone()).unwrap()
}

// ---------------------------------------------------------------------------
// axum

#[tokio::test]
async fn on_an_axum_router_layer_an_unknown_path_without_a_key_is_401_not_404() {
    let (store, key) = store_with_key("alice").await;
    let router = Router::new()
        .route("/v1/models", get(whoami))
        .layer(ApiKeyLayer::new(store));
    let addr = serve_router(router).await;

    let reply = send(addr, Raw::get("/v1/nothing-here")).await;
    assert_rejection(
        &reply,
        Expected::unauthorized("missing_api_key", Envelope::OpenAi),
    );

    let reply = send(addr, Raw::get("/v1/nothing-here").header("x-api-key", &key)).await;
    assert_eq!(reply.status, 404);

    let reply = send(
        addr,
        Raw::get("/v1/models").header("authorization", bearer(&key)),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(body_text(&reply), format!("alice {}", &key[3..15]));
}

#[tokio::test]
async fn on_an_axum_route_layer_an_unknown_path_is_404_and_known_routes_are_guarded() {
    let (store, key) = store_with_key("alice").await;
    let router = Router::new()
        .route("/v1/models", get(whoami))
        .route_layer(ApiKeyLayer::new(store));
    let addr = serve_router(router).await;

    assert_eq!(send(addr, Raw::get("/v1/nothing-here")).await.status, 404);

    let reply = send(addr, Raw::get("/v1/models")).await;
    assert_rejection(
        &reply,
        Expected::unauthorized("missing_api_key", Envelope::OpenAi),
    );

    let reply = send(addr, Raw::get("/v1/models").header("x-api-key", &key)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(body_text(&reply), format!("alice {}", &key[3..15]));
}

#[tokio::test]
async fn a_handler_asking_for_an_identity_outside_the_layer_gets_a_500() {
    let (store, key) = store_with_key("alice").await;
    let optional = |identity: Option<Identity>| async move {
        identity.map_or_else(|| "anonymous".to_owned(), |i| i.user_id().to_owned())
    };
    let router = Router::new()
        .route("/inside", get(whoami))
        .route_layer(ApiKeyLayer::new(store))
        .route("/outside", get(whoami))
        .route("/optional", get(optional));
    let addr = serve_router(router).await;

    let reply = send(addr, Raw::get("/outside").header("x-api-key", &key)).await;
    assert_eq!(reply.status, 500);
    assert!(!reply.contains(&key[16..38]));

    let reply = send(addr, Raw::get("/optional").header("x-api-key", &key)).await;
    assert_eq!(
        (reply.status, body_text(&reply).as_str()),
        (200, "anonymous")
    );

    let reply = send(addr, Raw::get("/inside").header("x-api-key", &key)).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn each_axum_route_can_follow_its_own_api_family() {
    let (store, key) = store_with_key("alice").await;
    let openai = ApiKeyLayer::new(store.clone()).route_family(RouteFamily::OpenAi);
    let anthropic = ApiKeyLayer::new(store).route_family(RouteFamily::Anthropic);
    let router = Router::new()
        .route("/v1/chat/completions", post(whoami).layer(openai))
        .route("/v1/messages", post(whoami).layer(anthropic));
    let addr = serve_router(router).await;
    let post_to = |path: &str| Raw::new("POST", path).header("content-length", "0");

    let reply = send(
        addr,
        post_to("/v1/chat/completions").header("anthropic-version", "1"),
    )
    .await;
    assert_rejection(
        &reply,
        Expected::unauthorized("missing_api_key", Envelope::OpenAi),
    );
    let reply = send(addr, post_to("/v1/messages")).await;
    assert_rejection(
        &reply,
        Expected::unauthorized("missing_api_key", Envelope::Anthropic),
    );

    let reply = send(
        addr,
        post_to("/v1/chat/completions").header("x-api-key", &key),
    )
    .await;
    assert_rejection(
        &reply,
        Expected::unauthorized("missing_api_key", Envelope::OpenAi),
    );
    let reply = send(addr, post_to("/v1/messages").header("x-api-key", &key)).await;
    assert_eq!(reply.status, 200);
    let reply = send(
        addr,
        post_to("/v1/chat/completions").header("authorization", bearer(&key)),
    )
    .await;
    assert_eq!(reply.status, 200);
}

// ---------------------------------------------------------------------------
// hyper

#[tokio::test]
async fn on_a_plain_hyper_server_the_layer_wraps_a_service_fn_with_full_bodies() {
    let (store, key) = store_with_key("alice").await;
    let inner = tower::service_fn(|request: Request<Incoming>| async move {
        let who = request
            .extensions()
            .get::<Identity>()
            .map_or("nobody".to_owned(), |identity| {
                identity.user_id().to_owned()
            });
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(who))))
    });
    let service = ServiceBuilder::new()
        .layer(ApiKeyLayer::new(store))
        .service(inner);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });

    let reply = send(addr, Raw::get("/").header("authorization", bearer(&key))).await;
    assert_eq!((reply.status, body_text(&reply).as_str()), (200, "alice"));

    let forged = with_wrong_secret(&key);
    let reply = send(addr, Raw::get("/").header("x-api-key", &forged)).await;
    let expected = Expected::unauthorized("invalid_api_key", Envelope::Anthropic);
    assert_rejection(&reply, expected.secrets(&[&forged[16..38]]));
}

// ---------------------------------------------------------------------------
// tower-http request ids

/// Request ids `outer-1`, `outer-2`, …: recognisable, and never a client's.
#[derive(Debug, Clone, Default)]
struct Counter {
    next: Arc<AtomicU64>,
    prefix: &'static str,
}

impl Counter {
    fn with_prefix(prefix: &'static str) -> Self {
        Self {
            prefix,
            ..Self::default()
        }
    }
}

impl MakeRequestId for Counter {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let value = HeaderValue::from_str(&format!("{}outer-{n}", self.prefix)).unwrap();
        Some(RequestId::new(value))
    }
}

#[tokio::test]
async fn inside_a_service_builder_errors_carry_the_request_id_an_outer_layer_set() {
    let (store, key) = store_with_key("alice").await;
    let inner = tower::service_fn(|_: Request<Incoming>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let x_request_id = HeaderName::from_static("x-request-id");
    let service = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(
            x_request_id.clone(),
            Counter::default(),
        ))
        .layer(PropagateRequestIdLayer::new(x_request_id))
        .layer(ApiKeyLayer::new(store))
        .service(inner);
    let addr = support::spawn(service).await;

    let reply = send(
        addr,
        Raw::get("/").header("anthropic-version", "2023-06-01"),
    )
    .await;
    let expected = Expected::unauthorized("missing_api_key", Envelope::Anthropic);
    assert_rejection(&reply, expected.request_id("outer-1"));

    let reply = send(addr, Raw::get("/").header("authorization", bearer(&key))).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.one("x-request-id").as_deref(), Some("outer-2"));
}

#[tokio::test]
async fn an_outer_request_id_wins_over_the_clients_own() {
    let (store, _) = store_with_key("alice").await;
    let inner = tower::service_fn(|_: Request<Incoming>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    });
    // The outer layer keeps its id under another header, so only the extension
    // can carry it to the error response.
    let correlation = HeaderName::from_static("x-correlation-id");
    let service = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(correlation, Counter::default()))
        .layer(ApiKeyLayer::new(store))
        .service(inner);
    let addr = support::spawn(service).await;

    let request = Raw::get("/")
        .header("x-request-id", CLIENT_REQUEST_ID)
        .header("x-api-key", "sk-ant-foreign");
    let reply = send(addr, request).await;

    let expected = Expected::unauthorized("invalid_api_key", Envelope::Anthropic);
    assert_rejection(&reply, expected.request_id("outer-1"));
}

// ---------------------------------------------------------------------------
// Outside HTTP

#[tokio::test]
async fn verifier_verify_answers_valid_wrong_inactive_and_store_down() {
    let (store, key) = store_with_key("alice").await;
    let verifier = Verifier::new(store.clone());

    let identity = verifier.verify(&key).await.unwrap();
    assert_eq!(identity.user_id(), "alice");
    assert_eq!(identity.key_id().as_str(), &key[3..15]);
    let padded = verifier.verify(&format!("  {key}\t")).await.unwrap();
    assert_eq!(padded.key_id(), identity.key_id());

    let cases = [
        (with_wrong_secret(&key), RejectionKind::InvalidApiKey),
        (key[..43].to_owned(), RejectionKind::InvalidApiKey),
        ("sk-foreign".to_owned(), RejectionKind::InvalidApiKey),
        ("   ".to_owned(), RejectionKind::MissingApiKey),
    ];
    for (presented, kind) in &cases {
        let rejection = verifier.verify(presented).await.unwrap_err();
        assert_eq!(rejection.kind(), *kind, "{presented:?}");
    }

    store
        .disable_key(&KeyId::parse(&key[3..15]).unwrap())
        .await
        .unwrap();
    let rejection = verifier.verify(&key).await.unwrap_err();
    assert_eq!(rejection.kind(), RejectionKind::ApiKeyInactive);
    assert!(!rejection.to_string().contains(&key[16..38]));

    for fault in [Fault::Fail, Fault::Hang] {
        let down =
            Verifier::new(FaultStore(fault)).with_deadline(std::time::Duration::from_millis(200));
        let outcome = tokio::time::timeout(support::PATIENCE, down.verify(&key)).await;
        let rejection = outcome
            .expect("verify ends within the deadline")
            .unwrap_err();
        assert_eq!(
            rejection.kind(),
            RejectionKind::ServiceUnavailable,
            "{fault:?}"
        );
        assert_eq!(rejection.status(), 503);
    }
}

#[tokio::test]
async fn an_outer_request_id_is_used_as_it_is_even_when_longer_than_a_client_may_send() {
    let (store, _) = store_with_key("alice").await;
    let inner = tower::service_fn(|_: Request<Incoming>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    });
    // A trace id with a long prefix: the server's own id, not client input.
    let prefix = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef-";
    let x_request_id = HeaderName::from_static("x-request-id");
    let service = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(
            x_request_id.clone(),
            Counter::with_prefix(prefix),
        ))
        .layer(PropagateRequestIdLayer::new(x_request_id))
        .layer(ApiKeyLayer::new(store))
        .service(inner);
    let addr = support::spawn(service).await;

    let reply = send(addr, Raw::get("/").header("x-api-key", "sk-ant-foreign")).await;

    let expected = format!("{prefix}outer-1");
    let expected_reply = Expected::unauthorized("invalid_api_key", Envelope::Anthropic);
    assert_rejection(&reply, expected_reply.request_id(&expected));
}

// ---------------------------------------------------------------------------
// Readiness and concurrency

/// An inner service that insists on tower's contract: `call` only on the instance
/// whose `poll_ready` said yes. Clones start unready.
#[derive(Debug)]
struct MustBeReady {
    inner: support::Echo,
    ready: bool,
}

impl Clone for MustBeReady {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            ready: false,
        }
    }
}

impl<B> tower::Service<Request<B>> for MustBeReady {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        self.ready = true;
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        assert!(
            self.ready,
            "called an instance that poll_ready did not ready"
        );
        self.ready = false;
        self.inner.call(request)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_each_reach_a_readied_inner_service_with_their_own_identity() {
    let store = MemoryKeyStore::new();
    let mut keys = Vec::new();
    for n in 0..24 {
        let created = store
            .create_key(NewKey::for_user(format!("user{n}")))
            .await
            .unwrap();
        keys.push((format!("user{n}"), created.key.expose().to_owned()));
    }
    let echo = support::Echo::default();
    let inner = MustBeReady {
        inner: echo.clone(),
        ready: false,
    };
    // The waiting store sends every request through the deadline future.
    let layer = ApiKeyLayer::new(support::Waiting(store.clone()));
    let addr = support::spawn(tower::Layer::layer(&layer, inner)).await;

    let mut tasks = tokio::task::JoinSet::new();
    for (user, key) in keys.iter().cloned().chain(keys.iter().cloned()) {
        tasks.spawn(async move {
            let reply = send(addr, Raw::get("/").header("authorization", bearer(&key))).await;
            (user, key, reply)
        });
    }
    while let Some(outcome) = tasks.join_next().await {
        let (user, key, reply) = outcome.unwrap();
        support::assert_success(&reply, &key, &user);
    }

    assert_eq!(echo.calls(), 48);
}
