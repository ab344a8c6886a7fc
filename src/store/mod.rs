//! Where keys live: the lookup trait the layer calls, the management trait
//! consoles and command lines call, and the records they exchange.
//!
//! A store keeps, per key: its public [`KeyId`], the SHA-256 [`KeyDigest`] of its
//! secret (never the key), a display name, a [`KeyState`], an optional expiry, the
//! owning user, and free JSON metadata. Users have an id and a [`UserState`].

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;

use crate::key::{ApiKey, KeyDigest, KeyId};
use crate::redact::looks_like_key;

#[cfg(feature = "cache")]
mod cache;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "cache")]
#[cfg_attr(docsrs, doc(cfg(feature = "cache")))]
pub use cache::CachedKeyStore;
pub use memory::MemoryKeyStore;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::{PostgresKeyStore, PostgresOptions};
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use sqlite::{SqliteKeyStore, SqliteOptions};

/// Whether a key may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyState {
    /// The key works (unless it has expired or its user is disabled).
    Active,
    /// Switched off; can be enabled again.
    Disabled,
    /// Switched off for good. The record stays for audit.
    Revoked,
}

impl KeyState {
    /// The lowercase name used in listings and databases: `active`, `disabled`,
    /// `revoked`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
            Self::Revoked => "revoked",
        }
    }

    /// Reads a name written by [`KeyState::as_str`].
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "active" => Some(Self::Active),
            "disabled" => Some(Self::Disabled),
            "revoked" => Some(Self::Revoked),
            _ => None,
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a user's keys may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UserState {
    /// The user's active keys work.
    Active,
    /// None of the user's keys work, whatever their own state.
    Disabled,
}

impl UserState {
    /// The lowercase name: `active` or `disabled`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
        }
    }

    /// Reads a name written by [`UserState::as_str`].
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "active" => Some(Self::Active),
            "disabled" => Some(Self::Disabled),
            _ => None,
        }
    }
}

impl fmt::Display for UserState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a store returns for a key id: everything the layer needs to decide.
///
/// `Debug` leaves the digest out.
#[derive(Clone, PartialEq)]
pub struct KeyRecord {
    /// The key's public id.
    pub id: KeyId,
    /// SHA-256 of the key's secret.
    pub digest: KeyDigest,
    /// A display name chosen by the key's owner.
    pub name: String,
    /// Active, disabled or revoked.
    pub state: KeyState,
    /// When the key stops working, if ever.
    pub expires_at: Option<SystemTime>,
    /// When the key was created.
    pub created_at: SystemTime,
    /// When the key was last used, as far as the store has recorded it.
    pub last_used_at: Option<SystemTime>,
    /// The owning user's id.
    pub user_id: String,
    /// The owning user's state.
    pub user_state: UserState,
    /// Free metadata kept with the key (a JSON object, or null).
    pub metadata: serde_json::Value,
}

impl KeyRecord {
    /// Whether the key has expired at `now`.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|expiry| expiry <= now)
    }
}

impl fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("state", &self.state)
            .field("expires_at", &self.expires_at)
            .field("created_at", &self.created_at)
            .field("last_used_at", &self.last_used_at)
            .field("user_id", &self.user_id)
            .field("user_state", &self.user_state)
            .field("metadata", &self.metadata)
            .finish_non_exhaustive()
    }
}

/// A user as listed by [`KeyManager::list_users`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The user's id.
    pub id: String,
    /// Active or disabled.
    pub state: UserState,
    /// How many keys the user has (in any state).
    pub key_count: u64,
}

/// What to create with [`KeyManager::create_key`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewKey {
    /// The owning user; created, active, if the store does not know it yet.
    pub user_id: String,
    /// A display name.
    pub name: String,
    /// When the key stops working, if ever.
    pub expires_at: Option<SystemTime>,
    /// Free metadata (a JSON object, or null).
    pub metadata: serde_json::Value,
}

impl NewKey {
    /// A key for `user_id` with an empty name, no expiry and no metadata.
    pub fn for_user(user_id: impl Into<String>) -> Self {
        Self {
            user_id: user_id.into(),
            name: String::new(),
            expires_at: None,
            metadata: serde_json::Value::Null,
        }
    }

    /// Sets the display name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the expiry.
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Sets the metadata.
    pub fn metadata(mut self, metadata: serde_json::Value) -> Self {
        self.metadata = metadata;
        self
    }
}

/// A key just created: the plaintext, shown this once, and its record.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    /// The plaintext key. Hand it to its owner; it cannot be recovered later.
    pub key: ApiKey,
    /// What the store now holds for it.
    pub record: KeyRecord,
}

/// The longest user id stores accept, in bytes.
pub const MAX_USER_ID_LEN: usize = 128;

/// The longest key name stores accept, in bytes.
pub const MAX_KEY_NAME_LEN: usize = 256;

/// Checks a new key's user id and name, as every store must before writing.
///
/// # Errors
///
/// [`StoreError`] of kind [`StoreErrorKind::InvalidInput`] saying what to change.
pub fn validate_new_key(new: &NewKey) -> Result<(), StoreError> {
    validate_user_id(&new.user_id)?;

    if new.name.len() > MAX_KEY_NAME_LEN || new.name.chars().any(char::is_control) {
        return Err(StoreError::invalid_input(format!(
            "key name must be at most {MAX_KEY_NAME_LEN} bytes without control characters"
        )));
    }
    if looks_like_key(&new.name) {
        return Err(StoreError::invalid_input(KEY_AS_TEXT));
    }
    if !(new.metadata.is_object() || new.metadata.is_null()) {
        return Err(StoreError::invalid_input(
            "key metadata must be a JSON object or null",
        ));
    }
    Ok(())
}

/// Checks a user id: 1 to [`MAX_USER_ID_LEN`] bytes of visible ASCII, and not
/// something that looks like a `cm-` key (user ids are shown in listings and logs).
///
/// # Errors
///
/// [`StoreError`] of kind [`StoreErrorKind::InvalidInput`] saying what to change.
pub fn validate_user_id(user_id: &str) -> Result<(), StoreError> {
    let fits = !user_id.is_empty()
        && user_id.len() <= MAX_USER_ID_LEN
        && user_id.bytes().all(|byte| byte.is_ascii_graphic());
    if !fits {
        return Err(StoreError::invalid_input(format!(
            "user id must be 1 to {MAX_USER_ID_LEN} visible ASCII characters, without spaces"
        )));
    }
    if looks_like_key(user_id) {
        return Err(StoreError::invalid_input(KEY_AS_TEXT));
    }
    Ok(())
}

/// Said when a user id or key name holds a key, which is then not echoed.
const KEY_AS_TEXT: &str = "that looks like an API key (cm-…): user ids and key names are shown \
                           in listings and logs, so use a name, never a key";

/// Looks keys up for the layer: the one call on the request path.
///
/// Implementations return `Ok(None)` for an id they do not hold (including a deleted
/// key) and `Err` only when they cannot answer: the layer turns that into a 503,
/// never a 401. The layer puts its own deadline around every call, so a store need
/// not, but a store should still bound its own waits so that abandoned calls do not
/// pile up.
///
/// # Example
///
/// A read-only store over a fixed table:
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Arc;
///
/// use async_trait::async_trait;
/// use crossmodel_auth::{KeyId, KeyRecord, KeyStore, StoreError};
///
/// struct Fixed(HashMap<KeyId, Arc<KeyRecord>>);
///
/// #[async_trait]
/// impl KeyStore for Fixed {
///     async fn lookup(&self, id: &KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
///         Ok(self.0.get(id).cloned())
///     }
/// }
/// ```
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Finds the record of a key id.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot answer (unreachable, timed out,
    /// corrupt record). "Not found" is `Ok(None)`, not an error.
    async fn lookup(&self, id: &KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError>;

    /// Answers at once when the answer is at hand without waiting (a map in memory,
    /// a cache hit); `None` means "call [`lookup`](Self::lookup)".
    ///
    /// The layer tries this first: an answer here skips the boxed future and the
    /// deadline timer. It must never block. The default returns `None`.
    fn lookup_now(&self, id: &KeyId) -> Option<Result<Option<Arc<KeyRecord>>, StoreError>> {
        let _ = id;
        None
    }

    /// Notes that a key was just used successfully. Called on the request path, so
    /// it must not wait: stores that persist it batch the writes. The default does
    /// nothing.
    fn record_use(&self, id: &KeyId, at: SystemTime) {
        let _ = (id, at);
    }

    /// Asks the store to call `watcher` with every change to keys or users it learns
    /// of, including changes other processes make; returns whether it will.
    ///
    /// Caches use this to drop what changed: `CachedKeyStore` (feature `cache`)
    /// registers itself on the store it wraps. A watcher returns `false` once it no
    /// longer wants calls (its cache was dropped), and the store then forgets it.
    /// Watchers run on the store's own tasks and must not block. The default
    /// reports nothing and returns `false`.
    fn watch_changes(&self, watcher: ChangeWatcher) -> bool {
        let _ = watcher;
        false
    }
}

/// A change to keys or users, as reported to a [`ChangeWatcher`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreChange {
    /// One key was created, changed or deleted.
    Key(KeyId),
    /// A user was enabled or disabled: every key of theirs changed.
    User(String),
    /// Anything may have changed (changes were missed, or the store cannot say
    /// which): forget everything.
    All,
}

/// Called by a store with each [`StoreChange`]; returns whether to keep watching.
///
/// See [`KeyStore::watch_changes`].
pub type ChangeWatcher = Box<dyn Fn(&StoreChange) -> bool + Send + Sync>;

#[async_trait]
impl<S: KeyStore + ?Sized> KeyStore for Arc<S> {
    async fn lookup(&self, id: &KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        (**self).lookup(id).await
    }

    fn lookup_now(&self, id: &KeyId) -> Option<Result<Option<Arc<KeyRecord>>, StoreError>> {
        (**self).lookup_now(id)
    }

    fn record_use(&self, id: &KeyId, at: SystemTime) {
        (**self).record_use(id, at);
    }

    fn watch_changes(&self, watcher: ChangeWatcher) -> bool {
        (**self).watch_changes(watcher)
    }
}

/// Creates and changes keys and users: what a console or command line needs.
///
/// Separate from [`KeyStore`] so that read-only stores stay small. Repeating a
/// change that is already in effect (disabling a disabled key) succeeds.
#[async_trait]
pub trait KeyManager: Send + Sync + 'static {
    /// Creates a key and returns its plaintext, the only time it exists.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a bad user id, name or metadata; `Unavailable` when the
    /// store cannot be written.
    async fn create_key(&self, new: NewKey) -> Result<CreatedKey, StoreError>;

    /// Lists every key, deleted ones excepted, oldest first.
    ///
    /// # Errors
    ///
    /// `Unavailable` when the store cannot be read.
    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError>;

    /// Disables an active key. Disabling a disabled key succeeds.
    ///
    /// # Errors
    ///
    /// `NotFound` for an unknown id; `Conflict` for a revoked key.
    async fn disable_key(&self, id: &KeyId) -> Result<(), StoreError>;

    /// Enables a disabled key.
    ///
    /// # Errors
    ///
    /// `NotFound` for an unknown id; `Conflict` for a revoked key, which stays off.
    async fn enable_key(&self, id: &KeyId) -> Result<(), StoreError>;

    /// Revokes a key for good; its record stays for audit.
    ///
    /// # Errors
    ///
    /// `NotFound` for an unknown id.
    async fn revoke_key(&self, id: &KeyId) -> Result<(), StoreError>;

    /// Deletes a key: afterwards it is answered like any unknown key.
    ///
    /// # Errors
    ///
    /// `NotFound` for an unknown id.
    async fn delete_key(&self, id: &KeyId) -> Result<(), StoreError>;

    /// Sets (`Some`) or clears (`None`) a key's expiry.
    ///
    /// # Errors
    ///
    /// `NotFound` for an unknown id.
    async fn set_expiry(
        &self,
        id: &KeyId,
        expires_at: Option<SystemTime>,
    ) -> Result<(), StoreError>;

    /// Disables a user: none of their keys work until the user is enabled again.
    ///
    /// # Errors
    ///
    /// `NotFound` for an unknown user.
    async fn disable_user(&self, user_id: &str) -> Result<(), StoreError>;

    /// Enables a disabled user.
    ///
    /// # Errors
    ///
    /// `NotFound` for an unknown user.
    async fn enable_user(&self, user_id: &str) -> Result<(), StoreError>;

    /// Lists every user, by id.
    ///
    /// # Errors
    ///
    /// `Unavailable` when the store cannot be read.
    async fn list_users(&self) -> Result<Vec<UserRecord>, StoreError>;
}

/// What went wrong in a store, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The key or user does not exist.
    NotFound,
    /// The change is not allowed in the current state (enabling a revoked key).
    Conflict,
    /// The input was refused (a user id with spaces, a name too long).
    InvalidInput,
    /// The store could not be reached or did not answer in time.
    Unavailable,
    /// The store answered with data it should not hold (a digest of the wrong size).
    Corrupt,
}

/// A store failure: a kind, a message that says what to do next, and the driver's
/// error as its [`source`](StdError::source).
#[derive(Clone)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
    source: Option<Arc<dyn StdError + Send + Sync>>,
}

impl StoreError {
    /// An error of `kind` with a message.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// `NotFound`, naming what was looked for.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::NotFound, what)
    }

    /// `Conflict`, saying why.
    pub fn conflict(why: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Conflict, why)
    }

    /// `InvalidInput`, saying what to change.
    pub fn invalid_input(why: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::InvalidInput, why)
    }

    /// `Unavailable`, wrapping the driver's error.
    pub fn unavailable(
        message: impl Into<String>,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Self::new(StoreErrorKind::Unavailable, message).with_source(source)
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        self.source = Some(Arc::from(source.into()));
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

impl fmt::Debug for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn StdError + 'static))
    }
}
