//! `PostgresKeyStore` against the real server at `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). Every test makes its own database
//! and drops it when it passes; an unreachable server fails the tests.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod store_cases;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crossmodel_auth::{
    CachedKeyStore, KeyId, KeyManager, KeyState, KeyStore, NewKey, PostgresKeyStore,
    PostgresOptions, StoreChange, StoreErrorKind, UserState, Verifier,
};
use sqlx::{Connection, PgConnection};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// A database of its own, dropped by `finish`, or on drop when a test failed.
struct Scratch {
    name: String,
    url: String,
    finished: bool,
}

impl Scratch {
    async fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "crossmodel_auth_test_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );

        let admin = admin_url();
        let mut connection = PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|error| panic!("PostgreSQL at {admin} is unreachable: {error}"));
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut connection)
            .await
            .unwrap();
        connection.close().await.unwrap();

        let (base, query) = match admin.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (admin.as_str(), String::new()),
        };
        let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
        let url = format!("{server}/{name}{query}");
        Self {
            name,
            url,
            finished: false,
        }
    }

    async fn open(&self) -> PostgresKeyStore {
        PostgresKeyStore::connect(&self.url).await.unwrap()
    }

    async fn connection(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.unwrap()
    }

    async fn finish(mut self) {
        drop_database(&self.name).await;
        self.finished = true;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // A failed test unwinds inside its runtime: drop the database from a
        // thread with a runtime of its own.
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(drop_database(&name));
        });
        let _ = dropped.join();
    }
}

async fn drop_database(name: &str) {
    let mut connection = PgConnection::connect(&admin_url()).await.unwrap();
    let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    sqlx::query(&drop).execute(&mut connection).await.unwrap();
    connection.close().await.unwrap();
}

async fn fresh() -> (PostgresKeyStore, Scratch) {
    let scratch = Scratch::new().await;
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

/// Two replicas, each with its own pool behind a 5-minute cache.
async fn two_replicas(
    scratch: &Scratch,
) -> (
    CachedKeyStore<PostgresKeyStore>,
    CachedKeyStore<PostgresKeyStore>,
) {
    let ttl = Duration::from_secs(300);
    let first = CachedKeyStore::new(scratch.open().await).ttl(ttl);
    let second = CachedKeyStore::new(scratch.open().await).ttl(ttl);
    assert!(first.is_watching_changes() && second.is_watching_changes());
    (first, second)
}

async fn state_seen(cache: &CachedKeyStore<PostgresKeyStore>, id: &KeyId) -> Option<KeyState> {
    cache.lookup(id).await.unwrap().map(|record| record.state)
}

#[tokio::test]
async fn replicas_migrating_a_fresh_database_together_all_succeed() {
    let scratch = Scratch::new().await;

    let racers: Vec<_> = (0..4)
        .map(|_| {
            let url = scratch.url.clone();
            tokio::spawn(async move { PostgresKeyStore::connect(&url).await })
        })
        .collect();
    for racer in racers {
        racer.await.unwrap().unwrap();
    }

    let mut connection = scratch.connection().await;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(applied, 1);
    connection.close().await.unwrap();
    scratch.finish().await;
}

#[tokio::test]
async fn the_first_key_is_made_once_among_racing_replicas() {
    let scratch = Scratch::new().await;
    let mut stores = Vec::new();
    for _ in 0..6 {
        stores.push(scratch.open().await);
    }

    let racers: Vec<_> = stores
        .iter()
        .cloned()
        .map(|store| {
            tokio::spawn(async move {
                store
                    .create_first_key(NewKey::for_user("default"))
                    .await
                    .unwrap()
            })
        })
        .collect();
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
    scratch.finish().await;
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
    scratch.finish().await;
}

#[tokio::test]
async fn a_disable_on_one_replica_reaches_the_others_cache() {
    let scratch = Scratch::new().await;
    let (first, second) = two_replicas(&scratch).await;
    let created = first.create_key(NewKey::for_user("alice")).await.unwrap();
    let id = created.key.id();
    let verifier = Verifier::new(second.clone());
    verifier.verify(created.key.expose()).await.unwrap();
    // Lookups that overlap a notice (the creation's) are not cached; try again.
    eventually("the second replica caches the key", || async {
        second.lookup(&id).await.unwrap();
        second.lookup_now(&id).is_some()
    })
    .await;

    first.disable_key(&id).await.unwrap();

    eventually("the second replica rejects the key", || async {
        verifier.verify(created.key.expose()).await.is_err()
    })
    .await;
    assert_eq!(state_seen(&second, &id).await, Some(KeyState::Disabled));
    scratch.finish().await;
}

#[tokio::test]
async fn every_kind_of_change_reaches_the_other_replica() {
    let scratch = Scratch::new().await;
    let (first, second) = two_replicas(&scratch).await;
    let id = first
        .create_key(NewKey::for_user("alice"))
        .await
        .unwrap()
        .key
        .id();
    assert_eq!(state_seen(&second, &id).await, Some(KeyState::Active));

    first.disable_key(&id).await.unwrap();
    eventually("disable", || async {
        state_seen(&second, &id).await == Some(KeyState::Disabled)
    })
    .await;
    first.enable_key(&id).await.unwrap();
    eventually("enable", || async {
        state_seen(&second, &id).await == Some(KeyState::Active)
    })
    .await;
    first.disable_user("alice").await.unwrap();
    eventually("user disable", || async {
        second.lookup(&id).await.unwrap().unwrap().user_state == UserState::Disabled
    })
    .await;
    first.enable_user("alice").await.unwrap();
    eventually("user enable", || async {
        second.lookup(&id).await.unwrap().unwrap().user_state == UserState::Active
    })
    .await;
    let past = SystemTime::now() - Duration::from_secs(1);
    first.set_expiry(&id, Some(past)).await.unwrap();
    eventually("expiry", || async {
        second
            .lookup(&id)
            .await
            .unwrap()
            .unwrap()
            .expires_at
            .is_some()
    })
    .await;
    first.revoke_key(&id).await.unwrap();
    eventually("revoke", || async {
        state_seen(&second, &id).await == Some(KeyState::Revoked)
    })
    .await;
    first.delete_key(&id).await.unwrap();
    eventually("delete", || async {
        state_seen(&second, &id).await.is_none()
    })
    .await;
    scratch.finish().await;
}

#[tokio::test]
async fn plain_sql_from_another_program_reaches_every_cache() {
    let scratch = Scratch::new().await;
    let (first, second) = two_replicas(&scratch).await;
    let id = first
        .create_key(NewKey::for_user("alice"))
        .await
        .unwrap()
        .key
        .id();
    for cache in [&first, &second] {
        assert_eq!(state_seen(cache, &id).await, Some(KeyState::Active));
    }

    let mut console = scratch.connection().await;
    sqlx::query("UPDATE crossmodel_keys SET state = 'disabled' WHERE id = $1")
        .bind(id.as_str())
        .execute(&mut console)
        .await
        .unwrap();

    for cache in [&first, &second] {
        eventually("the cache sees the console's update", || async {
            state_seen(cache, &id).await == Some(KeyState::Disabled)
        })
        .await;
    }
    sqlx::query("UPDATE crossmodel_users SET state = 'disabled' WHERE id = 'alice'")
        .execute(&mut console)
        .await
        .unwrap();
    eventually("the cache sees the disabled user", || async {
        second.lookup(&id).await.unwrap().unwrap().user_state == UserState::Disabled
    })
    .await;
    console.close().await.unwrap();
    scratch.finish().await;
}

#[tokio::test]
async fn the_listener_reconnects_and_clears_the_cache_after_losing_its_connection() {
    let scratch = Scratch::new().await;
    let store = scratch.open().await;
    let clears = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&clears);
    store.watch_changes(Box::new(move |change| {
        if *change == StoreChange::All {
            counted.fetch_add(1, Ordering::SeqCst);
        }
        true
    }));
    let cached = CachedKeyStore::new(store).ttl(Duration::from_secs(300));
    let id = cached
        .create_key(NewKey::for_user("alice"))
        .await
        .unwrap()
        .key
        .id();
    let console = sqlx::PgPool::connect(&scratch.url).await.unwrap();
    let listening = "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND query ILIKE 'LISTEN%'";
    eventually("the listener is connected", || async {
        let count: i64 = sqlx::query_scalar(listening)
            .fetch_one(&console)
            .await
            .unwrap();
        count == 1
    })
    .await;
    assert_eq!(state_seen_plain(&cached, &id).await, Some(KeyState::Active));
    let clears_before = clears.load(Ordering::SeqCst);

    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .fetch_all(&console)
    .await
    .unwrap();
    assert_eq!(terminated, [true]);
    sqlx::query("UPDATE crossmodel_keys SET state = 'revoked' WHERE id = $1")
        .bind(id.as_str())
        .execute(&console)
        .await
        .unwrap();

    eventually("the cache sees the change", || async {
        state_seen_plain(&cached, &id).await == Some(KeyState::Revoked)
    })
    .await;
    eventually("the reconnected listener clears the cache", || async {
        clears.load(Ordering::SeqCst) > clears_before
    })
    .await;
    console.close().await;
    scratch.finish().await;
}

async fn state_seen_plain<S: KeyStore>(store: &S, id: &KeyId) -> Option<KeyState> {
    store.lookup(id).await.unwrap().map(|record| record.state)
}

#[tokio::test]
async fn recorded_uses_are_written_without_invalidating_caches() {
    let scratch = Scratch::new().await;
    let options = PostgresOptions::new().last_used_flush(Duration::from_millis(50));
    let store = PostgresKeyStore::connect_with(&scratch.url, options)
        .await
        .unwrap();
    let observer = scratch.open().await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = Arc::clone(&seen);
    observer.watch_changes(Box::new(move |change| {
        recorded.lock().unwrap().push(change.clone());
        true
    }));
    let count = |wanted: &StoreChange| seen.lock().unwrap().iter().filter(|c| *c == wanted).count();
    eventually("the observer listens", || async {
        count(&StoreChange::All) > 0
    })
    .await;
    let used = store
        .create_key(NewKey::for_user("a"))
        .await
        .unwrap()
        .key
        .id();
    let marker = store
        .create_key(NewKey::for_user("a"))
        .await
        .unwrap()
        .key
        .id();

    store.record_use(&used, SystemTime::now());
    eventually("the observer reads the last use", || async {
        observer
            .lookup(&used)
            .await
            .unwrap()
            .unwrap()
            .last_used_at
            .is_some()
    })
    .await;
    store.disable_key(&marker).await.unwrap();

    // Notices arrive in commit order: once the marker's disable is seen, a notice
    // for the use would have been seen too.
    eventually("the marker's disable", || async {
        count(&StoreChange::Key(marker)) == 2
    })
    .await;
    assert_eq!(count(&StoreChange::Key(used)), 1, "only its creation");
    store.close().await.unwrap();
    observer.close().await.unwrap();
    scratch.finish().await;
}

#[tokio::test]
async fn close_flushes_uses_and_later_calls_are_unavailable() {
    let (store, scratch) = fresh().await;
    let id = store
        .create_key(NewKey::for_user("a"))
        .await
        .unwrap()
        .key
        .id();
    store.record_use(&id, SystemTime::now());

    store.close().await.unwrap();

    let err = store.lookup(&id).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    let reopened = scratch.open().await;
    let record = reopened.lookup(&id).await.unwrap().unwrap();
    assert!(record.last_used_at.is_some());
    reopened.close().await.unwrap();
    scratch.finish().await;
}

#[tokio::test]
async fn a_server_that_refuses_connections_is_unavailable_quickly() {
    // A port nothing listens on: bind one, note it, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/test");
    let options = PostgresOptions::new().acquire_timeout(Duration::from_secs(1));
    let started = Instant::now();

    let err = PostgresKeyStore::connect_with(&url, options)
        .await
        .unwrap_err();

    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(err.to_string().contains("reachable"), "{err}");
}

#[tokio::test]
async fn a_server_that_never_answers_is_unavailable_within_the_acquire_timeout() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let url = format!("postgres://postgres@127.0.0.1:{port}/test");
    let options = PostgresOptions::new().acquire_timeout(Duration::from_secs(1));
    let started = Instant::now();

    let err = PostgresKeyStore::connect_with(&url, options)
        .await
        .unwrap_err();

    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    assert!(started.elapsed() < Duration::from_secs(10));
    holder.abort();
}

#[tokio::test]
async fn a_url_that_is_not_postgres_is_refused() {
    let err = PostgresKeyStore::connect("sqlite://keys.db")
        .await
        .unwrap_err();

    assert_eq!(err.kind(), StoreErrorKind::InvalidInput);
}

#[tokio::test]
async fn the_schema_refuses_digests_of_the_wrong_size() {
    let (store, scratch) = fresh().await;
    store.create_key(NewKey::for_user("a")).await.unwrap();

    let refused = sqlx::query("UPDATE crossmodel_keys SET digest = '\\x0011'::bytea")
        .execute(store.pool())
        .await;

    assert!(refused.is_err());
    store.close().await.unwrap();
    scratch.finish().await;
}

#[tokio::test]
async fn the_listener_ends_with_the_last_clone() {
    let (store, scratch) = fresh().await;
    let console = sqlx::PgPool::connect(&scratch.url).await.unwrap();
    let listeners = || async {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
        )
        .fetch_one(&console)
        .await
        .unwrap();
        count
    };
    eventually("the listener is connected", || async {
        listeners().await == 1
    })
    .await;
    let clone = store.clone();

    drop(store);
    assert_eq!(listeners().await, 1, "a clone still holds the store");
    drop(clone);

    eventually("the listener disconnects", || async {
        listeners().await == 0
    })
    .await;
    console.close().await;
    scratch.finish().await;
}
