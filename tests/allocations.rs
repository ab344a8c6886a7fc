//! Exact heap allocations per request through `ApiKeyLayer`, counted by a global
//! allocator of this test binary alone.
//!
//! The counter sees every thread, so everything runs in one `#[test]`: a second
//! test would allocate on its own thread while this one counts. Requests are built
//! before counting starts; the count covers the call, the future and the inner
//! service, which drops the request. The inner service allocates nothing (checked
//! first), so every allocation counted is the layer's.
#![allow(clippy::unwrap_used)]

use std::alloc::System;
use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use crossmodel_auth::{
    ApiKeyLayer, Identity, KeyId, KeyManager, KeyRecord, KeyStore, MemoryKeyStore, NewKey,
    StoreError,
};
use http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::Full;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{Layer, Service};

#[global_allocator]
static COUNTER: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// A memory store that counts the calls the layer makes to it.
#[derive(Clone, Default)]
struct CountingStore {
    inner: MemoryKeyStore,
    calls: Arc<AtomicUsize>,
}

#[async_trait]
impl KeyStore for CountingStore {
    async fn lookup(&self, id: &KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.lookup(id).await
    }

    fn lookup_now(&self, id: &KeyId) -> Option<Result<Option<Arc<KeyRecord>>, StoreError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.lookup_now(id)
    }

    fn record_use(&self, id: &KeyId, at: SystemTime) {
        self.inner.record_use(id, at);
    }
}

type Body = Full<Bytes>;

/// A ready 200 whose static body costs no allocation.
fn ok(request: Request<()>) -> Ready<Result<Response<Body>, Infallible>> {
    drop(request);
    ready(Ok(Response::new(Full::new(Bytes::from_static(b"{}")))))
}

fn drive<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the fast path must be ready at the first poll"),
    }
}

/// Twelve headers an SDK sends, plus `authorization` when given.
fn request_with(authorization: Option<&str>) -> Request<()> {
    let mut headers = HeaderMap::with_capacity(16);
    for (name, value) in [
        ("host", "127.0.0.1:8080"),
        ("user-agent", "OpenAI/Python 1.99.0"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("content-length", "97"),
        ("accept-encoding", "gzip, deflate"),
        ("connection", "keep-alive"),
        ("x-stainless-lang", "python"),
        ("x-stainless-package-version", "1.99.0"),
        ("x-stainless-os", "Linux"),
        ("x-stainless-arch", "x64"),
        ("x-stainless-runtime", "CPython"),
    ] {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    if let Some(value) = authorization {
        headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
    }

    let mut request = Request::post("/v1/chat/completions").body(()).unwrap();
    *request.headers_mut() = headers;
    request
}

/// Allocations (fresh or grown) made while `call` runs on a request built before.
fn allocations_of<S>(service: &mut S, request: Request<()>) -> (usize, Response<Body>)
where
    S: Service<Request<()>, Response = Response<Body>, Error = Infallible>,
{
    let region = Region::new(COUNTER);
    let response = drive(service.call(request)).unwrap();
    let change = region.change();
    (change.allocations + change.reallocations, response)
}

#[test]
fn requests_allocate_only_what_each_outcome_needs() {
    let store = CountingStore::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let key = runtime
        .block_on(store.inner.create_key(NewKey::for_user("alice")))
        .unwrap()
        .key;
    let bearer = format!("Bearer {}", key.expose());
    let mut bare = tower::service_fn(ok);
    let mut layered = ApiKeyLayer::new(store.clone()).layer(tower::service_fn(ok));

    // First calls initialise what lives for the process (tracing call sites, the
    // request-id hasher, the store's last-use entry); they are not per request.
    for authorization in [Some(bearer.as_str()), None, Some("Bearer cm-nope")] {
        drive(layered.call(request_with(authorization))).unwrap();
    }

    // The baseline: the inner service alone allocates nothing.
    let (count, _) = allocations_of(&mut bare, request_with(Some(&bearer)));
    assert_eq!(count, 0, "the inner service must not allocate");

    // A valid key, 3 allocations, all `http::Extensions::insert` of the identity
    // into a request that had no extensions: (1) the boxed map itself, created on
    // first insert; (2) its hash table, sized on first insert; (3) the box holding
    // the `Identity` (a type-erased value). The identity itself is an `Arc` clone of
    // the store's record: no allocation. Header parsing, the checksum, SHA-256, the
    // lookup, the constant-time compare, stripping the credential headers and the
    // last-use note all work in place.
    let calls = store.calls.load(Ordering::SeqCst);
    let (count, response) = allocations_of(&mut layered, request_with(Some(&bearer)));
    assert_eq!(response.status(), 200);
    assert_eq!(store.calls.load(Ordering::SeqCst), calls + 1);
    assert_eq!(count, 3, "valid request through the layer");

    // The identity is really there for the handler.
    let mut checks_identity =
        ApiKeyLayer::new(store.clone()).layer(tower::service_fn(|request: Request<()>| {
            let status = match request.extensions().get::<Identity>() {
                Some(identity) if identity.user_id() == "alice" => 200,
                _ => 500,
            };
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            ready(Ok::<_, Infallible>(response))
        }));
    let response = drive(checks_identity.call(request_with(Some(&bearer)))).unwrap();
    assert_eq!(response.status(), 200);

    // Rejections never touch the store, and allocate only the response.
    let rejected = [
        ("missing", None),
        ("malformed", Some("Bearer cm-not-a-key".to_owned())),
        ("checksum", Some(with_bad_checksum(&bearer))),
    ];
    for (name, authorization) in rejected {
        let calls = store.calls.load(Ordering::SeqCst);
        let (count, response) =
            allocations_of(&mut layered, request_with(authorization.as_deref()));

        assert_eq!(response.status(), 401, "{name}");
        assert_eq!(
            store.calls.load(Ordering::SeqCst),
            calls,
            "{name}: store called"
        );
        assert_eq!(count, REJECTION_ALLOCATIONS, "{name}: allocations");
    }
}

/// A rejection allocates eight times:
///
/// - (1) the new request id (`req_…`, 28 bytes copied into `Bytes`);
/// - (2, 3) the response's header map, sized for its six headers up front: its
///   index table and its entry vector;
/// - (4) the id's `Bytes` turning shared when it is cloned for the second id
///   header (`x-request-id` and `request-id` carry the same id);
/// - (5, 6, 7) the response extensions: the boxed map, its table, and the boxed
///   `RejectionKind`;
/// - (8) the boxed `Rejection`, the second value in that map.
///
/// The OpenAI body is one of ten written once per process and shared, so it costs
/// nothing here. The Anthropic body, which repeats the request id, adds one.
const REJECTION_ALLOCATIONS: usize = 8;

/// The same key with its last checksum character changed.
fn with_bad_checksum(bearer: &str) -> String {
    let mut text = bearer.to_owned();
    let last = text.pop().unwrap();
    text.push(if last == 'A' { 'B' } else { 'A' });
    text
}
