//! Nothing the crate writes shows a secret: not its logs at TRACE, not a response
//! header or body, not the `Debug` or `Display` of any public type that holds a key
//! or part of one.
//!
//! Every key here carries one recognisable secret, so any eight characters of it in
//! any output is a leak. Malformed values carry a recognisable id too: the id of a
//! value whose checksum is not valid is attacker text and must not be shown either.
//! The query string carries a marker that must never be logged.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use crossmodel_auth::{
    ApiKeyLayer, Identity, KeyDigest, KeyFormat, KeyId, KeyManager, KeyRecord, KeyState, KeyStore,
    MemoryKeyStore, NewKey, Rejection, SigningSecret, StoreError, UserState, Verifier,
};
use http::{HeaderValue, Request, Response, StatusCode};
use tower::{Layer, ServiceExt};
use tracing_subscriber::fmt::MakeWriter;

/// The secret of every key in these tests.
const SECRET: &str = "SECRETsecretSECRETsecr";

/// A second secret, for "right id, wrong secret".
const WRONG_SECRET: &str = "WRONGwrongWRONGwrongWR";

/// The id every malformed value is built from; it must never be shown.
const MALFORMED_ID: &str = "MalfId000001";

/// Marks the query string; it must never be logged or echoed.
const QUERY_MARK: &str = "QueryMark0042";

/// Signing secret bytes, recognisable too.
const SIGNING: &[u8; 32] = b"SIGNINGsecretSIGNINGsecretSIGNIN";

// ---------------------------------------------------------------------------
// Keys with a chosen secret: built per the documented layout.

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn public_key(id: &str, secret: &str) -> String {
    let body = format!("cm-{id}_{secret}");
    let mut crc = u64::from(crc32fast::hash(body.as_bytes()));
    let mut sum = [b'0'; 6];
    for digit in sum.iter_mut().rev() {
        *digit = BASE62[(crc % 62) as usize];
        crc /= 62;
    }
    format!("{body}{}", std::str::from_utf8(&sum).unwrap())
}

fn record(id: &str, state: KeyState, user: &str, expires_at: Option<SystemTime>) -> KeyRecord {
    KeyRecord {
        id: KeyId::parse(id).unwrap(),
        digest: KeyDigest::of_secret(SECRET),
        name: format!("key {id}"),
        state,
        expires_at,
        created_at: SystemTime::now(),
        last_used_at: None,
        user_id: user.to_owned(),
        user_state: UserState::Active,
        metadata: serde_json::json!({"team": "leak-tests"}),
    }
}

/// Ids of the keys the store holds, by what presenting them should get.
struct Ids;

impl Ids {
    const GOOD: &str = "LeakGood0001";
    const OTHER: &str = "LeakOther001";
    const DISABLED: &str = "LeakDisabled";
    const REVOKED: &str = "LeakRevoked1";
    const EXPIRED: &str = "LeakExpired1";
    const USER_OFF: &str = "LeakUserOff1";
    const DELETED: &str = "LeakDeleted1";
}

async fn leak_store() -> MemoryKeyStore {
    let store = MemoryKeyStore::new();
    let past = SystemTime::now() - Duration::from_secs(60);

    store.insert(record(Ids::GOOD, KeyState::Active, "alice", None));
    store.insert(record(Ids::OTHER, KeyState::Active, "alice", None));
    store.insert(record(Ids::DISABLED, KeyState::Disabled, "alice", None));
    store.insert(record(Ids::REVOKED, KeyState::Revoked, "alice", None));
    store.insert(record(Ids::EXPIRED, KeyState::Active, "alice", Some(past)));
    store.insert(record(Ids::USER_OFF, KeyState::Active, "mallory", None));
    store.insert(record(Ids::DELETED, KeyState::Active, "alice", None));

    store.disable_user("mallory").await.unwrap();
    store
        .delete_key(&KeyId::parse(Ids::DELETED).unwrap())
        .await
        .unwrap();
    store
}

/// Eight characters of a secret anywhere is a leak; so is its digest in hex, a
/// malformed value's id, the query string and the signing secret.
fn forbidden() -> Vec<String> {
    let mut forbidden: Vec<String> = [SECRET, WRONG_SECRET]
        .iter()
        .flat_map(|secret| {
            (0..=secret.len() - 8).map(move |start| secret[start..start + 8].to_owned())
        })
        .collect();
    forbidden.push(KeyDigest::of_secret(SECRET).to_hex());
    forbidden.push(MALFORMED_ID.to_owned());
    forbidden.push(QUERY_MARK.to_owned());
    forbidden.push(String::from_utf8_lossy(&SIGNING[..12]).into_owned());
    forbidden
}

fn assert_clean(what: &str, text: &str) {
    for mark in forbidden() {
        assert!(!text.contains(&mark), "{what} shows {mark:?}:\n{text}");
    }
}

// ---------------------------------------------------------------------------
// Log capture: a TRACE subscriber writing into a buffer, on this thread.

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn take(&self) -> String {
        let bytes = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Self;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

// ---------------------------------------------------------------------------
// Stores that fail and hang.

#[derive(Debug, Clone, Copy)]
enum Broken {
    Failing,
    Hanging,
}

#[async_trait]
impl KeyStore for Broken {
    async fn lookup(&self, _: &KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        match self {
            Self::Failing => Err(StoreError::unavailable(
                "key database unreachable; check that it is running",
                io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused"),
            )),
            Self::Hanging => std::future::pending().await,
        }
    }
}

// ---------------------------------------------------------------------------
// The requests.

/// One request: its name, its credential headers (name, raw value), its URI, the
/// store it meets, and the status it must get.
struct Case {
    name: &'static str,
    headers: Vec<(&'static str, Vec<u8>)>,
    uri: String,
    store: Which,
    status: StatusCode,
}

#[derive(Debug, Clone, Copy)]
enum Which {
    Healthy,
    Failing,
    Hanging,
}

fn key(id: &str) -> String {
    public_key(id, SECRET)
}

fn bearer(value: &str) -> Vec<u8> {
    format!("Bearer {value}").into_bytes()
}

/// A valid key of `MALFORMED_ID` with one secret character changed: checksum fails.
fn changed_key() -> String {
    let mut text = key(MALFORMED_ID).into_bytes();
    text[20] = if text[20] == b'x' { b'y' } else { b'x' };
    String::from_utf8(text).unwrap()
}

fn cases() -> Vec<Case> {
    let good = key(Ids::GOOD);
    let malformed = key(MALFORMED_ID);
    let plain = "/v1/chat/completions".to_owned();
    let case = |name, headers: Vec<(&'static str, Vec<u8>)>, status| Case {
        name,
        headers,
        uri: plain.clone(),
        store: Which::Healthy,
        status,
    };
    let unauthorized = StatusCode::UNAUTHORIZED;
    let mut non_ascii = format!("cm-{MALFORMED_ID}_").into_bytes();
    non_ascii.extend_from_slice(b"\xffSECRETsecret\x80SECRETs");
    let huge = format!("cm-{MALFORMED_ID}_{}", SECRET.repeat(3000));

    let mut cases = vec![
        case("missing", vec![], unauthorized),
        case("empty", vec![("authorization", vec![])], unauthorized),
        case(
            "bearer alone",
            vec![("authorization", b"Bearer".to_vec())],
            unauthorized,
        ),
        case(
            "other scheme",
            vec![("authorization", format!("Basic {good}").into_bytes())],
            unauthorized,
        ),
        case(
            "bare key",
            vec![("authorization", good.clone().into_bytes())],
            unauthorized,
        ),
        case(
            "doubled scheme",
            vec![("authorization", bearer(&format!("Bearer {good}")))],
            unauthorized,
        ),
        case(
            "foreign",
            vec![("authorization", bearer(&format!("sk-{SECRET}")))],
            unauthorized,
        ),
        case(
            "prefix case",
            vec![(
                "authorization",
                bearer(&malformed.replacen("cm-", "CM-", 1)),
            )],
            unauthorized,
        ),
        case(
            "one char changed",
            vec![("x-api-key", changed_key().into_bytes())],
            unauthorized,
        ),
        case(
            "truncated",
            vec![("authorization", bearer(&malformed[..40]))],
            unauthorized,
        ),
        case(
            "appended",
            vec![("authorization", bearer(&format!("{malformed}Z")))],
            unauthorized,
        ),
        case(
            "wrong secret",
            vec![(
                "x-api-key",
                public_key(Ids::GOOD, WRONG_SECRET).into_bytes(),
            )],
            unauthorized,
        ),
        case(
            "disabled",
            vec![("x-api-key", key(Ids::DISABLED).into_bytes())],
            unauthorized,
        ),
        case(
            "revoked",
            vec![("x-api-key", key(Ids::REVOKED).into_bytes())],
            unauthorized,
        ),
        case(
            "expired",
            vec![("x-api-key", key(Ids::EXPIRED).into_bytes())],
            unauthorized,
        ),
        case(
            "deleted",
            vec![("x-api-key", key(Ids::DELETED).into_bytes())],
            unauthorized,
        ),
        case(
            "user disabled",
            vec![("authorization", bearer(&key(Ids::USER_OFF)))],
            unauthorized,
        ),
        case(
            "both headers, same key",
            vec![
                ("x-api-key", good.clone().into_bytes()),
                ("authorization", bearer(&good)),
            ],
            StatusCode::OK,
        ),
        case(
            "both headers, different keys",
            vec![
                ("x-api-key", good.clone().into_bytes()),
                ("authorization", bearer(&key(Ids::OTHER))),
            ],
            StatusCode::OK,
        ),
        case(
            "both headers, malformed preferred",
            vec![
                ("x-api-key", changed_key().into_bytes()),
                ("authorization", bearer(&good)),
            ],
            unauthorized,
        ),
        case(
            "repeated identical",
            vec![
                ("x-api-key", good.clone().into_bytes()),
                ("x-api-key", good.clone().into_bytes()),
            ],
            StatusCode::OK,
        ),
        case(
            "repeated different",
            vec![
                ("x-api-key", good.clone().into_bytes()),
                ("x-api-key", changed_key().into_bytes()),
            ],
            unauthorized,
        ),
        case(
            "non-ascii bytes",
            vec![("x-api-key", non_ascii)],
            unauthorized,
        ),
        case(
            "64 KiB value",
            vec![("authorization", bearer(&huge))],
            unauthorized,
        ),
        case(
            "64 KiB foreign beside a good key",
            vec![
                (
                    "authorization",
                    bearer(&format!("sk-{}", SECRET.repeat(3000))),
                ),
                ("x-api-key", good.clone().into_bytes()),
            ],
            StatusCode::OK,
        ),
        case(
            "success",
            vec![("authorization", bearer(&good))],
            StatusCode::OK,
        ),
        Case {
            name: "key only in the query string",
            headers: vec![],
            uri: format!("/v1/chat/completions?api_key={good}&mark={QUERY_MARK}"),
            store: Which::Healthy,
            status: unauthorized,
        },
        Case {
            name: "key in the path",
            headers: vec![],
            uri: format!("/v1/keys/{good}/usage"),
            store: Which::Healthy,
            status: unauthorized,
        },
        Case {
            name: "malformed key in the path",
            headers: vec![("authorization", bearer(&changed_key()))],
            uri: format!("/v1/keys/x{}", changed_key()),
            store: Which::Healthy,
            status: unauthorized,
        },
        Case {
            name: "rejected with a query string",
            headers: vec![("authorization", bearer(&changed_key()))],
            uri: format!("/v1/models?mark={QUERY_MARK}"),
            store: Which::Healthy,
            status: unauthorized,
        },
        Case {
            name: "store failing",
            headers: vec![("authorization", bearer(&good))],
            uri: format!("/v1/models?mark={QUERY_MARK}"),
            store: Which::Failing,
            status: StatusCode::SERVICE_UNAVAILABLE,
        },
        Case {
            name: "store hanging past a short deadline",
            headers: vec![("x-api-key", good.clone().into_bytes())],
            uri: format!("/v1/models?mark={QUERY_MARK}"),
            store: Which::Hanging,
            status: StatusCode::SERVICE_UNAVAILABLE,
        },
    ];
    // The same wrong inputs in the Anthropic envelope, whose body carries more fields.
    for (name, value) in [
        (
            "anthropic: wrong secret",
            public_key(Ids::GOOD, WRONG_SECRET),
        ),
        ("anthropic: one char changed", changed_key()),
        ("anthropic: disabled", key(Ids::DISABLED)),
    ] {
        let mut anthropic = case(name, vec![("x-api-key", value.into_bytes())], unauthorized);
        anthropic
            .headers
            .push(("anthropic-version", b"2023-06-01".to_vec()));
        cases.push(anthropic);
    }
    cases
}

/// Runs a case through the layer; returns everything it showed: logs, response
/// status, headers and body, and the rejection attached to the response.
async fn send(case: &Case, healthy: &MemoryKeyStore, logs: &Captured) -> String {
    let mut request = Request::post(case.uri.as_str()).body(()).unwrap();
    for (name, value) in &case.headers {
        let value = HeaderValue::from_bytes(value).unwrap();
        request.headers_mut().append(*name, value);
    }

    let inner = tower::service_fn(|request: Request<()>| async move {
        let who = request.extensions().get::<Identity>().unwrap();
        let body = format!("hello {}", who.user_id());
        Ok::<_, Infallible>(Response::new(Bytes::from(body)))
    });
    let short = Duration::from_millis(50);
    let response = match case.store {
        Which::Healthy => {
            let layer = ApiKeyLayer::new(healthy.clone());
            layer.layer(inner).oneshot(request).await
        }
        Which::Failing => {
            ApiKeyLayer::new(Broken::Failing)
                .layer(inner)
                .oneshot(request)
                .await
        }
        Which::Hanging => {
            let layer = ApiKeyLayer::new(Broken::Hanging).deadline(short);
            tokio::time::timeout(Duration::from_secs(10), layer.layer(inner).oneshot(request))
                .await
                .expect("the deadline answers a hanging store")
        }
    }
    .unwrap();

    assert_eq!(response.status(), case.status, "{}", case.name);
    let mut shown = format!("{:?}\n", response.status());
    for (name, value) in response.headers() {
        shown.push_str(&format!(
            "{name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    if let Some(rejection) = response.extensions().get::<Rejection>() {
        shown.push_str(&format!("{rejection:?}\n{rejection}\n"));
    }
    shown.push_str(&String::from_utf8_lossy(response.body()));
    shown.push('\n');
    shown.push_str(&logs.take());
    shown
}

#[test]
fn no_request_shows_a_secret_a_malformed_id_or_the_query_in_logs_or_responses() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();

    runtime.block_on(async {
        let store = leak_store().await;
        logs.take();

        let mut logged_anything = false;
        for case in cases() {
            let shown = send(&case, &store, &logs).await;
            assert_clean(case.name, &shown);
            logged_anything |= shown.contains("crossmodel_auth");
        }
        // The capture works: the layer did log at TRACE/DEBUG, so silence is not why
        // nothing leaked.
        assert!(logged_anything, "no log line was captured");
    });
}

#[test]
fn the_capture_would_see_a_leak() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .finish();

    tracing::subscriber::with_default(subscriber, || {
        tracing::trace!(presented = SECRET, "a careless line");
    });
    let caught = std::panic::catch_unwind(|| assert_clean("careless", &logs.take()));
    assert!(
        caught.is_err(),
        "the leak check must flag a secret in the logs"
    );
}

#[test]
fn verify_rejections_never_show_what_was_presented() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();

    runtime.block_on(async {
        let verifier = Verifier::new(leak_store().await);
        for case in cases() {
            for (_, value) in &case.headers {
                let Ok(text) = std::str::from_utf8(value) else {
                    continue;
                };
                if let Err(rejection) = verifier.verify(text).await {
                    assert_clean(case.name, &format!("{rejection:?} {rejection}"));
                }
            }
        }
    });
}

#[test]
fn debug_and_display_of_every_key_holding_type_are_redacted() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();

    runtime.block_on(async {
        let store = leak_store().await;
        let good = key(Ids::GOOD);
        let format = KeyFormat::public();
        let presented = format.parse(&good).unwrap();
        let record = store.lookup(&presented.id()).await.unwrap().unwrap();
        let identity = Verifier::new(store.clone()).verify(&good).await.unwrap();
        let signing = SigningSecret::new(SIGNING.to_vec()).unwrap();
        let signed = KeyFormat::signed([signing.clone()]);
        let layer = ApiKeyLayer::new(store.clone()).key_format(signed.clone());
        let service = layer
            .clone()
            .layer(tower::service_fn(|_: Request<()>| async {
                Ok::<_, Infallible>(Response::new(Bytes::new()))
            }));

        let mut shown = vec![
            format!("{presented:?}"),
            format!("{} {:?}", presented.redacted(), presented.redacted()),
            format!("{record:?}"),
            format!("{identity:?}"),
            format!("{:?}", presented.digest()),
            format!("{:?}", Verifier::new(store.clone())),
            format!("{layer:?}"),
            format!("{service:?}"),
            format!("{format:?} {signed:?}"),
            format!("{signing:?}"),
            format!("{store:?}"),
        ];

        // Malformed values: their errors show a kind and a length, nothing else.
        for text in [
            changed_key(),
            key(MALFORMED_ID)[..40].to_owned(),
            format!("{good}x"),
        ] {
            let error = format.parse(&text).unwrap_err();
            shown.push(format!("{error:?} {error}"));
            let error = KeyId::from_id_or_key(&text, &format).unwrap_err();
            shown.push(format!("{error:?} {error}"));
        }

        // A signing secret refused as too short shows its length only.
        let weak = SigningSecret::new(SIGNING[..20].to_vec()).unwrap_err();
        shown.push(format!("{weak:?} {weak}"));

        // A management call given a whole key: the error names the id, no more.
        let unknown = public_key("LeakUnknown1", SECRET);
        let id = KeyId::from_id_or_key(&unknown, &format).unwrap();
        let error = store.disable_key(&id).await.unwrap_err();
        shown.push(format!("{error:?} {error}"));

        // A created key and its record.
        let created = store
            .create_key(NewKey::for_user("alice").name("laptop"))
            .await
            .unwrap();
        let created_secret = created.key.expose()[16..38].to_owned();
        let created_shown = format!("{created:?} {} {:?}", created.key, created.key);
        assert!(!created_shown.contains(&created_secret), "{created_shown}");
        assert!(created_shown.contains(&created.key.id().to_string()));

        for text in shown {
            assert_clean("debug/display", &text);
        }
    });
}

/// The crate wipes the keys it owns on drop (`zeroize`). Freed memory cannot be read
/// without `unsafe`, which this crate forbids, so this checks what can be checked
/// from outside: the owning fields are the wiping wrappers, and the plaintext a
/// caller reads is the one the type holds (no second copy made by `expose`).
#[test]
fn owned_keys_live_in_wiping_wrappers() {
    let source = include_str!("../src/key.rs");
    assert!(
        source.contains("text: Zeroizing<String>"),
        "ApiKey's text must be Zeroizing"
    );
    assert!(
        source.contains("pub struct SigningSecret(Zeroizing<Vec<u8>>)"),
        "SigningSecret must be Zeroizing"
    );

    let key = KeyFormat::public().generate().unwrap();
    assert!(std::ptr::eq(key.expose(), key.expose()));
    assert!(std::mem::needs_drop::<crossmodel_auth::ApiKey>());
    assert!(std::mem::needs_drop::<SigningSecret>());
}

/// The SQLite store behind the cache: its own logs (and sqlx's, at TRACE, from
/// whatever thread they come) and the `Debug` of both stores show neither the secret
/// nor its digest. The subscriber is global here because sqlx runs SQLite on a
/// worker thread of its own.
#[test]
fn a_database_store_behind_the_cache_logs_no_secret() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let path = std::env::temp_dir().join(format!("crossmodel-no-leak-{}.db", std::process::id()));
    let url = format!("sqlite://{}", path.display());
    let shown = runtime.block_on(async {
        let sqlite = crossmodel_auth::SqliteKeyStore::open(&url).await.unwrap();
        let created = sqlite.create_key(NewKey::for_user("alice")).await.unwrap();
        let disabled = sqlite.create_key(NewKey::for_user("alice")).await.unwrap();
        sqlite.disable_key(&disabled.key.id()).await.unwrap();
        let cache = crossmodel_auth::CachedKeyStore::new(sqlite.clone());
        let layer = ApiKeyLayer::new(cache.clone());

        let whole = created.key.expose().to_owned();
        let mut wrong = whole.clone().into_bytes();
        wrong[20] = if wrong[20] == b'x' { b'y' } else { b'x' };
        let wrong = String::from_utf8(wrong).unwrap();
        let presented = [whole.clone(), wrong, disabled.key.expose().to_owned()];

        let mut statuses = Vec::new();
        for key in presented.iter().chain(presented.iter()) {
            let request = Request::get("/v1/models")
                .header("authorization", format!("Bearer {key}"))
                .body(())
                .unwrap();
            let inner = tower::service_fn(|_: Request<()>| async {
                Ok::<_, Infallible>(Response::new(Bytes::new()))
            });
            let response = layer.clone().layer(inner).oneshot(request).await.unwrap();
            statuses.push(response.status().as_u16());
        }
        assert_eq!(statuses, [200, 401, 401, 200, 401, 401]);
        sqlite.flush().await.unwrap();
        let listed = sqlite.list_keys().await.unwrap();

        let secrets = [
            created.key.expose()[16..38].to_owned(),
            disabled.key.expose()[16..38].to_owned(),
        ];
        let digests = [
            created.key.digest().to_hex(),
            disabled.key.digest().to_hex(),
        ];
        let text = format!(
            "{sqlite:?}\n{cache:?}\n{created:?}\n{listed:?}\n{}",
            logs.take()
        );
        sqlite.close().await.unwrap();
        (text, secrets, digests)
    });
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }

    let (text, secrets, digests) = shown;
    assert!(
        text.contains("sqlx"),
        "sqlx logged nothing: the capture is broken"
    );
    for secret in secrets.iter().chain(&digests) {
        assert!(
            !text.contains(secret.as_str()),
            "a secret or digest was shown:\n{text}"
        );
    }
}
