//! The key databases the gateway runs on, chosen by the scheme of `--db`.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use crossmodel_auth::store::{PostgresKeyStore, SqliteKeyStore};
use crossmodel_auth::{
    CreatedKey, KeyManager, KeyStore, NewKey, StoreError, StoreErrorKind, looks_like_key,
};

use crate::keys::describe;

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

/// Why the database at `url` could not be opened, on one line.
pub(crate) fn cannot_open(url: &str, backend: Backend, error: &StoreError) -> String {
    let shown = redact_url(url);

    // The store's advice for an unreachable database is about servers; a SQLite
    // file is unreachable mostly because its directory is missing.
    if backend == Backend::Sqlite && error.kind() == StoreErrorKind::Unavailable {
        if let Some(directory) = sqlite_directory(url).filter(|dir| !dir.is_dir()) {
            return format!(
                "cannot open the key database {shown}: the directory {} does not exist; \
                 create it first, or give --db a file in an existing directory",
                directory.display()
            );
        }
    }
    format!("cannot open the key database {shown}: {}", describe(error))
}

/// The directory of the file a `sqlite:` URL names; `None` for an in-memory
/// database.
fn sqlite_directory(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path == ":memory:" {
        return None;
    }

    let parent = Path::new(path).parent()?;
    if parent.as_os_str().is_empty() {
        Some(PathBuf::from("."))
    } else {
        Some(parent.to_owned())
    }
}

/// `text` with every run that may be a key cut to `cm-…`: a key in any spelling
/// (`CM-`, percent-encoded, without its prefix) pasted into `--db` or
/// `CROSSMODEL_DB` would otherwise be printed whole, in the URL and in the
/// driver's own messages (a missing file, an unknown role). A run is a stretch of
/// letters, digits, `_`, `-` and `%`, so the host, path and punctuation around it
/// stay readable.
pub(crate) fn cut_keys(text: &str) -> String {
    let is_run_char = |ch: char| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '%');

    let mut shown = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(is_run_char) {
        let after = &rest[start..];
        let len = after.find(|ch| !is_run_char(ch)).unwrap_or(after.len());
        let run = &after[..len];

        shown.push_str(&rest[..start]);
        shown.push_str(if looks_like_key(run) { "cm-…" } else { run });
        rest = &after[len..];
    }
    shown.push_str(rest);
    shown
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
    fn keys_in_messages_are_cut_and_the_rest_kept() {
        let key = crossmodel_auth::KeyFormat::public().generate().unwrap();
        let key = key.expose();
        let rest = &key[3..];

        assert_eq!(
            cut_keys(&format!(
                "cannot open sqlite:///nonexistdir/{key}: no such file"
            )),
            "cannot open sqlite:///nonexistdir/cm-…: no such file"
        );
        assert_eq!(
            cut_keys(&format!(
                "postgres://cm%2D{rest}@127.0.0.1/x, role \"CM-{rest}\""
            )),
            "postgres://cm-…@127.0.0.1/x, role \"cm-…\""
        );
        assert_eq!(cut_keys(&format!("`{rest}`")), "`cm-…`");
        let plain = "cannot open postgres://app:…@db:5432/keys: connection refused (os error 111)";
        assert_eq!(cut_keys(plain), plain);
    }

    #[test]
    fn the_directory_of_a_sqlite_file_is_found_in_its_url() {
        let dir = |url| sqlite_directory(url).map(|path| path.display().to_string());

        assert_eq!(
            dir("sqlite:///var/lib/keys/gateway.db"),
            Some("/var/lib/keys".into())
        );
        assert_eq!(dir("sqlite://gateway.db"), Some(".".into()));
        assert_eq!(dir("sqlite:data/keys.db?mode=rwc"), Some("data".into()));
        assert_eq!(dir("sqlite::memory:"), None);
        assert_eq!(dir("postgres://db/keys"), None);
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
