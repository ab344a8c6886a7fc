//! The example gateway's HTTP surface: authentication before routing, each API's
//! shapes from the echo model, errors, and the request log.
#![allow(clippy::unwrap_used)]

mod gateway_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use gateway_support::{Server, TempDir, create_key, http};
use serde_json::Value;

struct Running {
    _dir: TempDir,
    server: Server,
    key: String,
}

fn running() -> Running {
    running_with(&[])
}

fn running_with(env: &[(&str, &str)]) -> Running {
    let dir = TempDir::new();
    let db = dir.sqlite_url();
    let key = create_key(dir.path(), &db, "alice");
    let server = Server::start_with(dir.path(), Some(&db), &[], env);
    Running {
        _dir: dir,
        server,
        key,
    }
}

impl Running {
    fn openai(&self, method: &str, path: &str, body: &str) -> gateway_support::Reply {
        let bearer = format!("Bearer {}", self.key);
        http(
            self.server.address,
            method,
            path,
            &[("authorization", &bearer)],
            body,
        )
    }

    fn anthropic(&self, path: &str, body: &str) -> gateway_support::Reply {
        let headers = [
            ("x-api-key", self.key.as_str()),
            ("anthropic-version", "2023-06-01"),
        ];
        http(self.server.address, "POST", path, &headers, body)
    }
}

/// The `data:` payloads of an event stream, with their event names.
fn events(body: &str) -> Vec<(Option<String>, String)> {
    body.split("\n\n")
        .filter(|event| !event.trim().is_empty())
        .map(|event| {
            let field = |name: &str| {
                event
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .map(|value| value.trim().to_owned())
            };
            (field("event:"), field("data:").unwrap())
        })
        .collect()
}

#[test]
fn every_path_but_healthz_needs_a_key_before_routing() {
    let running = running();
    let address = running.server.address;

    let health = http(address, "GET", "/healthz", &[], "");
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));

    for (method, path) in [
        ("GET", "/nowhere"),
        ("POST", "/healthz"),
        ("GET", "/v1/models?key=x"),
        ("DELETE", "/v1/chat/completions"),
    ] {
        let reply = http(address, method, path, &[], "");
        assert_eq!(reply.status, 401, "{method} {path}");
        assert_eq!(reply.json()["error"]["code"], "missing_api_key");
    }

    let unknown = running.openai("GET", "/nowhere", "");
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["type"], "invalid_request_error");
}

#[test]
fn chat_completions_answer_in_the_openai_shape() {
    let running = running();
    let body = r#"{"model":"deepseek/deepseek-v4-pro","messages":[{"role":"user","content":"Hello there"}]}"#;

    let reply = running.openai("POST", "/v1/chat/completions", body);

    assert_eq!(reply.status, 200, "{}", reply.body);
    let json = reply.json();
    assert_eq!(json["object"], "chat.completion");
    assert_eq!(json["model"], "deepseek/deepseek-v4-pro");
    assert_eq!(json["choices"][0]["message"]["role"], "assistant");
    assert_eq!(json["choices"][0]["message"]["content"], "Hello there");
    assert_eq!(json["choices"][0]["finish_reason"], "stop");
    assert_eq!(json["usage"]["total_tokens"], 4);
    assert!(json["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(reply.header("x-request-id").unwrap().starts_with("req_"));
}

#[test]
fn streamed_chat_completions_end_with_done() {
    let running = running();
    let body = r#"{"model":"deepseek/deepseek-v4-pro","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"one two"}]}"#;

    let reply = running.openai("POST", "/v1/chat/completions", body);

    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = events(&reply.body);
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(name, data)| {
            assert!(name.is_none(), "OpenAI streams name no events");
            serde_json::from_str(data).unwrap()
        })
        .collect();
    assert!(
        chunks
            .iter()
            .all(|chunk| chunk["object"] == "chat.completion.chunk")
    );
    let text: String = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "one two");
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "stop"
    );
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 2);
}

#[test]
fn messages_answer_in_the_anthropic_shape_streamed_or_not() {
    let running = running();
    let body = r#"{"model":"anthropic/claude-sonnet-4.6","max_tokens":2,"messages":[{"role":"user","content":"one two three"}]}"#;

    let reply = running.anthropic("/v1/messages", body);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let json = reply.json();
    assert_eq!(json["type"], "message");
    assert_eq!(
        json["content"][0]["text"], "one two",
        "no space after the cut"
    );
    assert_eq!(json["stop_reason"], "max_tokens");
    assert_eq!(reply.header("request-id"), reply.header("x-request-id"));

    let streamed = body.replacen('{', r#"{"stream":true,"#, 1);
    let reply = running.anthropic("/v1/messages", &streamed);
    let mut text = String::new();
    let names: Vec<String> = events(&reply.body)
        .into_iter()
        .map(|(name, data)| {
            let data: Value = serde_json::from_str(&data).unwrap();
            let name = name.unwrap();
            assert_eq!(data["type"], name.as_str(), "event name and type agree");
            text.push_str(data["delta"]["text"].as_str().unwrap_or_default());
            name
        })
        .collect();
    assert_eq!(
        text, "one two",
        "no space after the cut when streamed either"
    );
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
}

#[test]
fn each_api_gets_its_own_errors() {
    let running = running();
    let key = running.key.as_str();
    let address = running.server.address;

    let no_version = http(address, "POST", "/v1/messages", &[("x-api-key", key)], "{}");
    assert_eq!(no_version.status, 400);
    let json = no_version.json();
    assert_eq!(json["type"], "error");
    assert_eq!(json["error"]["type"], "invalid_request_error");
    assert_eq!(json["request_id"], no_version.header("request-id").unwrap());

    let bad_json = running.anthropic("/v1/messages", "{\"model\":");
    assert_eq!(bad_json.status, 400);
    assert_eq!(bad_json.json()["error"]["type"], "invalid_request_error");
    let bad_json = running.openai("POST", "/v1/chat/completions", "not json");
    assert_eq!(bad_json.status, 400);
    assert_eq!(bad_json.json()["error"]["type"], "invalid_request_error");
    let not_object = running.openai("POST", "/v1/chat/completions", "[1,2]");
    assert_eq!(not_object.status, 400);

    let too_large = "x".repeat(3 << 20);
    let reply = running.openai("POST", "/v1/chat/completions", &too_large);
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    let reply = running.anthropic("/v1/messages", &too_large);
    assert_eq!(reply.json()["error"]["type"], "request_too_large");

    let unknown = r#"{"model":"acme/nope","max_tokens":5,"messages":[]}"#;
    let openai = running.openai("POST", "/v1/chat/completions", unknown);
    assert_eq!(openai.status, 404);
    assert_eq!(openai.json()["error"]["code"], "model_not_found");
    let anthropic = running.anthropic("/v1/messages", unknown);
    assert_eq!(anthropic.status, 404);
    assert_eq!(anthropic.json()["error"]["type"], "not_found_error");
}

#[test]
fn models_are_listed_in_the_shape_of_the_api_that_asks() {
    let running = running();

    let openai = running.openai("GET", "/v1/models", "").json();
    assert_eq!(openai["object"], "list");
    let ids: Vec<&str> = openai["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["deepseek/deepseek-v4-pro", "anthropic/claude-sonnet-4.6"]
    );
    assert_eq!(openai["data"][1]["object"], "model");
    assert_eq!(openai["data"][1]["owned_by"], "anthropic");

    let headers = [
        ("x-api-key", running.key.as_str()),
        ("anthropic-version", "2023-06-01"),
    ];
    let anthropic = http(running.server.address, "GET", "/v1/models", &headers, "").json();
    assert_eq!(anthropic["has_more"], false);
    assert_eq!(anthropic["first_id"], "deepseek/deepseek-v4-pro");
    assert_eq!(anthropic["last_id"], "anthropic/claude-sonnet-4.6");
    assert_eq!(anthropic["data"][1]["type"], "model");
    assert_eq!(anthropic["data"][1]["display_name"], "Claude Sonnet 4.6");

    let one = running.openai("GET", "/v1/models/anthropic/claude-sonnet-4.6", "");
    assert_eq!(one.json()["id"], "anthropic/claude-sonnet-4.6");
}

#[test]
fn the_model_list_is_configurable_by_flag_or_environment() {
    let dir = TempDir::new();
    let db = dir.sqlite_url();
    let key = create_key(dir.path(), &db, "alice");
    let bearer = format!("Bearer {key}");
    let listed = |server: &Server| {
        let reply = http(
            server.address,
            "GET",
            "/v1/models",
            &[("authorization", &bearer)],
            "",
        );
        let json = reply.json();
        let ids: Vec<String> = json["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|model| model["id"].as_str().unwrap().to_owned())
            .collect();
        ids
    };

    let by_flag = Server::start_with(
        dir.path(),
        Some(&db),
        &["--models", "acme/one,acme/two"],
        &[],
    );
    assert_eq!(listed(&by_flag), ["acme/one", "acme/two"]);
    let by_env = Server::start_with(
        dir.path(),
        Some(&db),
        &[],
        &[("GATEWAY_MODELS", "acme/three")],
    );
    assert_eq!(listed(&by_env), ["acme/three"]);

    let body = r#"{"model":"acme/three","messages":[{"role":"user","content":"hi"}]}"#;
    let reply = http(
        by_env.address,
        "POST",
        "/v1/chat/completions",
        &[("authorization", &bearer)],
        body,
    );
    assert_eq!(reply.status, 200, "one key works for every model");
}

#[test]
fn the_reference_curl_commands_work_as_written() {
    let running = running();
    let base = running.server.url();

    // The two commands of the authentication guide, with the host replaced.
    let commands = [
        r#"curl https://api.crossmodel.ai/v1/chat/completions \
  -H "Authorization: Bearer $CROSSMODEL_API_KEY" \
  -H "Content-Type: application/json" \
  -d '{
    "model": "deepseek/deepseek-v4-pro",
    "messages": [{ "role": "user", "content": "Hello" }]
  }'"#,
        r#"curl https://api.crossmodel.ai/v1/messages \
  -H "x-api-key: $CROSSMODEL_API_KEY" \
  -H "anthropic-version: 2023-06-01" \
  -H "Content-Type: application/json" \
  -d '{
    "model": "anthropic/claude-sonnet-4.6",
    "max_tokens": 1024,
    "messages": [{ "role": "user", "content": "Hello" }]
  }'"#,
    ];

    for command in commands {
        let command = command.replace("https://api.crossmodel.ai", &base);
        let output = Command::new("bash")
            .args(["-c", &command])
            .env("CROSSMODEL_API_KEY", &running.key)
            .output()
            .expect("bash and curl are installed");

        assert!(output.status.success(), "{command}");
        let body: Value = serde_json::from_slice(&output.stdout).unwrap();
        let text = body["choices"][0]["message"]["content"]
            .as_str()
            .or(body["content"][0]["text"].as_str());
        assert_eq!(text, Some("Hello"), "{body}");
    }
}

#[test]
fn the_request_log_names_the_caller_but_never_the_key_or_query() {
    // Every level, the libraries' own included: none may show a key.
    let running = running_with(&[("RUST_LOG", "trace")]);

    running.openai("GET", "/v1/models?secret=hunter2", "");
    let wrong = format!("{}AAAA", &running.key[..running.key.len() - 4]);
    http(
        running.server.address,
        "GET",
        "/v1/models",
        &[("x-api-key", &wrong)],
        "",
    );

    let id = &running.key[3..15];
    gateway_support::eventually("both requests are logged", || {
        let log = running.server.log();
        log.contains("status=200") && log.contains("status=401")
    });
    let log = running.server.log();
    assert!(log.contains(&format!("key.id=\"{id}\"")), "{log}");
    assert!(log.contains("user.id=\"alice\""), "{log}");
    assert!(log.contains("path=\"/v1/models\""), "{log}");
    assert!(log.contains("status=401"), "{log}");
    assert!(!log.contains("hunter2"), "the query string was logged");
    assert!(
        !log.contains(&running.key[15..]) && !log.contains(&wrong[15..]),
        "a secret was logged"
    );
}

#[test]
fn a_key_in_the_path_is_cut_from_the_request_log() {
    let running = running();
    let key = running.key.as_str();

    let with_key = running.openai("GET", &format!("/v1/models/{key}"), "");
    assert_eq!(with_key.status, 404, "{}", with_key.body);
    let without_key = http(
        running.server.address,
        "GET",
        &format!("/v1/{key}/usage"),
        &[],
        "",
    );
    assert_eq!(without_key.status, 401);

    gateway_support::eventually("both requests are logged", || {
        let log = running.server.log();
        log.contains("status=404") && log.contains("status=401")
    });
    let log = running.server.log();
    assert!(log.contains("path=\"/v1/models/cm-…\""), "{log}");
    assert!(log.contains("path=\"/v1/cm-…/usage\""), "{log}");
    assert!(!log.contains(&key[15..]), "a secret was logged:\n{log}");
}

/// Opens a connection and sends `partial`, a request the gateway waits to see the
/// rest of.
fn half_sent(address: std::net::SocketAddr, partial: &str) -> TcpStream {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.write_all(partial.as_bytes()).unwrap();
    stream
}

/// Request headers cut off before their blank line.
const HALF_HEADERS: &str = "GET /v1/models HTTP/1.1\r\nHost: x\r\n";

/// How long the gateway may take to give up on a slow client: its 10 s deadline,
/// with room for a busy machine.
const SLOW_CLIENT_BOUND: Duration = Duration::from_secs(30);

#[test]
fn a_request_whose_headers_never_end_is_closed() {
    let running = running();
    let mut stream = half_sent(running.server.address, HALF_HEADERS);
    stream.set_read_timeout(Some(SLOW_CLIENT_BOUND)).unwrap();

    let mut answer = Vec::new();
    let outcome = stream.read_to_end(&mut answer);

    let closed = match &outcome {
        Ok(_) => true,
        Err(error) => error.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(
        closed,
        "the connection was still open after {SLOW_CLIENT_BOUND:?}: {outcome:?}"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

/// A chat request whose head is whole but whose body stops after a few bytes.
fn half_body(key: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"model\":"
    )
}

#[test]
fn a_request_body_that_stops_arriving_gets_a_408() {
    let running = running();
    let mut stream = half_sent(running.server.address, &half_body(&running.key));
    stream.set_read_timeout(Some(SLOW_CLIENT_BOUND)).unwrap();

    let mut answer = Vec::new();
    let outcome = stream.read_to_end(&mut answer);

    assert!(
        outcome.is_ok(),
        "no answer within {SLOW_CLIENT_BOUND:?}: {outcome:?}"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("stopped arriving"), "{answer}");
}

#[test]
fn sigterm_ends_the_server_even_with_slow_clients_connected() {
    let mut running = running();
    let address = running.server.address;
    let _headers = half_sent(address, HALF_HEADERS);
    // A request in flight whose body comes a byte a second, never pausing long
    // enough to be cut: only the shutdown's own bound ends it.
    let mut body = half_sent(address, &half_body(&running.key));
    std::thread::spawn(move || {
        for _ in 0..60 {
            std::thread::sleep(Duration::from_secs(1));
            if body.write_all(b" ").is_err() {
                break;
            }
        }
    });
    gateway_support::eventually("the gateway answers beside the slow clients", || {
        running.openai("GET", "/v1/models", "").status == 200
    });

    let status = running.server.stop_within("-TERM", SLOW_CLIENT_BOUND);

    assert_eq!(status.code(), Some(0));
    gateway_support::eventually("the dropped connection is logged", || {
        running
            .server
            .log()
            .contains("dropping connections still open")
    });
}

/// A key's secret part: no log line or body may hold it.
fn secret_of(key: &str) -> &str {
    &key[16..38]
}

/// Whether a reply shows `secret` anywhere: status line aside, headers or body.
fn shows(reply: &gateway_support::Reply, secret: &str) -> bool {
    reply.body.contains(secret)
        || reply
            .headers
            .iter()
            .any(|(_, value)| value.contains(secret))
}

/// The spellings of `key` a client may send by mistake: as it is, upper-case
/// prefix, percent-encoded prefix, and without its prefix.
fn spellings(key: &str) -> [String; 4] {
    let rest = &key[3..];
    [
        key.to_owned(),
        format!("CM-{rest}"),
        format!("cm%2D{rest}"),
        rest.to_owned(),
    ]
}

#[test]
fn a_key_sent_as_a_request_id_is_replaced_by_a_new_id() {
    // Every level, the libraries' own included.
    let running = running_with(&[("RUST_LOG", "trace")]);
    let secret = secret_of(&running.key);
    let bearer = format!("Bearer {}", running.key);

    for id in spellings(&running.key) {
        for auth in [vec![("authorization", bearer.as_str())], vec![]] {
            let mut headers = auth.clone();
            headers.push(("x-request-id", &id));
            let reply = http(running.server.address, "GET", "/v1/models", &headers, "");

            assert!(!shows(&reply, secret), "{id}: {reply:?}");
            let given = reply.header("x-request-id").unwrap();
            assert!(given.starts_with("req_"), "{id}: {given}");
            assert_eq!(reply.header("request-id"), Some(given));
        }
    }
    let plain = http(
        running.server.address,
        "GET",
        "/v1/models",
        &[("authorization", &bearer), ("x-request-id", "trace-42")],
        "",
    );
    assert_eq!(
        plain.header("x-request-id"),
        Some("trace-42"),
        "other ids stay"
    );

    gateway_support::eventually("every request is logged", || {
        running.server.log().matches("latency_ms=").count() >= 9
    });
    let log = running.server.log();
    assert!(!log.contains(secret), "a request id logged the key:\n{log}");
    assert!(log.contains("request_id=\"trace-42\""), "{log}");
}

#[test]
fn a_key_sent_as_the_method_is_logged_as_other_and_never_echoed() {
    // Every level, the libraries' own included.
    let running = running_with(&[("RUST_LOG", "trace")]);
    let secret = secret_of(&running.key);
    let bearer = format!("Bearer {}", running.key);
    let address = running.server.address;

    for method in spellings(&running.key).iter().filter(|m| !m.contains('%')) {
        let unauthenticated = http(address, method, "/v1/models", &[], "");
        assert_eq!(unauthenticated.status, 401);
        let wrong_method = http(
            address,
            method,
            "/v1/models",
            &[("authorization", &bearer)],
            "",
        );
        assert_eq!(wrong_method.status, 405);
        let nowhere = http(
            address,
            method,
            "/nowhere",
            &[("authorization", &bearer)],
            "",
        );
        assert_eq!(nowhere.status, 404);
        for reply in [unauthenticated, wrong_method, nowhere] {
            assert!(!shows(&reply, secret), "{method}: {reply:?}");
        }
    }

    gateway_support::eventually("every request is logged", || {
        running.server.log().matches("latency_ms=").count() >= 9
    });
    let log = running.server.log();
    assert!(log.contains("method=OTHER"), "{log}");
    assert!(!log.contains(secret), "a method logged the key:\n{log}");
}

#[test]
fn every_spelling_of_a_key_in_the_path_is_cut_from_the_log_and_replies() {
    // Every level, the libraries' own included.
    let running = running_with(&[("RUST_LOG", "trace")]);
    let secret = secret_of(&running.key);
    let address = running.server.address;

    for spelling in spellings(&running.key) {
        for path in [
            format!("/v1/models/{spelling}"),
            format!("/v1/{spelling}/usage"),
        ] {
            let authenticated = running.openai("GET", &path, "");
            assert_eq!(authenticated.status, 404, "{path}");
            let unauthenticated = http(address, "GET", &path, &[], "");
            assert_eq!(unauthenticated.status, 401, "{path}");
            for reply in [authenticated, unauthenticated] {
                assert!(!shows(&reply, secret), "{path}: {reply:?}");
            }
        }
    }

    gateway_support::eventually("every request is logged", || {
        running.server.log().matches("latency_ms=").count() >= 16
    });
    let log = running.server.log();
    assert!(log.contains("path=\"/v1/models/…\""), "{log}");
    assert!(!log.contains(secret), "a path logged the key:\n{log}");
}

#[test]
fn a_key_given_as_the_model_is_never_echoed() {
    let running = running();
    let secret = secret_of(&running.key);
    let anthropic_headers = [
        ("x-api-key", running.key.as_str()),
        ("anthropic-version", "2023-06-01"),
    ];

    for model in spellings(&running.key) {
        let body = format!(
            r#"{{"model":"{model}","max_tokens":5,"messages":[{{"role":"user","content":"hi"}}]}}"#
        );
        let replies = [
            running.openai("POST", "/v1/chat/completions", &body),
            running.anthropic("/v1/messages", &body),
            running.openai("GET", &format!("/v1/models/{model}"), ""),
            http(
                running.server.address,
                "GET",
                &format!("/v1/models/{model}"),
                &anthropic_headers,
                "",
            ),
        ];
        for reply in replies {
            assert_eq!(reply.status, 404, "{model}: {}", reply.body);
            assert!(!shows(&reply, secret), "{model}: {reply:?}");
        }
    }

    let chat = running.openai(
        "POST",
        "/v1/chat/completions",
        &format!(r#"{{"model":"{}","messages":[]}}"#, running.key),
    );
    let message = chat.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("the requested model"), "{message}");
    let plain = running.openai(
        "POST",
        "/v1/chat/completions",
        r#"{"model":"acme/nope","messages":[]}"#,
    );
    assert!(
        plain.body.contains("acme/nope"),
        "other unknown models are named"
    );
}
