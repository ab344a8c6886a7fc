//! `CachedKeyStore` over counting and failing stores: one inner call for many
//! concurrent misses, hits answered synchronously, TTLs, the negative cache,
//! invalidation, errors never cached, and cached records still judged at use.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use crossmodel_auth::{
    CachedKeyStore, ChangeWatcher, CreatedKey, KeyId, KeyManager, KeyRecord, KeyState, KeyStore,
    MemoryKeyStore, NewKey, RejectionKind, StoreChange, StoreError, StoreErrorKind, Verifier,
};
use tokio::sync::Semaphore;

/// A memory store that counts lookups, can be slowed, held at a gate, or made to
/// fail, and hands out a way to report changes.
#[derive(Clone, Default)]
struct Counting {
    keys: MemoryKeyStore,
    calls: Arc<AtomicUsize>,
    delay: Duration,
    failing: Arc<AtomicBool>,
    gate: Option<Arc<Semaphore>>,
    watcher: Arc<Mutex<Option<ChangeWatcher>>>,
    reports_changes: bool,
}

impl Counting {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    async fn key(&self, new: NewKey) -> CreatedKey {
        self.keys.create_key(new).await.unwrap()
    }

    /// Reports a change as a database store would; returns whether the watcher
    /// still wants changes.
    fn report(&self, change: &StoreChange) -> bool {
        let watcher = self.watcher.lock().unwrap();
        (watcher.as_ref().unwrap())(change)
    }
}

#[async_trait]
impl KeyStore for Counting {
    async fn lookup(&self, id: &KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            gate.acquire().await.unwrap().forget();
        }
        tokio::time::sleep(self.delay).await;

        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable("test store is down", "down"));
        }
        self.keys.lookup(id).await
    }

    fn watch_changes(&self, watcher: ChangeWatcher) -> bool {
        if self.reports_changes {
            *self.watcher.lock().unwrap() = Some(watcher);
        }
        self.reports_changes
    }
}

fn unknown_id() -> KeyId {
    KeyId::parse("unknownKey12").unwrap()
}

/// Polls `check` until it holds, for at most 10 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_make_one_inner_call() {
    let inner = Counting {
        delay: Duration::from_millis(50),
        ..Counting::default()
    };
    let id = inner.key(NewKey::for_user("alice")).await.key.id();
    let cache = CachedKeyStore::new(inner.clone());

    let lookups: Vec<_> = (0..1000)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.lookup(&id).await })
        })
        .collect();
    for lookup in lookups {
        let found = lookup.await.unwrap().unwrap().unwrap();
        assert_eq!(found.id, id);
    }

    assert_eq!(inner.calls(), 1);
}

#[tokio::test]
async fn hits_are_answered_synchronously() {
    let inner = Counting::default();
    let id = inner.key(NewKey::for_user("alice")).await.key.id();
    let cache = CachedKeyStore::new(inner.clone());
    assert!(cache.lookup_now(&id).is_none(), "nothing cached yet");

    cache.lookup(&id).await.unwrap();

    let hit = cache.lookup_now(&id).unwrap().unwrap().unwrap();
    assert_eq!(hit.id, id);
    cache.lookup(&id).await.unwrap();
    assert_eq!(inner.calls(), 1);
}

#[tokio::test]
async fn unknown_ids_are_remembered_for_the_negative_ttl() {
    let inner = Counting::default();
    let cache = CachedKeyStore::new(inner.clone())
        .ttl(Duration::from_secs(300))
        .negative_ttl(Duration::from_millis(100));

    assert!(cache.lookup(&unknown_id()).await.unwrap().is_none());
    assert!(cache.lookup(&unknown_id()).await.unwrap().is_none());
    assert_eq!(inner.calls(), 1);
    assert!(matches!(cache.lookup_now(&unknown_id()), Some(Ok(None))));

    eventually("the negative entry expires", || {
        cache.lookup_now(&unknown_id()).is_none()
    })
    .await;
    cache.lookup(&unknown_id()).await.unwrap();
    assert_eq!(inner.calls(), 2);
}

#[tokio::test]
async fn found_records_expire_after_the_ttl() {
    let inner = Counting::default();
    let id = inner.key(NewKey::for_user("alice")).await.key.id();
    let cache = CachedKeyStore::new(inner.clone()).ttl(Duration::from_millis(100));

    cache.lookup(&id).await.unwrap();
    assert!(cache.lookup_now(&id).is_some());

    eventually("the entry expires", || cache.lookup_now(&id).is_none()).await;
}

#[tokio::test]
async fn store_errors_are_never_cached() {
    let inner = Counting::default();
    let id = inner.key(NewKey::for_user("alice")).await.key.id();
    let cache = CachedKeyStore::new(inner.clone());
    inner.fail(true);

    let err = cache.lookup(&id).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    assert!(cache.lookup_now(&id).is_none());

    inner.fail(false);
    assert!(cache.lookup(&id).await.unwrap().is_some());
    assert_eq!(inner.calls(), 2);
}

#[tokio::test]
async fn cached_records_outlive_an_outage_of_the_inner_store() {
    let inner = Counting::default();
    let cached_id = inner.key(NewKey::for_user("alice")).await.key.id();
    let other_id = inner.key(NewKey::for_user("bob")).await.key.id();
    let cache = CachedKeyStore::new(inner.clone());
    cache.lookup(&cached_id).await.unwrap();

    inner.fail(true);

    assert!(cache.lookup(&cached_id).await.unwrap().is_some());
    let err = cache.lookup(&other_id).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
}

#[tokio::test]
async fn capacity_bounds_the_entries() {
    let inner = Counting::default();
    let mut ids = Vec::new();
    for _ in 0..500 {
        ids.push(inner.key(NewKey::for_user("alice")).await.key.id());
    }
    let cache = CachedKeyStore::new(inner.clone()).capacity(20);

    for id in &ids {
        cache.lookup(id).await.unwrap();
    }

    let kept = ids
        .iter()
        .filter(|id| cache.lookup_now(id).is_some())
        .count();
    assert!(kept <= 100, "{kept} of 500 entries kept with capacity 20");
}

#[tokio::test]
async fn invalidation_drops_a_key_a_user_or_everything() {
    let inner = Counting::default();
    let alice_1 = inner.key(NewKey::for_user("alice")).await.key.id();
    let alice_2 = inner.key(NewKey::for_user("alice")).await.key.id();
    let bob = inner.key(NewKey::for_user("bob")).await.key.id();
    let cache = CachedKeyStore::new(inner.clone());
    let fill = || async {
        for id in [alice_1, alice_2, bob] {
            cache.lookup(&id).await.unwrap();
        }
    };
    let cached = |id: &KeyId| cache.lookup_now(id).is_some();

    fill().await;
    cache.invalidate(&alice_1);
    assert!(!cached(&alice_1) && cached(&alice_2) && cached(&bob));

    fill().await;
    cache.invalidate_user("alice");
    assert!(!cached(&alice_1) && !cached(&alice_2) && cached(&bob));

    fill().await;
    cache.invalidate_all();
    assert!(!cached(&alice_1) && !cached(&alice_2) && !cached(&bob));
}

#[tokio::test]
async fn a_lookup_in_flight_during_an_invalidation_is_not_cached() {
    let gate = Arc::new(Semaphore::new(0));
    let inner = Counting {
        gate: Some(Arc::clone(&gate)),
        ..Counting::default()
    };
    let id = inner.key(NewKey::for_user("alice")).await.key.id();
    let cache = CachedKeyStore::new(inner.clone());
    let in_flight = tokio::spawn({
        let cache = cache.clone();
        async move { cache.lookup(&id).await }
    });
    eventually("the lookup reaches the store", || inner.calls() == 1).await;

    cache.invalidate(&id);
    gate.add_permits(1);

    assert!(in_flight.await.unwrap().unwrap().is_some());
    assert!(cache.lookup_now(&id).is_none(), "a stale answer was cached");
}

#[tokio::test]
async fn a_cancelled_first_lookup_does_not_strand_the_others() {
    let inner = Counting {
        delay: Duration::from_millis(50),
        ..Counting::default()
    };
    let id = inner.key(NewKey::for_user("alice")).await.key.id();
    let cache = CachedKeyStore::new(inner.clone());
    let first = tokio::spawn({
        let cache = cache.clone();
        async move { cache.lookup(&id).await }
    });
    eventually("the first lookup reaches the store", || inner.calls() == 1).await;
    let second = tokio::spawn({
        let cache = cache.clone();
        async move { cache.lookup(&id).await }
    });

    first.abort();

    let found = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the waiting lookup finished")
        .unwrap()
        .unwrap();
    assert!(found.is_some());
}

#[tokio::test]
async fn changes_reported_by_the_inner_store_reach_the_cache() {
    let inner = Counting {
        reports_changes: true,
        ..Counting::default()
    };
    let alice = inner.key(NewKey::for_user("alice")).await.key.id();
    let bob = inner.key(NewKey::for_user("bob")).await.key.id();
    let cache = CachedKeyStore::new(inner.clone());
    assert!(cache.is_watching_changes());
    let fill = || async {
        for id in [alice, bob] {
            cache.lookup(&id).await.unwrap();
        }
    };

    fill().await;
    assert!(inner.report(&StoreChange::Key(alice)));
    assert!(cache.lookup_now(&alice).is_none() && cache.lookup_now(&bob).is_some());

    fill().await;
    assert!(inner.report(&StoreChange::User("bob".into())));
    assert!(cache.lookup_now(&alice).is_some() && cache.lookup_now(&bob).is_none());

    fill().await;
    assert!(inner.report(&StoreChange::All));
    assert!(cache.lookup_now(&alice).is_none() && cache.lookup_now(&bob).is_none());

    drop(cache);
    assert!(
        !inner.report(&StoreChange::All),
        "a dropped cache stops watching"
    );
}

#[tokio::test]
async fn stores_that_report_nothing_are_not_watched() {
    let cache = CachedKeyStore::new(MemoryKeyStore::new());

    assert!(!cache.is_watching_changes());
}

#[tokio::test]
async fn changes_through_the_cache_drop_what_they_touch() {
    let cache = CachedKeyStore::new(MemoryKeyStore::new()).ttl(Duration::from_secs(300));
    let first = cache.create_key(NewKey::for_user("alice")).await.unwrap();
    let second = cache.create_key(NewKey::for_user("alice")).await.unwrap();
    let id = first.key.id();
    let state = |id| {
        let cache = cache.clone();
        async move { cache.lookup(&id).await.unwrap().unwrap() }
    };

    assert_eq!(state(id).await.state, KeyState::Active);
    cache.disable_key(&id).await.unwrap();
    assert_eq!(state(id).await.state, KeyState::Disabled);
    cache.enable_key(&id).await.unwrap();
    assert_eq!(state(id).await.state, KeyState::Active);
    cache
        .set_expiry(&id, Some(SystemTime::now() - Duration::from_secs(1)))
        .await
        .unwrap();
    assert!(state(id).await.expires_at.is_some());
    cache.revoke_key(&id).await.unwrap();
    assert_eq!(state(id).await.state, KeyState::Revoked);

    let other = second.key.id();
    assert!(state(other).await.user_state.as_str() == "active");
    cache.disable_user("alice").await.unwrap();
    assert!(state(other).await.user_state.as_str() == "disabled");

    cache.delete_key(&id).await.unwrap();
    assert!(cache.lookup(&id).await.unwrap().is_none());
}

#[tokio::test]
async fn a_key_that_expires_while_cached_is_rejected() {
    let inner = Counting::default();
    let expiry = SystemTime::now() + Duration::from_millis(300);
    let created = inner
        .key(NewKey::for_user("alice").expires_at(expiry))
        .await;
    let cache = CachedKeyStore::new(inner.clone()).ttl(Duration::from_secs(300));
    let verifier = Verifier::new(cache);
    verifier.verify(created.key.expose()).await.unwrap();

    while SystemTime::now() <= expiry {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rejection = verifier.verify(created.key.expose()).await.unwrap_err();

    assert_eq!(rejection.kind(), RejectionKind::ApiKeyInactive);
    assert_eq!(inner.calls(), 1, "the second check used the cached record");
}

#[tokio::test]
async fn uses_are_passed_to_the_inner_store() {
    let inner = MemoryKeyStore::new();
    let created = inner.create_key(NewKey::for_user("alice")).await.unwrap();
    let cache = CachedKeyStore::new(inner.clone());
    let at = SystemTime::now();

    cache.record_use(&created.key.id(), at);

    assert_eq!(inner.list_keys().await.unwrap()[0].last_used_at, Some(at));
}
