//! The key databases the gateway runs on, chosen by the scheme of `--db`.

use async_trait::async_trait;
use crossmodel_auth::store::{PostgresKeyStore, SqliteKeyStore};
use crossmodel_auth::{CreatedKey, KeyManager, KeyStore, NewKey, StoreError};

/// Which store a database URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend of `url`, by its scheme.
    pub(crate) fn of(url: &str) -> Result<Self, String> {
        match url.split_once(':').map(|(scheme, _)| scheme) {
            Some("sqlite") => Ok(Self::Sqlite),
            Some("postgres" | "postgresql") => Ok(Self::Postgres),
            _ => Err(format!(
                "`{}` is not a database URL the gateway knows; use sqlite://FILE or \
                 postgres://USER@HOST/DATABASE",
                redact_url(url)
            )),
        }
    }
}

/// What the gateway needs of a key database beyond the two store traits.
#[async_trait]
pub(crate) trait Database: KeyStore + KeyManager + Clone {
    /// Creates `new` on the first start of this database only (exactly once, even
    /// when several servers start together); `None` on every later start.
    async fn create_first_key(&self, new: NewKey) -> Result<Option<CreatedKey>, StoreError>;

    /// Writes what the store buffers (last-use times) before the process exits.
    async fn flush(&self) -> Result<(), StoreError>;
}

#[async_trait]
impl Database for SqliteKeyStore {
    async fn create_first_key(&self, new: NewKey) -> Result<Option<CreatedKey>, StoreError> {
        SqliteKeyStore::create_first_key(self, new).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        SqliteKeyStore::flush(self).await
    }
}

#[async_trait]
impl Database for PostgresKeyStore {
    async fn create_first_key(&self, new: NewKey) -> Result<Option<CreatedKey>, StoreError> {
        PostgresKeyStore::create_first_key(self, new).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        PostgresKeyStore::flush(self).await
    }
}

/// A database URL safe to print: without its password.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:…@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db:5432/keys"),
            "postgres://app:…@db:5432/keys"
        );
        assert_eq!(redact_url("sqlite://gateway.db"), "sqlite://gateway.db");
        assert_eq!(
            redact_url("postgres://app@db/keys"),
            "postgres://app@db/keys"
        );
        assert_eq!(
            redact_url("postgres://db/keys?x=a@b"),
            "postgres://db/keys?x=a@b"
        );
    }

    #[test]
    fn the_scheme_picks_the_backend() {
        assert_eq!(Backend::of("sqlite://gateway.db"), Ok(Backend::Sqlite));
        assert_eq!(Backend::of("sqlite:gateway.db"), Ok(Backend::Sqlite));
        assert_eq!(Backend::of("postgres://db/keys"), Ok(Backend::Postgres));
        assert_eq!(Backend::of("postgresql://db/keys"), Ok(Backend::Postgres));
        assert!(
            Backend::of("mysql://x:secret@db/keys")
                .unwrap_err()
                .contains("x:…@db")
        );
    }
}
