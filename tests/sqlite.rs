//! `SqliteKeyStore` on real files: the shared store cases, restarts, a second
//! connection pool on the same file (as a second process has), a process killed
//! while it writes, changes from elsewhere reaching a cache, and the first key.
//!
//! Two tests re-run this test binary as a second process:
//! `child_writes_keys_until_killed` does nothing unless `CROSSMODEL_SQLITE_CHILD_DB`
//! names a database, and `child_disables_a_key` nothing unless
//! `CROSSMODEL_SQLITE_CHILD_DISABLE` holds a database path and a key id.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod store_cases;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crossmodel_auth::{
    CachedKeyStore, KeyManager, KeyState, KeyStore, NewKey, SqliteKeyStore, SqliteOptions,
    StoreChange, StoreErrorKind, UserState, Verifier,
};

const CHILD_DB_VAR: &str = "CROSSMODEL_SQLITE_CHILD_DB";

const CHILD_DISABLE_VAR: &str = "CROSSMODEL_SQLITE_CHILD_DISABLE";

/// A database file removed (with its WAL files) when the test is done.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "crossmodel-auth-test-{}-{}-{nanos}.db",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Self {
            path: std::env::temp_dir().join(name),
        }
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }

    async fn open(&self) -> SqliteKeyStore {
        SqliteKeyStore::open(&self.url()).await.unwrap()
    }

    async fn finish(self) {}
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.path.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

async fn fresh() -> (SqliteKeyStore, Scratch) {
    let scratch = Scratch::new();
    (scratch.open().await, scratch)
}

store_cases!(fresh);

/// Polls `check` until it holds, for at most 10 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn opening_creates_the_file_in_wal_mode() {
    let scratch = Scratch::new();
    assert!(!scratch.path.exists());

    let store = scratch.open().await;

    assert!(scratch.path.exists());
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn a_url_that_is_not_sqlite_is_refused() {
    let err = SqliteKeyStore::open("postgres://localhost/x")
        .await
        .unwrap_err();

    assert_eq!(err.kind(), StoreErrorKind::InvalidInput);
    assert!(err.to_string().contains("sqlite://"), "{err}");
}

#[tokio::test]
async fn everything_survives_a_restart() {
    let scratch = Scratch::new();
    let store = scratch.open().await;
    let plain = store.create_key(NewKey::for_user("alice")).await.unwrap();
    let expiring = NewKey::for_user("bob")
        .name("expiring")
        .expires_at(SystemTime::now() + Duration::from_secs(60))
        .metadata(serde_json::json!({"tier": "gold"}));
    let expiring = store.create_key(expiring).await.unwrap();
    let revoked = store.create_key(NewKey::for_user("bob")).await.unwrap();
    store.revoke_key(&revoked.key.id()).await.unwrap();
    store.disable_key(&plain.key.id()).await.unwrap();
    store.disable_user("bob").await.unwrap();
    store.record_use(&expiring.key.id(), SystemTime::now());
    let before = store.list_keys().await.unwrap();
    let users = store.list_users().await.unwrap();
    store.close().await.unwrap();
    drop(store);

    let reopened = scratch.open().await;

    assert_eq!(reopened.list_keys().await.unwrap(), before);
    assert_eq!(reopened.list_users().await.unwrap(), users);
    let record = reopened.lookup(&expiring.key.id()).await.unwrap().unwrap();
    assert!(record.digest.ct_eq(&expiring.key.digest()));
    assert_eq!(record.user_state, UserState::Disabled);
    assert!(record.last_used_at.is_some());
    let verifier = Verifier::new(reopened.clone());
    let rejection = verifier.verify(plain.key.expose()).await.unwrap_err();
    assert_eq!(rejection.kind().code(), "api_key_inactive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_opening_a_fresh_file_together_all_succeed() {
    let scratch = Scratch::new();
    let url = scratch.url();

    let openers: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { SqliteKeyStore::open(&url).await })
        })
        .collect();
    let mut stores = Vec::new();
    for opener in openers {
        stores.push(opener.await.unwrap().unwrap());
    }

    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(stores[0].pool())
        .await
        .unwrap();
    assert_eq!(applied, 1);
}

#[tokio::test]
async fn two_pools_on_one_file_write_at_once() {
    let scratch = Scratch::new();
    let first = scratch.open().await;
    let second = scratch.open().await;

    let writers = (0..20).map(|i| {
        let store = if i % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        tokio::spawn(async move { store.create_key(NewKey::for_user("u")).await.unwrap() })
    });
    let mut created = Vec::new();
    for writer in writers {
        created.push(writer.await.unwrap());
    }

    assert_eq!(first.list_keys().await.unwrap().len(), 20);
    for key in created {
        assert!(second.lookup(&key.key.id()).await.unwrap().is_some());
    }
}

/// The writer of `keys_written_before_a_kill_survive_it`; a no-op on its own.
#[tokio::test]
async fn child_writes_keys_until_killed() {
    let Ok(path) = std::env::var(CHILD_DB_VAR) else {
        return;
    };
    let store = SqliteKeyStore::open(&format!("sqlite://{path}"))
        .await
        .unwrap();
    let mut stdout = std::io::stdout();

    loop {
        let created = store.create_key(NewKey::for_user("child")).await.unwrap();
        writeln!(stdout, "KEY {}", created.key.expose()).unwrap();
        stdout.flush().unwrap();
    }
}

#[tokio::test]
async fn keys_written_before_a_kill_survive_it() {
    let scratch = Scratch::new();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_writes_keys_until_killed", "--exact", "--nocapture"])
        .env(CHILD_DB_VAR, &scratch.path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();

    let mut printed = Vec::new();
    while printed.len() < 40 {
        let line = lines.next().expect("the writer stopped early").unwrap();
        if let Some(key) = line.strip_prefix("KEY ") {
            printed.push(key.to_owned());
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Keys printed after the 40th, up to the kill, count too.
    printed.extend(
        lines
            .map_while(Result::ok)
            .filter_map(|l| l.strip_prefix("KEY ").map(str::to_owned)),
    );

    let verifier = Verifier::new(scratch.open().await);
    for key in &printed {
        let identity = verifier.verify(key).await.unwrap();
        assert_eq!(identity.user_id(), "child");
    }
}

#[tokio::test]
async fn a_change_from_another_pool_reaches_the_cache() {
    let scratch = Scratch::new();
    let cached = CachedKeyStore::new(scratch.open().await).ttl(Duration::from_secs(300));
    let created = cached.create_key(NewKey::for_user("alice")).await.unwrap();
    let id = created.key.id();
    assert!(cached.is_watching_changes());
    assert_eq!(
        cached.lookup(&id).await.unwrap().unwrap().state,
        KeyState::Active
    );
    // Lookups that overlap a notice (the creation's) are not cached; try again.
    eventually("the key is cached", || async {
        cached.lookup(&id).await.unwrap();
        cached.lookup_now(&id).is_some()
    })
    .await;

    let elsewhere = scratch.open().await;
    elsewhere.disable_key(&id).await.unwrap();

    eventually("the cache sees the disable", || async {
        cached.lookup(&id).await.unwrap().unwrap().state == KeyState::Disabled
    })
    .await;
}

/// The other process of `a_disable_from_another_process_reaches_the_cache`; a
/// no-op on its own.
#[tokio::test]
async fn child_disables_a_key() {
    let Ok(task) = std::env::var(CHILD_DISABLE_VAR) else {
        return;
    };
    let (path, id) = task.rsplit_once(' ').unwrap();
    let store = SqliteKeyStore::open(&format!("sqlite://{path}"))
        .await
        .unwrap();

    store.disable_key(&id.parse().unwrap()).await.unwrap();
}

#[tokio::test]
async fn a_disable_from_another_process_reaches_the_cache() {
    let scratch = Scratch::new();
    let cached = CachedKeyStore::new(scratch.open().await).ttl(Duration::from_secs(300));
    let created = cached.create_key(NewKey::for_user("alice")).await.unwrap();
    let verifier = Verifier::new(cached.clone());
    let id = created.key.id();
    eventually("the key is cached", || async {
        verifier.verify(created.key.expose()).await.unwrap();
        cached.lookup_now(&id).is_some()
    })
    .await;

    let status = Command::new(std::env::current_exe().unwrap())
        .args(["child_disables_a_key", "--exact"])
        .env(
            CHILD_DISABLE_VAR,
            format!("{} {id}", scratch.path.display()),
        )
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());

    eventually("the running process rejects the key", || async {
        verifier.verify(created.key.expose()).await.is_err()
    })
    .await;
    let rejection = verifier.verify(created.key.expose()).await.unwrap_err();
    assert_eq!(rejection.kind().code(), "api_key_inactive");
}

#[tokio::test]
async fn a_plain_sql_update_reaches_the_cache() {
    let scratch = Scratch::new();
    let cached = CachedKeyStore::new(scratch.open().await).ttl(Duration::from_secs(300));
    let created = cached.create_key(NewKey::for_user("alice")).await.unwrap();
    let id = created.key.id();
    cached.lookup(&id).await.unwrap();

    let other = sqlx::SqlitePool::connect(&scratch.url()).await.unwrap();
    sqlx::query("UPDATE crossmodel_users SET state = 'disabled' WHERE id = 'alice'")
        .execute(&other)
        .await
        .unwrap();

    eventually("the cache sees the disabled user", || async {
        cached.lookup(&id).await.unwrap().unwrap().user_state == UserState::Disabled
    })
    .await;
}

#[tokio::test]
async fn recording_uses_does_not_count_as_a_change() {
    let scratch = Scratch::new();
    let options = SqliteOptions::new()
        .last_used_flush(Duration::from_millis(20))
        .change_poll(Duration::from_millis(10));
    let store = SqliteKeyStore::open_with(&scratch.url(), options)
        .await
        .unwrap();
    let id = store
        .create_key(NewKey::for_user("a"))
        .await
        .unwrap()
        .key
        .id();
    let changes = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&changes);
    store.watch_changes(Box::new(move |change| {
        if *change == StoreChange::All {
            counted.fetch_add(1, Ordering::SeqCst);
        }
        true
    }));
    // Let the poll see the creation, then start counting from zero.
    tokio::time::sleep(Duration::from_millis(200)).await;
    changes.store(0, Ordering::SeqCst);

    store.record_use(&id, SystemTime::now());
    eventually("the background task writes the use", || async {
        let other = sqlx::SqlitePool::connect(&scratch.url()).await.unwrap();
        let written: Option<i64> = sqlx::query_scalar("SELECT last_used_at FROM crossmodel_keys")
            .fetch_one(&other)
            .await
            .unwrap();
        written.is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    assert_eq!(changes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn uses_are_written_by_flush_and_survive() {
    let scratch = Scratch::new();
    let store = scratch.open().await;
    let id = store
        .create_key(NewKey::for_user("a"))
        .await
        .unwrap()
        .key
        .id();
    let early = SystemTime::now();
    let late = early + Duration::from_secs(5);

    store.record_use(&id, late);
    store.record_use(&id, early);
    store.flush().await.unwrap();

    let record = store.lookup(&id).await.unwrap().unwrap();
    let written = record.last_used_at.unwrap();
    assert!(late.duration_since(written).unwrap() < Duration::from_micros(1));
}

#[tokio::test]
async fn the_first_key_is_made_once_among_racing_openers() {
    let scratch = Scratch::new();
    let mut stores = Vec::new();
    for _ in 0..6 {
        stores.push(scratch.open().await);
    }

    let racers = stores.iter().cloned().map(|store| {
        tokio::spawn(async move {
            store
                .create_first_key(NewKey::for_user("default"))
                .await
                .unwrap()
        })
    });
    let mut made = 0;
    for racer in racers {
        made += usize::from(racer.await.unwrap().is_some());
    }

    assert_eq!(made, 1);
    assert_eq!(stores[0].list_keys().await.unwrap().len(), 1);
    let again = stores[1]
        .create_first_key(NewKey::for_user("default"))
        .await;
    assert!(again.unwrap().is_none());
}

#[tokio::test]
async fn no_first_key_when_keys_were_made_before_the_first_start() {
    let (store, scratch) = fresh().await;
    store.create_key(NewKey::for_user("alice")).await.unwrap();

    let first = store
        .create_first_key(NewKey::for_user("default"))
        .await
        .unwrap();

    assert!(first.is_none());
    assert_eq!(store.list_keys().await.unwrap().len(), 1);
    drop(scratch);
}

#[tokio::test]
async fn rows_another_program_broke_are_reported_corrupt() {
    let (store, _scratch) = fresh().await;
    let id = store
        .create_key(NewKey::for_user("a"))
        .await
        .unwrap()
        .key
        .id();

    sqlx::query("UPDATE crossmodel_keys SET metadata = '{not json'")
        .execute(store.pool())
        .await
        .unwrap();

    let err = store.lookup(&id).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Corrupt);
    assert!(err.to_string().contains("metadata"), "{err}");
}

#[tokio::test]
async fn the_schema_refuses_digests_of_the_wrong_size() {
    let (store, _scratch) = fresh().await;
    store.create_key(NewKey::for_user("a")).await.unwrap();

    let refused = sqlx::query("UPDATE crossmodel_keys SET digest = x'0011'")
        .execute(store.pool())
        .await;

    assert!(refused.is_err());
}

#[tokio::test]
async fn the_background_task_ends_with_the_last_clone() {
    let (store, _scratch) = fresh().await;
    let alive = Arc::new(());
    let held = Arc::clone(&alive);
    store.watch_changes(Box::new(move |_| {
        let _ = &held;
        true
    }));
    let clone = store.clone();

    drop(store);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        Arc::strong_count(&alive),
        2,
        "a clone still holds the store"
    );
    drop(clone);

    eventually("the task drops its watchers", || async {
        Arc::strong_count(&alive) == 1
    })
    .await;
}
