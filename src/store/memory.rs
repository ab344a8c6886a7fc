//! A store in process memory: for tests, benchmarks and static configuration.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use async_trait::async_trait;

use super::{
    CreatedKey, KeyManager, KeyRecord, KeyState, KeyStore, NewKey, StoreError, UserRecord,
    UserState, validate_new_key, validate_user_id,
};
use crate::key::{KeyFormat, KeyId};

/// Keys and users in memory. Cheap to clone: clones share one table.
///
/// Lookups take a read lock and clone an `Arc`; changes rebuild the affected
/// records, so a disabled user's keys are rejected from the next lookup on.
///
/// # Example
///
/// ```
/// use crossmodel_auth::{KeyManager, MemoryKeyStore, NewKey};
///
/// # tokio_test_block(async {
/// let store = MemoryKeyStore::new();
/// let created = store.create_key(NewKey::for_user("alice").name("laptop")).await?;
/// println!("your key: {}", created.key.expose());
/// assert_eq!(store.list_keys().await?.len(), 1);
/// # Ok::<(), crossmodel_auth::StoreError>(())
/// # });
/// # fn tokio_test_block<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
///
/// # Limitations
///
/// Nothing survives the process; use the SQLite or PostgreSQL store for that.
#[derive(Clone, Default)]
pub struct MemoryKeyStore {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    format: KeyFormat,
    tables: RwLock<Tables>,
    // Apart from the tables so that a use, recorded on the request path, never
    // waits for (nor is dropped because of) a lock held by a listing or a change.
    last_used: Mutex<HashMap<KeyId, SystemTime>>,
}

#[derive(Default)]
struct Tables {
    keys: HashMap<KeyId, Arc<KeyRecord>>,
    // Creation order, for listings.
    order: Vec<KeyId>,
    users: HashMap<String, UserState>,
}

impl MemoryKeyStore {
    /// An empty store that issues keys with public checksums.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that issues keys in `format` (use the layer's format).
    pub fn with_key_format(format: KeyFormat) -> Self {
        Self {
            inner: Arc::new(Inner {
                format,
                ..Inner::default()
            }),
        }
    }

    /// Adds a record as it is, as static configuration or a test does. Replaces a
    /// record with the same id; creates the user, active, if unknown.
    pub fn insert(&self, record: KeyRecord) {
        let mut tables = self.write();
        let user_state = *tables
            .users
            .entry(record.user_id.clone())
            .or_insert(record.user_state);
        let record = KeyRecord {
            user_state,
            ..record
        };

        if !tables.keys.contains_key(&record.id) {
            tables.order.push(record.id);
        }
        tables.keys.insert(record.id, Arc::new(record));
    }

    /// How many keys the store holds.
    pub fn len(&self) -> usize {
        self.read().keys.len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tables> {
        // A panic while holding the lock cannot leave a half-written record: every
        // change replaces whole `Arc`s. So a poisoned lock is still consistent.
        self.inner
            .tables
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Tables> {
        self.inner
            .tables
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn last_used(&self) -> std::sync::MutexGuard<'_, HashMap<KeyId, SystemTime>> {
        // Plain timestamps: a panic cannot leave them half-written.
        self.inner
            .last_used
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn change_key(
        &self,
        id: &KeyId,
        change: impl FnOnce(&mut KeyRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut tables = self.write();
        let record = tables
            .keys
            .get_mut(id)
            .ok_or_else(|| StoreError::not_found(format!("no key with id {id}")))?;

        let mut changed = KeyRecord::clone(record);
        change(&mut changed)?;
        *record = Arc::new(changed);
        Ok(())
    }

    fn set_user_state(&self, user_id: &str, state: UserState) -> Result<(), StoreError> {
        let mut tables = self.write();
        let current = tables
            .users
            .get_mut(user_id)
            .ok_or_else(|| StoreError::not_found(format!("no user {user_id:?}")))?;
        *current = state;

        for record in tables.keys.values_mut() {
            if record.user_id == user_id {
                *record = Arc::new(KeyRecord {
                    user_state: state,
                    ..KeyRecord::clone(record)
                });
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for MemoryKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryKeyStore")
            .field("keys", &self.len())
            .field("format", &self.inner.format)
            .finish()
    }
}

#[async_trait]
impl KeyStore for MemoryKeyStore {
    async fn lookup(&self, id: &KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        Ok(self.read().keys.get(id).cloned())
    }

    fn lookup_now(&self, id: &KeyId) -> Option<Result<Option<Arc<KeyRecord>>, StoreError>> {
        Some(Ok(self.read().keys.get(id).cloned()))
    }

    fn record_use(&self, id: &KeyId, at: SystemTime) {
        // Kept beside the records, so a use never rebuilds a record; listings merge
        // the two. The lock is held for one insert only.
        let mut last_used = self.last_used();
        let latest = last_used.entry(*id).or_insert(at);
        *latest = (*latest).max(at);
    }
}

#[async_trait]
impl KeyManager for MemoryKeyStore {
    async fn create_key(&self, new: NewKey) -> Result<CreatedKey, StoreError> {
        validate_new_key(&new)?;

        let key = self
            .inner
            .format
            .generate()
            .map_err(|err| StoreError::unavailable("could not generate a key", err))?;
        let mut tables = self.write();
        let user_state = *tables
            .users
            .entry(new.user_id.clone())
            .or_insert(UserState::Active);

        let record = KeyRecord {
            id: key.id(),
            digest: key.digest(),
            name: new.name,
            state: KeyState::Active,
            expires_at: new.expires_at,
            created_at: SystemTime::now(),
            last_used_at: None,
            user_id: new.user_id,
            user_state,
            metadata: new.metadata,
        };
        tables.order.push(record.id);
        tables.keys.insert(record.id, Arc::new(record.clone()));
        Ok(CreatedKey { key, record })
    }

    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let last_used = self.last_used().clone();
        let tables = self.read();
        let listed = tables
            .order
            .iter()
            .filter_map(|id| tables.keys.get(id))
            .map(|record| KeyRecord {
                last_used_at: last_used.get(&record.id).copied(),
                ..KeyRecord::clone(record)
            })
            .collect();
        Ok(listed)
    }

    async fn disable_key(&self, id: &KeyId) -> Result<(), StoreError> {
        self.change_key(id, |record| match record.state {
            KeyState::Revoked => Err(StoreError::conflict(format!(
                "key {id} is revoked; revoked keys stay off, create a new key instead"
            ))),
            _ => {
                record.state = KeyState::Disabled;
                Ok(())
            }
        })
    }

    async fn enable_key(&self, id: &KeyId) -> Result<(), StoreError> {
        self.change_key(id, |record| match record.state {
            KeyState::Revoked => Err(StoreError::conflict(format!(
                "key {id} is revoked and cannot be enabled; create a new key instead"
            ))),
            _ => {
                record.state = KeyState::Active;
                Ok(())
            }
        })
    }

    async fn revoke_key(&self, id: &KeyId) -> Result<(), StoreError> {
        self.change_key(id, |record| {
            record.state = KeyState::Revoked;
            Ok(())
        })
    }

    async fn delete_key(&self, id: &KeyId) -> Result<(), StoreError> {
        let mut tables = self.write();
        if tables.keys.remove(id).is_none() {
            return Err(StoreError::not_found(format!("no key with id {id}")));
        }

        tables.order.retain(|kept| kept != id);
        drop(tables);
        self.last_used().remove(id);
        Ok(())
    }

    async fn set_expiry(
        &self,
        id: &KeyId,
        expires_at: Option<SystemTime>,
    ) -> Result<(), StoreError> {
        self.change_key(id, |record| {
            record.expires_at = expires_at;
            Ok(())
        })
    }

    async fn disable_user(&self, user_id: &str) -> Result<(), StoreError> {
        validate_user_id(user_id)?;
        self.set_user_state(user_id, UserState::Disabled)
    }

    async fn enable_user(&self, user_id: &str) -> Result<(), StoreError> {
        validate_user_id(user_id)?;
        self.set_user_state(user_id, UserState::Active)
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let tables = self.read();
        let mut users: Vec<UserRecord> = tables
            .users
            .iter()
            .map(|(id, state)| UserRecord {
                id: id.clone(),
                state: *state,
                key_count: tables.keys.values().filter(|k| &k.user_id == id).count() as u64,
            })
            .collect();
        users.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(users)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::StoreErrorKind;

    async fn store_with_key() -> (MemoryKeyStore, CreatedKey) {
        let store = MemoryKeyStore::new();
        let created = store
            .create_key(NewKey::for_user("alice").name("laptop"))
            .await
            .unwrap();
        (store, created)
    }

    #[tokio::test]
    async fn created_keys_are_found_by_id_with_their_digest() {
        let (store, created) = store_with_key().await;

        let found = store.lookup(&created.key.id()).await.unwrap().unwrap();
        assert!(found.digest.ct_eq(&created.key.digest()));
        assert_eq!(found.name, "laptop");
        assert_eq!(found.user_id, "alice");
        assert_eq!(found.state, KeyState::Active);
    }

    #[tokio::test]
    async fn revoked_keys_cannot_be_enabled_or_disabled() {
        let (store, created) = store_with_key().await;
        let id = created.key.id();

        store.revoke_key(&id).await.unwrap();
        store.revoke_key(&id).await.unwrap();

        let err = store.enable_key(&id).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Conflict);
        let err = store.disable_key(&id).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Conflict);
        let found = store.lookup(&id).await.unwrap().unwrap();
        assert_eq!(found.state, KeyState::Revoked);
    }

    #[tokio::test]
    async fn disabling_twice_succeeds_and_enable_restores() {
        let (store, created) = store_with_key().await;
        let id = created.key.id();

        store.disable_key(&id).await.unwrap();
        store.disable_key(&id).await.unwrap();
        assert_eq!(
            store.lookup(&id).await.unwrap().unwrap().state,
            KeyState::Disabled
        );
        store.enable_key(&id).await.unwrap();
        assert_eq!(
            store.lookup(&id).await.unwrap().unwrap().state,
            KeyState::Active
        );
    }

    #[tokio::test]
    async fn deleted_keys_are_gone() {
        let (store, created) = store_with_key().await;
        let id = created.key.id();

        store.delete_key(&id).await.unwrap();

        assert!(store.lookup(&id).await.unwrap().is_none());
        assert!(store.list_keys().await.unwrap().is_empty());
        let err = store.delete_key(&id).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::NotFound);
    }

    #[tokio::test]
    async fn disabling_a_user_reaches_every_key_of_theirs() {
        let (store, first) = store_with_key().await;
        let second = store.create_key(NewKey::for_user("alice")).await.unwrap();
        let other = store.create_key(NewKey::for_user("bob")).await.unwrap();

        store.disable_user("alice").await.unwrap();

        for id in [first.key.id(), second.key.id()] {
            let record = store.lookup(&id).await.unwrap().unwrap();
            assert_eq!(record.user_state, UserState::Disabled);
        }
        let record = store.lookup(&other.key.id()).await.unwrap().unwrap();
        assert_eq!(record.user_state, UserState::Active);
        let err = store.disable_user("carol").await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::NotFound);
    }

    #[tokio::test]
    async fn new_keys_of_a_disabled_user_are_disabled_too() {
        let (store, _) = store_with_key().await;
        store.disable_user("alice").await.unwrap();

        let created = store.create_key(NewKey::for_user("alice")).await.unwrap();

        assert_eq!(created.record.user_state, UserState::Disabled);
    }

    #[tokio::test]
    async fn expiry_can_be_set_and_cleared() {
        let (store, created) = store_with_key().await;
        let id = created.key.id();
        let past = SystemTime::now() - Duration::from_secs(1);

        store.set_expiry(&id, Some(past)).await.unwrap();
        let record = store.lookup(&id).await.unwrap().unwrap();
        assert!(record.is_expired_at(SystemTime::now()));

        store.set_expiry(&id, None).await.unwrap();
        let record = store.lookup(&id).await.unwrap().unwrap();
        assert!(!record.is_expired_at(SystemTime::now()));
    }

    #[tokio::test]
    async fn bad_input_is_refused_with_a_reason() {
        let store = MemoryKeyStore::new();

        for user in ["", "has space", &"u".repeat(129)] {
            let err = store.create_key(NewKey::for_user(user)).await.unwrap_err();
            assert_eq!(err.kind(), StoreErrorKind::InvalidInput);
            assert!(err.to_string().contains("user id"));
        }
        let new = NewKey::for_user("a").metadata(serde_json::json!([1]));
        assert!(store.create_key(new).await.is_err());
        assert!(store.is_empty());
    }

    #[tokio::test]
    async fn keys_are_refused_as_user_ids_and_names_without_being_echoed() {
        let (store, created) = store_with_key().await;
        let key = created.key.expose();
        let secret = &key[16..38];

        let as_user = store.create_key(NewKey::for_user(key)).await.unwrap_err();
        let as_name = store
            .create_key(NewKey::for_user("bob").name(format!("my key {key}")))
            .await
            .unwrap_err();
        let as_target = store.disable_user(key).await.unwrap_err();

        for err in [as_user, as_name, as_target] {
            assert_eq!(err.kind(), StoreErrorKind::InvalidInput);
            assert!(err.to_string().contains("looks like an API key"), "{err}");
            assert!(!format!("{err} {err:?}").contains(secret));
        }
        assert_eq!(store.len(), 1);
    }

    #[tokio::test]
    async fn uses_show_in_listings() {
        let (store, created) = store_with_key().await;
        let at = SystemTime::now();

        store.record_use(&created.key.id(), at);

        let listed = store.list_keys().await.unwrap();
        assert_eq!(listed[0].last_used_at, Some(at));
        let users = store.list_users().await.unwrap();
        assert_eq!(users[0].key_count, 1);
    }
}
