//! A store in PostgreSQL, shared by many gateway replicas.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};
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
    sql: include_str!("../../migrations/postgres/20261204000001_crossmodel_auth_keys.sql"),
}];

/// The channel the triggers notify.
const CHANNEL: &str = "crossmodel_auth";

const LOOKUP: &str = "\
    SELECT k.id, k.digest, k.name, k.state,
           (extract(epoch FROM k.expires_at) * 1000000)::int8,
           (extract(epoch FROM k.created_at) * 1000000)::int8,
           (extract(epoch FROM k.last_used_at) * 1000000)::int8,
           k.user_id, u.state, k.metadata::text
    FROM crossmodel_keys AS k
    JOIN crossmodel_users AS u ON u.id = k.user_id
    WHERE k.id = $1";

const LIST_KEYS: &str = "\
    SELECT k.id, k.digest, k.name, k.state,
           (extract(epoch FROM k.expires_at) * 1000000)::int8,
           (extract(epoch FROM k.created_at) * 1000000)::int8,
           (extract(epoch FROM k.last_used_at) * 1000000)::int8,
           k.user_id, u.state, k.metadata::text
    FROM crossmodel_keys AS k
    JOIN crossmodel_users AS u ON u.id = k.user_id
    ORDER BY k.created_at, k.id";

const INSERT_USER: &str = "\
    INSERT INTO crossmodel_users (id) VALUES ($1) ON CONFLICT (id) DO NOTHING";

const INSERT_KEY: &str = "\
    INSERT INTO crossmodel_keys
        (id, digest, name, state, expires_at, created_at, user_id, metadata)
    VALUES ($1, $2, $3, 'active',
            'epoch'::timestamptz + $4::int8 * interval '1 microsecond',
            'epoch'::timestamptz + $5::int8 * interval '1 microsecond',
            $6, $7::jsonb)";

const USER_STATE: &str = "SELECT state FROM crossmodel_users WHERE id = $1";

const KEY_STATE: &str = "SELECT state FROM crossmodel_keys WHERE id = $1";

const SET_STATE_UNLESS_REVOKED: &str = "\
    UPDATE crossmodel_keys SET state = $2 WHERE id = $1 AND state <> 'revoked'";

const REVOKE: &str = "UPDATE crossmodel_keys SET state = 'revoked' WHERE id = $1";

const DELETE: &str = "DELETE FROM crossmodel_keys WHERE id = $1";

const SET_EXPIRY: &str = "\
    UPDATE crossmodel_keys
    SET expires_at = 'epoch'::timestamptz + $2::int8 * interval '1 microsecond'
    WHERE id = $1";

const SET_USER_STATE: &str = "UPDATE crossmodel_users SET state = $2 WHERE id = $1";

const LIST_USERS: &str = "\
    SELECT u.id, u.state, count(k.id)
    FROM crossmodel_users AS u
    LEFT JOIN crossmodel_keys AS k ON k.user_id = u.id
    GROUP BY u.id, u.state
    ORDER BY u.id COLLATE \"C\"";

const CLAIM_FIRST_KEY: &str = "\
    INSERT INTO crossmodel_meta (name, value) VALUES ('first_key_created_at', $1)
    ON CONFLICT (name) DO NOTHING";

const HAS_KEYS: &str = "SELECT EXISTS (SELECT 1 FROM crossmodel_keys)";

const RECORD_USES: &str = "\
    UPDATE crossmodel_keys AS k
    SET last_used_at = used.at
    FROM (
        SELECT unnest($1::text[]) AS id,
               'epoch'::timestamptz + unnest($2::int8[]) * interval '1 microsecond' AS at
    ) AS used
    WHERE k.id = used.id AND (k.last_used_at IS NULL OR k.last_used_at < used.at)";

/// Pool size, timeouts and background intervals of a [`PostgresKeyStore`].
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    max_connections: u32,
    min_connections: u32,
    acquire_timeout: Duration,
    statement_timeout: Option<Duration>,
    last_used_flush: Duration,
    reconnect_delay: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Some(Duration::from_secs(5)),
            last_used_flush: Duration::from_secs(30),
            reconnect_delay: Duration::from_secs(1),
        }
    }
}

impl PostgresOptions {
    /// The defaults: up to 10 connections, 5 s to get one (connecting included),
    /// statements cancelled after 5 s, last uses written every 30 s, the listener
    /// retried every second.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many connections the pool opens at most (at least 1).
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// How many connections the pool keeps open when idle.
    pub fn min_connections(mut self, min: u32) -> Self {
        self.min_connections = min;
        self
    }

    /// How long a call waits for a connection, connecting included, before it
    /// fails with `Unavailable`: the bound on every call when the server is down.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// How long the server lets one statement run (`statement_timeout`); `None`
    /// leaves the server's setting.
    pub fn statement_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// How often recorded uses are written.
    pub fn last_used_flush(mut self, every: Duration) -> Self {
        self.last_used_flush = every.max(Duration::from_millis(10));
        self
    }

    /// How long the listener waits before reconnecting after its connection
    /// dropped.
    pub fn reconnect_delay(mut self, delay: Duration) -> Self {
        self.reconnect_delay = delay;
        self
    }
}

/// Keys and users in PostgreSQL, for many replicas. Cheap to clone: clones share
/// one pool and one listener.
///
/// # Schema
///
/// Created by the migration
/// `migrations/postgres/20261204000001_crossmodel_auth_keys.sql`, run by
/// [`PostgresKeyStore::connect`] under sqlx's advisory lock, so replicas starting
/// together migrate once. Stable, so other programs may write it:
///
/// | table | column | type | meaning |
/// | --- | --- | --- | --- |
/// | `crossmodel_users` | `id` | `text` primary key | 1 to 128 visible ASCII characters |
/// | | `state` | `text` | `active` or `disabled` |
/// | `crossmodel_keys` | `id` | `text` primary key | the 12-character key id |
/// | | `digest` | `bytea`, 32 bytes | SHA-256 of the 22-character secret ([`KeyDigest`](crate::KeyDigest)) |
/// | | `name` | `text` | display name |
/// | | `state` | `text` | `active`, `disabled` or `revoked` |
/// | | `expires_at` | `timestamptz` or null | when the key stops working |
/// | | `created_at` | `timestamptz` | |
/// | | `last_used_at` | `timestamptz` or null | written in batches (below) |
/// | | `user_id` | `text` | references `crossmodel_users (id)` |
/// | | `metadata` | `jsonb` | a JSON object, or `null` |
/// | `crossmodel_meta` | `name`, `value` | `text`, `bigint` | bookkeeping |
///
/// A user row must exist before its keys; a deleted key is a removed row.
///
/// # Revocation across replicas
///
/// Triggers on both tables send `pg_notify('crossmodel_auth', …)` for every change
/// that matters to a lookup — whoever writes, replica or `psql` — with the payload
/// `key:<id>`, `user:<id>` or `all`. Each store keeps one connection listening on
/// that channel and tells whoever [watches it](KeyStore::watch_changes): a
/// `CachedKeyStore` drops the key, the user's keys, or everything. When the
/// listening connection drops, notices may be missed, so the store tells watchers
/// to drop everything at once, again after every failed attempt to listen again
/// (every second by default) and once it listens again. A replica cut off from the
/// database therefore serves no cached record for more than about a second: it
/// answers 503 instead, failing closed.
///
/// # Limitations
///
/// A connection lost without any packet saying so (a silent network partition)
/// is noticed only when the operating system gives up on it; until then this
/// replica's cache is bounded by its TTL alone. Keep the TTL short where such
/// partitions are possible, or enable TCP keepalive on the host.
///
/// A lookup is one prepared query (keys joined with users): one round trip.
///
/// # Last use
///
/// [`record_use`](KeyStore::record_use) only notes the time in memory; a background
/// task writes the notes every 30 s by default, in one statement for all keys.
/// [`flush`](PostgresKeyStore::flush) writes them at once, and
/// [`close`](PostgresKeyStore::close) flushes before closing. Listings include
/// uses not yet written.
///
/// # Limitations
///
/// - Uses recorded in the last flush interval are lost if the process ends without
///   [`close`](PostgresKeyStore::close) or [`flush`](PostgresKeyStore::flush).
/// - The listener holds one connection of its own, beside the pool.
/// - The acquire timeout bounds waiting for a connection, and the statement timeout
///   is enforced by the server; a connection whose server vanished mid-query is
///   bounded only by the layer's deadline (and TCP keepalive), so keep that
///   deadline.
/// - Connection poolers in transaction mode (PgBouncer) do not carry LISTEN: point
///   the store at the server, or at a session-mode pool.
/// - The migration is recorded in sqlx's `_sqlx_migrations` table; an application
///   that runs its own sqlx migrations on the same database must ignore versions
///   it does not know (`Migrator::set_ignore_missing`).
/// - Background tasks run on the Tokio runtime that connected the store and stop
///   when the last clone of the store is dropped.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
///
/// use crossmodel_auth::{CachedKeyStore, PostgresKeyStore, PostgresOptions};
///
/// # async fn run() -> Result<(), crossmodel_auth::StoreError> {
/// let options = PostgresOptions::new()
///     .max_connections(20)
///     .acquire_timeout(Duration::from_secs(2));
/// let store = PostgresKeyStore::connect_with("postgres://gateway@db/keys", options).await?;
/// // Revocations from any replica reach this cache through LISTEN/NOTIFY.
/// let cached = CachedKeyStore::new(store).ttl(Duration::from_secs(300));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostgresKeyStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    format: KeyFormat,
    shared: Arc<Shared>,
    // Dropped with the last clone of the store, which stops the background tasks.
    stop: watch::Sender<bool>,
}

// What the background tasks share with the store without keeping it alive.
#[derive(Debug, Default)]
struct Shared {
    watchers: Watchers,
    uses: UseBuffer,
}

impl PostgresKeyStore {
    /// Connects with the default [`PostgresOptions`] and brings the schema up to
    /// date.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a URL that is not `postgres://…`; `Unavailable` when the
    /// server cannot be reached within the acquire timeout or the schema cannot be
    /// migrated.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// Like [`connect`](Self::connect), with options.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        let connect = connect_options(url, &options)?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .min_connections(options.min_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect.clone())
            .await
            .map_err(|error| db_error("connect to the PostgreSQL key database", error))?;
        let migrator = sql::migrator(MIGRATIONS).await?;
        migrator.run(&pool).await.map_err(sql::migrate_error)?;

        // The listener's own connection, so that it never takes a query's place.
        let listener_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(options.acquire_timeout)
            .connect_lazy_with(connect);
        Ok(Self::start(pool, listener_pool, &options))
    }

    fn start(pool: PgPool, listener_pool: PgPool, options: &PostgresOptions) -> Self {
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = watch::channel(false);

        sql::spawn_background(listen(
            listener_pool,
            Arc::clone(&shared),
            stopped.clone(),
            options.reconnect_delay,
        ));
        sql::spawn_background(write_uses(
            pool.clone(),
            Arc::clone(&shared),
            stopped,
            options.last_used_flush,
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
    /// Call it right after connecting, before cloning the store: clones made
    /// earlier keep the format they had.
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

    /// The connection pool, for callers that keep their own tables in the
    /// database.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Creates `new` only on the first start of a database: when no key was ever
    /// created this way on it and it holds no key made otherwise (`keys create`
    /// before any server started). Decided atomically: of several replicas
    /// starting together, exactly one gets `Some`.
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
    /// `Unavailable` when the database cannot be written; the uses stay pending.
    pub async fn flush(&self) -> Result<(), StoreError> {
        flush_uses(&self.inner.pool, &self.inner.shared.uses).await
    }

    /// Writes the recorded uses, stops the background tasks and closes the pool.
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
        let mut tx = self.inner.pool.begin().await.map_err(failed)?;

        // A second replica's claim waits on the first's row lock, then finds the
        // row and does nothing.
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
        query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
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

impl std::fmt::Debug for PostgresKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresKeyStore")
            .field("format", &self.inner.format)
            .field("connections", &self.inner.pool.size())
            .field("watchers", &self.inner.shared.watchers)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl KeyStore for PostgresKeyStore {
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
impl KeyManager for PostgresKeyStore {
    async fn create_key(&self, new: NewKey) -> Result<CreatedKey, StoreError> {
        let created = self.create(new, false).await?;
        created.ok_or_else(|| StoreError::unavailable("the key was not created", "no row"))
    }

    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(LIST_KEYS)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|error| db_error("list the keys", error))?;

        let uses = &self.inner.shared.uses;
        rows.iter()
            .map(|row| key_row(row).map(|record| sql::with_pending_use(record, uses)))
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

fn connect_options(url: &str, options: &PostgresOptions) -> Result<PgConnectOptions, StoreError> {
    let not_postgres =
        || StoreError::invalid_input("not a PostgreSQL URL; write postgres://user@host/database");
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(not_postgres());
    }

    let mut connect = PgConnectOptions::from_str(url)
        .map_err(|error| not_postgres().with_source(error))?
        .application_name("crossmodel-auth");
    if let Some(timeout) = options.statement_timeout {
        let millis = timeout.as_millis().max(1).to_string();
        connect = connect.options([("statement_timeout", millis)]);
    }
    Ok(connect)
}

async fn claim_first_key(
    tx: &mut Transaction<'static, Postgres>,
    now: SystemTime,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(CLAIM_FIRST_KEY)
        .bind(to_micros(now))
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

async fn has_keys(tx: &mut Transaction<'static, Postgres>) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(HAS_KEYS).fetch_one(&mut **tx).await
}

/// Inserts the user if new and the key; returns the user's state as stored.
async fn insert_key(
    tx: &mut Transaction<'static, Postgres>,
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

fn key_row(row: &PgRow) -> Result<KeyRecord, StoreError> {
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

fn user_row(row: &PgRow) -> Result<UserRecord, StoreError> {
    let read = |error| db_error("read a user row", error);
    let state: String = row.try_get(1).map_err(read)?;
    let key_count: i64 = row.try_get(2).map_err(read)?;

    Ok(UserRecord {
        id: row.try_get(0).map_err(read)?,
        state: sql::user_state(&state)?,
        key_count: u64::try_from(key_count).unwrap_or(0),
    })
}

/// Writes pending uses in one statement; on failure they stay pending.
async fn flush_uses(pool: &PgPool, uses: &UseBuffer) -> Result<(), StoreError> {
    let pending = uses.snapshot();
    if pending.is_empty() {
        return Ok(());
    }

    let (ids, times): (Vec<String>, Vec<i64>) = pending
        .iter()
        .map(|(id, at)| (id.as_str().to_owned(), to_micros(*at)))
        .unzip();
    let written = sqlx::query(RECORD_USES)
        .bind(ids)
        .bind(times)
        .execute(pool)
        .await;

    written.map_err(|error| db_error("record when keys were last used", error))?;
    uses.settle(&pending);
    Ok(())
}

/// Writes uses every `every` until the store is dropped or closed; then writes
/// the last ones.
async fn write_uses(
    pool: PgPool,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    every: Duration,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            _ = ticks.tick() => flush_or_warn(&pool, &shared.uses).await,
            _ = stop.changed() => break,
        }
    }
    if !pool.is_closed() {
        flush_or_warn(&pool, &shared.uses).await;
    }
}

async fn flush_or_warn(pool: &PgPool, uses: &UseBuffer) {
    if let Err(error) = flush_uses(pool, uses).await {
        tracing::warn!(
            target: "crossmodel_auth",
            error = %error,
            "last-use times not written; will retry"
        );
    }
}

/// Listens for the triggers' notices and passes them on, reconnecting whenever
/// the connection drops, until the store is dropped or closed.
async fn listen(
    pool: PgPool,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    reconnect_delay: Duration,
) {
    loop {
        tokio::select! {
            ended = listen_once(&pool, &shared) => {
                if let Err(error) = ended {
                    tracing::warn!(
                        target: "crossmodel_auth",
                        error = %error,
                        "key change listener lost its connection; reconnecting"
                    );
                }
            }
            _ = stop.changed() => return,
        }
        // Notices sent from now until the next LISTEN are lost. Drop every cached
        // record at once, and again after each failed attempt, so that while the
        // feed is down no cache serves a record older than the reconnect delay:
        // lookups go to the database, and where it is unreachable too, get 503.
        shared.watchers.notify(&StoreChange::All);
        tokio::select! {
            () = tokio::time::sleep(reconnect_delay) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One listening session: connect, LISTEN, tell watchers to forget everything
/// (notices may have been missed before this point), then pass notices on until
/// the connection fails.
async fn listen_once(pool: &PgPool, shared: &Shared) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    shared.watchers.notify(&StoreChange::All);

    // `None`: the connection was lost (and notices with it); start over.
    while let Some(notice) = listener.try_recv().await? {
        shared.watchers.notify(&change_of(notice.payload()));
    }
    Ok(())
}

/// Reads a trigger's payload; anything unexpected means "everything".
fn change_of(payload: &str) -> StoreChange {
    if let Some(id) = payload.strip_prefix("key:") {
        if let Ok(id) = KeyId::parse(id) {
            return StoreChange::Key(id);
        }
    }
    if let Some(user_id) = payload.strip_prefix("user:") {
        return StoreChange::User(user_id.to_owned());
    }
    StoreChange::All
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_a_key_a_user_or_everything() {
        let id = KeyId::parse("abcdefABCDEF").unwrap();

        assert_eq!(change_of("key:abcdefABCDEF"), StoreChange::Key(id));
        assert_eq!(change_of("user:alice"), StoreChange::User("alice".into()));
        assert_eq!(change_of("all"), StoreChange::All);
        assert_eq!(change_of("key:bad"), StoreChange::All);
    }
}
