//! The official Python SDKs against the example gateway while its key store is
//! away: each raises its own server-error class for the 503, retries it twice as
//! `retry-after: 1` invites, and works again once the database is back.
//!
//! Needs the PostgreSQL server at `DATABASE_URL` and the SDK virtualenvs that
//! `scripts/sdk-env` installs under target/sdk/ (`scripts/test` provides both);
//! fails, never skips, without them.
#![allow(clippy::unwrap_used)]

mod gateway_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use gateway_support::{
    DEADLINE, Proxy, ScratchDatabase, Server, TempDir, create_key, eventually, http,
};
use serde_json::json;

/// One attempt and the two retries `max_retries=2` allows.
const ATTEMPTS_PER_CALL: usize = 3;

/// A gateway that reaches its database only through a proxy the test can cut.
/// Fields drop in order: the server stops before its database goes.
struct Fixture {
    server: Server,
    proxy: Proxy,
    database: ScratchDatabase,
    dir: TempDir,
}

impl Fixture {
    fn start() -> Self {
        let dir = TempDir::new();
        let database = ScratchDatabase::create();
        let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap());
        let server = Server::start(dir.path(), Some(&database.url_through(proxy.port)));

        // A key that works proves the server really talks through the proxy.
        let key = create_key(dir.path(), &database.url, "alice");
        assert_eq!(models_status(&server, &key), 200, "{}", server.log());
        Self {
            server,
            proxy,
            database,
            dir,
        }
    }

    /// A key written straight to the database, which the server has never seen.
    fn unseen_key(&self, user: &str) -> String {
        create_key(self.dir.path(), &self.database.url, user)
    }

    /// Cuts the proxy and waits until a lookup at the server fails for it.
    fn lose_database(&self) {
        self.proxy.cut();

        let probe = self.unseen_key("probe");
        eventually("an unseen key gets a 503 once the database is away", || {
            models_status(&self.server, &probe) == 503
        });
    }

    /// The 503 count of `path` once it reaches `expected`, or after [`DEADLINE`]:
    /// the log is read by another thread, so its last lines may still be on the way.
    fn wait_for_unavailable(&self, path: &str, expected: usize) -> usize {
        let start = Instant::now();
        loop {
            let count = self.unavailable_count(path);
            if count >= expected || start.elapsed() > DEADLINE {
                return count;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many requests to `path` the server has answered with a 503 so far.
    fn unavailable_count(&self, path: &str) -> usize {
        self.server
            .log()
            .lines()
            .filter(|line| logged_path(line) == Some(path) && line.contains(" status=503 "))
            .count()
    }
}

fn models_status(server: &Server, key: &str) -> u16 {
    let bearer = format!("Bearer {key}");
    http(
        server.address,
        "GET",
        "/v1/models",
        &[("authorization", &bearer)],
        "",
    )
    .status
}

/// The `path="…"` field of a request-log line's span.
fn logged_path(line: &str) -> Option<&str> {
    let rest = line.split(" path=\"").nth(1)?;
    rest.split('"').next()
}

/// The Python interpreter of SDK virtualenv `venv`, or a failure that says how to
/// install it.
fn python(venv: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/sdk")
        .join(venv)
        .join("bin/python");
    assert!(
        path.exists(),
        "{} is missing: run scripts/sdk-env (scripts/test runs it) to install the SDKs",
        path.display()
    );
    path
}

/// Runs one step of tests/sdk/python_outage.py with only the environment it needs,
/// so no API key or base URL of the machine's own reaches the SDKs.
fn run_step(python: &Path, server: &Server, keys: &str, step: &[&str]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/python_outage.py");
    let mut command = Command::new(python);
    command.arg(script).args(step).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command
        .env("GATEWAY_URL", server.url())
        .env("GATEWAY_KEYS", keys)
        .output()
        .unwrap()
}

fn assert_step_passed(venv: &str, step: &[&str], output: &Output, server: &Server) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{venv} {step:?} failed:\n{stdout}\n{stderr}\nserver log:\n{}",
        server.log()
    );
    print!("{venv} {step:?}:\n{stdout}");
}

fn sdks_see_the_outage_retry_it_and_recover(venv: &str) {
    let python = python(venv);
    let fixture = Fixture::start();
    fixture.lose_database();

    let keys = json!({
        "openai": fixture.unseen_key("alice"),
        "anthropic": fixture.unseen_key("alice"),
    });
    let keys_json = keys.to_string();
    let server = &fixture.server;

    for (sdk, path) in [
        ("openai", "/v1/chat/completions"),
        ("anthropic", "/v1/messages"),
    ] {
        let before = fixture.unavailable_count(path);
        let step = ["outage", sdk];
        let output = run_step(&python, server, &keys_json, &step);
        assert_step_passed(venv, &step, &output, server);

        let seen = fixture.wait_for_unavailable(path, before + ATTEMPTS_PER_CALL) - before;
        assert_eq!(
            seen,
            ATTEMPTS_PER_CALL,
            "{sdk}: 503s on {path} for one call with max_retries=2\n{}",
            server.log()
        );
        println!("{venv} {sdk}: {seen} attempts answered 503 on {path}");
    }

    fixture.proxy.restore();
    let step = ["restored"];
    let output = run_step(&python, server, &keys_json, &step);
    assert_step_passed(venv, &step, &output, server);

    let log = server.log();
    assert!(!log.contains("panicked"), "{log}");
    for key in keys.as_object().unwrap().values() {
        let secret = &key.as_str().unwrap()[15..];
        assert!(!log.contains(secret), "a secret reached the log");
    }
}

#[test]
fn current_python_sdks_retry_a_key_store_outage_and_recover() {
    sdks_see_the_outage_retry_it_and_recover("py-current");
}

#[test]
fn previous_python_sdks_retry_a_key_store_outage_and_recover() {
    sdks_see_the_outage_retry_it_and_recover("py-previous");
}
