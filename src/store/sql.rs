//! What the SQL stores share: time and row conversion, error mapping, change
//! watchers, buffered last-use times, background tasks and embedded migrations.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

use super::{
    ChangeWatcher, CreatedKey, KeyRecord, KeyState, NewKey, StoreChange, StoreError,
    StoreErrorKind, UserState,
};
use crate::key::{ApiKey, KeyDigest, KeyId};

/// Microseconds since the Unix epoch: how both schemas' clocks are exchanged.
///
/// Times before 1970 are negative; times beyond ±292,000 years saturate.
pub(crate) fn to_micros(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros())
            .map(|micros| -micros)
            .unwrap_or(i64::MIN),
    }
}

/// The inverse of [`to_micros`].
pub(crate) fn from_micros(micros: i64) -> SystemTime {
    let magnitude = Duration::from_micros(micros.unsigned_abs());
    if micros >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

/// A time as the database will give it back: cut to whole microseconds.
pub(crate) fn stored_precision(at: SystemTime) -> SystemTime {
    from_micros(to_micros(at))
}

/// A key row as both databases return it, before it is checked.
#[derive(Debug)]
pub(crate) struct RawKey {
    pub(crate) id: String,
    pub(crate) digest: Vec<u8>,
    pub(crate) name: String,
    pub(crate) state: String,
    pub(crate) expires_at: Option<i64>,
    pub(crate) created_at: i64,
    pub(crate) last_used_at: Option<i64>,
    pub(crate) user_id: String,
    pub(crate) user_state: String,
    pub(crate) metadata: String,
}

impl RawKey {
    /// Checks every column; a row another program wrote badly is `Corrupt`, and the
    /// message names the column (never the digest).
    pub(crate) fn into_record(self) -> Result<KeyRecord, StoreError> {
        let corrupt = |what: &str| {
            StoreError::new(
                StoreErrorKind::Corrupt,
                format!(
                    "key row {:?} has {what}; fix the row (see the schema in the store's docs)",
                    self.id.chars().take(32).collect::<String>()
                ),
            )
        };

        let id = KeyId::parse(&self.id)
            .map_err(|_| corrupt("an id that is not 12 letters and digits"))?;
        let digest = KeyDigest::from_slice(&self.digest)
            .map_err(|_| corrupt("a digest that is not 32 bytes"))?;
        let state = KeyState::from_name(&self.state)
            .ok_or_else(|| corrupt("a state other than active, disabled or revoked"))?;
        let user_state = UserState::from_name(&self.user_state)
            .ok_or_else(|| corrupt("a user whose state is neither active nor disabled"))?;
        let metadata = serde_json::from_str(&self.metadata)
            .map_err(|_| corrupt("metadata that is not JSON"))?;

        Ok(KeyRecord {
            id,
            digest,
            name: self.name,
            state,
            expires_at: self.expires_at.map(from_micros),
            created_at: from_micros(self.created_at),
            last_used_at: self.last_used_at.map(from_micros),
            user_id: self.user_id,
            user_state,
            metadata,
        })
    }
}

/// The record of a key just inserted, exactly as a later lookup returns it.
pub(crate) fn created(
    key: ApiKey,
    new: NewKey,
    created_at: SystemTime,
    user_state: UserState,
) -> CreatedKey {
    let record = KeyRecord {
        id: key.id(),
        digest: key.digest(),
        name: new.name,
        state: KeyState::Active,
        expires_at: new.expires_at.map(stored_precision),
        created_at: stored_precision(created_at),
        last_used_at: None,
        user_id: new.user_id,
        user_state,
        metadata: new.metadata,
    };
    CreatedKey { key, record }
}

/// Reads a user state column.
pub(crate) fn user_state(name: &str) -> Result<UserState, StoreError> {
    UserState::from_name(name).ok_or_else(|| {
        StoreError::new(
            StoreErrorKind::Corrupt,
            "a user row has a state other than active or disabled; fix the row",
        )
    })
}

/// Turns a driver error into a store error that says what to check.
pub(crate) fn db_error(action: &str, error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::TypeNotFound { .. } => StoreError::new(
            StoreErrorKind::Corrupt,
            format!(
                "could not {action}: the key database holds columns this version cannot \
                 read; check that its schema matches the store's docs"
            ),
        )
        .with_source(error),
        _ => StoreError::unavailable(
            format!(
                "could not {action}: the key database failed; check that it is running \
                 and reachable"
            ),
            error,
        ),
    }
}

/// A migration failure, as a store error.
pub(crate) fn migrate_error(error: sqlx::migrate::MigrateError) -> StoreError {
    StoreError::unavailable(
        "could not bring the key database schema up to date; check the database \
         is reachable and writable, and that no other program changed the \
         crossmodel_* tables' migrations",
        error,
    )
}

/// Why an enable or disable changed nothing, given the key's current state.
pub(crate) fn unchanged_key(id: &KeyId, current: Option<&str>, enabling: bool) -> StoreError {
    match current {
        None => StoreError::not_found(format!("no key with id {id}")),
        Some(_) if enabling => StoreError::conflict(format!(
            "key {id} is revoked and cannot be enabled; create a new key instead"
        )),
        Some(_) => StoreError::conflict(format!(
            "key {id} is revoked; revoked keys stay off, create a new key instead"
        )),
    }
}

/// `NotFound` for a key id.
pub(crate) fn no_key(id: &KeyId) -> StoreError {
    StoreError::not_found(format!("no key with id {id}"))
}

/// `NotFound` for a user id.
pub(crate) fn no_user(user_id: &str) -> StoreError {
    StoreError::not_found(format!("no user {user_id:?}"))
}

/// The watchers registered with [`KeyStore::watch_changes`](super::KeyStore).
#[derive(Default)]
pub(crate) struct Watchers(Mutex<Vec<ChangeWatcher>>);

impl Watchers {
    pub(crate) fn add(&self, watcher: ChangeWatcher) {
        self.lock().push(watcher);
    }

    /// Tells every watcher, forgetting those that no longer want to hear.
    pub(crate) fn notify(&self, change: &StoreChange) {
        self.lock().retain(|watcher| watcher(change));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ChangeWatcher>> {
        // A watcher that panicked left the list itself intact.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Watchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} watchers", self.lock().len())
    }
}

/// Last-use times waiting to be written, newest per key.
#[derive(Debug, Default)]
pub(crate) struct UseBuffer(Mutex<HashMap<KeyId, SystemTime>>);

impl UseBuffer {
    /// Notes a use, at the precision the database keeps; holds the lock for one map
    /// insert.
    pub(crate) fn record(&self, id: KeyId, at: SystemTime) {
        let at = stored_precision(at);
        let mut pending = self.lock();
        let latest = pending.entry(id).or_insert(at);
        *latest = (*latest).max(at);
    }

    /// A copy of everything pending. Entries stay in the buffer until
    /// [`settle`](Self::settle) confirms them written, so a listing made while a
    /// write is in flight still shows every use, and a failed write loses nothing.
    pub(crate) fn snapshot(&self) -> HashMap<KeyId, SystemTime> {
        self.lock().clone()
    }

    /// Forgets the uses a write stored, keeping any newer use recorded meanwhile.
    pub(crate) fn settle(&self, written: &HashMap<KeyId, SystemTime>) {
        let mut pending = self.lock();
        for (id, at) in written {
            if pending.get(id).is_some_and(|latest| latest <= at) {
                pending.remove(id);
            }
        }
    }

    /// The pending time of one key.
    pub(crate) fn get(&self, id: &KeyId) -> Option<SystemTime> {
        self.lock().get(id).copied()
    }

    /// Forgets a deleted key.
    pub(crate) fn forget(&self, id: &KeyId) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<KeyId, SystemTime>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Merges a pending use into a listed record.
pub(crate) fn with_pending_use(mut record: KeyRecord, uses: &UseBuffer) -> KeyRecord {
    if let Some(pending) = uses.get(&record.id) {
        record.last_used_at = Some(record.last_used_at.map_or(pending, |at| at.max(pending)));
    }
    record
}

/// Runs `task` on the current Tokio runtime, if there is one; returns whether it
/// runs.
pub(crate) fn spawn_background(task: impl Future<Output = ()> + Send + 'static) -> bool {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(task);
            true
        }
        Err(_) => false,
    }
}

/// One migration compiled into the crate.
pub(crate) struct Embedded {
    pub(crate) version: i64,
    pub(crate) description: &'static str,
    pub(crate) sql: &'static str,
}

/// The migrations of one database kind, as sqlx's migrator reads them.
#[derive(Debug)]
struct EmbeddedSource(&'static [Embedded]);

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}_{}", self.version, self.description)
    }
}

impl MigrationSource<'static> for EmbeddedSource {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, sqlx::error::BoxDynError>> + Send>>
    {
        let migrations = self
            .0
            .iter()
            .map(|embedded| {
                Migration::new(
                    embedded.version,
                    Cow::Borrowed(embedded.description),
                    MigrationType::Simple,
                    Cow::Borrowed(embedded.sql),
                    false,
                )
            })
            .collect();
        Box::pin(async move { Ok(migrations) })
    }
}

/// A migrator over `migrations`.
///
/// It ignores applied versions it does not know: the application may keep its own
/// migrations in the same database, and sqlx records both in one table.
pub(crate) async fn migrator(migrations: &'static [Embedded]) -> Result<Migrator, StoreError> {
    let mut migrator = Migrator::new(EmbeddedSource(migrations))
        .await
        .map_err(migrate_error)?;
    migrator.set_ignore_missing(true);
    Ok(migrator)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_round_trip_on_both_sides_of_the_epoch() {
        for micros in [0, 1, -1, 1_733_300_000_123_456, -86_400_000_000] {
            assert_eq!(to_micros(from_micros(micros)), micros);
        }
        let now = SystemTime::now();
        let kept = stored_precision(now);
        assert!(now.duration_since(kept).unwrap() < Duration::from_micros(1));
    }

    #[test]
    fn pending_uses_keep_the_newest_time() {
        let uses = UseBuffer::default();
        let id = KeyId::parse("abcdefABCDEF").unwrap();
        let early = UNIX_EPOCH + Duration::from_secs(10);
        let late = UNIX_EPOCH + Duration::from_secs(20);

        uses.record(id, late);
        uses.record(id, early);
        assert_eq!(uses.get(&id), Some(late));

        // A write in flight: the use stays visible until the write settles it.
        let written = uses.snapshot();
        assert_eq!(uses.get(&id), Some(late));
        uses.settle(&written);
        assert!(uses.get(&id).is_none());
    }

    #[test]
    fn a_use_newer_than_a_write_survives_the_write() {
        let uses = UseBuffer::default();
        let id = KeyId::parse("abcdefABCDEF").unwrap();
        let early = UNIX_EPOCH + Duration::from_secs(10);
        let late = UNIX_EPOCH + Duration::from_secs(20);

        uses.record(id, early);
        let written = uses.snapshot();
        uses.record(id, late);
        uses.settle(&written);

        assert_eq!(uses.get(&id), Some(late));
    }
}
