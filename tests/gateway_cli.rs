//! The example gateway's command line and server, run as a user runs them.
#![allow(clippy::unwrap_used)]

mod gateway_support;

use gateway_support::{Server, TempDir, cli, create_key, eventually, http, is_key};
use serde_json::Value;

fn models_status(server: &Server, key: &str) -> (u16, Value) {
    let bearer = format!("Bearer {key}");
    let reply = http(
        server.address,
        "GET",
        "/v1/models",
        &[("authorization", &bearer)],
        "",
    );
    let body = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
    (reply.status, body)
}

fn code_of(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

fn key_rows(dir: &TempDir, db: &str) -> Vec<Value> {
    let run = cli(dir.path(), db, &["keys", "list", "--json"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    serde_json::from_str::<Value>(&run.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn the_start_that_creates_the_database_prints_one_key_and_later_starts_none() {
    let dir = TempDir::new();

    // No --db and no CROSSMODEL_DB: sqlite://gateway.db in the working directory.
    let server = Server::start(dir.path(), None);
    eventually("the first key is printed", || {
        server.stdout().lines().count() == 1
    });
    let key = server.stdout().trim().to_owned();

    assert!(is_key(&key), "standard output holds the key alone");
    assert!(dir.path().join("gateway.db").exists());
    assert!(server.log().contains("will not be shown again"));
    assert_eq!(models_status(&server, &key).0, 200);
    assert!(!server.log().contains(&key), "the key reached the log");
    assert_eq!(
        server.terminate().code(),
        Some(0),
        "SIGTERM ends the server cleanly"
    );

    let again = Server::start(dir.path(), None);
    assert_eq!(
        models_status(&again, &key).0,
        200,
        "the key survives a restart"
    );
    assert_eq!(again.stdout(), "", "a later start prints no key");
    let users = cli(dir.path(), &dir.sqlite_url(), &["users", "list", "--json"]);
    assert!(users.stdout.contains("\"default\""), "{}", users.stdout);
}

#[test]
fn keys_create_prints_the_key_alone_and_list_never_shows_a_secret() {
    let dir = TempDir::new();
    let db = dir.sqlite_url();

    let run = cli(
        dir.path(),
        &db,
        &[
            "keys",
            "create",
            "--user",
            "alice",
            "--name",
            "laptop",
            "--expires-in",
            "30d",
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let key = run.stdout.strip_suffix('\n').unwrap();
    assert!(is_key(key), "stdout is the key alone: {:?}", run.stdout);
    assert!(!run.stderr.contains(key));
    let id = &key[3..15];
    assert!(run.stderr.contains(id), "stderr names the key id");

    let rows = key_rows(&dir, &db);
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row["id"], id);
    assert_eq!(row["name"], "laptop");
    assert_eq!(row["user"], "alice");
    assert_eq!(row["state"], "active");
    assert!(row["expires_at"].as_str().unwrap().ends_with('Z'));
    assert!(row["last_used_at"].is_null());

    let table = cli(dir.path(), &db, &["keys", "list"]);
    assert_eq!(table.code, Some(0));
    assert!(table.stdout.starts_with("ID"), "{}", table.stdout);
    assert!(table.stdout.contains("laptop") && table.stdout.contains("alice"));
    for output in [&table.stdout, &table.stderr] {
        assert!(!output.contains(&key[16..]), "a listing shows the secret");
    }
}

#[test]
fn key_commands_take_an_id_or_a_key_and_exit_as_documented() {
    let dir = TempDir::new();
    let db = dir.sqlite_url();
    let key = create_key(dir.path(), &db, "alice");
    let id = key[3..15].to_owned();
    let state = || key_rows(&dir, &db)[0]["state"].as_str().unwrap().to_owned();

    for (args, expected) in [
        (vec!["keys", "disable", id.as_str()], "disabled"),
        (vec!["keys", "disable", id.as_str()], "disabled"),
        (vec!["keys", "enable", key.as_str()], "active"),
        (vec!["keys", "revoke", key.as_str()], "revoked"),
        (vec!["keys", "revoke", id.as_str()], "revoked"),
    ] {
        let run = cli(dir.path(), &db, &args);
        assert_eq!(run.code, Some(0), "{args:?}: {}", run.stderr);
        assert_eq!(state(), expected, "after {args:?}");
    }

    let refused = cli(dir.path(), &db, &["keys", "enable", &id]);
    assert_eq!(refused.code, Some(1), "enabling a revoked key fails");
    assert_eq!(refused.stderr.lines().count(), 1, "{}", refused.stderr);
    assert_eq!(state(), "revoked");

    assert_eq!(
        cli(dir.path(), &db, &["keys", "delete", &key]).code,
        Some(0)
    );
    assert!(key_rows(&dir, &db).is_empty());
    let gone = cli(dir.path(), &db, &["keys", "delete", &id]);
    assert_eq!(gone.code, Some(1), "deleting twice fails: the key is gone");
    assert!(gone.stderr.contains("no key"), "{}", gone.stderr);
}

#[test]
fn wrong_input_exits_1_with_one_line_and_usage_errors_exit_2() {
    let dir = TempDir::new();
    let db = dir.sqlite_url();
    let key = create_key(dir.path(), &db, "alice");
    let mistyped = format!("{}x", &key[..key.len() - 1]);

    for args in [
        vec!["keys", "disable", "AAAAAAAAAAAA"],
        vec!["users", "enable", "nobody"],
    ] {
        let run = cli(dir.path(), &db, &args);
        assert_eq!(run.code, Some(1), "{args:?}: {run:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {}", run.stderr);
        assert!(
            !run.stderr.contains(&mistyped[16..]),
            "a message echoed a secret"
        );
    }

    for args in [
        vec!["keys", "create"],
        vec!["keys", "create", "--user", "a", "--expires-in", "5w"],
        vec!["keys", "create", "--user", "a", "--expires-in", "0d"],
        vec!["keys", "frobnicate"],
        vec!["keys", "disable", "not-a-key"],
        vec!["keys", "revoke", mistyped.as_str()],
        vec!["users"],
    ] {
        let run = cli(dir.path(), &db, &args);
        assert_eq!(run.code, Some(2), "{args:?}");
        assert!(!run.stderr.contains(&mistyped[16..]), "{}", run.stderr);
    }
}

#[test]
fn argument_values_no_store_would_take_are_usage_errors() {
    let dir = TempDir::new();
    let db = dir.sqlite_url();
    let long_user = "u".repeat(129);
    let long_name = "n".repeat(257);

    for args in [
        vec!["keys", "create", "--user", "has space"],
        vec!["keys", "create", "--user", "tab\there"],
        vec!["keys", "create", "--user", "line\nbreak"],
        vec!["keys", "create", "--user", ""],
        vec!["keys", "create", "--user", &long_user],
        vec!["keys", "create", "--user", "alice", "--name", &long_name],
        vec!["keys", "create", "--user", "alice", "--name", "two\nlines"],
        vec!["users", "disable", "has space"],
        vec!["users", "enable", &long_user],
    ] {
        let run = cli(dir.path(), &db, &args);
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{args:?}");
    }
    assert!(key_rows(&dir, &db).is_empty(), "nothing was stored");

    // The largest values stores take still work.
    let most = cli(
        dir.path(),
        &db,
        &[
            "keys",
            "create",
            "--user",
            &long_user[1..],
            "--name",
            &long_name[1..],
        ],
    );
    assert_eq!(most.code, Some(0), "{}", most.stderr);
}

#[test]
fn a_key_pasted_as_a_user_id_or_name_is_refused_and_never_echoed() {
    let dir = TempDir::new();
    let db = dir.sqlite_url();
    let key = create_key(dir.path(), &db, "alice");
    let secret = &key[15..];

    for args in [
        vec!["keys", "create", "--user", key.as_str()],
        vec!["keys", "create", "--user", "alice", "--name", key.as_str()],
        vec!["users", "disable", key.as_str()],
        vec!["users", "enable", key.as_str()],
    ] {
        let run = cli(dir.path(), &db, &args);
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {}", run.stderr);
        assert!(
            run.stderr.contains("looks like an API key"),
            "{}",
            run.stderr
        );
        for output in [&run.stdout, &run.stderr] {
            assert!(!output.contains(secret), "{args:?} echoed the key");
        }
    }

    let rows = key_rows(&dir, &db);
    assert_eq!(rows.len(), 1, "nothing was stored: {rows:?}");
    let users = cli(dir.path(), &db, &["users", "list"]);
    assert!(!users.stdout.contains(secret));
}

#[test]
fn usage_errors_cut_every_key_they_echo() {
    let dir = TempDir::new();
    let db = dir.sqlite_url();
    let first = create_key(dir.path(), &db, "alice");
    let second = create_key(dir.path(), &db, "alice");
    let mistyped = format!("{}x", &second[..second.len() - 1]);
    let upper = format!("CM-{}", &second[3..]);

    for args in [
        vec!["keys", "disable", first.as_str(), second.as_str()],
        vec!["keys", "disable", "AAAAAAAAAAAA", upper.as_str()],
        vec!["keys", "disable", "AAAAAAAAAAAA", &second[3..]],
        vec!["keys", "list", "--listen", upper.as_str()],
        vec!["keys", "revoke", first.as_str(), mistyped.as_str()],
        vec![
            "keys",
            "create",
            "--user",
            "a",
            "--expires-in",
            first.as_str(),
        ],
        vec![first.as_str()],
    ] {
        let run = cli(dir.path(), &db, &args);
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert!(run.stderr.starts_with("error: "), "{}", run.stderr);
        for key in [&first, &second, &mistyped] {
            assert!(!run.stderr.contains(&key[15..]), "{args:?}: {}", run.stderr);
        }
    }

    let run = cli(dir.path(), &db, &["keys", "disable", &first, &second]);
    let shown = format!("cm-{}_…{}", &second[3..15], &second[second.len() - 4..]);
    assert!(run.stderr.contains(&shown), "{}", run.stderr);
    assert!(
        key_rows(&dir, &db)
            .iter()
            .all(|row| row["state"] == "active"),
        "a usage error changes nothing"
    );

    for flag in ["--help", "--version"] {
        let run = cli(dir.path(), &db, &[flag]);
        assert_eq!(run.code, Some(0), "{flag}: {run:?}");
        assert!(run.stdout.contains("gateway"), "{flag}: {}", run.stdout);
    }
}

#[test]
fn an_expiry_after_the_year_9999_is_a_usage_error() {
    let dir = TempDir::new();
    let db = dir.sqlite_url();

    for duration in ["999999999999d", "3000000d", "99999999999h"] {
        let args = ["keys", "create", "--user", "a", "--expires-in", duration];
        let run = cli(dir.path(), &db, &args);
        assert_eq!(run.code, Some(2), "{duration}: {run:?}");
        assert!(run.stdout.is_empty());
    }
    assert!(key_rows(&dir, &db).is_empty(), "nothing was stored");

    let args = ["keys", "create", "--user", "a", "--expires-in", "2000000d"];
    assert_eq!(cli(dir.path(), &db, &args).code, Some(0));
    let expiry = key_rows(&dir, &db)[0]["expires_at"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(expiry.find('-'), Some(4), "a four-digit year: {expiry}");
}

#[test]
fn serve_listens_before_it_makes_the_first_key() {
    let dir = TempDir::new();
    let db = dir.sqlite_url();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();

    let run = cli(dir.path(), &db, &["serve", "--listen", &address]);

    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stdout.is_empty(), "a key was printed: {run:?}");
    assert!(run.stderr.contains("cannot listen on"), "{}", run.stderr);
    let server = Server::start(dir.path(), Some(&db));
    eventually("the start that listens prints the first key", || {
        is_key(server.stdout().trim())
    });
}

#[test]
fn an_unreachable_database_exits_1() {
    let dir = TempDir::new();

    for db in [
        "sqlite:///nonexistent-directory/for/sure/gateway.db",
        "postgres://postgres@127.0.0.1:1/test",
        "mysql://127.0.0.1/keys",
    ] {
        let run = cli(dir.path(), db, &["keys", "list"]);
        assert_eq!(run.code, Some(1), "{db}: {run:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{db}: {}", run.stderr);
    }
}

#[test]
fn a_sqlite_file_in_a_missing_directory_is_named_as_such() {
    let dir = TempDir::new();
    let missing = dir.path().join("not-made-yet");
    let db = format!("sqlite://{}", missing.join("gateway.db").display());

    let run = cli(dir.path(), &db, &["keys", "list"]);

    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    let expected = format!("the directory {} does not exist", missing.display());
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
    assert!(
        !run.stderr.contains("running and reachable"),
        "{}",
        run.stderr
    );
}

#[test]
fn serve_exits_1_when_its_database_cannot_be_opened() {
    let dir = TempDir::new();
    let mut child = gateway_support::command(dir.path())
        .args([
            "--db",
            "sqlite:///nonexistent-directory/gateway.db",
            "serve",
        ])
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > gateway_support::DEADLINE {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let output = child.wait_with_output().unwrap();

    assert_eq!(status.and_then(|status| status.code()), Some(1));
    assert!(output.stdout.is_empty());
    assert_eq!(String::from_utf8_lossy(&output.stderr).lines().count(), 1);
}

#[test]
fn the_database_comes_from_crossmodel_db_when_no_flag_names_one() {
    let dir = TempDir::new();
    let db = format!("sqlite://{}", dir.path().join("from-env.db").display());

    let output = gateway_support::command(dir.path())
        .env("CROSSMODEL_DB", &db)
        .args(["keys", "create", "--user", "env"])
        .output()
        .unwrap();

    assert!(output.status.success());
    assert!(dir.path().join("from-env.db").exists());
    assert!(!dir.path().join("gateway.db").exists());
}

#[test]
fn users_list_and_switch_users() {
    let dir = TempDir::new();
    let db = dir.sqlite_url();
    create_key(dir.path(), &db, "alice");
    create_key(dir.path(), &db, "alice");
    create_key(dir.path(), &db, "bob");

    for args in [["users", "disable", "bob"], ["users", "disable", "bob"]] {
        assert_eq!(
            cli(dir.path(), &db, &args).code,
            Some(0),
            "repeating is a success"
        );
    }

    let run = cli(dir.path(), &db, &["users", "list", "--json"]);
    let users: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(users[0]["id"], "alice");
    assert_eq!(users[0]["keys"], 2);
    assert_eq!(users[0]["state"], "active");
    assert_eq!(users[1]["id"], "bob");
    assert_eq!(users[1]["state"], "disabled");

    assert_eq!(
        cli(dir.path(), &db, &["users", "enable", "bob"]).code,
        Some(0)
    );
    let table = cli(dir.path(), &db, &["users", "list"]);
    assert!(table.stdout.starts_with("USER"), "{}", table.stdout);
    assert!(!table.stdout.contains("disabled"));
}

#[test]
fn changes_made_from_the_command_line_reach_a_running_server() {
    let dir = TempDir::new();
    let db = dir.sqlite_url();
    let server = Server::start(dir.path(), Some(&db));
    let key = create_key(dir.path(), &db, "bob");
    let other = create_key(dir.path(), &db, "bob");
    let run = |args: &[&str]| assert_eq!(cli(dir.path(), &db, args).code, Some(0), "{args:?}");
    let answers = |key: &str, status: u16, code: &str| {
        let (got, body) = models_status(&server, key);
        got == status && (code.is_empty() || code_of(&body) == code)
    };

    eventually("a new key works", || answers(&key, 200, ""));
    run(&["keys", "disable", &key]);
    eventually("a disabled key is refused", || {
        answers(&key, 401, "api_key_inactive")
    });
    run(&["keys", "enable", &key]);
    eventually("an enabled key works again", || answers(&key, 200, ""));

    run(&["users", "disable", "bob"]);
    eventually("a disabled user is refused", || {
        answers(&key, 401, "user_inactive")
    });
    run(&["users", "enable", "bob"]);
    eventually("an enabled user works again", || answers(&key, 200, ""));

    run(&["keys", "revoke", &key]);
    eventually("a revoked key is refused", || {
        answers(&key, 401, "api_key_inactive")
    });
    assert!(answers(&other, 200, ""));
    run(&["keys", "delete", &other]);
    eventually("a deleted key is unknown", || {
        answers(&other, 401, "invalid_api_key")
    });

    let log = server.log();
    assert!(
        !log.contains(&key[15..]) && !log.contains(&other[15..]),
        "a secret was logged"
    );
}

#[test]
fn an_expired_key_is_refused_and_listed_as_expired() {
    let dir = TempDir::new();
    let db = dir.sqlite_url();
    let server = Server::start(dir.path(), Some(&db));
    let run = cli(
        dir.path(),
        &db,
        &["keys", "create", "--user", "eve", "--expires-in", "1s"],
    );
    let key = run.stdout.trim().to_owned();

    eventually("the key expires", || {
        let (status, body) = models_status(&server, &key);
        status == 401 && code_of(&body) == "api_key_inactive"
    });
    let rows = key_rows(&dir, &db);
    let row = rows.iter().find(|row| row["user"] == "eve").unwrap();
    assert_eq!(row["state"], "active");
    assert_eq!(row["expired"], true);
    assert!(
        cli(dir.path(), &db, &["keys", "list"])
            .stdout
            .contains("expired")
    );
}

#[test]
fn ctrl_c_stops_the_server_cleanly() {
    let dir = TempDir::new();
    let server = Server::start(dir.path(), Some(&dir.sqlite_url()));

    let status = server.stop_with("-INT");

    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_closed_standard_output_is_an_error_not_a_panic() {
    let dir = TempDir::new();
    let db = dir.sqlite_url();
    create_key(dir.path(), &db, "alice");

    let mut child = gateway_support::command(dir.path())
        .args(["--db", &db, "keys", "list"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the listing is written, as `| head -0` does.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A key's secret part: no message may hold it.
fn secret_of(key: &str) -> &str {
    &key[16..38]
}

/// A checksum-valid key made on a database of its own.
fn some_key(dir: &TempDir) -> String {
    let db = format!("sqlite://{}", dir.path().join("keys.db").display());
    create_key(dir.path(), &db, "alice")
}

#[test]
fn a_key_given_as_a_model_id_is_a_usage_error_and_never_echoed() {
    let dir = TempDir::new();
    let db = dir.sqlite_url();
    let key = create_key(dir.path(), &db, "alice");
    let secret = secret_of(&key);
    let serve = || {
        let mut command = gateway_support::command(dir.path());
        command.args(["--db", &db, "serve", "--listen", "127.0.0.1:0"]);
        command
    };

    let among_others = format!("acme/one,{key}");
    let upper = format!("CM-{}", &key[3..]);
    let mut runs = Vec::new();
    for models in [key.as_str(), &among_others, &upper, &key[3..]] {
        let run = gateway_support::run_within_deadline(serve().args(["--models", models]));
        runs.push((models.to_owned(), run));
    }
    let by_env = gateway_support::run_within_deadline(serve().env("GATEWAY_MODELS", &key));
    runs.push(("GATEWAY_MODELS".to_owned(), by_env));

    for (models, run) in runs {
        assert_eq!(run.code, Some(2), "{models}: {run:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{models}: {}", run.stderr);
        assert!(run.stderr.contains("--models"), "{}", run.stderr);
        for output in [&run.stdout, &run.stderr] {
            assert!(!output.contains(secret), "{models} was echoed: {output}");
        }
    }
}

#[test]
fn a_key_in_the_database_url_is_cut_from_every_message() {
    let dir = TempDir::new();
    let key = some_key(&dir);
    let secret = secret_of(&key);
    let rest = &key[3..];

    let mut runs = Vec::new();
    for db in [
        key.clone(),
        format!("sqlite:///nonexistdir/{key}"),
        format!("sqlite:///nonexistdir/{key}/gateway.db"),
        format!("postgres://{key}@127.0.0.1/x"),
        format!("postgres://cm%2D{rest}@127.0.0.1/x"),
        format!("postgres://app:{key}@127.0.0.1:1/x"),
    ] {
        runs.push((db.clone(), cli(dir.path(), &db, &["keys", "list"])));
    }
    let output = gateway_support::command(dir.path())
        .env("CROSSMODEL_DB", &key)
        .args(["keys", "list"])
        .output()
        .unwrap();
    let by_env = gateway_support::Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    runs.push(("CROSSMODEL_DB".to_owned(), by_env));

    for (db, run) in runs {
        assert_eq!(run.code, Some(1), "{db}: {run:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{db}: {}", run.stderr);
        assert!(
            !run.stderr.contains(secret),
            "{db} was echoed: {}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{db}: {}", run.stdout);
    }
}

#[test]
fn a_malformed_key_id_is_a_usage_error_found_without_the_database() {
    let dir = TempDir::new();
    let key = some_key(&dir);
    let mistyped = format!("{}x", &key[..key.len() - 1]);
    // A database that cannot be opened: only a check made first gives exit 2.
    let unopenable = format!(
        "sqlite://{}",
        dir.path().join("missing").join("gateway.db").display()
    );

    for value in ["zq9abc", "", "not-a-key", "AAAAAAAAAAA!", mistyped.as_str()] {
        for verb in ["disable", "enable", "revoke", "delete"] {
            let run = cli(dir.path(), &unopenable, &["keys", verb, value]);
            assert_eq!(run.code, Some(2), "{verb} {value:?}: {run:?}");
            assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
            assert!(run.stderr.contains("KEY_ID_OR_KEY"), "{}", run.stderr);
            let echoed = if value.len() > 16 {
                &value[16..]
            } else {
                value
            };
            assert!(
                echoed.is_empty() || !run.stderr.contains(echoed),
                "{value:?} was echoed: {}",
                run.stderr
            );
        }
    }

    let well_formed = cli(dir.path(), &unopenable, &["keys", "disable", &key[3..15]]);
    assert_eq!(well_formed.code, Some(1), "a key id goes to the database");
}
