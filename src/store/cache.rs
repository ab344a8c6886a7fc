//! A bounded cache in front of any [`KeyStore`], so that most requests never reach
//! the database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use moka::Expiry;
use tokio::sync::OnceCell;

use super::{
    ChangeWatcher, CreatedKey, KeyManager, KeyRecord, KeyStore, NewKey, StoreChange, StoreError,
    UserRecord,
};
use crate::key::KeyId;

type Found = Option<Arc<KeyRecord>>;

type Outcome = Result<Found, StoreError>;

/// Default most entries kept.
const DEFAULT_CAPACITY: u64 = 10_000;

/// Default time a found record is kept.
const DEFAULT_TTL: Duration = Duration::from_secs(60);

/// Default time an unknown id is remembered as unknown.
const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// A bounded, TTL cache around a [`KeyStore`]. Cheap to clone: clones share the
/// cache.
///
/// - Found records are kept for a TTL (60 s by default), unknown ids for a shorter
///   one (5 s), at most `capacity` entries in all (10,000), least recently used
///   first out (moka's TinyLFU).
/// - Many lookups of one uncached id at once make one call to the inner store; the
///   others wait for its answer.
/// - A store error is never cached: the next lookup asks again.
/// - A cached record is still judged on every request: the verifier checks state
///   and expiry each time, so a key whose expiry passes while cached is rejected.
/// - When the inner store reports changes ([`KeyStore::watch_changes`]: the SQLite
///   and PostgreSQL stores do, including changes made by other processes), the
///   cache drops what changed by itself. Changes made through the cache's own
///   [`KeyManager`] methods drop their entries at once.
///
/// # Why `moka::sync` and not `moka::future`
///
/// A hit must be answered through [`KeyStore::lookup_now`]: synchronously, without
/// boxing a future or arming the layer's deadline timer. `moka::future::Cache`
/// offers only an async `get`, so entries live in a `moka::sync::Cache`, whose
/// `get` never blocks on I/O, and misses are coalesced here with a map of in-flight
/// lookups, each a Tokio `OnceCell` that the first caller fills and the others
/// await.
///
/// # When the inner store is down
///
/// Over a store whose change feed reports the outage (the PostgreSQL store drops
/// every entry when its listening connection fails, and again every second until
/// it listens again), nothing cached outlives the outage by more than about a
/// second, and requests get 503. Over a store without such a feed, entries already
/// cached keep being served until their TTL ends; a miss (and any entry past its
/// TTL) gets the store's error, which the layer answers with 503.
///
/// Why the difference: with many replicas, one replica cut off from a database the
/// others still reach could otherwise keep accepting a key revoked elsewhere for a
/// whole TTL, so the PostgreSQL store fails closed. A store without a feed gives
/// the cache nothing to act on; there the TTL is the bound, so keep it short.
///
/// # Example
///
/// ```
/// use std::time::Duration;
///
/// use crossmodel_auth::{ApiKeyLayer, CachedKeyStore, MemoryKeyStore};
///
/// let store = CachedKeyStore::new(MemoryKeyStore::new())
///     .capacity(50_000)
///     .ttl(Duration::from_secs(300))
///     .negative_ttl(Duration::from_secs(10));
/// let layer = ApiKeyLayer::new(store);
/// ```
///
/// # Limitations
///
/// - Over a store that does not report changes (a custom store, or one changed
///   behind its back), a change is seen when the entry's TTL ends.
/// - Dropping a user's keys scans the cache (`invalidate_user`): cheap for the
///   thousands of entries a gateway holds, linear in the capacity.
/// - While any invalidation is running, lookups already in flight answer their
///   callers but are not cached, so a burst of changes briefly means more misses.
pub struct CachedKeyStore<S> {
    shared: Arc<Shared<S>>,
}

struct Shared<S> {
    inner: Arc<S>,
    entries: moka::sync::Cache<KeyId, Found>,
    // Lookups on their way to the inner store, one per id.
    flights: Mutex<HashMap<KeyId, Arc<Flight>>>,
    // Bumped by every invalidation; a lookup that started before a bump does not
    // cache its answer, which may predate the change.
    epoch: AtomicU64,
    settings: Settings,
    watched: bool,
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    capacity: u64,
    ttl: Duration,
    negative_ttl: Duration,
}

#[derive(Default)]
struct Flight {
    outcome: OnceCell<Outcome>,
}

impl<S> Clone for CachedKeyStore<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: KeyStore> CachedKeyStore<S> {
    /// A cache of 10,000 entries around `inner`: found records kept 60 s, unknown
    /// ids 5 s. When `inner` reports changes, the cache subscribes to them.
    pub fn new(inner: S) -> Self {
        let settings = Settings {
            capacity: DEFAULT_CAPACITY,
            ttl: DEFAULT_TTL,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
        };
        Self::build(Arc::new(inner), settings)
    }

    /// Keeps at most `entries` entries.
    pub fn capacity(self, entries: u64) -> Self {
        let settings = Settings {
            capacity: entries,
            ..self.shared.settings
        };
        Self::build(Arc::clone(&self.shared.inner), settings)
    }

    /// Keeps found records for `ttl` after they were read.
    pub fn ttl(self, ttl: Duration) -> Self {
        let settings = Settings {
            ttl,
            ..self.shared.settings
        };
        Self::build(Arc::clone(&self.shared.inner), settings)
    }

    /// Remembers unknown ids as unknown for `ttl` (keep it short: a key created
    /// elsewhere is unknown here until then, unless the store reports changes).
    pub fn negative_ttl(self, ttl: Duration) -> Self {
        let settings = Settings {
            negative_ttl: ttl,
            ..self.shared.settings
        };
        Self::build(Arc::clone(&self.shared.inner), settings)
    }

    fn build(inner: Arc<S>, settings: Settings) -> Self {
        let entries = moka::sync::Cache::builder()
            .max_capacity(settings.capacity)
            .expire_after(Lifetimes(settings))
            .build();

        let shared = Arc::new_cyclic(|me: &Weak<Shared<S>>| {
            let watched = inner.watch_changes(watcher(me.clone()));
            Shared {
                inner,
                entries,
                flights: Mutex::default(),
                epoch: AtomicU64::new(0),
                settings,
                watched,
            }
        });
        Self { shared }
    }

    /// The store behind the cache.
    pub fn get_ref(&self) -> &S {
        &self.shared.inner
    }

    /// Whether the inner store reports its changes to this cache.
    pub fn is_watching_changes(&self) -> bool {
        self.shared.watched
    }

    /// Forgets one key.
    pub fn invalidate(&self, id: &KeyId) {
        self.shared.invalidate(id);
    }

    /// Forgets every key of a user.
    pub fn invalidate_user(&self, user_id: &str) {
        self.shared.invalidate_user(user_id);
    }

    /// Forgets everything.
    pub fn invalidate_all(&self) {
        self.shared.invalidate_all();
    }
}

/// The watcher a cache registers with its inner store: it holds the cache weakly,
/// so the store forgets it once the cache is gone.
fn watcher<S: KeyStore>(cache: Weak<Shared<S>>) -> ChangeWatcher {
    Box::new(move |change| match cache.upgrade() {
        Some(shared) => {
            shared.apply(change);
            true
        }
        None => false,
    })
}

impl<S: KeyStore> Shared<S> {
    fn apply(&self, change: &StoreChange) {
        match change {
            StoreChange::Key(id) => self.invalidate(id),
            StoreChange::User(user_id) => self.invalidate_user(user_id),
            _ => self.invalidate_all(),
        }
    }

    fn invalidate(&self, id: &KeyId) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.flights().remove(id);
        self.entries.invalidate(id);
    }

    fn invalidate_user(&self, user_id: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        // Whose keys are in flight is not known until they land.
        self.flights().clear();

        for (id, found) in self.entries.iter() {
            if found.is_some_and(|record| record.user_id == user_id) {
                self.entries.invalidate(&*id);
            }
        }
    }

    fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.flights().clear();
        self.entries.invalidate_all();
    }

    fn flights(&self) -> std::sync::MutexGuard<'_, HashMap<KeyId, Arc<Flight>>> {
        // Held only for map operations that cannot leave it half-changed.
        self.flights.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lookup of `id` in flight, started now if there is none.
    fn join_flight(&self, id: KeyId) -> Arc<Flight> {
        Arc::clone(self.flights().entry(id).or_default())
    }

    /// Asks the inner store, caches a successful answer unless an invalidation
    /// ran meanwhile, and retires the flight.
    async fn fly(&self, id: KeyId, flight: &Arc<Flight>) -> Outcome {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let outcome = self.inner.lookup(&id).await;

        if let Ok(found) = &outcome {
            self.entries.insert(id, found.clone());
            // An invalidation bumps the epoch before it clears entries: either it
            // cleared this insert, or the epoch shows it here.
            if self.epoch.load(Ordering::SeqCst) != epoch {
                self.entries.invalidate(&id);
            }
        }

        let mut flights = self.flights();
        if flights
            .get(&id)
            .is_some_and(|current| Arc::ptr_eq(current, flight))
        {
            flights.remove(&id);
        }
        outcome
    }
}

/// Found records live for the TTL, unknown ids for the negative TTL.
struct Lifetimes(Settings);

impl Expiry<KeyId, Found> for Lifetimes {
    fn expire_after_create(&self, _id: &KeyId, found: &Found, _at: Instant) -> Option<Duration> {
        Some(self.lifetime(found))
    }

    fn expire_after_update(
        &self,
        _id: &KeyId,
        found: &Found,
        _at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.lifetime(found))
    }
}

impl Lifetimes {
    fn lifetime(&self, found: &Found) -> Duration {
        if found.is_some() {
            self.0.ttl
        } else {
            self.0.negative_ttl
        }
    }
}

impl<S> std::fmt::Debug for CachedKeyStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedKeyStore")
            .field("entries", &self.shared.entries.entry_count())
            .field("capacity", &self.shared.settings.capacity)
            .field("ttl", &self.shared.settings.ttl)
            .field("negative_ttl", &self.shared.settings.negative_ttl)
            .field("watching_changes", &self.shared.watched)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<S: KeyStore> KeyStore for CachedKeyStore<S> {
    async fn lookup(&self, id: &KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        if let Some(found) = self.shared.entries.get(id) {
            return Ok(found);
        }

        let flight = self.shared.join_flight(*id);
        let outcome = flight
            .outcome
            .get_or_init(|| self.shared.fly(*id, &flight))
            .await;
        outcome.clone()
    }

    fn lookup_now(&self, id: &KeyId) -> Option<Result<Option<Arc<KeyRecord>>, StoreError>> {
        self.shared.entries.get(id).map(Ok)
    }

    fn record_use(&self, id: &KeyId, at: SystemTime) {
        self.shared.inner.record_use(id, at);
    }

    fn watch_changes(&self, watcher: ChangeWatcher) -> bool {
        self.shared.inner.watch_changes(watcher)
    }
}

/// Changes go to the inner store; the cache then drops what they touched (also
/// when the change failed, which may have been half done).
#[async_trait]
impl<S: KeyStore + KeyManager> KeyManager for CachedKeyStore<S> {
    async fn create_key(&self, new: NewKey) -> Result<CreatedKey, StoreError> {
        let created = self.shared.inner.create_key(new).await?;

        self.invalidate(&created.key.id());
        Ok(created)
    }

    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.shared.inner.list_keys().await
    }

    async fn disable_key(&self, id: &KeyId) -> Result<(), StoreError> {
        let done = self.shared.inner.disable_key(id).await;
        self.invalidate(id);
        done
    }

    async fn enable_key(&self, id: &KeyId) -> Result<(), StoreError> {
        let done = self.shared.inner.enable_key(id).await;
        self.invalidate(id);
        done
    }

    async fn revoke_key(&self, id: &KeyId) -> Result<(), StoreError> {
        let done = self.shared.inner.revoke_key(id).await;
        self.invalidate(id);
        done
    }

    async fn delete_key(&self, id: &KeyId) -> Result<(), StoreError> {
        let done = self.shared.inner.delete_key(id).await;
        self.invalidate(id);
        done
    }

    async fn set_expiry(
        &self,
        id: &KeyId,
        expires_at: Option<SystemTime>,
    ) -> Result<(), StoreError> {
        let done = self.shared.inner.set_expiry(id, expires_at).await;
        self.invalidate(id);
        done
    }

    async fn disable_user(&self, user_id: &str) -> Result<(), StoreError> {
        let done = self.shared.inner.disable_user(user_id).await;
        self.invalidate_user(user_id);
        done
    }

    async fn enable_user(&self, user_id: &str) -> Result<(), StoreError> {
        let done = self.shared.inner.enable_user(user_id).await;
        self.invalidate_user(user_id);
        done
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.shared.inner.list_users().await
    }
}
