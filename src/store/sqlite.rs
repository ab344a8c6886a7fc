//! A store in one SQLite file: the embedded default.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use tokio::sync::watch;

use super::sql::{
    self, Embedded, RawKey, UseBuffer, Watchers, db_error, no_key, no_user, to_micros,
};
use super::{
    ChangeWatcher, CreatedKey, KeyManager, KeyRecord, KeyStore, NewKey, StoreChange, StoreError,
    UserRecord, UserState, validate_new_key, validate_user_id,
};
use crate::key::{KeyFormat, KeyId};

const MIGRATIONS: &[Embedded] = &[Embedded {
    version: 20261204000001,
    description: "crossmodel_auth_keys",
    sql: include_str!("../../migrations/sqlite/20261204000001_crossmodel_auth_keys.sql"),
}];

const LOOKUP: &str = "\
    SELECT k.id, k.digest, k.name, k.state, k.expires_at, k.created_at, k.last_used_at,
           k.user_id, u.state, k.metadata
    FROM crossmodel_keys AS k
    JOIN crossmodel_users AS u ON u.id = k.user_id
    WHERE k.id = ?1";

const LIST_KEYS: &str = "\
    SELECT k.id, k.digest, k.name, k.state, k.expires_at, k.created_at, k.last_used_at,
           k.user_id, u.state, k.metadata
    FROM crossmodel_keys AS k
    JOIN crossmodel_users AS u ON u.id = k.user_id
    ORDER BY k.created_at, k.rowid";

const INSERT_USER: &str = "\
    INSERT INTO crossmodel_users (id) VALUES (?1) ON CONFLICT (id) DO NOTHING";

const INSERT_KEY: &str = "\
    INSERT INTO crossmodel_keys
        (id, digest, name, state, expires_at, created_at, user_id, metadata)
    VALUES (?1, ?2, ?3, 'active', ?4, ?5, ?6, ?7)";

const USER_STATE: &str = "SELECT state FROM crossmodel_users WHERE id = ?1";

const KEY_STATE: &str = "SELECT state FROM crossmodel_keys WHERE id = ?1";

const SET_STATE_UNLESS_REVOKED: &str = "\
    UPDATE crossmodel_keys SET state = ?2 WHERE id = ?1 AND state <> 'revoked'";

const REVOKE: &str = "UPDATE crossmodel_keys SET state = 'revoked' WHERE id = ?1";

const DELETE: &str = "DELETE FROM crossmodel_keys WHERE id = ?1";

const SET_EXPIRY: &str = "UPDATE crossmodel_keys SET expires_at = ?2 WHERE id = ?1";

const SET_USER_STATE: &str = "UPDATE crossmodel_users SET state = ?2 WHERE id = ?1";

const LIST_USERS: &str = "\
    SELECT u.id, u.state, count(k.id)
    FROM crossmodel_users AS u
    LEFT JOIN crossmodel_keys AS k ON k.user_id = u.id
    GROUP BY u.id, u.state
    ORDER BY u.id";

const CLAIM_FIRST_KEY: &str = "\
    INSERT INTO crossmodel_meta (name, value) VALUES ('first_key_created_at', ?1)
    ON CONFLICT (name) DO NOTHING";

const HAS_KEYS: &str = "SELECT EXISTS (SELECT 1 FROM crossmodel_keys)";

const CHANGE_COUNTER: &str = "SELECT value FROM crossmodel_meta WHERE name = 'change_counter'";

const RECORD_USE: &str = "\
    UPDATE crossmodel_keys SET last_used_at = ?2
    WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)";

/// How a [`SqliteKeyStore`] opens its file and runs its background work.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    max_connections: u32,
    busy_timeout: Duration,
    change_poll: Duration,
    last_used_flush: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            max_connections: 4,
            busy_timeout: Duration::from_secs(5),
            change_poll: Duration::from_millis(250),
            last_used_flush: Duration::from_secs(30),
        }
    }
}

impl SqliteOptions {
    /// The defaults: 4 connections, a 5 s busy timeout, changes checked every
    /// 250 ms, last uses written every 30 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many connections the pool keeps open at most (at least 1).
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// How long a statement waits for another process's write lock before failing.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// How often the change counter is read for changes made by other processes.
    pub fn change_poll(mut self, every: Duration) -> Self {
        self.change_poll = every.max(Duration::from_millis(10));
        self
    }

    /// How often recorded uses are written.
    pub fn last_used_flush(mut self, every: Duration) -> Self {
        self.last_used_flush = every.max(Duration::from_millis(10));
        self
    }
}

/// Keys and users in one SQLite file that survives restarts. Cheap to clone:
/// clones share one connection pool.
///
/// # Schema
///
/// Created by the migration `migrations/sqlite/20261204000001_crossmodel_auth_keys.sql`
/// (run by [`SqliteKeyStore::open`]); stable, so other programs may write it:
///
/// | table | column | type | meaning |
/// | --- | --- | --- | --- |
/// | `crossmodel_users` | `id` | `TEXT` primary key | 1 to 128 visible ASCII characters |
/// | | `state` | `TEXT` | `active` or `disabled` |
/// | `crossmodel_keys` | `id` | `TEXT` primary key | the 12-character key id |
/// | | `digest` | `BLOB`, 32 bytes | SHA-256 of the 22-character secret ([`KeyDigest`](crate::KeyDigest)) |
/// | | `name` | `TEXT` | display name |
/// | | `state` | `TEXT` | `active`, `disabled` or `revoked` |
/// | | `expires_at` | `INTEGER` or null | µs since the Unix epoch |
/// | | `created_at` | `INTEGER` | µs since the Unix epoch |
/// | | `last_used_at` | `INTEGER` or null | µs since the Unix epoch |
/// | | `user_id` | `TEXT` | references `crossmodel_users (id)` |
/// | | `metadata` | `TEXT` | a JSON object, or `null` |
/// | `crossmodel_meta` | `name`, `value` | `TEXT`, `INTEGER` | bookkeeping (below) |
///
/// A user row must exist before its keys; a deleted key is a removed row.
///
/// # Durability and other processes
///
/// The file is opened in WAL mode with `synchronous = FULL`: a key whose creation
/// returned is on disk, even if the process is killed the next instant. Other
/// processes (the gateway's command line while the server runs) may use the same
/// file at once; a writer waits up to the busy timeout (5 s by default) for
/// another.
///
/// Triggers count every change that matters to a lookup in `crossmodel_meta`
/// (`change_counter`), whoever makes it. A background task reads that one row a few
/// times a second (every 250 ms by default) and, when it moved, tells whoever
/// [watches the store](KeyStore::watch_changes) — a `CachedKeyStore` drops its
/// whole cache — so a key disabled from another process stops working within
/// about a quarter of a second.
///
/// # Last use
///
/// [`record_use`](KeyStore::record_use) only notes the time in memory; a background
/// task writes the notes every 30 s by default, one write per key, in one
/// transaction. [`flush`](SqliteKeyStore::flush) writes them at once, and
/// [`close`](SqliteKeyStore::close) flushes before closing. Listings include
/// uses not yet written.
///
/// # Limitations
///
/// - Uses recorded in the last flush interval are lost if the process ends without
///   [`close`](SqliteKeyStore::close) or [`flush`](SqliteKeyStore::flush).
/// - A change made by another process drops the whole cache of every process on
///   the file, not only the changed key: the counter does not say which changed.
/// - The migration is recorded in sqlx's `_sqlx_migrations` table; an application
///   that runs its own sqlx migrations on the same file must ignore versions it
///   does not know (`Migrator::set_ignore_missing`).
/// - `sqlite::memory:` gives every pooled connection its own empty database: use a
///   file.
/// - Background tasks run on the Tokio runtime that opened the store and stop
///   when the last clone of the store is dropped.
///
/// # Example
///
/// ```no_run
/// use crossmodel_auth::{KeyManager, NewKey, SqliteKeyStore};
///
/// # async fn run() -> Result<(), crossmodel_auth::StoreError> {
/// let store = SqliteKeyStore::open("sqlite://gateway.db").await?;
/// if let Some(first) = store.create_first_key(NewKey::for_user("default")).await? {
///     println!("{}", first.key.expose());
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SqliteKeyStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: SqlitePool,
    format: KeyFormat,
    shared: Arc<Shared>,
    // Dropped with the last clone of the store, which stops the background task.
    stop: watch::Sender<bool>,
}

// What the background task shares with the store without keeping it alive.
#[derive(Debug, Default)]
struct Shared {
    watchers: Watchers,
    uses: UseBuffer,
}

impl SqliteKeyStore {
    /// Opens (creating if needed) the file of a `sqlite://path` URL and brings its
    /// schema up to date, with the default [`SqliteOptions`].
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a URL that is not `sqlite:…`; `Unavailable` when the file
    /// cannot be created, opened or migrated.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, SqliteOptions::default()).await
    }

    /// Like [`open`](Self::open), with options.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub async fn open_with(url: &str, options: SqliteOptions) -> Result<Self, StoreError> {
        let not_sqlite =
            || StoreError::invalid_input("not a SQLite URL; write sqlite://path/to/keys.db");
        if !url.starts_with("sqlite:") {
            return Err(not_sqlite());
        }
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(|error| not_sqlite().with_source(error))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(options.busy_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.busy_timeout + Duration::from_secs(1))
            .connect_with(connect)
            .await
            .map_err(|error| db_error("open the SQLite key database", error))?;

        migrate(&pool).await?;
        let seen = sqlx::query_scalar(CHANGE_COUNTER)
            .fetch_one(&pool)
            .await
            .ok();
        Ok(Self::start(pool, seen, &options))
    }

    fn start(pool: SqlitePool, seen: Option<i64>, options: &SqliteOptions) -> Self {
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = watch::channel(false);

        sql::spawn_background(background(
            pool.clone(),
            Arc::clone(&shared),
            stopped,
            seen,
            options.clone(),
        ));
        Self {
            inner: Arc::new(Inner {
                pool,
                format: KeyFormat::public(),
                shared,
                stop,
            }),
        }
    }

    /// Issues keys in `format` (use the layer's format).
    ///
    /// Call it right after opening, before cloning the store: clones made earlier
    /// keep the format they had.
    pub fn with_key_format(self, format: KeyFormat) -> Self {
        let inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => Inner { format, ..inner },
            Err(shared) => Inner {
                pool: shared.pool.clone(),
                format,
                shared: Arc::clone(&shared.shared),
                stop: shared.stop.clone(),
            },
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The connection pool, for callers that keep their own tables in the file.
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    /// Creates `new` only on the first start of a database: when no key was ever
    /// created this way on it and it holds no key made otherwise (`keys create`
    /// before any server started). Decided atomically: of several processes
    /// starting together on a fresh file, exactly one gets `Some`.
    ///
    /// # Errors
    ///
    /// As [`KeyManager::create_key`].
    pub async fn create_first_key(&self, new: NewKey) -> Result<Option<CreatedKey>, StoreError> {
        self.create(new, true).await
    }

    /// Writes the recorded uses now.
    ///
    /// # Errors
    ///
    /// `Unavailable` when the file cannot be written; the uses stay pending.
    pub async fn flush(&self) -> Result<(), StoreError> {
        flush_uses(&self.inner.pool, &self.inner.shared.uses).await
    }

    /// Writes the recorded uses, stops the background task and closes the pool.
    /// Calls made afterwards, through any clone, fail with `Unavailable`.
    ///
    /// # Errors
    ///
    /// As [`flush`](Self::flush); the pool is closed either way.
    pub async fn close(&self) -> Result<(), StoreError> {
        let flushed = self.flush().await;

        self.inner.stop.send_replace(true);
        self.inner.pool.close().await;
        flushed
    }

    async fn create(&self, new: NewKey, first: bool) -> Result<Option<CreatedKey>, StoreError> {
        validate_new_key(&new)?;

        let key = self
            .inner
            .format
            .generate()
            .map_err(|err| StoreError::unavailable("could not generate a key", err))?;
        let now = SystemTime::now();
        let failed = |error| db_error("create the key", error);
        // IMMEDIATE takes the write lock up front, so the busy timeout applies and
        // two processes never both read "no first key yet".
        let mut tx = self
            .inner
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(failed)?;

        if first && !claim_first_key(&mut tx, now).await.map_err(failed)? {
            return Ok(None);
        }
        // Keys made before any first start (`keys create` on a new database) mean
        // this start did not create the database: keep the claim, make no key.
        if first && has_keys(&mut tx).await.map_err(failed)? {
            tx.commit().await.map_err(failed)?;
            return Ok(None);
        }
        let user_state = insert_key(&mut tx, &key, &new, now).await.map_err(failed)?;
        let user_state = sql::user_state(&user_state)?;
        tx.commit().await.map_err(failed)?;

        self.changed(StoreChange::Key(key.id()));
        Ok(Some(sql::created(key, new, now, user_state)))
    }

    fn changed(&self, change: StoreChange) {
        self.inner.shared.watchers.notify(&change);
    }

    async fn set_key_state(
        &self,
        id: &KeyId,
        state: &str,
        enabling: bool,
    ) -> Result<(), StoreError> {
        let action = if enabling {
            "enable the key"
        } else {
            "disable the key"
        };
        let done = sqlx::query(SET_STATE_UNLESS_REVOKED)
            .bind(id.as_str())
            .bind(state)
            .execute(&self.inner.pool)
            .await
            .map_err(|error| db_error(action, error))?;

        if done.rows_affected() == 0 {
            let current: Option<String> = sqlx::query_scalar(KEY_STATE)
                .bind(id.as_str())
                .fetch_optional(&self.inner.pool)
                .await
                .map_err(|error| db_error(action, error))?;
            return Err(sql::unchanged_key(id, current.as_deref(), enabling));
        }
        self.changed(StoreChange::Key(*id));
        Ok(())
    }

    async fn change_key<'q>(
        &self,
        id: &KeyId,
        action: &str,
        query: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    ) -> Result<(), StoreError> {
        let done = query
            .execute(&self.inner.pool)
            .await
            .map_err(|error| db_error(action, error))?;

        if done.rows_affected() == 0 {
            return Err(no_key(id));
        }
        self.changed(StoreChange::Key(*id));
        Ok(())
    }

    async fn set_user_state(&self, user_id: &str, state: UserState) -> Result<(), StoreError> {
        validate_user_id(user_id)?;

        let done = sqlx::query(SET_USER_STATE)
            .bind(user_id)
            .bind(state.as_str())
            .execute(&self.inner.pool)
            .await
            .map_err(|error| db_error("change the user", error))?;
        if done.rows_affected() == 0 {
            return Err(no_user(user_id));
        }
        self.changed(StoreChange::User(user_id.to_owned()));
        Ok(())
    }
}

impl std::fmt::Debug for SqliteKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteKeyStore")
            .field("format", &self.inner.format)
            .field("connections", &self.inner.pool.size())
            .field("watchers", &self.inner.shared.watchers)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl KeyStore for SqliteKeyStore {
    async fn lookup(&self, id: &KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let row = sqlx::query(LOOKUP)
            .bind(id.as_str())
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|error| db_error("look the key up", error))?;

        match row {
            Some(row) => Ok(Some(Arc::new(key_row(&row)?))),
            None => Ok(None),
        }
    }

    fn record_use(&self, id: &KeyId, at: SystemTime) {
        self.inner.shared.uses.record(*id, at);
    }

    fn watch_changes(&self, watcher: ChangeWatcher) -> bool {
        self.inner.shared.watchers.add(watcher);
        true
    }
}

#[async_trait]
impl KeyManager for SqliteKeyStore {
    async fn create_key(&self, new: NewKey) -> Result<CreatedKey, StoreError> {
        let created = self.create(new, false).await?;
        created.ok_or_else(|| StoreError::unavailable("the key was not created", "no row"))
    }

    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(LIST_KEYS)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|error| db_error("list the keys", error))?;

        rows.iter()
            .map(|row| {
                key_row(row).map(|record| sql::with_pending_use(record, &self.inner.shared.uses))
            })
            .collect()
    }

    async fn disable_key(&self, id: &KeyId) -> Result<(), StoreError> {
        self.set_key_state(id, "disabled", false).await
    }

    async fn enable_key(&self, id: &KeyId) -> Result<(), StoreError> {
        self.set_key_state(id, "active", true).await
    }

    async fn revoke_key(&self, id: &KeyId) -> Result<(), StoreError> {
        let query = sqlx::query(REVOKE).bind(id.as_str());
        self.change_key(id, "revoke the key", query).await
    }

    async fn delete_key(&self, id: &KeyId) -> Result<(), StoreError> {
        let query = sqlx::query(DELETE).bind(id.as_str());
        self.change_key(id, "delete the key", query).await?;

        self.inner.shared.uses.forget(id);
        Ok(())
    }

    async fn set_expiry(
        &self,
        id: &KeyId,
        expires_at: Option<SystemTime>,
    ) -> Result<(), StoreError> {
        let query = sqlx::query(SET_EXPIRY)
            .bind(id.as_str())
            .bind(expires_at.map(to_micros));
        self.change_key(id, "set the key's expiry", query).await
    }

    async fn disable_user(&self, user_id: &str) -> Result<(), StoreError> {
        self.set_user_state(user_id, UserState::Disabled).await
    }

    async fn enable_user(&self, user_id: &str) -> Result<(), StoreError> {
        self.set_user_state(user_id, UserState::Active).await
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let rows = sqlx::query(LIST_USERS)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|error| db_error("list the users", error))?;

        rows.iter().map(user_row).collect()
    }
}

/// Runs the migrations; a second try covers another process that migrated a fresh
/// file at the same moment (SQLite has no migration lock).
async fn migrate(pool: &SqlitePool) -> Result<(), StoreError> {
    let migrator = sql::migrator(MIGRATIONS).await?;

    if migrator.run(pool).await.is_ok() {
        return Ok(());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    migrator.run(pool).await.map_err(sql::migrate_error)
}

async fn claim_first_key(
    tx: &mut Transaction<'static, Sqlite>,
    now: SystemTime,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(CLAIM_FIRST_KEY)
        .bind(to_micros(now))
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

async fn has_keys(tx: &mut Transaction<'static, Sqlite>) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(HAS_KEYS).fetch_one(&mut **tx).await
}

/// Inserts the user if new and the key; returns the user's state as stored.
async fn insert_key(
    tx: &mut Transaction<'static, Sqlite>,
    key: &crate::key::ApiKey,
    new: &NewKey,
    now: SystemTime,
) -> Result<String, sqlx::Error> {
    sqlx::query(INSERT_USER)
        .bind(&new.user_id)
        .execute(&mut **tx)
        .await?;

    sqlx::query(INSERT_KEY)
        .bind(key.id().as_str())
        .bind(&key.digest().as_bytes()[..])
        .bind(&new.name)
        .bind(new.expires_at.map(to_micros))
        .bind(to_micros(now))
        .bind(&new.user_id)
        .bind(new.metadata.to_string())
        .execute(&mut **tx)
        .await?;

    sqlx::query_scalar(USER_STATE)
        .bind(&new.user_id)
        .fetch_one(&mut **tx)
        .await
}

fn key_row(row: &SqliteRow) -> Result<KeyRecord, StoreError> {
    let raw = (|| {
        Ok::<_, sqlx::Error>(RawKey {
            id: row.try_get(0)?,
            digest: row.try_get(1)?,
            name: row.try_get(2)?,
            state: row.try_get(3)?,
            expires_at: row.try_get(4)?,
            created_at: row.try_get(5)?,
            last_used_at: row.try_get(6)?,
            user_id: row.try_get(7)?,
            user_state: row.try_get(8)?,
            metadata: row.try_get(9)?,
        })
    })()
    .map_err(|error| db_error("read a key row", error))?;
    raw.into_record()
}

fn user_row(row: &SqliteRow) -> Result<UserRecord, StoreError> {
    let read = |error| db_error("read a user row", error);
    let state: String = row.try_get(1).map_err(read)?;
    let key_count: i64 = row.try_get(2).map_err(read)?;

    Ok(UserRecord {
        id: row.try_get(0).map_err(read)?,
        state: sql::user_state(&state)?,
        key_count: u64::try_from(key_count).unwrap_or(0),
    })
}

/// Writes pending uses in one transaction; on failure they stay pending.
async fn flush_uses(pool: &SqlitePool, uses: &UseBuffer) -> Result<(), StoreError> {
    let pending = uses.snapshot();
    if pending.is_empty() {
        return Ok(());
    }

    let written = async {
        let mut tx = pool.begin().await?;
        for (id, at) in &pending {
            sqlx::query(RECORD_USE)
                .bind(id.as_str())
                .bind(to_micros(*at))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }
    .await;

    written.map_err(|error| db_error("record when keys were last used", error))?;
    uses.settle(&pending);
    Ok(())
}

/// Reads the change counter a few times a second and writes uses every flush
/// interval, until the store is dropped or closed; then writes the last uses.
async fn background(
    pool: SqlitePool,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    mut seen: Option<i64>,
    options: SqliteOptions,
) {
    let mut poll = tokio::time::interval(options.change_poll);
    let mut flush = tokio::time::interval(options.last_used_flush);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            _ = poll.tick() => seen = check_for_changes(&pool, &shared, seen).await,
            _ = flush.tick() => flush_or_warn(&pool, &shared.uses).await,
            _ = stop.changed() => break,
        }
    }
    if !pool.is_closed() {
        let _ = flush_uses(&pool, &shared.uses).await;
    }
}

async fn flush_or_warn(pool: &SqlitePool, uses: &UseBuffer) {
    if let Err(error) = flush_uses(pool, uses).await {
        tracing::warn!(
            target: "crossmodel_auth",
            error = %error,
            "last-use times not written; will retry"
        );
    }
}

async fn check_for_changes(pool: &SqlitePool, shared: &Shared, seen: Option<i64>) -> Option<i64> {
    let counter: Result<i64, _> = sqlx::query_scalar(CHANGE_COUNTER).fetch_one(pool).await;

    match counter {
        Ok(now) => {
            // Without a baseline (the reading at open failed), assume a change.
            if seen != Some(now) {
                shared.watchers.notify(&StoreChange::All);
            }
            Some(now)
        }
        Err(error) => {
            tracing::debug!(
                target: "crossmodel_auth",
                error = %error,
                "could not read the change counter"
            );
            seen
        }
    }
}
