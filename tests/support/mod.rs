//! Shared pieces of the HTTP tests: counting and failing stores, an echoing inner
//! service, a server on an ephemeral loopback port, and a raw HTTP/1.1 client that
//! can send what hyper's own client refuses to (repeated headers, bytes ≥ 0x80,
//! control characters, 64 KiB values).

// Each test file uses a different part of this module.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use crossmodel_auth::{
    ApiKeyLayer, Envelope, Identity, KeyFormat, KeyId, KeyManager, KeyRecord, KeyStore,
    MemoryKeyStore, NewKey, RenderRejection, RouteFamily, StoreError,
};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{Layer, Service, ServiceExt};

/// Every wait in these tests ends within this bound, or the test fails.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A client request id the layer must echo.
pub const CLIENT_REQUEST_ID: &str = "client-req-0001";

type BoxError = Box<dyn StdError + Send + Sync>;

// ---------------------------------------------------------------------------
// Stores

/// How many times a store was asked, on either path.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    now: Arc<AtomicUsize>,
    lookups: Arc<AtomicUsize>,
}

impl Counts {
    /// `lookup_now` calls.
    pub fn now(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }

    /// `lookup` calls.
    pub fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }

    /// Both kinds together: zero means the store was never touched.
    pub fn total(&self) -> usize {
        self.now() + self.lookups()
    }
}

/// Counts every `lookup` and `lookup_now` call before passing it on.
#[derive(Debug, Clone)]
pub struct Counting<S> {
    inner: S,
    counts: Counts,
}

impl<S> Counting<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            counts: Counts::default(),
        }
    }

    pub fn counts(&self) -> Counts {
        self.counts.clone()
    }
}

#[async_trait]
impl<S: KeyStore> KeyStore for Counting<S> {
    async fn lookup(&self, id: &KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        self.counts.lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.lookup(id).await
    }

    fn lookup_now(&self, id: &KeyId) -> Option<Result<Option<Arc<KeyRecord>>, StoreError>> {
        self.counts.now.fetch_add(1, Ordering::SeqCst);
        self.inner.lookup_now(id)
    }

    fn record_use(&self, id: &KeyId, at: SystemTime) {
        self.inner.record_use(id, at);
    }
}

/// A memory store that never answers at once, so every lookup takes the waiting
/// path (boxed future under the deadline).
#[derive(Debug, Clone)]
pub struct Waiting(pub MemoryKeyStore);

#[async_trait]
impl KeyStore for Waiting {
    async fn lookup(&self, id: &KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        tokio::task::yield_now().await;
        self.0.lookup(id).await
    }
}

/// How a [`FaultStore`] misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Every lookup fails with `StoreError::unavailable`.
    Fail,
    /// Every lookup waits forever.
    Hang,
}

/// A store that is down. It never answers through `lookup_now`.
#[derive(Debug, Clone, Copy)]
pub struct FaultStore(pub Fault);

#[async_trait]
impl KeyStore for FaultStore {
    async fn lookup(&self, _: &KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        match self.0 {
            Fault::Fail => Err(StoreError::unavailable(
                "test store is down; start it again",
                std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"),
            )),
            Fault::Hang => std::future::pending().await,
        }
    }
}

/// The store behind a test server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// The memory store, answering through `lookup_now`.
    #[default]
    Memory,
    /// The memory store, answering only through `lookup`.
    Waiting,
    /// A store that fails.
    Failing,
    /// A store that hangs.
    Hanging,
}

/// The store a test layer runs against: one type for every backend, so one layer
/// type serves every test.
#[derive(Debug, Clone)]
pub enum TestStore {
    Memory(MemoryKeyStore),
    Waiting(Waiting),
    Fault(FaultStore),
}

#[async_trait]
impl KeyStore for TestStore {
    async fn lookup(&self, id: &KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        match self {
            Self::Memory(store) => store.lookup(id).await,
            Self::Waiting(store) => store.lookup(id).await,
            Self::Fault(store) => store.lookup(id).await,
        }
    }

    fn lookup_now(&self, id: &KeyId) -> Option<Result<Option<Arc<KeyRecord>>, StoreError>> {
        match self {
            Self::Memory(store) => store.lookup_now(id),
            Self::Waiting(store) => store.lookup_now(id),
            Self::Fault(store) => store.lookup_now(id),
        }
    }

    fn record_use(&self, id: &KeyId, at: SystemTime) {
        if let Self::Memory(store) = self {
            store.record_use(id, at);
        }
    }
}

/// The layer every HTTP test configures.
pub type TestLayer<R = crossmodel_auth::JsonEnvelope> = ApiKeyLayer<Counting<TestStore>, R>;

// ---------------------------------------------------------------------------
// Keys

/// The secret part of a whole key (between `_` and the checksum).
pub fn secret_of(key: &str) -> &str {
    &key[16..38]
}

/// The id part of a whole key.
pub fn id_of(key: &str) -> &str {
    &key[3..15]
}

/// The public checksum of the documented layout: CRC-32 (IEEE) of the first 38
/// bytes, six base62 digits, most significant first.
pub fn public_checksum(body: &str) -> String {
    const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut value = u64::from(crc32fast::hash(body.as_bytes()));
    let mut digits = [b'0'; 6];

    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(value % 62) as usize];
        value /= 62;
    }
    String::from_utf8(digits.to_vec()).unwrap()
}

/// The same key id with another secret and a valid public checksum: what only a
/// forger holding the id would send.
pub fn with_wrong_secret(key: &str) -> String {
    let secret: String = secret_of(key)
        .chars()
        .map(|c| if c == 'Q' { 'R' } else { 'Q' })
        .collect();
    let body = format!("cm-{}_{secret}", id_of(key));
    let forged = format!("{body}{}", public_checksum(&body));

    // The layout of the docs is the one the crate parses.
    assert!(
        KeyFormat::public().parse(&forged).is_ok(),
        "forged checksum"
    );
    forged
}

/// The key with one character of its secret changed (the checksum then fails).
pub fn with_one_char_changed(key: &str) -> String {
    let mut bytes = key.as_bytes().to_vec();
    bytes[20] = if bytes[20] == b'x' { b'y' } else { b'x' };
    String::from_utf8(bytes).unwrap()
}

/// A checksum-valid key made from chosen text: the id part and the secret are
/// recognisable in logs.
pub fn crafted_key(id: &str, secret: &str) -> String {
    assert_eq!((id.len(), secret.len()), (12, 22));
    let body = format!("cm-{id}_{secret}");
    format!("{body}{}", public_checksum(&body))
}

// ---------------------------------------------------------------------------
// The inner service

/// Counts its calls and answers with what it saw, as JSON: the identity's key id
/// and user id (or null) and every `authorization` and `x-api-key` value.
#[derive(Debug, Clone, Default)]
pub struct Echo {
    calls: Arc<AtomicUsize>,
}

impl Echo {
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl<B> Service<Request<B>> for Echo {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let body = echo_body(request.extensions().get::<Identity>(), request.headers());

        let response = Response::builder()
            .header("content-type", "application/json")
            .body(Full::from(body.to_string()))
            .unwrap();
        ready(Ok(response))
    }
}

fn echo_body(identity: Option<&Identity>, headers: &http::HeaderMap) -> Value {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .collect()
    };

    json!({
        "key_id": identity.map(|identity| identity.key_id().as_str().to_owned()),
        "user_id": identity.map(|identity| identity.user_id().to_owned()),
        "authorization": values("authorization"),
        "x_api_key": values("x-api-key"),
    })
}

// ---------------------------------------------------------------------------
// Servers

/// Serves `service` over HTTP/1.1 on 127.0.0.1, an ephemeral port, until the
/// runtime ends.
pub async fn spawn<S, B>(service: S) -> SocketAddr
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();

    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = service.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request| service.clone().oneshot(request));
                // A client that sends garbage ends its own connection; nothing to do.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// What a test server is made of.
#[derive(Debug, Clone, Copy, Default)]
pub struct Setup {
    pub backend: Backend,
    pub family: RouteFamily,
}

/// A running server: the layer around [`Echo`], the store its keys come from, and
/// the counters.
#[derive(Debug)]
pub struct Harness {
    pub addr: SocketAddr,
    pub store: MemoryKeyStore,
    pub counts: Counts,
    pub echo: Echo,
    pub family: RouteFamily,
}

impl Harness {
    /// The default layer over the memory store.
    pub async fn start() -> Self {
        Self::start_with(Setup::default(), |layer| layer).await
    }

    /// A layer built by `configure` (after the setup's route family is applied).
    pub async fn start_with<R: RenderRejection>(
        setup: Setup,
        configure: impl FnOnce(TestLayer) -> TestLayer<R>,
    ) -> Self {
        let store = MemoryKeyStore::new();
        let backing = match setup.backend {
            Backend::Memory => TestStore::Memory(store.clone()),
            Backend::Waiting => TestStore::Waiting(Waiting(store.clone())),
            Backend::Failing => TestStore::Fault(FaultStore(Fault::Fail)),
            Backend::Hanging => TestStore::Fault(FaultStore(Fault::Hang)),
        };
        let counting = Counting::new(backing);
        let counts = counting.counts();

        let layer = configure(ApiKeyLayer::new(counting).route_family(setup.family));
        let echo = Echo::default();
        let addr = spawn(layer.layer(echo.clone())).await;
        Self {
            addr,
            store,
            counts,
            echo,
            family: setup.family,
        }
    }

    /// Creates a key for `user` and returns it in plaintext.
    pub async fn key(&self, user: &str) -> String {
        let created = self.store.create_key(NewKey::for_user(user)).await.unwrap();
        created.key.expose().to_owned()
    }

    pub async fn send(&self, request: Raw) -> Reply {
        send(self.addr, request).await
    }

    /// Calls of the inner service and of the store so far.
    pub fn calls(&self) -> (usize, usize) {
        (self.echo.calls(), self.counts.total())
    }

    /// The envelope the layer must pick for a request with these headers.
    pub fn envelope_for(&self, headers: &[(String, Vec<u8>)]) -> Envelope {
        match self.family {
            RouteFamily::OpenAi => Envelope::OpenAi,
            RouteFamily::Anthropic => Envelope::Anthropic,
            _ => {
                let anthropic = headers.iter().any(|(name, value)| {
                    name.eq_ignore_ascii_case("anthropic-version")
                        || (name.eq_ignore_ascii_case("x-api-key")
                            && value.iter().any(|&b| b != b' ' && b != b'\t'))
                });
                if anthropic {
                    Envelope::Anthropic
                } else {
                    Envelope::OpenAi
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The raw client

/// An HTTP/1.1 request written byte for byte.
#[derive(Debug, Clone)]
pub struct Raw {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Raw {
    pub fn get(target: &str) -> Self {
        Self::new("GET", target)
    }

    pub fn new(method: &str, target: &str) -> Self {
        Self {
            method: method.to_owned(),
            target: target.to_owned(),
            headers: Vec::new(),
        }
    }

    /// Adds a header line; repeated names give repeated lines.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    pub fn headers(mut self, pairs: &[(&str, &[u8])]) -> Self {
        for (name, value) in pairs {
            self = self.header(name, value);
        }
        self
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n",
            self.method, self.target
        )
        .into_bytes();

        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// Everything the server sent, to search for leaked secrets.
    pub raw: Vec<u8>,
}

impl Reply {
    /// Every value of a header, in order.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
            .collect()
    }

    /// The value of a header that must appear at most once.
    pub fn one(&self, name: &str) -> Option<String> {
        let mut values = self.all(name);
        assert!(values.len() <= 1, "{name} sent {} times", values.len());
        values.pop()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "body is not JSON ({err}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Whether `needle` occurs anywhere in what the server sent.
    pub fn contains(&self, needle: &str) -> bool {
        !needle.is_empty()
            && self
                .raw
                .windows(needle.len())
                .any(|window| window == needle.as_bytes())
    }
}

/// Sends one request on a new connection and reads the whole response, within
/// [`PATIENCE`].
pub async fn send(addr: SocketAddr, request: Raw) -> Reply {
    tokio::time::timeout(PATIENCE, exchange(addr, request.to_bytes()))
        .await
        .unwrap_or_else(|_| panic!("no response within {PATIENCE:?}"))
}

async fn exchange(addr: SocketAddr, bytes: Vec<u8>) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // A server that answers early (400) may close before it has read everything.
    let _ = stream.write_all(&bytes).await;

    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(err) if raw.is_empty() => panic!("no response: {err}"),
            Err(_) => break,
        }
    }
    parse_reply(raw)
}

fn parse_reply(raw: Vec<u8>) -> Reply {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("incomplete response: {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");

    let status_line = lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, Vec<u8>)> = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.to_ascii_lowercase(), value.trim().as_bytes().to_vec())
        })
        .collect();

    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case(b"chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Reply {
        status,
        headers,
        body,
        raw,
    }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        rest = &rest[line_end + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

// ---------------------------------------------------------------------------
// Assertions

/// What an error response must look like.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub status: u16,
    pub code: &'a str,
    pub envelope: Envelope,
    /// The request id to echo; `None` when a fresh `req_` id is due.
    pub request_id: Option<&'a str>,
    /// Text that must not appear anywhere in the response.
    pub secrets: &'a [&'a str],
}

impl<'a> Expected<'a> {
    /// A 401 with `code`, in `envelope`, with a fresh request id.
    pub fn unauthorized(code: &'a str, envelope: Envelope) -> Self {
        Self {
            status: 401,
            code,
            envelope,
            request_id: None,
            secrets: &[],
        }
    }

    pub fn secrets(mut self, secrets: &'a [&'a str]) -> Self {
        self.secrets = secrets;
        self
    }

    pub fn request_id(mut self, id: &'a str) -> Self {
        self.request_id = Some(id);
        self
    }
}

/// Whether `id` is a fresh request id: `req_` and 24 base62 characters.
pub fn is_fresh_request_id(id: &str) -> bool {
    id.len() == 28 && id.starts_with("req_") && id[4..].bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Checks every field of an error response against `expected`; returns the
/// request id it carried.
pub fn assert_rejection(reply: &Reply, expected: Expected<'_>) -> String {
    let context = String::from_utf8_lossy(&reply.raw).into_owned();
    assert_eq!(reply.status, expected.status, "status of {context}");
    assert_eq!(
        reply.one("content-type").as_deref(),
        Some("application/json"),
        "{context}"
    );

    let challenge = match (expected.status, expected.code) {
        (503, _) => None,
        (_, "missing_api_key") => Some("Bearer"),
        _ => Some("Bearer error=\"invalid_token\""),
    };
    assert_eq!(
        reply.one("www-authenticate").as_deref(),
        challenge,
        "{context}"
    );
    let retry = (expected.status == 503).then_some("1");
    assert_eq!(reply.one("retry-after").as_deref(), retry, "{context}");
    assert_eq!(reply.one("x-should-retry"), None, "{context}");

    let request_id = assert_request_ids(reply, expected.request_id);
    assert_envelope(reply, expected, &request_id);

    for secret in expected.secrets {
        assert!(
            !reply.contains(secret),
            "response leaks {secret:?}: {context}"
        );
    }
    request_id
}

fn assert_request_ids(reply: &Reply, expected: Option<&str>) -> String {
    let x_request_id = reply.one("x-request-id").expect("x-request-id header");
    let request_id = reply.one("request-id").expect("request-id header");
    assert_eq!(x_request_id, request_id);

    match expected {
        Some(id) => assert_eq!(x_request_id, id),
        None => assert!(is_fresh_request_id(&x_request_id), "{x_request_id:?}"),
    }
    x_request_id
}

fn assert_envelope(reply: &Reply, expected: Expected<'_>, request_id: &str) {
    let body = reply.json();
    let error_type = match (expected.status, expected.envelope) {
        (503, Envelope::OpenAi) => "server_error",
        (503, _) => "api_error",
        _ => "authentication_error",
    };

    let message = match expected.envelope {
        Envelope::OpenAi => {
            let error = &body["error"];
            assert_eq!(keys(&body), ["error"], "{body}");
            assert_eq!(keys(error), ["code", "message", "param", "type"], "{body}");
            assert_eq!(error["type"], error_type, "{body}");
            assert_eq!(error["param"], Value::Null, "{body}");
            assert_eq!(error["code"], expected.code, "{body}");
            error["message"].as_str().unwrap().to_owned()
        }
        _ => {
            let error = &body["error"];
            assert_eq!(keys(&body), ["error", "request_id", "type"], "{body}");
            assert_eq!(body["type"], "error", "{body}");
            assert_eq!(body["request_id"], request_id, "{body}");
            assert_eq!(
                keys(error),
                ["code", "details", "message", "type"],
                "{body}"
            );
            assert_eq!(error["type"], error_type, "{body}");
            assert_eq!(error["code"], expected.code, "{body}");
            assert_eq!(
                error["details"],
                json!({"error_code": expected.code}),
                "{body}"
            );
            error["message"].as_str().unwrap().to_owned()
        }
    };
    assert!(
        !message.is_empty() && message.ends_with('.'),
        "message {message:?} is one sentence"
    );
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("{value} is not an object"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

/// Checks a success: the inner service answered, saw the identity of `key`'s
/// owner, and no credential header reached it; the key appears nowhere in the
/// response.
pub fn assert_success(reply: &Reply, key: &str, user: &str) -> Value {
    let context = String::from_utf8_lossy(&reply.raw).into_owned();
    assert_eq!(reply.status, 200, "{context}");

    let seen = reply.json();
    assert_eq!(seen["key_id"], id_of(key), "{context}");
    assert_eq!(seen["user_id"], user, "{context}");
    assert!(!reply.contains(secret_of(key)), "response leaks the secret");
    seen
}

/// Checks that the inner service saw no credential header at all.
pub fn assert_no_credentials_reached(seen: &Value) {
    assert_eq!(seen["authorization"], json!([]), "{seen}");
    assert_eq!(seen["x_api_key"], json!([]), "{seen}");
}
