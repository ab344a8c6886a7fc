//! Key spraying: an attacker sends masses of random keys that pass the public
//! checksum (anyone can compute a CRC), hoping to load the database or find an id.
//!
//! Behind `CachedKeyStore`, each distinct id costs at most one call to the store
//! while the negative cache remembers it, many concurrent misses of one id cost one
//! call, and the cache never holds more entries than its capacity. With a signing
//! secret, sprayed keys cost no store call at all.
//!
//! The spray is scaled to run in seconds in a debug build (`SPRAY` keys); a release
//! build (`cargo test --release --all-features --test spraying`) sprays a million.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use crossmodel_auth::{
    CachedKeyStore, KeyFormat, KeyId, KeyManager, KeyRecord, KeyStore, MemoryKeyStore, NewKey,
    RejectionKind, SigningSecret, StoreError, Verifier,
};

/// How many random keys one spray sends.
const SPRAY: usize = if cfg!(debug_assertions) {
    250_000
} else {
    1_000_000
};

/// The cache's capacity: far fewer entries than sprayed ids.
const CAPACITY: u64 = 2_000;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Counts the lookups that reach the store, per id.
#[derive(Clone, Default)]
struct Counting {
    inner: MemoryKeyStore,
    calls: Arc<Mutex<HashMap<KeyId, usize>>>,
    total: Arc<AtomicUsize>,
    delay: Option<Duration>,
}

impl Counting {
    fn note(&self, id: &KeyId) {
        self.total.fetch_add(1, Ordering::Relaxed);
        *self
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(*id)
            .or_default() += 1;
    }

    fn most_calls_for_one_id(&self) -> usize {
        let calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        calls.values().copied().max().unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl KeyStore for Counting {
    async fn lookup(&self, id: &KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        self.note(id);
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
        self.inner.lookup(id).await
    }

    fn lookup_now(&self, id: &KeyId) -> Option<Result<Option<Arc<KeyRecord>>, StoreError>> {
        self.note(id);
        self.inner.lookup_now(id)
    }
}

/// Random keys with a valid public checksum, from a seeded generator so a failure
/// replays; built per the documented layout (CRC-32 in six base62 digits).
struct Sprayer(u64);

impl Sprayer {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn key(&mut self) -> String {
        let mut text = b"cm-".to_vec();
        for position in 0..34 {
            if position == 12 {
                text.push(b'_');
            }
            text.push(BASE62[(self.next_u64() % 62) as usize]);
        }
        let mut crc = u64::from(crc32fast::hash(&text));
        let mut sum = [b'0'; 6];
        for digit in sum.iter_mut().rev() {
            *digit = BASE62[(crc % 62) as usize];
            crc /= 62;
        }
        text.extend_from_slice(&sum);
        String::from_utf8(text).unwrap()
    }
}

/// A store that knows a few real keys, none of them sprayed.
async fn known_store() -> MemoryKeyStore {
    let store = MemoryKeyStore::new();
    for user in ["alice", "bob", "carol"] {
        store.create_key(NewKey::for_user(user)).await.unwrap();
    }
    store
}

/// The number of entries the cache reports holding (its `Debug` shows it; the type
/// has no other accessor).
fn entries_of<S>(cache: &CachedKeyStore<S>) -> u64 {
    let shown = format!("{cache:?}");
    let start = shown.find("entries: ").unwrap() + "entries: ".len();
    let digits: String = shown[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn sprayed_keys_cost_one_store_call_per_id_and_bounded_memory() {
    let counting = Counting {
        inner: known_store().await,
        ..Counting::default()
    };
    let cache = CachedKeyStore::new(counting.clone())
        .capacity(CAPACITY)
        .negative_ttl(Duration::from_secs(3600));
    let verifier = Verifier::new(cache.clone());
    let mut sprayer = Sprayer(0x5b7a_0001);

    for _ in 0..SPRAY {
        let key = sprayer.key();
        assert!(KeyFormat::public().parse(&key).is_ok());
        let rejection = verifier.verify(&key).await.unwrap_err();
        assert_eq!(rejection.kind(), RejectionKind::InvalidApiKey);
    }

    // Every sprayed id was new, so each reached the store once, and only once.
    assert_eq!(counting.total(), SPRAY);
    assert_eq!(counting.most_calls_for_one_id(), 1);
    // A million ids, a few thousand entries: the cache does not grow with the spray.
    let entries = entries_of(&cache);
    assert!(
        entries <= CAPACITY,
        "{entries} entries, capacity {CAPACITY}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_repeated_spray_asks_the_store_once_per_id_while_the_negative_cache_holds_it() {
    let counting = Counting {
        inner: known_store().await,
        ..Counting::default()
    };
    let cache = CachedKeyStore::new(counting.clone())
        .capacity(CAPACITY)
        .negative_ttl(Duration::from_secs(3600));
    let verifier = Verifier::new(cache.clone());
    let mut sprayer = Sprayer(0x5b7a_0002);
    let distinct: Vec<String> = (0..CAPACITY / 4).map(|_| sprayer.key()).collect();

    // The same ids over and over, interleaved.
    for round in 0..20 {
        for key in distinct.iter().skip(round % 7) {
            let rejection = verifier.verify(key).await.unwrap_err();
            assert_eq!(rejection.kind(), RejectionKind::InvalidApiKey);
        }
    }

    assert_eq!(counting.most_calls_for_one_id(), 1);
    assert_eq!(counting.total(), distinct.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_of_one_id_make_one_store_call() {
    let counting = Counting {
        inner: known_store().await,
        delay: Some(Duration::from_millis(100)),
        ..Counting::default()
    };
    let cache = CachedKeyStore::new(counting.clone()).negative_ttl(Duration::from_secs(3600));
    let verifier = Verifier::new(cache);
    let key = Sprayer(0x5b7a_0003).key();

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let (verifier, key) = (verifier.clone(), key.clone());
        tasks.spawn(async move { verifier.verify(&key).await.unwrap_err().kind() });
    }
    let kinds = tokio::time::timeout(Duration::from_secs(10), tasks.join_all())
        .await
        .unwrap();

    assert!(
        kinds
            .iter()
            .all(|kind| *kind == RejectionKind::InvalidApiKey)
    );
    assert_eq!(counting.total(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn with_a_signing_secret_sprayed_keys_cost_no_store_call() {
    let secret = SigningSecret::new(b"spraying-test-signing-secret-0001".to_vec()).unwrap();
    let format = KeyFormat::signed([secret]);
    let counting = Counting {
        inner: MemoryKeyStore::with_key_format(format.clone()),
        ..Counting::default()
    };
    let real = counting
        .inner
        .create_key(NewKey::for_user("alice"))
        .await
        .unwrap();
    let verifier = Verifier::new(CachedKeyStore::new(counting.clone())).with_key_format(format);
    let mut sprayer = Sprayer(0x5b7a_0004);

    for _ in 0..SPRAY {
        let rejection = verifier.verify(&sprayer.key()).await.unwrap_err();
        assert_eq!(rejection.kind(), RejectionKind::InvalidApiKey);
    }
    for _ in 0..1_000 {
        let key = KeyFormat::public().generate().unwrap();
        assert!(verifier.verify(key.expose()).await.is_err());
    }
    assert_eq!(counting.total(), 0, "a sprayed key reached the store");

    // The real, signed key still works, through one store call.
    let identity = verifier.verify(real.key.expose()).await.unwrap();
    assert_eq!(identity.user_id(), "alice");
    assert_eq!(counting.total(), 1);
}
