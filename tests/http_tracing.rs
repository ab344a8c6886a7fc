//! What the layer logs: everything at TRACE, captured while one request of every
//! kind goes through, must hold no secret and no id part of a malformed value,
//! while the id of a checksum-valid key is there to diagnose with.
#![allow(clippy::unwrap_used)]

mod support;

use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use crossmodel_auth::{KeyDigest, KeyId, KeyRecord, KeyState, MemoryKeyStore, UserState};
use serde_json::json;
use support::{Backend, Harness, Raw, Setup, crafted_key, public_checksum};
use tracing::Level;

/// Every secret below contains this, so one search finds any of them.
const MARK: &str = "TOPSECRET";

/// Every malformed value's id part starts with this.
const MALFORMED_ID: &str = "MALFORMEDid";

/// The id of the valid key: it may, and should, appear.
const VALID_ID: &str = "VaLiDkEyId01";

/// Collects formatted log lines in memory.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut buffer = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        let buffer = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

fn record(id: &str, secret: &str, user: &str) -> KeyRecord {
    KeyRecord {
        id: KeyId::parse(id).unwrap(),
        digest: KeyDigest::of_secret(secret),
        name: format!("{id} key"),
        state: KeyState::Active,
        expires_at: None,
        created_at: SystemTime::now(),
        last_used_at: None,
        user_id: user.to_owned(),
        user_state: UserState::Active,
        metadata: json!(null),
    }
}

/// A key whose checksum is off by one character.
fn malformed(id: &str, secret: &str) -> String {
    let body = format!("cm-{id}_{secret}");
    let mut checksum = public_checksum(&body).into_bytes();
    checksum[5] = if checksum[5] == b'0' { b'1' } else { b'0' };
    format!("{body}{}", String::from_utf8(checksum).unwrap())
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// Keys recognisable in a log: the valid one, and variants of it.
struct Keys {
    valid: String,
    wrong_secret: String,
    disabled: String,
    expired: String,
    disabled_user: String,
    unknown: String,
}

fn install_keys(store: &MemoryKeyStore) -> Keys {
    let secret = "TOPSECRETtopsecret0001";
    store.insert(record(VALID_ID, secret, "alice"));
    store.insert(KeyRecord {
        state: KeyState::Disabled,
        ..record("DisabledKey1", "TOPSECRETtopsecret0002", "alice")
    });
    store.insert(KeyRecord {
        expires_at: Some(SystemTime::now() - Duration::from_secs(1)),
        ..record("ExpiredKey01", "TOPSECRETtopsecret0003", "alice")
    });
    store.insert(KeyRecord {
        user_state: UserState::Disabled,
        ..record("DisUserKey01", "TOPSECRETtopsecret0004", "mallory")
    });

    Keys {
        valid: crafted_key(VALID_ID, secret),
        wrong_secret: crafted_key(VALID_ID, "TOPSECRETtopsecret0005"),
        disabled: crafted_key("DisabledKey1", "TOPSECRETtopsecret0002"),
        expired: crafted_key("ExpiredKey01", "TOPSECRETtopsecret0003"),
        disabled_user: crafted_key("DisUserKey01", "TOPSECRETtopsecret0004"),
        unknown: crafted_key("UnknownKey01", "TOPSECRETtopsecret0006"),
    }
}

/// One request of every kind the HTTP tests cover, each with a marked secret.
fn every_kind_of_request(keys: &Keys) -> Vec<Raw> {
    let bad_checksum = malformed("MALFORMEDid1", "TOPSECRETtopsecret0007");
    let huge = format!("cm-{MALFORMED_ID}2_{}", "TOPSECRET".repeat(7300));
    let mut high = format!("cm-{MALFORMED_ID}3_TOPSECRETtopsecret0008ABCDEF").into_bytes();
    high[20] = 0xE9;
    let truncated = format!("cm-{MALFORMED_ID}4_TOPSECRETtop");
    let upper = format!("CM-{MALFORMED_ID}5_TOPSECRETtopsecret0009ABCDEF");
    let preflight = Raw::new("OPTIONS", "/v1/models")
        .header("origin", "http://localhost")
        .header("access-control-request-method", "POST")
        .header("authorization", bearer(&bad_checksum));

    vec![
        Raw::get("/v1/models"),
        Raw::get("/v1/models").header("authorization", "Bearer"),
        Raw::get("/v1/models").header("authorization", "Basic TOPSECRETbasic0010"),
        Raw::get("/v1/models").header("authorization", &keys.valid),
        Raw::get("/v1/models").header("authorization", format!("Bearer Bearer {}", keys.valid)),
        Raw::get("/v1/models").header("authorization", "Bearer sk-TOPSECRETforeign0011"),
        Raw::get("/v1/models").header("x-api-key", "sk-ant-TOPSECRETforeign0012"),
        Raw::get("/v1/models").header("x-api-key", &upper),
        Raw::get("/v1/models").header("authorization", bearer(&bad_checksum)),
        Raw::get("/v1/models").header("x-api-key", &truncated),
        Raw::get("/v1/models").header("x-api-key", format!("{}x", keys.valid)),
        Raw::get("/v1/models").header("x-api-key", &huge),
        Raw::get("/v1/models").header("x-api-key", high),
        Raw::get("/v1/models").header("authorization", bearer(&keys.wrong_secret)),
        Raw::get("/v1/models").header("authorization", bearer(&keys.unknown)),
        Raw::get("/v1/models").header("authorization", bearer(&keys.disabled)),
        Raw::get("/v1/models").header("x-api-key", &keys.expired),
        Raw::get("/v1/models").header("x-api-key", &keys.disabled_user),
        Raw::get("/v1/models")
            .header("x-api-key", &keys.valid)
            .header("x-api-key", &keys.wrong_secret),
        Raw::get("/v1/models")
            .header("authorization", bearer(&keys.disabled))
            .header("x-api-key", &bad_checksum),
        Raw::get(&format!(
            "/v1/models?api_key={}&key={bad_checksum}",
            keys.valid
        )),
        Raw::get("/v1/models").header("authorization", bearer(&keys.valid)),
        Raw::get("/v1/models")
            .header("authorization", "Bearer sk-TOPSECRETforeign0013")
            .header("x-api-key", &keys.valid),
        Raw::get("/v1/models")
            .header("x-api-key", &keys.valid)
            .header("x-api-key", &keys.valid),
        Raw::get("/v1/models")
            .header(
                "authorization",
                format!("Bearer sk-{}", "TOPSECRET".repeat(7300)),
            )
            .header("x-api-key", &keys.valid),
        Raw::get("/v1/models").header("x-api-key", b"cm-MALFORMEDid6_TOPSECRET\x01"),
        Raw::new("POST", "/v1/messages")
            .header("x-api-key", &bad_checksum)
            .header("content-length", "4096")
            .header("expect", "100-continue"),
        preflight,
    ]
}

#[tokio::test(flavor = "current_thread")]
async fn the_log_never_shows_a_secret_or_a_malformed_id_but_shows_valid_key_ids() {
    // The default dispatcher is per thread; this runtime has one thread, so the
    // servers spawned below log into this capture.
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let h = Harness::start().await;
    let keys = install_keys(&h.store);
    for request in every_kind_of_request(&keys) {
        h.send(request).await;
    }
    assert_eq!(
        h.echo.calls(),
        5,
        "four authenticated requests and a preflight"
    );

    for backend in [Backend::Failing, Backend::Hanging] {
        let setup = Setup {
            backend,
            ..Setup::default()
        };
        let down =
            Harness::start_with(setup, |layer| layer.deadline(Duration::from_millis(100))).await;
        let reply = down
            .send(Raw::get("/v1/models?key=TOPSECRETquery").header("x-api-key", &keys.valid))
            .await;
        assert_eq!(reply.status, 503);
    }

    let log = capture.text();
    assert!(!log.contains(MARK), "a secret reached the log:\n{log}");
    assert!(
        !log.contains(MALFORMED_ID),
        "a malformed id reached the log:\n{log}"
    );
    assert!(!log.contains("?"), "a query string reached the log:\n{log}");

    // What is there to diagnose with.
    assert!(log.contains(VALID_ID), "{log}");
    for expected in [
        "request authenticated",
        "request rejected",
        "missing_api_key",
        "invalid_api_key",
        "api_key_inactive",
        "user_inactive",
        "auth_service_unavailable",
        "path=\"/v1/models\"",
    ] {
        assert!(log.contains(expected), "{expected:?} missing from:\n{log}");
    }
}
