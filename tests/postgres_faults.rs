//! `ApiKeyLayer` over `CachedKeyStore<PostgresKeyStore>`, with the database reached
//! through a TCP proxy this test owns, cut in the middle of a load and restored.
//!
//! The server at `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`)
//! is never touched beyond a database of this test's own, dropped at the end; an
//! unreachable server fails the test.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crossmodel_auth::{
    ApiKeyLayer, CachedKeyStore, KeyFormat, KeyId, KeyManager, KeyStore, NewKey, PostgresKeyStore,
    PostgresOptions,
};
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::Layer;

use support::{Echo, spawn, with_one_char_changed, with_wrong_secret};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Requests in the load, and how many are in flight at once.
const REQUESTS: usize = 300;
const CONCURRENCY: usize = 6;

/// No request may take longer than this: the layer's 2 s deadline and a wide margin.
const REQUEST_BOUND: Duration = Duration::from_secs(10);

/// Every wait for something to happen ends within this, or the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

// ---------------------------------------------------------------------------
// A database of its own

/// A fresh database, dropped by `finish`, or on drop when the test failed.
struct Scratch {
    name: String,
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
            "crossmodel_auth_faults_{}_{}_{nanos}",
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
        Self {
            name,
            finished: false,
        }
    }

    /// The database's URL, straight to the server or through `proxy`.
    fn url(&self, proxy: Option<&Proxy>) -> String {
        let (scheme, rest) = admin_url()
            .split_once("://")
            .map(|(s, r)| (s.to_owned(), r.to_owned()))
            .unwrap();
        let (user, after_user) = rest.split_once('@').unwrap_or(("", &rest));
        let (authority, tail) = after_user.split_once('/').unwrap_or((after_user, ""));
        let query = tail
            .split_once('?')
            .map_or(String::new(), |(_, q)| format!("?{q}"));
        let authority = match proxy {
            Some(proxy) => format!("127.0.0.1:{}", proxy.port),
            None => authority.to_owned(),
        };
        let user = if user.is_empty() {
            String::new()
        } else {
            format!("{user}@")
        };
        format!("{scheme}://{user}{authority}/{}{query}", self.name)
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

/// Where the PostgreSQL server of `DATABASE_URL` listens; loopback only.
fn server_address() -> SocketAddr {
    let url = admin_url();
    let rest = url.split_once("://").unwrap().1;
    let after_user = rest.split_once('@').map_or(rest, |(_, after)| after);
    let authority = after_user.split(['/', '?']).next().unwrap();
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:5432")
    };
    let address = authority.to_socket_addrs().unwrap().next().unwrap();
    assert!(
        address.ip().is_loopback(),
        "this test proxies to loopback only"
    );
    address
}

// ---------------------------------------------------------------------------
// The proxy

/// Forwards a loopback port to the database server until cut.
struct Proxy {
    port: u16,
    open: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let streams = Arc::new(Mutex::new(Vec::new()));

        let (accepting, tracked) = (Arc::clone(&open), Arc::clone(&streams));
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                // While cut, a connection is closed as soon as it is accepted.
                if !accepting.load(Ordering::SeqCst) {
                    continue;
                }
                if let Ok(server) = TcpStream::connect(target) {
                    forward(client, server, &tracked);
                }
            }
        });
        Self {
            port,
            open,
            streams,
        }
    }

    /// Drops every connection and turns new ones away, as a dead server would.
    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Lets connections through again.
    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// Copies both ways on two threads, keeping a handle on each socket for `cut`.
fn forward(client: TcpStream, server: TcpStream, tracked: &Mutex<Vec<TcpStream>>) {
    let mut streams = tracked.lock().unwrap();
    streams.extend(client.try_clone());
    streams.extend(server.try_clone());
    drop(streams);

    for (from, to) in [(&client, &server), (&server, &client)] {
        if let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(std::net::Shutdown::Both);
            });
        }
    }
}

// ---------------------------------------------------------------------------
// Requests

/// What a request of the load presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presented {
    /// An active key of the database.
    Valid,
    /// A known id with a wrong secret (checksum valid).
    WrongSecret,
    /// A checksum-valid key no store holds.
    Unknown,
    /// A key whose checksum fails.
    Malformed,
    /// No key at all.
    Missing,
}

impl Presented {
    /// The mix of the load, by request number: 60 % valid, 10 % of each other kind.
    fn for_request(number: usize) -> Self {
        match number % 10 {
            0..=5 => Self::Valid,
            6 => Self::WrongSecret,
            7 => Self::Unknown,
            8 => Self::Malformed,
            _ => Self::Missing,
        }
    }
}

/// An answer: status and JSON body.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: Value,
}

/// `POST /v1/chat/completions` over a fresh connection, with `key` as a bearer
/// token when given.
async fn post(server: SocketAddr, key: Option<&str>) -> Reply {
    let mut stream = tokio::net::TcpStream::connect(server).await.unwrap();
    let authorization = key.map_or(String::new(), |key| {
        format!("authorization: Bearer {key}\r\n")
    });
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n{authorization}\
         content-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
    );
    stream.write_all(request.as_bytes()).await.unwrap();

    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or(Value::Null);
    Reply { status, body }
}

/// The key id a 200 from the echo service names.
fn echoed_key_id(reply: &Reply) -> Option<&str> {
    reply.body["key_id"].as_str()
}

/// Outcomes of the load, by what was presented.
#[derive(Debug, Default)]
struct Tally {
    /// (presented, status) of every request that answered in time.
    answers: Vec<(Presented, u16)>,
    /// Requests that did not answer within `REQUEST_BOUND`.
    hung: usize,
    /// 200s whose identity was not the presented key's.
    wrong_identity: usize,
}

impl Tally {
    /// `Valid 200×n 503×m, …` for every kind presented.
    fn summary(&self) -> String {
        let kinds = [
            Presented::Valid,
            Presented::WrongSecret,
            Presented::Unknown,
            Presented::Malformed,
            Presented::Missing,
        ];
        let mut parts: Vec<String> = kinds
            .iter()
            .map(|&kind| {
                let counts: Vec<String> = [200, 401, 503]
                    .iter()
                    .map(|&status| format!("{status}×{}", self.count(Some(kind), status)))
                    .collect();
                format!("{kind:?} {}", counts.join(" "))
            })
            .collect();
        parts.push(format!(
            "hung {}, wrong identity {}",
            self.hung, self.wrong_identity
        ));
        parts.join("; ")
    }

    fn count(&self, presented: Option<Presented>, status: u16) -> usize {
        self.answers
            .iter()
            .filter(|(kind, code)| *code == status && presented.is_none_or(|p| p == *kind))
            .count()
    }
}

/// The shared state of one load run.
struct Load {
    server: SocketAddr,
    /// Valid keys used from the start, so cached before the cut.
    keys: Vec<String>,
    /// Valid keys first used during or after the cut.
    late_keys: Vec<String>,
    next: AtomicUsize,
    done: AtomicUsize,
    tally: Mutex<Tally>,
}

impl Load {
    /// Sends requests until `REQUESTS` have been taken, one at a time.
    async fn worker(self: Arc<Self>) {
        loop {
            let number = self.next.fetch_add(1, Ordering::SeqCst);
            if number >= REQUESTS {
                return;
            }
            self.one(number).await;
            self.done.fetch_add(1, Ordering::SeqCst);
            // Spread the load over the cut instead of sending it all at once.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn one(&self, number: usize) {
        let presented = Presented::for_request(number);
        // From the cut on, every tenth request presents a key never used before:
        // while the database is away it cannot be verified, and must get a 503.
        let valid = if number >= REQUESTS / 3 && number % 10 == 0 {
            &self.late_keys[number / 10 % self.late_keys.len()]
        } else {
            &self.keys[number % self.keys.len()]
        };
        let key = match presented {
            Presented::Valid => Some(valid.clone()),
            Presented::WrongSecret => Some(with_wrong_secret(valid)),
            Presented::Unknown => Some(KeyFormat::public().generate().unwrap().expose().to_owned()),
            Presented::Malformed => Some(with_one_char_changed(valid)),
            Presented::Missing => None,
        };

        let answer = tokio::time::timeout(REQUEST_BOUND, post(self.server, key.as_deref())).await;
        let mut tally = self.tally.lock().unwrap();
        let Ok(reply) = answer else {
            tally.hung += 1;
            return;
        };
        if reply.status == 200 && echoed_key_id(&reply) != Some(&valid[3..15]) {
            tally.wrong_identity += 1;
        }
        tally.answers.push((presented, reply.status));
    }
}

/// Waits until `load` has finished `count` requests.
async fn until_done(load: &Load, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while load.done.load(Ordering::SeqCst) < count {
        assert!(
            Instant::now() < deadline,
            "the load stalled before {count} requests"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `check` until it holds, for at most `PATIENCE`.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {PATIENCE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Backends of the scratch database whose last statement was a LISTEN.
async fn listening_backends(direct: &PgPool, database: &str) -> HashSet<i32> {
    let rows: Vec<(i32,)> = sqlx::query_as(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND query ILIKE 'LISTEN%'",
    )
    .bind(database)
    .fetch_all(direct)
    .await
    .unwrap();
    rows.into_iter().map(|(pid,)| pid).collect()
}

// ---------------------------------------------------------------------------
// The test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_database_costs_503s_never_a_wrong_200_and_heals_with_revocations_working() {
    let scratch = Scratch::new().await;
    let direct = PostgresKeyStore::connect(&scratch.url(None)).await.unwrap();
    // Plain SQL on a direct connection, as an operator's console would run it.
    let sql = direct.pool().clone();
    let keys = create_keys(&direct, 12).await;
    let late_keys = create_keys(&direct, REQUESTS / 10).await;

    let proxy = Proxy::start(server_address());
    let options = PostgresOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .reconnect_delay(Duration::from_millis(200));
    let proxied = PostgresKeyStore::connect_with(&scratch.url(Some(&proxy)), options)
        .await
        .unwrap();
    let cache = CachedKeyStore::new(proxied).ttl(Duration::from_secs(300));
    assert!(cache.is_watching_changes());
    let server = spawn(ApiKeyLayer::new(cache).layer(Echo::default())).await;
    eventually("the store's listener is subscribed", || async {
        !listening_backends(&sql, &scratch.name).await.is_empty()
    })
    .await;
    let before_cut = listening_backends(&sql, &scratch.name).await;

    let load = run_load_with_a_cut(server, keys.clone(), late_keys, &proxy).await;
    assert_only_allowed_outcomes(&load.tally.lock().unwrap());

    // Nothing was restarted: a key the layer has never seen verifies.
    let fresh = create_keys(&direct, 1).await.remove(0);
    eventually("a new key verifies once the database is back", || async {
        post(server, Some(&fresh)).await.status == 200
    })
    .await;

    // The listener is back on a connection of its own, not one from before.
    eventually("the listener subscribes again", || async {
        let now = listening_backends(&sql, &scratch.name).await;
        now.difference(&before_cut).next().is_some()
    })
    .await;
    // Its reconnection forgets every cached key once; let that pass, then cache
    // the key again so that only a notification can evict it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let revoked = &keys[0];
    assert_eq!(post(server, Some(revoked)).await.status, 200);

    sqlx::query("UPDATE crossmodel_keys SET state = 'disabled' WHERE id = $1")
        .bind(&revoked[3..15])
        .execute(&sql)
        .await
        .unwrap();
    eventually(
        "a key disabled by SQL is refused (5-minute cache TTL)",
        || async {
            let reply = post(server, Some(revoked)).await;
            reply.status == 401 && reply.body["error"]["code"] == "api_key_inactive"
        },
    )
    .await;

    direct.close().await.unwrap();
    scratch.finish().await;
}

#[tokio::test]
async fn a_replica_cut_off_from_the_database_stops_accepting_a_key_revoked_elsewhere() {
    let scratch = Scratch::new().await;
    let direct = PostgresKeyStore::connect(&scratch.url(None)).await.unwrap();
    let sql = direct.pool().clone();
    let key = create_keys(&direct, 1).await.remove(0);

    let proxy = Proxy::start(server_address());
    let options = PostgresOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .reconnect_delay(Duration::from_millis(200));
    let proxied = PostgresKeyStore::connect_with(&scratch.url(Some(&proxy)), options)
        .await
        .unwrap();
    // A 5-minute TTL: only the store's change feed can make the cache let go.
    let cache = CachedKeyStore::new(proxied).ttl(Duration::from_secs(300));
    let server = spawn(ApiKeyLayer::new(cache.clone()).layer(Echo::default())).await;
    eventually("the store's listener is subscribed", || async {
        !listening_backends(&sql, &scratch.name).await.is_empty()
    })
    .await;
    let id = KeyId::parse(&key[3..15]).unwrap();
    eventually("the key is cached", || async {
        assert_eq!(post(server, Some(&key)).await.status, 200);
        matches!(cache.lookup_now(&id), Some(Ok(Some(_))))
    })
    .await;

    // This replica loses the database; another program disables the key.
    proxy.cut();
    sqlx::query("UPDATE crossmodel_keys SET state = 'disabled' WHERE id = $1")
        .bind(&key[3..15])
        .execute(&sql)
        .await
        .unwrap();

    eventually(
        "the cut-off replica stops accepting the key (503, failing closed)",
        || async { post(server, Some(&key)).await.status == 503 },
    )
    .await;
    proxy.restore();
    eventually(
        "once back, the replica refuses the disabled key",
        || async {
            let reply = post(server, Some(&key)).await;
            reply.status == 401 && reply.body["error"]["code"] == "api_key_inactive"
        },
    )
    .await;

    direct.close().await.unwrap();
    scratch.finish().await;
}

async fn create_keys(store: &PostgresKeyStore, count: usize) -> Vec<String> {
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        let created = store.create_key(NewKey::for_user("alice")).await.unwrap();
        keys.push(created.key.expose().to_owned());
    }
    keys
}

/// Runs the load; the proxy is cut after a third of it and restored after two.
async fn run_load_with_a_cut(
    server: SocketAddr,
    keys: Vec<String>,
    late_keys: Vec<String>,
    proxy: &Proxy,
) -> Arc<Load> {
    let load = Arc::new(Load {
        server,
        keys,
        late_keys,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        tally: Mutex::new(Tally::default()),
    });
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| tokio::spawn(Arc::clone(&load).worker()))
        .collect();

    until_done(&load, REQUESTS / 3).await;
    proxy.cut();
    until_done(&load, 2 * REQUESTS / 3).await;
    proxy.restore();
    for worker in workers {
        worker.await.unwrap();
    }
    load
}

fn assert_only_allowed_outcomes(tally: &Tally) {
    let summary = tally.summary();
    println!("outcomes: {summary}");
    assert_eq!(
        tally.hung, 0,
        "requests hung past {REQUEST_BOUND:?}: {summary}"
    );
    assert_eq!(tally.answers.len(), REQUESTS, "{summary}");
    assert_eq!(
        tally.wrong_identity, 0,
        "a 200 named another key: {summary}"
    );

    for (presented, status) in &tally.answers {
        assert!(
            [200, 401, 503].contains(status),
            "{presented:?} got {status}"
        );
        if *presented != Presented::Valid {
            assert_ne!(*status, 200, "{presented:?} was let through");
        }
    }
    // Keys the checksum refuses, and requests with no key, never reach the store.
    for presented in [Presented::Malformed, Presented::Missing] {
        assert_eq!(
            tally.count(Some(presented), 503),
            0,
            "{presented:?}: {summary}"
        );
    }
    assert_eq!(tally.count(Some(Presented::Valid), 401), 0, "{summary}");

    // The cut was felt, and the load was served before and after it.
    assert!(tally.count(Some(Presented::Unknown), 503) > 0, "{summary}");
    assert!(
        tally.count(Some(Presented::Valid), 503) > 0,
        "valid keys new to the cache must get 503 during the cut: {summary}"
    );
    assert!(tally.count(Some(Presented::Valid), 200) > 0, "{summary}");
}
