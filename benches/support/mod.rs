//! What the benchmarks share: a store of many keys, realistic requests, an inner
//! service that answers at once, and a driver that polls a future to completion
//! without an executor.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::convert::Infallible;
use std::future::{Future, ready};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::SystemTime;

use bytes::Bytes;
use crossmodel_auth::key::{KEY_LEN, KEY_PREFIX};
use crossmodel_auth::{
    KeyFormat, KeyId, KeyRecord, KeyState, KeyStore, MemoryKeyStore, SigningSecret, StoreError,
    UserState,
};
use http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body_util::Full;
use tower::Service;

/// Where the secret of a key starts and ends: `cm-` + 12-char id + `_`, then 22.
pub const SECRET_RANGE: std::ops::Range<usize> = 16..38;

/// A response body the inner service returns without allocating.
pub type Body = Full<Bytes>;

/// Keys made for a benchmark: the records (already in a memory store) and every
/// plaintext, packed end to end so that a million of them stay compact.
pub struct KeySet {
    pub store: MemoryKeyStore,
    pub records: Vec<Arc<KeyRecord>>,
    texts: Vec<u8>,
}

impl KeySet {
    /// `count` active keys of `format`, each for its own user, in a memory store.
    pub fn new(count: usize, format: &KeyFormat) -> Self {
        let store = MemoryKeyStore::with_key_format(format.clone());
        let mut records = Vec::with_capacity(count);
        let mut texts = Vec::with_capacity(count * KEY_LEN);

        for index in 0..count {
            let key = format.generate().unwrap();
            let record = record_for(&key, index);
            texts.extend_from_slice(key.expose().as_bytes());
            store.insert(KeyRecord::clone(&record));
            records.push(record);
        }
        Self {
            store,
            records,
            texts,
        }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// The plaintext of key `index`.
    pub fn key(&self, index: usize) -> &str {
        let text = &self.texts[index * KEY_LEN..(index + 1) * KEY_LEN];
        std::str::from_utf8(text).unwrap()
    }
}

/// A record as a store would hold it for a key: short name, short user id.
pub fn record_for(key: &crossmodel_auth::ApiKey, index: usize) -> Arc<KeyRecord> {
    Arc::new(KeyRecord {
        id: key.id(),
        digest: key.digest(),
        name: "bench".to_owned(),
        state: KeyState::Active,
        expires_at: None,
        created_at: SystemTime::UNIX_EPOCH,
        last_used_at: None,
        user_id: format!("user-{index}"),
        user_state: UserState::Active,
        metadata: serde_json::Value::Null,
    })
}

/// A signed format with one 32-byte secret.
pub fn signed_format() -> KeyFormat {
    KeyFormat::signed([SigningSecret::new(vec![0x5a; 32]).unwrap()])
}

/// The twelve headers an OpenAI SDK sends beside `Authorization`.
pub fn sdk_headers() -> HeaderMap {
    let pairs = [
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
    ];
    let mut headers = HeaderMap::with_capacity(16);
    for (name, value) in pairs {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    headers
}

/// `sdk_headers` plus `Authorization: Bearer <key>`: thirteen headers.
pub fn headers_with_bearer(key: &str) -> HeaderMap {
    let mut headers = sdk_headers();
    let value = HeaderValue::from_str(&format!("Bearer {key}")).unwrap();
    headers.insert(AUTHORIZATION, value);
    headers
}

/// A chat-completions request carrying `headers` (cloned, as a server would build
/// a fresh map per request).
pub fn request(headers: &HeaderMap) -> Request<()> {
    let mut request = Request::new(());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = Uri::from_static("/v1/chat/completions");
    *request.headers_mut() = headers.clone();
    request
}

/// The inner service: a ready 200 with a static body, dropping the request.
pub fn ok_service()
-> impl Service<Request<()>, Response = Response<Body>, Error = Infallible> + Clone {
    tower::service_fn(|request: Request<()>| {
        drop(request);
        ready(Ok::<_, Infallible>(Response::new(Full::new(
            Bytes::from_static(b"{}"),
        ))))
    })
}

/// Polls `future` with a no-op waker until it is ready. The fast paths measured
/// here are ready at the first poll; a store that must wait (a cache hit through a
/// lock) is polled again at once, so the loop stays in the measured time.
pub fn drive<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());

    for _ in 0..1_000_000 {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
    panic!("future did not complete after a million polls");
}

/// A key that passes no checksum: the last character changed.
pub fn with_bad_checksum(key: &str) -> String {
    let mut text = key.to_owned();
    let last = text.pop().unwrap();
    text.push(if last == 'A' { 'B' } else { 'A' });
    assert!(text.starts_with(KEY_PREFIX));
    text
}

/// Deterministic pseudo-random indices (xorshift64*), the same on every run.
pub struct Draw(u64);

impl Draw {
    pub fn new() -> Self {
        Self(0x9e37_79b9_7f4a_7c15)
    }

    pub fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let value = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (value % bound as u64) as usize
    }
}

/// Looks each id up once through `store`, on a current-thread runtime, so that a
/// cache holds them all.
pub fn warm<K: KeyStore>(store: &K, ids: &[KeyId]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        for id in ids {
            assert!(store.lookup(id).await.unwrap().is_some());
        }
    });
}

/// What `CachedKeyStore` holds, in a bare moka cache: the baseline of a hit.
pub fn moka_like_the_cache(
    records: &[Arc<KeyRecord>],
) -> moka::sync::Cache<KeyId, Option<Arc<KeyRecord>>> {
    struct Minute;

    impl moka::Expiry<KeyId, Option<Arc<KeyRecord>>> for Minute {
        fn expire_after_create(
            &self,
            _: &KeyId,
            _: &Option<Arc<KeyRecord>>,
            _: std::time::Instant,
        ) -> Option<std::time::Duration> {
            Some(std::time::Duration::from_secs(60))
        }
    }

    let cache = moka::sync::Cache::builder()
        .max_capacity(records.len() as u64)
        .expire_after(Minute)
        .build();
    for record in records {
        cache.insert(record.id, Some(Arc::clone(record)));
    }
    cache.run_pending_tasks();
    cache
}

/// A memory store that does not note last use: `record_use` is the trait's no-op.
#[derive(Clone)]
pub struct NoUseRecording(pub MemoryKeyStore);

#[async_trait::async_trait]
impl KeyStore for NoUseRecording {
    async fn lookup(&self, id: &KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        self.0.lookup(id).await
    }

    fn lookup_now(&self, id: &KeyId) -> Option<Result<Option<Arc<KeyRecord>>, StoreError>> {
        self.0.lookup_now(id)
    }
}

/// The same records in a moka cache with one TTL for every entry and no per-entry
/// timers.
pub fn moka_with_one_ttl(
    records: &[Arc<KeyRecord>],
) -> moka::sync::Cache<KeyId, Option<Arc<KeyRecord>>> {
    let cache = moka::sync::Cache::builder()
        .max_capacity(records.len() as u64)
        .time_to_live(std::time::Duration::from_secs(60))
        .build();
    for record in records {
        cache.insert(record.id, Some(Arc::clone(record)));
    }
    cache.run_pending_tasks();
    cache
}
