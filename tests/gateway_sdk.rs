//! The official SDKs against the example gateway: openai and anthropic for Python
//! (current and previous major versions) and openai for Node.js.
//!
//! The SDKs are installed, pinned, under target/sdk/ by `scripts/sdk-env`, which
//! `scripts/test` runs first. Without them these tests fail; they never skip.
#![allow(clippy::unwrap_used)]

mod gateway_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gateway_support::{Server, TempDir, cli, create_key};
use serde_json::json;

/// A server with one key in each state the SDKs must see refused.
struct Fixture {
    _dir: TempDir,
    server: Server,
    keys: serde_json::Value,
}

fn fixture() -> Fixture {
    let dir = TempDir::new();
    let db = dir.sqlite_url();
    let server = Server::start(dir.path(), Some(&db));
    let key = |user: &str| create_key(dir.path(), &db, user);
    let run = |args: &[&str]| assert_eq!(cli(dir.path(), &db, args).code, Some(0), "{args:?}");

    let keys = json!({
        "active": key("alice"),
        "disabled": key("alice"),
        "revoked": key("alice"),
        "deleted": key("alice"),
        "user_disabled": key("mallory"),
    });
    run(&["keys", "disable", keys["disabled"].as_str().unwrap()]);
    run(&["keys", "revoke", keys["revoked"].as_str().unwrap()]);
    run(&["keys", "delete", keys["deleted"].as_str().unwrap()]);
    run(&["users", "disable", "mallory"]);

    Fixture {
        _dir: dir,
        server,
        keys,
    }
}

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("sdk")
}

/// The tool at `path`, or a failure that says how to install it.
fn installed(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run scripts/sdk-env (scripts/test runs it) to install the SDKs",
        path.display()
    );
    path
}

/// Runs `program` with only the environment given: no API key or base URL of the
/// machine's own can leak into the SDKs.
fn run_isolated(mut command: Command, env: &[(&str, &str)]) -> Output {
    command.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command.envs(env.iter().copied()).output().unwrap()
}

fn assert_passed(what: &str, output: &Output) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{what} failed:\n{stdout}\n{stderr}"
    );
    println!("{what}:\n{stdout}");
}

fn python_sdks_work(venv: &str) {
    let python = installed(sdk_dir().join(venv).join("bin").join("python"));
    let fixture = fixture();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/python_sdks.py");

    let mut command = Command::new(python);
    command.arg(script);
    let keys = fixture.keys.to_string();
    let output = run_isolated(
        command,
        &[
            ("GATEWAY_URL", &fixture.server.url()),
            ("GATEWAY_KEYS", &keys),
        ],
    );

    assert_passed(venv, &output);
    let log = fixture.server.log();
    for key in fixture.keys.as_object().unwrap().values() {
        let secret = &key.as_str().unwrap()[15..];
        assert!(!log.contains(secret), "a secret reached the log");
    }
}

#[test]
fn current_python_sdks_work_and_see_every_refusal() {
    python_sdks_work("py-current");
}

#[test]
fn previous_python_sdks_work_and_see_every_refusal() {
    python_sdks_work("py-previous");
}

#[test]
fn the_guides_typescript_snippet_works_with_the_openai_npm_package() {
    let node_dir = sdk_dir().join("node");
    installed(node_dir.join("node_modules").join("openai"));
    let fixture = fixture();

    // Node resolves `openai` from the script's own directory.
    let script = node_dir.join("reference_snippet.mjs");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/reference_snippet.mjs");
    std::fs::copy(source, &script).unwrap();

    let mut command = Command::new("node");
    command.arg(&script);
    let base = format!("{}/v1", fixture.server.url());
    let output = run_isolated(
        command,
        &[
            (
                "CROSSMODEL_API_KEY",
                fixture.keys["active"].as_str().unwrap(),
            ),
            (
                "GATEWAY_REVOKED_KEY",
                fixture.keys["revoked"].as_str().unwrap(),
            ),
            ("GATEWAY_BASE_URL", &base),
        ],
    );

    assert_passed("node openai", &output);
}
