//! The example gateway on PostgreSQL: replicas sharing one database, and what a
//! running server does when the database goes away.
//!
//! Needs the server at `DATABASE_URL` (`scripts/test` starts it); fails, never skips,
//! when it is unreachable.
#![allow(clippy::unwrap_used)]

mod gateway_support;

use gateway_support::{
    Proxy, ScratchDatabase, Server, TempDir, cli, create_key, eventually, http, is_key,
};

fn status_of(server: &Server, key: &str) -> (u16, serde_json::Value) {
    let bearer = format!("Bearer {key}");
    let reply = http(
        server.address,
        "GET",
        "/v1/models",
        &[("authorization", &bearer)],
        "",
    );
    let body = serde_json::from_str(&reply.body).unwrap_or_default();
    (reply.status, body)
}

#[test]
fn replicas_starting_together_print_one_key_and_share_every_change() {
    let dir = TempDir::new();
    let database = ScratchDatabase::create();

    let replicas = Server::start_together(3, dir.path(), &database.url);
    eventually("one replica prints the first key", || {
        replicas.iter().any(|replica| !replica.stdout().is_empty())
    });
    let printed: Vec<String> = replicas.iter().map(Server::stdout).collect();
    let keys: Vec<&str> = printed
        .iter()
        .map(|out| out.trim())
        .filter(|out| !out.is_empty())
        .collect();
    assert_eq!(
        keys.len(),
        1,
        "exactly one replica prints a key: {printed:?}"
    );
    assert!(is_key(keys[0]));

    let key = create_key(dir.path(), &database.url, "alice");
    for replica in &replicas {
        eventually("every replica accepts the key", || {
            status_of(replica, &key).0 == 200
        });
    }

    let run = cli(dir.path(), &database.url, &["keys", "disable", &key]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    for replica in &replicas {
        eventually("every replica refuses the disabled key", || {
            let (status, body) = status_of(replica, &key);
            status == 401 && body["error"]["code"] == "api_key_inactive"
        });
    }
}

#[test]
fn a_lost_database_gets_503_and_a_returning_one_is_used_again() {
    let dir = TempDir::new();
    let database = ScratchDatabase::create();
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap());
    let through_proxy = database.url_through(proxy.port);
    let server = Server::start(dir.path(), Some(&through_proxy));
    let key = create_key(dir.path(), &database.url, "alice");
    assert_eq!(status_of(&server, &key).0, 200);

    proxy.cut();
    // A key this server has never seen must go to the database, which is gone.
    let unseen = create_key(dir.path(), &database.url, "alice");
    let bearer = format!("Bearer {unseen}");
    eventually(
        "an unknown key gets a 503 while the database is away",
        || {
            let reply = http(
                server.address,
                "GET",
                "/v1/models",
                &[("authorization", &bearer)],
                "",
            );
            reply.status == 503
                && reply.header("retry-after") == Some("1")
                && reply.json()["error"]["code"] == "auth_service_unavailable"
        },
    );
    let health = http(server.address, "GET", "/healthz", &[], "");
    assert_eq!(health.status, 200, "the server itself stays up");

    proxy.restore();
    eventually("the key works once the database is back", || {
        status_of(&server, &unseen).0 == 200
    });
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

#[test]
fn commands_on_an_unreachable_database_exit_1() {
    let dir = TempDir::new();
    let database = ScratchDatabase::create();
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap());
    proxy.cut();

    let run = cli(
        dir.path(),
        &database.url_through(proxy.port),
        &["keys", "list"],
    );

    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
}
