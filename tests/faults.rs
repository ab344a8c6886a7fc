//! The layer over real HTTP on 127.0.0.1, in front of a store that misbehaves at
//! random: slow, failing, hanging, answering only after the deadline, or flapping
//! between failure and success, chosen per call by a seeded generator.
//!
//! Each request carries its own key, so the store's record of what it did to each
//! id tells exactly what the answer must be: 200 only for a good key whose lookup
//! completed in time, 401 for a wrong key whose lookup completed (or that never
//! needed one), 503 for everything the store failed to answer. The inner service
//! runs once per 200 and never otherwise, and no request outlives the deadline by
//! more than a generous margin.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use crossmodel_auth::{
    ApiKeyLayer, CachedKeyStore, Identity, KeyId, KeyManager, KeyRecord, KeyStore, MemoryKeyStore,
    NewKey, StoreError,
};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;

/// The layer's deadline for store lookups.
const DEADLINE: Duration = Duration::from_secs(2);

/// How many requests, and how many in flight at once.
const REQUESTS: usize = 600;
const CONCURRENCY: usize = 200;

/// Fixed, so a failure replays the same choices (up to scheduling order).
const SEED: u64 = 0x5eed_f417_0000_0001;

/// SplitMix64: small, seeded, good enough to pick behaviours.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// What the store did with one lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Answered on the synchronous path, at once.
    Now,
    /// Answered at once on the waiting path.
    Healthy,
    /// Answered after a short sleep, well within the deadline.
    Slow,
    /// Would have answered long after the deadline.
    Late,
    /// Returned an error.
    Failing,
    /// Never answered.
    Hanging,
    /// A flapping store, on a call where it was up.
    FlapUp,
    /// A flapping store, on a call where it was down.
    FlapDown,
}

impl Fate {
    /// Whether the lookup completed in time with the store's real answer.
    fn answered(self) -> bool {
        matches!(self, Self::Now | Self::Healthy | Self::Slow | Self::FlapUp)
    }
}

/// A store that misbehaves per call and writes down what it did to each id.
#[derive(Clone)]
struct FaultyStore {
    inner: MemoryKeyStore,
    rng: Arc<Mutex<SplitMix>>,
    flaps: Arc<AtomicU64>,
    fates: Arc<Mutex<HashMap<KeyId, Vec<Fate>>>>,
}

impl FaultyStore {
    fn new(inner: MemoryKeyStore) -> Self {
        Self {
            inner,
            rng: Arc::new(Mutex::new(SplitMix(SEED))),
            flaps: Arc::default(),
            fates: Arc::default(),
        }
    }

    fn roll(&self, bound: u64) -> u64 {
        self.rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .below(bound)
    }

    fn note(&self, id: &KeyId, fate: Fate) {
        self.fates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(*id)
            .or_default()
            .push(fate);
    }

    fn fates_of(&self, id: &KeyId) -> Vec<Fate> {
        let fates = self.fates.lock().unwrap_or_else(PoisonError::into_inner);
        fates.get(id).cloned().unwrap_or_default()
    }

    fn outage() -> StoreError {
        StoreError::unavailable(
            "key database unreachable; check that it is running",
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused"),
        )
    }
}

#[async_trait]
impl KeyStore for FaultyStore {
    async fn lookup(&self, id: &KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let fate = match self.roll(100) {
            0..35 => Fate::Healthy,
            35..50 => Fate::Slow,
            50..58 => Fate::Late,
            58..72 => Fate::Failing,
            72..82 => Fate::Hanging,
            _ if self.flaps.fetch_add(1, Ordering::Relaxed) % 2 == 0 => Fate::FlapDown,
            _ => Fate::FlapUp,
        };
        self.note(id, fate);

        match fate {
            Fate::Slow => tokio::time::sleep(Duration::from_millis(self.roll(20))).await,
            Fate::Late => tokio::time::sleep(DEADLINE * 3).await,
            Fate::Hanging => std::future::pending::<()>().await,
            Fate::Failing | Fate::FlapDown => return Err(Self::outage()),
            _ => {}
        }
        self.inner.lookup(id).await
    }

    fn lookup_now(&self, id: &KeyId) -> Option<Result<Option<Arc<KeyRecord>>, StoreError>> {
        // One lookup in ten is answered without waiting, so both paths are covered.
        if self.roll(10) != 0 {
            return None;
        }
        self.note(id, Fate::Now);
        self.inner.lookup_now(id)
    }
}

/// What a request presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An active key of the store.
    Good,
    /// A disabled key of the store, with its secret.
    Disabled,
    /// A checksum-valid key the store does not know.
    Unknown,
    /// A key with one character changed: fails the checksum.
    Malformed,
    /// No key at all.
    Missing,
}

struct Planned {
    kind: Kind,
    key: Option<(String, KeyId)>,
}

async fn plan(store: &MemoryKeyStore) -> Vec<Planned> {
    let kinds = [
        Kind::Good,
        Kind::Good,
        Kind::Good,
        Kind::Disabled,
        Kind::Unknown,
        Kind::Malformed,
        Kind::Missing,
    ];
    let mut planned = Vec::with_capacity(REQUESTS);
    for index in 0..REQUESTS {
        let kind = kinds[index % kinds.len()];
        let key = match kind {
            Kind::Good | Kind::Disabled | Kind::Malformed => {
                let created = store.create_key(NewKey::for_user("load")).await.unwrap();
                if kind == Kind::Disabled {
                    store.disable_key(&created.key.id()).await.unwrap();
                }
                let mut text = created.key.expose().to_owned();
                if kind == Kind::Malformed {
                    let last = if text.ends_with('A') { "B" } else { "A" };
                    text.replace_range(43.., last);
                }
                Some((text, created.key.id()))
            }
            Kind::Unknown => {
                let key = crossmodel_auth::KeyFormat::public().generate().unwrap();
                Some((key.expose().to_owned(), key.id()))
            }
            Kind::Missing => None,
        };
        planned.push(Planned { kind, key });
    }
    planned
}

/// The one status a request may get, given what the store did with its lookup.
fn expected(planned: &Planned, fates: &[Fate]) -> u16 {
    match planned.kind {
        Kind::Missing | Kind::Malformed => {
            assert!(
                fates.is_empty(),
                "the store was asked about a {:?} key",
                planned.kind
            );
            return 401;
        }
        _ => {}
    }
    assert_eq!(fates.len(), 1, "one lookup per request: {fates:?}");

    match (fates[0].answered(), planned.kind) {
        (false, _) => 503,
        (true, Kind::Good) => 200,
        (true, _) => 401,
    }
}

struct Server {
    address: SocketAddr,
    inner_calls: Arc<AtomicUsize>,
    identities: Arc<Mutex<Vec<KeyId>>>,
}

async fn serve<K: KeyStore + Clone>(store: K) -> Server {
    let inner_calls = Arc::new(AtomicUsize::new(0));
    let identities = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new()
        .route(
            "/v1/models",
            get({
                let inner_calls = Arc::clone(&inner_calls);
                let identities = Arc::clone(&identities);
                move |identity: Identity| async move {
                    inner_calls.fetch_add(1, Ordering::SeqCst);
                    identities.lock().unwrap().push(identity.key_id());
                    "models"
                }
            }),
        )
        .layer(ApiKeyLayer::new(store).deadline(DEADLINE));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server {
        address,
        inner_calls,
        identities,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_store_never_lets_an_unverified_request_through() {
    let memory = MemoryKeyStore::new();
    let planned = Arc::new(plan(&memory).await);
    let store = FaultyStore::new(memory);
    let server = serve(store.clone()).await;

    hammer(&server, &store, planned).await;
}

/// The same behind the cache, which must neither cache a failure nor turn a late
/// or failed lookup into an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_store_behind_the_cache_never_lets_an_unverified_request_through() {
    let memory = MemoryKeyStore::new();
    let planned = Arc::new(plan(&memory).await);
    let store = FaultyStore::new(memory);
    let server = serve(CachedKeyStore::new(store.clone())).await;

    hammer(&server, &store, planned).await;
}

/// Sends every planned request, `CONCURRENCY` at a time, and checks each answer
/// against what the store did with its lookup.
async fn hammer(server: &Server, store: &FaultyStore, planned: Arc<Vec<Planned>>) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let gate = Arc::new(Semaphore::new(CONCURRENCY));

    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..REQUESTS {
        let (client, gate, planned) = (client.clone(), Arc::clone(&gate), Arc::clone(&planned));
        let uri = format!("http://{}/v1/models", server.address);
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            let mut request = http::Request::get(uri);
            if let Some((text, _)) = &planned[index].key {
                request = request.header("authorization", format!("Bearer {text}"));
            }
            let request = request.body(Empty::new()).unwrap();

            // The deadline plus a generous margin: a hang fails here, not in CI.
            let response = tokio::time::timeout(DEADLINE + Duration::from_secs(10), async {
                let response = client.request(request).await.unwrap();
                let status = response.status().as_u16();
                response.into_body().collect().await.unwrap();
                status
            })
            .await
            .expect("a request outlived the store deadline");
            (index, response)
        });
    }

    let all = tokio::time::timeout(Duration::from_secs(120), tasks.join_all())
        .await
        .expect("the whole run finishes");

    let mut counts: HashMap<u16, usize> = HashMap::new();
    let mut accepted = Vec::new();
    for (index, status) in all {
        let planned = &planned[index];
        let fates = planned
            .key
            .as_ref()
            .map(|(_, id)| store.fates_of(id))
            .unwrap_or_default();
        assert_eq!(
            status,
            expected(planned, &fates),
            "request {index}: {:?} key, store {fates:?}",
            planned.kind
        );
        *counts.entry(status).or_default() += 1;
        if status == 200 {
            accepted.push(planned.key.as_ref().unwrap().1);
        }
    }

    // The inner service ran once per 200, for exactly those keys.
    assert_eq!(server.inner_calls.load(Ordering::SeqCst), accepted.len());
    let mut seen = server.identities.lock().unwrap().clone();
    seen.sort();
    accepted.sort();
    assert_eq!(seen, accepted);

    // Every outcome happened, or the run did not test what it claims.
    for status in [200, 401, 503] {
        assert!(
            counts.get(&status).copied().unwrap_or(0) > 0,
            "no {status}: {counts:?}"
        );
    }
}
