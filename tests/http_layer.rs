//! The layer's behaviour over real HTTP: every header rule of SPEC §2, every
//! verification outcome of §3 and every error response of §4, against a hyper
//! server on 127.0.0.1.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use crossmodel_auth::{
    ApiKeyLayer, Envelope, KeyFormat, KeyId, KeyManager, KeyRecord, KeyState, MemoryKeyStore,
    Rejection, RejectionKind, RenderRejection, RenderedBody, RouteFamily, SigningSecret, UserState,
};
use http::{HeaderValue, Request};
use http_body_util::Full;
use serde_json::json;
use support::{
    Backend, CLIENT_REQUEST_ID, Echo, Expected, FaultStore, Harness, Raw, Setup,
    assert_no_credentials_reached, assert_rejection, assert_success, crafted_key, id_of,
    is_fresh_request_id, secret_of, with_one_char_changed, with_wrong_secret,
};
use tower::{Layer, ServiceExt};

const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Sends `headers` twice — as given, and with `anthropic-version` and a client
/// request id — and checks that both are refused with `code` in the envelope the
/// request calls for, leaking none of `secrets`. The inner service must not run.
async fn assert_refused(
    h: &Harness,
    target: &str,
    headers: &[(&str, &[u8])],
    code: &str,
    secrets: &[&str],
) {
    let inner_calls = h.echo.calls();
    let plain = Raw::get(target).headers(headers);
    let envelope = h.envelope_for(&plain.headers);
    let reply = h.send(plain).await;
    let expected = Expected::unauthorized(code, envelope).secrets(secrets);
    assert_rejection(&reply, expected);

    let tagged = Raw::get(target)
        .headers(headers)
        .header("anthropic-version", ANTHROPIC_VERSION)
        .header("x-request-id", CLIENT_REQUEST_ID);
    let envelope = h.envelope_for(&tagged.headers);
    let reply = h.send(tagged).await;
    let expected = Expected::unauthorized(code, envelope)
        .request_id(CLIENT_REQUEST_ID)
        .secrets(secrets);
    assert_rejection(&reply, expected);

    assert_eq!(
        h.echo.calls(),
        inner_calls,
        "inner service ran for {headers:?}"
    );
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

fn key_id(key: &str) -> KeyId {
    KeyId::parse(id_of(key)).unwrap()
}

// ---------------------------------------------------------------------------
// Missing keys

#[tokio::test]
async fn a_request_without_any_credential_header_is_missing_api_key() {
    let h = Harness::start().await;

    assert_refused(&h, "/v1/models", &[], "missing_api_key", &[]).await;

    assert_eq!(h.calls(), (0, 0));
}

#[tokio::test]
async fn empty_or_whitespace_only_headers_and_a_lone_bearer_count_as_absent() {
    let h = Harness::start().await;
    let cases: [(&str, &[u8]); 9] = [
        ("authorization", b""),
        ("authorization", b"   "),
        ("authorization", b"\t \t"),
        ("authorization", b"Bearer"),
        ("authorization", b"bearer   "),
        ("authorization", b"Bearer \t "),
        ("x-api-key", b""),
        ("x-api-key", b"   "),
        ("x-api-key", b"\t"),
    ];

    for case in cases {
        assert_refused(&h, "/v1/models", &[case], "missing_api_key", &[]).await;
    }
    let both: [(&str, &[u8]); 2] = [("authorization", b"Bearer  "), ("x-api-key", b" ")];
    assert_refused(&h, "/v1/models", &both, "missing_api_key", &[]).await;

    assert_eq!(h.calls(), (0, 0));
}

#[tokio::test]
async fn other_schemes_and_a_bare_key_without_scheme_are_missing_api_key() {
    let h = Harness::start().await;
    let key = h.key("alice").await;
    let secret = secret_of(&key);

    let basic: &[u8] = b"Basic YWxpY2U6c2VjcmV0";
    assert_refused(&h, "/", &[("authorization", basic)], "missing_api_key", &[]).await;
    let token = format!("Token {key}");
    let other = [("authorization", token.as_bytes())];
    assert_refused(&h, "/", &other, "missing_api_key", &[secret]).await;
    let bare = [("authorization", key.as_bytes())];
    assert_refused(&h, "/", &bare, "missing_api_key", &[secret]).await;

    assert_eq!(h.calls(), (0, 0));
}

#[tokio::test]
async fn a_doubled_bearer_scheme_is_invalid_api_key_without_a_store_call() {
    let h = Harness::start().await;
    let key = h.key("alice").await;
    let doubled = format!("Bearer Bearer {key}");

    let headers = [("authorization", doubled.as_bytes())];
    assert_refused(&h, "/", &headers, "invalid_api_key", &[secret_of(&key)]).await;

    assert_eq!(h.calls(), (0, 0));
}

// ---------------------------------------------------------------------------
// The scheme

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_spaces_or_tabs_may_precede_the_key() {
    let h = Harness::start().await;
    let key = h.key("alice").await;
    let values = [
        format!("Bearer {key}"),
        format!("bearer {key}"),
        format!("BEARER {key}"),
        format!("BeArEr     {key}"),
        format!("Bearer\t{key}"),
        format!("Bearer \t  {key}"),
        format!("Bearer {key}   "),
    ];

    for (n, value) in values.iter().enumerate() {
        let reply = h.send(Raw::get("/").header("authorization", value)).await;

        let seen = assert_success(&reply, &key, "alice");
        assert_no_credentials_reached(&seen);
        assert_eq!(h.calls(), (n + 1, n + 1));
    }
}

// ---------------------------------------------------------------------------
// Keys that are not ours, or not whole

#[tokio::test]
async fn foreign_keys_and_an_upper_case_prefix_are_invalid_api_key_without_a_store_call() {
    let h = Harness::start().await;
    let key = h.key("alice").await;
    let upper = format!("CM-{}", &key[3..]);
    let openai = "sk-proj-ZZZforeignsecretZZZ";
    let anthropic = "sk-ant-api03-ZZZforeignsecretZZZ";

    let sk = bearer(openai);
    assert_refused(
        &h,
        "/",
        &[("authorization", sk.as_bytes())],
        "invalid_api_key",
        &[openai],
    )
    .await;
    let cm_upper = bearer(&upper);
    let headers = [("authorization", cm_upper.as_bytes())];
    assert_refused(&h, "/", &headers, "invalid_api_key", &[secret_of(&key)]).await;
    let headers = [("x-api-key", anthropic.as_bytes())];
    assert_refused(&h, "/", &headers, "invalid_api_key", &[anthropic]).await;
    let headers = [("x-api-key", upper.as_bytes())];
    assert_refused(&h, "/", &headers, "invalid_api_key", &[secret_of(&key)]).await;

    assert_eq!(h.calls(), (0, 0));
}

#[tokio::test]
async fn a_changed_truncated_or_extended_key_is_invalid_api_key_without_a_store_call() {
    let h = Harness::start().await;
    let key = h.key("alice").await;
    let mangled = [
        with_one_char_changed(&key),
        key[..key.len() - 1].to_owned(),
        key[..20].to_owned(),
        format!("{key}x"),
        format!("{key}{key}"),
    ];

    for value in &mangled {
        let secrets = [&value[3..]];
        let auth = bearer(value);
        let headers = [("authorization", auth.as_bytes())];
        assert_refused(&h, "/", &headers, "invalid_api_key", &secrets).await;
        let headers = [("x-api-key", value.as_bytes())];
        assert_refused(&h, "/", &headers, "invalid_api_key", &secrets).await;
    }

    assert_eq!(h.calls(), (0, 0));
}

// ---------------------------------------------------------------------------
// Verification outcomes

#[tokio::test]
async fn a_right_id_with_a_wrong_secret_reads_exactly_like_an_unknown_id() {
    let h = Harness::start().await;
    let key = h.key("alice").await;
    let forged = with_wrong_secret(&key);
    let unknown = crafted_key("UnknownKeyId", "QQQQQQQQQQQQQQQQQQQQQQ");

    let auth = bearer(&forged);
    let secrets = [secret_of(&forged), secret_of(&key)];
    assert_refused(
        &h,
        "/",
        &[("authorization", auth.as_bytes())],
        "invalid_api_key",
        &secrets,
    )
    .await;
    let headers = [("x-api-key", forged.as_bytes())];
    assert_refused(&h, "/", &headers, "invalid_api_key", &secrets).await;
    // The checksum was valid, so the store was asked each time.
    assert_eq!(h.calls(), (0, 4));

    let same_id = |value: &str| {
        Raw::get("/")
            .header("x-request-id", "same")
            .header("authorization", bearer(value))
    };
    let wrong = h.send(same_id(&forged)).await;
    let absent = h.send(same_id(&unknown)).await;
    assert_eq!(wrong.body, absent.body);
    // Everything but the clock reads the same.
    let without_date = |reply: &support::Reply| -> Vec<(String, Vec<u8>)> {
        let mut headers = reply.headers.clone();
        headers.retain(|(name, _)| name != "date");
        headers
    };
    assert_eq!(without_date(&wrong), without_date(&absent));
}

#[tokio::test]
async fn disabled_revoked_and_expired_keys_are_api_key_inactive() {
    let h = Harness::start().await;
    let disabled = h.key("alice").await;
    let revoked = h.key("alice").await;
    let expired = h.key("alice").await;
    h.store.disable_key(&key_id(&disabled)).await.unwrap();
    h.store.revoke_key(&key_id(&revoked)).await.unwrap();
    let past = SystemTime::now() - Duration::from_secs(60);
    h.store
        .set_expiry(&key_id(&expired), Some(past))
        .await
        .unwrap();

    for key in [&disabled, &revoked, &expired] {
        let auth = bearer(key);
        let secrets = [secret_of(key)];
        let headers = [("authorization", auth.as_bytes())];
        assert_refused(&h, "/", &headers, "api_key_inactive", &secrets).await;
        let headers = [("x-api-key", key.as_bytes())];
        assert_refused(&h, "/", &headers, "api_key_inactive", &secrets).await;

        // Without the secret, the state stays hidden.
        let forged = with_wrong_secret(key);
        let auth = bearer(&forged);
        let headers = [("authorization", auth.as_bytes())];
        assert_refused(&h, "/", &headers, "invalid_api_key", &[secret_of(&forged)]).await;
    }
    assert_eq!(h.calls(), (0, 18));
}

#[tokio::test]
async fn a_deleted_key_is_invalid_api_key() {
    let h = Harness::start().await;
    let key = h.key("alice").await;
    assert_eq!(
        h.send(Raw::get("/").header("x-api-key", &key)).await.status,
        200
    );

    h.store.delete_key(&key_id(&key)).await.unwrap();
    let auth = bearer(&key);
    let headers = [("authorization", auth.as_bytes())];
    assert_refused(&h, "/", &headers, "invalid_api_key", &[secret_of(&key)]).await;

    assert_eq!(h.calls(), (1, 3));
}

#[tokio::test]
async fn a_disabled_user_is_user_inactive_but_only_for_the_right_secret() {
    let h = Harness::start().await;
    let key = h.key("mallory").await;
    h.store.disable_user("mallory").await.unwrap();

    let auth = bearer(&key);
    let headers = [("authorization", auth.as_bytes())];
    assert_refused(&h, "/", &headers, "user_inactive", &[secret_of(&key)]).await;
    let headers = [("x-api-key", key.as_bytes())];
    assert_refused(&h, "/", &headers, "user_inactive", &[secret_of(&key)]).await;

    let forged = with_wrong_secret(&key);
    let auth = bearer(&forged);
    let headers = [("authorization", auth.as_bytes())];
    assert_refused(&h, "/", &headers, "invalid_api_key", &[secret_of(&forged)]).await;

    h.store.enable_user("mallory").await.unwrap();
    let reply = h
        .send(Raw::get("/").header("authorization", bearer(&key)))
        .await;
    assert_success(&reply, &key, "mallory");
}

// ---------------------------------------------------------------------------
// Two headers, repeated headers

#[tokio::test]
async fn the_same_key_in_both_headers_is_accepted_and_both_are_removed() {
    let h = Harness::start().await;
    let key = h.key("alice").await;

    let request = Raw::get("/")
        .header("authorization", bearer(&key))
        .header("x-api-key", &key);
    let reply = h.send(request).await;

    let seen = assert_success(&reply, &key, "alice");
    assert_no_credentials_reached(&seen);
    assert_eq!(h.calls(), (1, 1));
}

#[tokio::test]
async fn x_api_key_wins_over_a_different_bearer_key_and_never_falls_back() {
    let h = Harness::start().await;
    let preferred = h.key("xavier").await;
    let other = h.key("bertha").await;

    let request = Raw::get("/")
        .header("authorization", bearer(&other))
        .header("x-api-key", &preferred);
    let seen = assert_success(&h.send(request).await, &preferred, "xavier");
    assert_no_credentials_reached(&seen);
    assert_eq!(h.calls(), (1, 1));

    // A broken preferred key is not rescued by a good Bearer key.
    let broken = with_one_char_changed(&preferred);
    let auth = bearer(&other);
    let headers = [
        ("authorization", auth.as_bytes()),
        ("x-api-key", broken.as_bytes()),
    ];
    let secrets = [secret_of(&other), secret_of(&broken)];
    let reply = h.send(Raw::get("/").headers(&headers)).await;
    assert_rejection(
        &reply,
        Expected::unauthorized("invalid_api_key", Envelope::Anthropic).secrets(&secrets),
    );

    // Nor is a wrong secret in the preferred header (a store call this time).
    let forged = with_wrong_secret(&preferred);
    let request = Raw::get("/")
        .header("authorization", bearer(&other))
        .header("x-api-key", &forged);
    let reply = h.send(request).await;
    assert_rejection(
        &reply,
        Expected::unauthorized("invalid_api_key", Envelope::Anthropic).secrets(&secrets),
    );
    assert_eq!(h.calls(), (1, 2));
}

#[tokio::test]
async fn a_foreign_token_beside_our_key_is_ignored_either_way_round() {
    let h = Harness::start().await;
    let key = h.key("alice").await;

    let ours_in_x_api_key = Raw::get("/")
        .header("authorization", "Bearer sk-upstream-ZZZforeignZZZ")
        .header("x-api-key", &key);
    let reply = h.send(ours_in_x_api_key).await;
    assert_no_credentials_reached(&assert_success(&reply, &key, "alice"));
    assert!(!reply.contains("ZZZforeignZZZ"));

    let ours_in_bearer = Raw::get("/")
        .header("x-api-key", "sk-ant-ZZZforeignZZZ")
        .header("authorization", bearer(&key));
    let reply = h.send(ours_in_bearer).await;
    assert_no_credentials_reached(&assert_success(&reply, &key, "alice"));
    assert!(!reply.contains("ZZZforeignZZZ"));

    assert_eq!(h.calls(), (2, 2));
}

#[tokio::test]
async fn a_repeated_header_is_accepted_with_identical_values_and_invalid_with_different_ones() {
    let h = Harness::start().await;
    let key = h.key("alice").await;
    let other = h.key("bob").await;

    let twice = Raw::get("/")
        .header("x-api-key", &key)
        .header("x-api-key", &key);
    assert_no_credentials_reached(&assert_success(&h.send(twice).await, &key, "alice"));
    let twice = Raw::get("/")
        .header("authorization", bearer(&key))
        .header("authorization", format!("bearer   {key}"));
    assert_no_credentials_reached(&assert_success(&h.send(twice).await, &key, "alice"));
    let with_foreign = Raw::get("/")
        .header("x-api-key", "sk-ant-foreign")
        .header("x-api-key", &key)
        .header("x-api-key", "");
    assert_no_credentials_reached(&assert_success(&h.send(with_foreign).await, &key, "alice"));
    assert_eq!(h.calls(), (3, 3));

    let secrets = [secret_of(&key), secret_of(&other)];
    let headers = [
        ("x-api-key", key.as_bytes()),
        ("x-api-key", other.as_bytes()),
    ];
    assert_refused(&h, "/", &headers, "invalid_api_key", &secrets).await;
    let (first, second) = (bearer(&key), bearer(&other));
    let headers = [
        ("authorization", first.as_bytes()),
        ("authorization", second.as_bytes()),
    ];
    assert_refused(&h, "/", &headers, "invalid_api_key", &secrets).await;
    // The conflict is decided before any store call, the right key beside it or not.
    let headers = [
        ("authorization", first.as_bytes()),
        ("authorization", second.as_bytes()),
        ("x-api-key", key.as_bytes()),
    ];
    assert_refused(&h, "/", &headers, "invalid_api_key", &secrets).await;

    assert_eq!(h.calls(), (3, 3));
}

#[tokio::test]
async fn a_key_in_the_query_string_is_never_read() {
    let h = Harness::start().await;
    let key = h.key("alice").await;

    let target = format!("/v1/models?api_key={key}&key={key}&x-api-key={key}");
    assert_refused(&h, &target, &[], "missing_api_key", &[secret_of(&key)]).await;

    assert_eq!(h.calls(), (0, 0));
}

// ---------------------------------------------------------------------------
// Hostile bytes

#[tokio::test]
async fn bytes_above_ascii_in_a_key_are_invalid_api_key_without_a_store_call() {
    let h = Harness::start().await;
    let key = h.key("alice").await;
    let mut high = key.clone().into_bytes();
    high[20] = 0xE9;
    let mut bearer_high = b"Bearer ".to_vec();
    bearer_high.extend_from_slice(&high);
    let utf8 = format!("Bearer cm-{}é", &key[3..key.len() - 2]);

    let secrets = [&key[21..38]];
    assert_refused(
        &h,
        "/",
        &[("x-api-key", &high)],
        "invalid_api_key",
        &secrets,
    )
    .await;
    assert_refused(
        &h,
        "/",
        &[("authorization", &bearer_high)],
        "invalid_api_key",
        &secrets,
    )
    .await;
    let headers = [("authorization", utf8.as_bytes())];
    assert_refused(&h, "/", &headers, "invalid_api_key", &secrets).await;

    assert_eq!(h.calls(), (0, 0));
}

#[tokio::test]
async fn control_characters_in_a_header_value_are_refused_by_hyper_before_the_layer() {
    let h = Harness::start().await;
    let key = h.key("alice").await;

    for control in [0x00u8, 0x01, 0x08, 0x1b, 0x7f] {
        let mut value = key.clone().into_bytes();
        value[20] = control;
        let mut auth = b"Bearer ".to_vec();
        auth.extend_from_slice(&value);

        for (name, value) in [("x-api-key", &value), ("authorization", &auth)] {
            let reply = h.send(Raw::get("/").header(name, value)).await;

            assert_eq!(reply.status, 400, "{control:#x} in {name}");
            assert!(!reply.contains(&key[21..38]));
        }
    }

    assert_eq!(h.calls(), (0, 0));
}

#[tokio::test]
async fn a_64_kib_x_api_key_starting_with_cm_is_invalid_without_a_store_call() {
    let h = Harness::start().await;
    let huge = format!("cm-{}", "A".repeat(64 * 1024));

    let headers = [("x-api-key", huge.as_bytes())];
    assert_refused(&h, "/", &headers, "invalid_api_key", &["AAAAAAAAAAAAAAAA"]).await;
    let auth = bearer(&huge);
    let headers = [("authorization", auth.as_bytes())];
    assert_refused(&h, "/", &headers, "invalid_api_key", &["AAAAAAAAAAAAAAAA"]).await;

    assert_eq!(h.calls(), (0, 0));
}

#[tokio::test]
async fn a_64_kib_foreign_bearer_token_beside_a_valid_x_api_key_is_ignored() {
    let h = Harness::start().await;
    let key = h.key("alice").await;
    let huge = format!("Bearer sk-{}", "b".repeat(64 * 1024));

    let request = Raw::get("/")
        .header("authorization", &huge)
        .header("x-api-key", &key);
    let reply = h.send(request).await;

    assert_no_credentials_reached(&assert_success(&reply, &key, "alice"));
    assert!(!reply.contains("bbbbbbbbbbbbbbbb"));
    assert_eq!(h.calls(), (1, 1));
}

#[tokio::test]
async fn a_rejected_request_body_is_never_read() {
    let h = Harness::start().await;
    let key = h.key("alice").await;
    let forged = with_wrong_secret(&key);

    // The body is announced but never sent: an answer proves nobody waited for it,
    // and no `100 Continue` proves nobody asked for it.
    for headers in [vec![], vec![("authorization", bearer(&forged))]] {
        let mut request = Raw::new("POST", "/v1/chat/completions")
            .header("content-type", "application/json")
            .header("content-length", "1048576")
            .header("expect", "100-continue");
        for (name, value) in &headers {
            request = request.header(name, value);
        }
        let reply = h.send(request).await;

        assert!(
            !reply.raw.starts_with(b"HTTP/1.1 100"),
            "asked for the body"
        );
        assert_eq!(reply.status, 401);
    }
    assert_eq!(h.calls(), (0, 1));
}

#[tokio::test]
async fn a_header_block_past_hypers_buffer_is_refused_by_hyper_before_the_layer() {
    let h = Harness::start().await;
    let key = h.key("alice").await;
    // hyper reads at most about 400 KiB of request head by default; 64 KiB values
    // stay well inside it, so for them the layer decides (tests above).
    let huge = format!("Bearer sk-{}", "b".repeat(512 * 1024));

    let request = Raw::get("/")
        .header("authorization", &huge)
        .header("x-api-key", &key);
    let reply = h.send(request).await;

    assert_eq!(reply.status, 431);
    assert_eq!(h.calls(), (0, 0));
}

// ---------------------------------------------------------------------------
// CORS preflights

fn preflight() -> Raw {
    Raw::new("OPTIONS", "/v1/chat/completions")
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "POST")
}

#[tokio::test]
async fn a_cors_preflight_passes_through_unauthenticated_by_default() {
    let h = Harness::start().await;

    let reply = h.send(preflight()).await;

    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["key_id"], json!(null));
    assert_eq!(h.calls(), (1, 0));
}

#[tokio::test]
async fn a_cors_preflight_passes_through_without_any_key_it_carries() {
    let h = Harness::start().await;
    let key = h.key("alice").await;

    let request = preflight()
        .header("authorization", bearer(&key))
        .header("x-api-key", "sk-ant-foreign");
    let reply = h.send(request).await;

    assert_eq!(reply.status, 200);
    assert!(!reply.contains(secret_of(&key)));
    assert_no_credentials_reached(&reply.json());
    assert_eq!(h.calls(), (1, 0));
}

#[tokio::test]
async fn a_cors_preflight_is_checked_when_passing_is_turned_off() {
    let h = Harness::start_with(Setup::default(), |layer| layer.pass_cors_preflight(false)).await;

    let reply = h.send(preflight()).await;

    assert_rejection(
        &reply,
        Expected::unauthorized("missing_api_key", Envelope::OpenAi),
    );
    assert_eq!(h.calls(), (0, 0));
}

#[tokio::test]
async fn an_options_request_that_is_not_a_preflight_is_checked() {
    let h = Harness::start().await;
    let plain = Raw::new("OPTIONS", "/v1/chat/completions");
    let origin_only = plain.clone().header("origin", "http://localhost:3000");
    let method_only = plain
        .clone()
        .header("access-control-request-method", "POST");
    let not_options = Raw::get("/v1/models")
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "POST");

    for request in [plain, origin_only, method_only, not_options] {
        let reply = h.send(request).await;
        assert_rejection(
            &reply,
            Expected::unauthorized("missing_api_key", Envelope::OpenAi),
        );
    }
    assert_eq!(h.calls(), (0, 0));
}

// ---------------------------------------------------------------------------
// Store outages

async fn assert_outage(h: &Harness) {
    let key = h.key("alice").await;
    let secrets = [secret_of(&key)];

    let reply = h
        .send(Raw::get("/").header("authorization", bearer(&key)))
        .await;
    let expected = Expected {
        status: 503,
        code: "auth_service_unavailable",
        envelope: Envelope::OpenAi,
        request_id: None,
        secrets: &secrets,
    };
    assert_rejection(&reply, expected);

    let request = Raw::get("/")
        .header("x-api-key", &key)
        .header("x-request-id", CLIENT_REQUEST_ID);
    let reply = h.send(request).await;
    let expected = Expected {
        envelope: Envelope::Anthropic,
        request_id: Some(CLIENT_REQUEST_ID),
        ..expected
    };
    assert_rejection(&reply, expected);

    assert_eq!(h.echo.calls(), 0);
    assert_eq!(h.counts.lookups(), 2);
}

#[tokio::test]
async fn a_failing_store_is_answered_with_503_auth_service_unavailable() {
    let setup = Setup {
        backend: Backend::Failing,
        ..Setup::default()
    };
    let h = Harness::start_with(setup, |layer| layer).await;

    assert_outage(&h).await;
}

#[tokio::test]
async fn a_hanging_store_is_answered_with_503_once_the_deadline_passes() {
    let setup = Setup {
        backend: Backend::Hanging,
        ..Setup::default()
    };
    let h = Harness::start_with(setup, |layer| layer.deadline(Duration::from_millis(200))).await;

    // `send` fails the test if no answer comes within ten seconds.
    assert_outage(&h).await;
}

#[tokio::test]
async fn a_checksum_failure_never_reaches_a_broken_store() {
    let setup = Setup {
        backend: Backend::Hanging,
        ..Setup::default()
    };
    let h = Harness::start_with(setup, |layer| layer).await;
    let key = h.key("alice").await;

    let broken = with_one_char_changed(&key);
    let headers = [("x-api-key", broken.as_bytes())];
    assert_refused(&h, "/", &headers, "invalid_api_key", &[secret_of(&broken)]).await;

    assert_eq!(h.calls(), (0, 0));
}

// ---------------------------------------------------------------------------
// Success

#[tokio::test]
async fn on_success_the_inner_service_sees_the_identity_and_no_credential_headers() {
    for backend in [Backend::Memory, Backend::Waiting] {
        let setup = Setup {
            backend,
            ..Setup::default()
        };
        let h = Harness::start_with(setup, |layer| layer).await;
        let key = h.key("alice").await;

        let reply = h
            .send(Raw::get("/v1/models").header("authorization", bearer(&key)))
            .await;
        assert_no_credentials_reached(&assert_success(&reply, &key, "alice"));
        let request = Raw::get("/v1/messages")
            .header("x-api-key", &key)
            .header("anthropic-version", ANTHROPIC_VERSION);
        let reply = h.send(request).await;
        assert_no_credentials_reached(&assert_success(&reply, &key, "alice"));

        assert_eq!(h.echo.calls(), 2, "{backend:?}");
        let expected_lookups = if backend == Backend::Waiting { 2 } else { 0 };
        assert_eq!(h.counts.lookups(), expected_lookups, "{backend:?}");
    }
}

#[tokio::test]
async fn keep_foreign_credentials_passes_a_foreign_token_on_but_never_our_key() {
    let h = Harness::start_with(Setup::default(), |layer| {
        layer.keep_foreign_credentials(true)
    })
    .await;
    let key = h.key("alice").await;

    let request = Raw::get("/")
        .header("authorization", "Bearer sk-upstream-token")
        .header("x-api-key", &key);
    let seen = assert_success(&h.send(request).await, &key, "alice");
    assert_eq!(seen["authorization"], json!(["Bearer sk-upstream-token"]));
    assert_eq!(seen["x_api_key"], json!([]));

    let request = Raw::get("/")
        .header("x-api-key", "sk-ant-upstream")
        .header("authorization", bearer(&key));
    let seen = assert_success(&h.send(request).await, &key, "alice");
    assert_eq!(seen["authorization"], json!([]));
    assert_eq!(seen["x_api_key"], json!(["sk-ant-upstream"]));
}

#[tokio::test]
async fn keep_foreign_credentials_never_passes_our_key_on_in_any_shape() {
    let h = Harness::start_with(Setup::default(), |layer| {
        layer.keep_foreign_credentials(true)
    })
    .await;
    let key = h.key("alice").await;
    let other = h.key("bob").await;
    // Values that are not candidates but still hold a `cm-` key.
    let shapes = [
        ("authorization", key.clone()),
        ("authorization", format!("Bearer Bearer {key}")),
        ("authorization", format!("Bearer {other}")),
        ("authorization", format!("Basic {key}")),
        ("authorization", format!("Bearer {key} {other}")),
    ];

    for (name, value) in &shapes {
        let request = Raw::get("/").header("x-api-key", &key).header(name, value);
        let seen = assert_success(&h.send(request).await, &key, "alice");
        assert!(
            !seen.to_string().contains("cm-"),
            "{name}: {value} reached: {seen}"
        );
    }
    let request = Raw::get("/")
        .header("authorization", bearer(&key))
        .header("x-api-key", format!("Bearer {key}"))
        .header("x-api-key", format!("sk-ant-1 {other}"));
    let seen = assert_success(&h.send(request).await, &key, "alice");
    assert!(!seen.to_string().contains("cm-"), "{seen}");
}

// ---------------------------------------------------------------------------
// Route families

#[tokio::test]
async fn the_openai_family_ignores_x_api_key_and_answers_in_the_openai_envelope() {
    let setup = Setup {
        family: RouteFamily::OpenAi,
        ..Setup::default()
    };
    let h = Harness::start_with(setup, |layer| layer).await;
    let key = h.key("alice").await;

    let headers = [("x-api-key", key.as_bytes())];
    assert_refused(&h, "/", &headers, "missing_api_key", &[secret_of(&key)]).await;
    let wrong = bearer(&with_one_char_changed(&key));
    let headers = [
        ("authorization", wrong.as_bytes()),
        ("x-api-key", key.as_bytes()),
    ];
    assert_refused(&h, "/", &headers, "invalid_api_key", &[secret_of(&key)]).await;
    assert_eq!(h.calls(), (0, 0));

    let request = Raw::get("/")
        .header("authorization", bearer(&key))
        .header("x-api-key", "sk-ant-anything");
    assert_no_credentials_reached(&assert_success(&h.send(request).await, &key, "alice"));
}

#[tokio::test]
async fn the_anthropic_family_always_answers_in_the_anthropic_envelope() {
    let setup = Setup {
        family: RouteFamily::Anthropic,
        ..Setup::default()
    };
    let h = Harness::start_with(setup, |layer| layer).await;
    let key = h.key("alice").await;

    assert_refused(&h, "/", &[], "missing_api_key", &[]).await;
    let forged = with_wrong_secret(&key);
    let wrong = bearer(&forged);
    let headers = [("authorization", wrong.as_bytes())];
    assert_refused(&h, "/", &headers, "invalid_api_key", &[secret_of(&forged)]).await;
    let reply = h.send(Raw::get("/")).await;
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("x-api-key"), "{message}");

    let reply = h
        .send(Raw::get("/").header("authorization", bearer(&key)))
        .await;
    assert_no_credentials_reached(&assert_success(&reply, &key, "alice"));
}

// ---------------------------------------------------------------------------
// Renderers and extensions

#[derive(Debug, Clone)]
struct PlainText;

impl RenderRejection for PlainText {
    fn render(&self, rejection: &Rejection, _: Envelope, request_id: &str) -> RenderedBody {
        RenderedBody {
            content_type: HeaderValue::from_static("text/plain; charset=utf-8"),
            body: Bytes::from(format!("refused: {} ({request_id})", rejection.kind())),
        }
    }
}

#[tokio::test]
async fn a_custom_renderer_replaces_the_body_while_status_challenge_and_request_id_stay() {
    let h = Harness::start_with(Setup::default(), |layer| layer.renderer(PlainText)).await;
    let key = h.key("alice").await;

    let request = Raw::get("/")
        .header("authorization", bearer(&with_wrong_secret(&key)))
        .header("x-request-id", CLIENT_REQUEST_ID);
    let reply = h.send(request).await;

    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.one("content-type").unwrap(),
        "text/plain; charset=utf-8"
    );
    assert_eq!(
        reply.one("www-authenticate").unwrap(),
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(reply.one("x-request-id").unwrap(), CLIENT_REQUEST_ID);
    assert_eq!(reply.one("request-id").unwrap(), CLIENT_REQUEST_ID);
    let expected = format!("refused: invalid_api_key ({CLIENT_REQUEST_ID})");
    assert_eq!(String::from_utf8(reply.body).unwrap(), expected);

    let reply = h.send(Raw::get("/")).await;
    assert_eq!(reply.one("www-authenticate").unwrap(), "Bearer");
    let id = reply.one("x-request-id").unwrap();
    assert!(is_fresh_request_id(&id));
    assert_eq!(
        String::from_utf8(reply.body).unwrap(),
        format!("refused: missing_api_key ({id})")
    );
}

#[tokio::test]
async fn the_rejection_kind_is_attached_to_the_response_extensions() {
    let store = MemoryKeyStore::new();
    let key = store
        .create_key(crossmodel_auth::NewKey::for_user("alice"))
        .await
        .unwrap();
    let key = key.key.expose().to_owned();
    let service = ApiKeyLayer::new(store).layer(Echo::default());
    let down = ApiKeyLayer::new(FaultStore(support::Fault::Fail)).layer(Echo::default());

    let request = |value: Option<String>| {
        let builder = Request::get("/v1/models");
        let builder = match value {
            Some(value) => builder.header("authorization", value),
            None => builder,
        };
        builder.body(Full::<Bytes>::default()).unwrap()
    };
    let cases = [
        (
            service.clone().oneshot(request(None)).await,
            RejectionKind::MissingApiKey,
        ),
        (
            service
                .clone()
                .oneshot(request(Some(bearer(&with_wrong_secret(&key)))))
                .await,
            RejectionKind::InvalidApiKey,
        ),
        (
            down.oneshot(request(Some(bearer(&key)))).await,
            RejectionKind::ServiceUnavailable,
        ),
    ];

    for (response, kind) in cases {
        let response = response.unwrap();
        assert_eq!(response.status(), kind.status());
        assert_eq!(response.extensions().get::<RejectionKind>(), Some(&kind));
        assert_eq!(
            response.extensions().get::<Rejection>().unwrap().kind(),
            kind
        );
    }
    let ok = service.oneshot(request(Some(bearer(&key)))).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok.extensions().get::<RejectionKind>().is_none());
}

// ---------------------------------------------------------------------------
// Signed keys

fn signed_format() -> KeyFormat {
    KeyFormat::signed([SigningSecret::new(vec![0x5a; 32]).unwrap()])
}

#[tokio::test]
async fn a_public_checksum_key_is_invalid_against_a_signed_layer_without_a_store_call() {
    let h = Harness::start_with(Setup::default(), |layer| layer.key_format(signed_format())).await;
    let public = h.key("alice").await;

    let auth = bearer(&public);
    let headers = [("authorization", auth.as_bytes())];
    assert_refused(&h, "/", &headers, "invalid_api_key", &[secret_of(&public)]).await;
    assert_eq!(h.calls(), (0, 0));

    // A key issued under the signing secret works.
    let signed = signed_format().generate().unwrap();
    h.store.insert(KeyRecord {
        id: signed.id(),
        digest: signed.digest(),
        name: "signed".to_owned(),
        state: KeyState::Active,
        expires_at: None,
        created_at: SystemTime::now(),
        last_used_at: None,
        user_id: "sig".to_owned(),
        user_state: UserState::Active,
        metadata: json!(null),
    });
    let reply = h
        .send(Raw::get("/").header("x-api-key", signed.expose()))
        .await;
    assert_success(&reply, signed.expose(), "sig");
}

// ---------------------------------------------------------------------------
// Request ids

#[tokio::test]
async fn a_client_request_id_is_echoed_only_when_short_and_visible_ascii() {
    let h = Harness::start().await;
    let longest = "r".repeat(64);
    let echoed = [
        CLIENT_REQUEST_ID,
        "a",
        "!#$%&'*+-.^_`|~0123456789",
        longest.as_str(),
    ];
    let too_long = "r".repeat(65);
    let replaced: [&[u8]; 4] = [
        too_long.as_bytes(),
        b"has space",
        b"caf\xc3\xa9",
        b"\xff\xfe",
    ];

    for id in echoed {
        let reply = h.send(Raw::get("/").header("x-request-id", id)).await;
        let expected = Expected::unauthorized("missing_api_key", Envelope::OpenAi).request_id(id);
        assert_rejection(&reply, expected);
    }
    let mut fresh = Vec::new();
    for id in replaced {
        let request = Raw::get("/")
            .header("x-request-id", id)
            .header("anthropic-version", ANTHROPIC_VERSION);
        let reply = h.send(request).await;
        let expected = Expected::unauthorized("missing_api_key", Envelope::Anthropic);
        fresh.push(assert_rejection(&reply, expected));
    }

    fresh.sort();
    fresh.dedup();
    assert_eq!(fresh.len(), 4, "fresh ids repeat: {fresh:?}");
}
