//! How long a key change takes to reach another replica: a key is disabled on one
//! side, and the clock runs until each replica's `Verifier` answers "inactive" for
//! it, with its cache (`CachedKeyStore`, 5-minute TTL) dropped only by the store's
//! change feed.
//!
//! Cases:
//! - PostgreSQL, two `PostgresKeyStore`s with pools of their own (replicas A and
//!   B) in a database this bench creates and drops: the key disabled through A's
//!   `KeyManager`, then by a plain SQL `UPDATE` from a third connection (another
//!   program writing the table). The feed is LISTEN/NOTIFY.
//! - SQLite, two `SqliteKeyStore`s opened on one file in a temporary directory:
//!   two pools in one process, standing in for two processes. The feed is each
//!   store reading the file's change counter every 250 ms.
//!
//! Each run creates a key, waits until both feeds have reported its creation,
//! caches it in both replicas and keeps it cached through a random 0–250 ms pause
//! with no notice arriving (so the change lands at a random point of SQLite's poll
//! cycle), then starts the clock, makes the change, and asks both replicas every
//! 1 ms until they reject the key as inactive, for at most 10 s (a timeout is a
//! failure). Rows: `write` is the change call itself; `A` and `B` the time until
//! that replica rejects the key, from the start of the change. When A makes the
//! change, A is the floor: its own `KeyManager` drops its entry at once.
//!
//! 100 runs per case, fewer if a case passes a minute. PostgreSQL comes from
//! `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`, loopback
//! only); when it is unreachable only the SQLite case runs.
//!
//! Run: `cargo bench --all-features --bench revocation`

use std::error::Error;
use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crossmodel_auth::{
    CachedKeyStore, CreatedKey, KeyId, KeyManager, KeyStore, NewKey, PostgresKeyStore,
    RejectionKind, SqliteKeyStore, Verifier,
};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

type BenchResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Runs per case, unless the case passes `CASE_BUDGET` first.
const RUNS: usize = 100;

const CASE_BUDGET: Duration = Duration::from_secs(60);

/// How often the replicas are asked whether they reject the key yet.
const POLL: Duration = Duration::from_millis(1);

/// A change not seen within this long is a failure.
const CAP: Duration = Duration::from_secs(10);

/// Long enough that only the change feed can drop a cached key during a run.
const TTL: Duration = Duration::from_secs(300);

/// The longest random pause before a change: SQLite's default poll interval.
const MAX_PAUSE_MS: u64 = 250;

/// A case stops after this many runs that could not be set up or changed.
const MAX_ERRORS: usize = 3;

#[tokio::main]
async fn main() {
    let mut reports = Vec::new();
    let admin = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());

    match postgres_cases(&admin).await {
        Ok(found) => reports.extend(found),
        Err(error) => println!("PostgreSQL cases not run: {error}"),
    }
    match sqlite_case().await {
        Ok(report) => reports.push(report),
        Err(error) => println!("SQLite case not run: {error}"),
    }

    print_table(&reports);
}

/// One replica: a 5-minute cache over its own store, the verifier a layer would
/// use, and a count of the change notices its store has passed on.
struct Replica<S> {
    cache: CachedKeyStore<S>,
    verifier: Verifier<CachedKeyStore<S>>,
    notices: Arc<AtomicU64>,
}

impl<S: KeyStore + KeyManager> Replica<S> {
    fn new(store: S) -> BenchResult<Self> {
        let cache = CachedKeyStore::new(store).ttl(TTL);
        if !cache.is_watching_changes() {
            return Err("the store reports no changes, so there is nothing to measure".into());
        }

        // Registered after the cache's own watcher, so a counted notice has
        // already been applied to the cache.
        let notices = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&notices);
        cache.get_ref().watch_changes(Box::new(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            true
        }));
        let verifier = Verifier::new(cache.clone());
        Ok(Self {
            cache,
            verifier,
            notices,
        })
    }

    fn notices(&self) -> u64 {
        self.notices.load(Ordering::SeqCst)
    }

    /// Whether the key is in this replica's cache and accepted.
    async fn holds(&self, created: &CreatedKey) -> bool {
        self.cache.lookup_now(&created.key.id()).is_some()
            && self.verifier.verify(created.key.expose()).await.is_ok()
    }

    async fn rejects_as_inactive(&self, created: &CreatedKey) -> bool {
        match self.verifier.verify(created.key.expose()).await {
            Err(rejection) => rejection.kind() == RejectionKind::ApiKeyInactive,
            Ok(_) => false,
        }
    }
}

/// Who disables the key.
enum Writer {
    /// Replica A's `KeyManager` (through its cache, as a console would).
    ReplicaA,
    /// Another program: plain SQL on a connection of its own.
    Sql(PgConnection),
}

impl Writer {
    async fn disable<S: KeyStore + KeyManager>(
        &mut self,
        a: &Replica<S>,
        id: &KeyId,
    ) -> BenchResult<()> {
        match self {
            Self::ReplicaA => a.cache.disable_key(id).await?,
            Self::Sql(connection) => {
                let done =
                    sqlx::query("UPDATE crossmodel_keys SET state = 'disabled' WHERE id = $1")
                        .bind(id.as_str())
                        .execute(connection)
                        .await?;
                if done.rows_affected() != 1 {
                    return Err("the SQL update found no key to disable".into());
                }
            }
        }
        Ok(())
    }
}

/// One run's times, all from the start of the change; `None` for a timeout.
struct Sample {
    write: Duration,
    a: Option<Duration>,
    b: Option<Duration>,
}

/// The times of one row of the table.
#[derive(Default)]
struct Series {
    times: Vec<Duration>,
    failed: usize,
}

impl Series {
    fn add(&mut self, time: Option<Duration>) {
        match time {
            Some(time) => self.times.push(time),
            None => self.failed += 1,
        }
    }
}

struct CaseReport {
    name: String,
    write: Series,
    a: Series,
    b: Series,
    a_label: &'static str,
    errors: usize,
    first_error: Option<String>,
    elapsed: Duration,
}

/// Both PostgreSQL cases in a database of their own, dropped afterwards whatever
/// happened.
async fn postgres_cases(admin: &str) -> BenchResult<Vec<CaseReport>> {
    let host = loopback_host(admin)?;
    let database = Database::create(admin)
        .await
        .map_err(|error| format!("PostgreSQL at {host} is unreachable or refused: {error}"))?;

    let ran = run_postgres_cases(&database.url).await;
    let dropped = database.drop_now().await;
    let reports = ran?;
    dropped?;
    Ok(reports)
}

async fn run_postgres_cases(url: &str) -> BenchResult<Vec<CaseReport>> {
    let a = Replica::new(PostgresKeyStore::connect(url).await?)?;
    let b = Replica::new(PostgresKeyStore::connect(url).await?)?;
    let mut rng = Rng::seeded();

    let through_a = run_case(
        "PostgreSQL, disable through A's KeyManager",
        "A (writer's own cache)",
        (&a, &b),
        &mut Writer::ReplicaA,
        &mut rng,
    )
    .await;
    let mut console = Writer::Sql(PgConnection::connect(url).await?);
    let plain_sql = run_case(
        "PostgreSQL, plain SQL UPDATE from a third connection",
        "A (another replica)",
        (&a, &b),
        &mut console,
        &mut rng,
    )
    .await;

    if let Writer::Sql(connection) = console {
        connection.close().await?;
    }
    a.cache.get_ref().close().await?;
    b.cache.get_ref().close().await?;
    Ok(vec![through_a, plain_sql])
}

/// The SQLite case on a file in a temporary directory, removed afterwards.
async fn sqlite_case() -> BenchResult<CaseReport> {
    let dir = TempDir::create()?;
    let url = format!("sqlite://{}", dir.path.join("keys.db").display());
    let a = Replica::new(SqliteKeyStore::open(&url).await?)?;
    let b = Replica::new(SqliteKeyStore::open(&url).await?)?;

    let report = run_case(
        "SQLite, one file, two pools (for two processes), disable through A",
        "A (writer's own cache)",
        (&a, &b),
        &mut Writer::ReplicaA,
        &mut Rng::seeded(),
    )
    .await;

    a.cache.get_ref().close().await?;
    b.cache.get_ref().close().await?;
    Ok(report)
}

async fn run_case<S: KeyStore + KeyManager>(
    name: &str,
    a_label: &'static str,
    replicas: (&Replica<S>, &Replica<S>),
    writer: &mut Writer,
    rng: &mut Rng,
) -> CaseReport {
    let started = Instant::now();
    let mut report = CaseReport {
        name: name.to_owned(),
        write: Series::default(),
        a: Series::default(),
        b: Series::default(),
        a_label,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
    };

    for _ in 0..RUNS {
        if started.elapsed() > CASE_BUDGET || report.errors >= MAX_ERRORS {
            break;
        }
        match run_once(replicas, writer, rng).await {
            Ok(sample) => {
                report.write.add(Some(sample.write));
                report.a.add(sample.a);
                report.b.add(sample.b);
            }
            Err(error) => {
                report.errors += 1;
                report.first_error.get_or_insert_with(|| error.to_string());
            }
        }
    }
    report.elapsed = started.elapsed();
    eprintln!(
        "{name}: {} runs in {:.1} s",
        report.write.times.len(),
        report.elapsed.as_secs_f64()
    );
    report
}

/// Creates a key, caches it in both replicas, disables it and times how long
/// each replica takes to reject it.
async fn run_once<S: KeyStore + KeyManager>(
    (a, b): (&Replica<S>, &Replica<S>),
    writer: &mut Writer,
    rng: &mut Rng,
) -> BenchResult<Sample> {
    let before = [a.notices(), b.notices()];
    let created = a.cache.create_key(NewKey::for_user("bench")).await?;
    let id = created.key.id();
    warm([a, b], &created, before, rng).await?;

    let start = Instant::now();
    writer.disable(a, &id).await?;
    let write = start.elapsed();

    let (mut seen_a, mut seen_b) = (None, None);
    while start.elapsed() < CAP {
        if seen_b.is_none() && b.rejects_as_inactive(&created).await {
            seen_b = Some(start.elapsed());
        }
        if seen_a.is_none() && a.rejects_as_inactive(&created).await {
            seen_a = Some(start.elapsed());
        }
        if seen_a.is_some() && seen_b.is_some() {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(Sample {
        write,
        a: seen_a,
        b: seen_b,
    })
}

/// Waits until both feeds have reported the key's creation (a later notice
/// would empty a cache mid-run and pass for the change arriving), then caches
/// the key in both replicas and checks that it stays cached, with no notice
/// arriving, through a random pause.
async fn warm<S: KeyStore + KeyManager>(
    replicas: [&Replica<S>; 2],
    created: &CreatedKey,
    before: [u64; 2],
    rng: &mut Rng,
) -> BenchResult<()> {
    let deadline = Instant::now() + CAP;
    for (replica, before) in replicas.into_iter().zip(before) {
        let reported = wait_until(deadline, || async { replica.notices() > before }).await;
        if !reported {
            return Err("a change feed did not report the key's creation within 10 s".into());
        }
    }

    while Instant::now() < deadline {
        let marks = replicas.map(Replica::notices);
        for replica in replicas {
            replica.cache.lookup(&created.key.id()).await?;
        }

        tokio::time::sleep(Duration::from_millis(rng.below(MAX_PAUSE_MS))).await;
        let mut quiet = true;
        for (replica, mark) in replicas.into_iter().zip(marks) {
            quiet &= replica.notices() == mark && replica.holds(created).await;
        }
        if quiet {
            return Ok(());
        }
    }
    Err("the key did not stay cached through a pause within 10 s".into())
}

/// Polls `check` every millisecond until it holds or `deadline` passes.
async fn wait_until<F, Fut>(deadline: Instant, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

fn print_table(reports: &[CaseReport]) {
    println!();
    println!("| case | seen by | runs | failed | min ms | median ms | p90 ms | p99 ms | max ms |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for report in reports {
        let rows = [
            ("write returns", &report.write),
            (report.a_label, &report.a),
            ("B (other replica)", &report.b),
        ];
        for (label, series) in rows {
            print_row(&report.name, label, series);
        }
    }
    println!();

    for report in reports {
        if let Some(error) = &report.first_error {
            println!(
                "{}: {} run(s) could not be set up or changed; first error: {error}",
                report.name, report.errors
            );
        }
    }
}

fn print_row(case: &str, label: &str, series: &Series) {
    let mut times = series.times.clone();
    times.sort();
    let runs = times.len() + series.failed;

    let cells = if times.is_empty() {
        ["—"; 5].map(str::to_owned)
    } else {
        let last = times.len() - 1;
        [0.0, 50.0, 90.0, 99.0, 100.0].map(|p| millis(times[rank(p, times.len()).min(last)]))
    };
    println!(
        "| {case} | {label} | {runs} | {} | {} |",
        series.failed,
        cells.join(" | ")
    );
}

/// The nearest-rank index of percentile `p` among `len` sorted values.
fn rank(p: f64, len: usize) -> usize {
    let rank = (p / 100.0 * len as f64).ceil() as usize;
    rank.saturating_sub(1)
}

fn millis(time: Duration) -> String {
    format!("{:.2}", time.as_secs_f64() * 1000.0)
}

/// The host of a PostgreSQL URL, if it is this machine.
fn loopback_host(url: &str) -> BenchResult<String> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|error| format!("DATABASE_URL is not a PostgreSQL URL: {error}"))?;
    let host = options.get_host();

    let loopback = matches!(host, "127.0.0.1" | "::1" | "[::1]" | "localhost");
    if !loopback {
        return Err(format!(
            "DATABASE_URL names host {host}; this bench connects to 127.0.0.1 or ::1 only"
        )
        .into());
    }
    Ok(format!("{host}:{}", options.get_port()))
}

/// A database of the bench's own, dropped by `drop_now`, or on drop if the bench
/// failed before.
struct Database {
    admin: String,
    name: String,
    url: String,
    dropped: bool,
}

impl Database {
    async fn create(admin: &str) -> BenchResult<Self> {
        let name = format!(
            "crossmodel_auth_bench_revocation_{}_{}",
            std::process::id(),
            nanos()
        );
        let mut connection = PgConnection::connect(admin).await?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut connection)
            .await?;
        connection.close().await?;

        let (base, query) = match admin.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (admin, String::new()),
        };
        let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
        Ok(Self {
            admin: admin.to_owned(),
            url: format!("{server}/{name}{query}"),
            name,
            dropped: false,
        })
    }

    async fn drop_now(mut self) -> BenchResult<()> {
        self.dropped = true;
        drop_database(&self.admin, &self.name).await
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // Reached while unwinding inside the bench's runtime: drop the database
        // from a thread with a runtime of its own.
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(drop_database(&admin, &name))
        });
        if let Ok(Err(error)) = dropped.join() {
            eprintln!("could not drop database {}: {error}", self.name);
        }
    }
}

async fn drop_database(admin: &str, name: &str) -> BenchResult<()> {
    let mut connection = PgConnection::connect(admin).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut connection)
        .await?;
    connection.close().await?;
    Ok(())
}

/// A directory of the bench's own under the system's temporary directory,
/// removed on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn create() -> BenchResult<Self> {
        let name = format!(
            "crossmodel-auth-bench-revocation-{}-{}",
            std::process::id(),
            nanos()
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path)?;
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            eprintln!("could not remove {}: {error}", self.path.display());
        }
    }
}

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos())
}

/// xorshift64: enough to spread pauses over the poll cycle.
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        // Any odd seed works; the clock makes runs differ.
        Self((nanos() as u64) | 1)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}
