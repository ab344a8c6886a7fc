//! Properties of key parsing and credential selection, checked on generated input.
//!
//! The key layout is checked against an independent model written from the `key`
//! module docs (shape, CRC-32 or HMAC checksum, base62 digits), so a difference
//! between docs and code fails here. Header maps are generated with repeated
//! `authorization` and `x-api-key` lines, every byte `HeaderValue::from_bytes`
//! admits, and stored keys whole, changed, truncated or extended, and are driven
//! through the real `ApiKeyService` over a store that records each id it is asked
//! for. The fuzz targets under `fuzz/` check the same properties at larger scale.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use crossmodel_auth::{
    ApiKeyLayer, Identity, KeyFormat, KeyId, KeyManager, KeyRecord, KeyStore, MemoryKeyStore,
    NewKey, RejectionKind, RouteFamily, SigningSecret, StoreError, Verifier,
};
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use tower::{Layer, ServiceExt};

// ---------------------------------------------------------------------------
// The documented layout, modelled independently.

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn six_digits(mut value: u64) -> [u8; 6] {
    let mut digits = [b'0'; 6];
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(value % 62) as usize];
        value /= 62;
    }
    digits
}

fn public_checksum(body: &[u8]) -> [u8; 6] {
    six_digits(u64::from(crc32fast::hash(body)))
}

fn signed_checksum(secret: &[u8], body: &[u8]) -> [u8; 6] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap();
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let first = u64::from_be_bytes(tag[..8].try_into().unwrap());
    six_digits(first % 62u64.pow(6))
}

/// `^cm-[0-9A-Za-z]{12}_[0-9A-Za-z]{28}$`.
fn has_documented_shape(text: &[u8]) -> bool {
    text.len() == 44
        && text.starts_with(b"cm-")
        && text[3..15].iter().all(u8::is_ascii_alphanumeric)
        && text[15] == b'_'
        && text[16..].iter().all(u8::is_ascii_alphanumeric)
}

fn assemble(id: &[u8], secret: &[u8], checksum: impl Fn(&[u8]) -> [u8; 6]) -> String {
    let mut text = [b"cm-".as_slice(), id, b"_", secret].concat();
    let sum = checksum(&text);
    text.extend_from_slice(&sum);
    String::from_utf8(text).unwrap()
}

fn signing_secret(byte: u8) -> SigningSecret {
    SigningSecret::new(vec![byte; 32]).unwrap()
}

/// The formats under test, and the model of which checksums each accepts.
#[derive(Debug, Clone, Copy)]
enum Which {
    Public,
    Single,
    Rotated,
}

impl Which {
    fn format(self) -> KeyFormat {
        match self {
            Self::Public => KeyFormat::public(),
            Self::Single => KeyFormat::signed([signing_secret(1)]),
            Self::Rotated => KeyFormat::signed([signing_secret(2), signing_secret(1)]),
        }
    }

    fn accepts(self, text: &[u8]) -> bool {
        if !has_documented_shape(text) {
            return false;
        }
        let (body, sum) = text.split_at(38);
        match self {
            Self::Public => public_checksum(body) == sum,
            Self::Single => signed_checksum(&[1; 32], body) == sum,
            Self::Rotated => {
                signed_checksum(&[2; 32], body) == sum || signed_checksum(&[1; 32], body) == sum
            }
        }
    }
}

fn which() -> impl Strategy<Value = Which> {
    prop_oneof![
        Just(Which::Public),
        Just(Which::Single),
        Just(Which::Rotated)
    ]
}

fn base62_bytes(len: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(proptest::sample::select(BASE62.as_slice()), len)
}

/// A well-formed key whose checksum was made by the public CRC or one of four
/// secrets (two of which no format under test accepts).
fn built_key() -> impl Strategy<Value = String> {
    (base62_bytes(12), base62_bytes(22), 0u8..5).prop_map(|(id, secret, issuer)| {
        if issuer == 4 {
            assemble(&id, &secret, public_checksum)
        } else {
            assemble(&id, &secret, |body| signed_checksum(&[issuer; 32], body))
        }
    })
}

/// Text near the key layout: built keys, changed keys, and anything at all.
fn key_like_text() -> impl Strategy<Value = String> {
    prop_oneof![
        built_key(),
        (built_key(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(key, at, byte)| {
            let mut bytes = key.into_bytes();
            let at = at.index(bytes.len());
            bytes[at] = byte;
            String::from_utf8_lossy(&bytes).into_owned()
        }),
        any::<String>(),
        proptest::collection::vec(any::<char>(), 44).prop_map(|chars| chars.into_iter().collect()),
    ]
}

fn without_digits(text: &str) -> String {
    text.chars().filter(|c| !c.is_ascii_digit()).collect()
}

proptest! {
    #[test]
    fn parse_accepts_exactly_the_documented_keys(which in which(), text in key_like_text()) {
        let parsed = which.format().parse(&text);

        prop_assert_eq!(parsed.is_ok(), which.accepts(text.as_bytes()));
        if let Err(error) = parsed {
            // Only a length may vary in what an error shows.
            let shown = without_digits(&format!("{error} | {error:?}"));
            prop_assert!(
                [
                    "key has  characters, expected  | Length()",
                    "key does not have the cm- key layout | Shape",
                    "key checksum does not match: mistyped or truncated | Checksum",
                ]
                .contains(&shown.as_str()),
                "{}", shown
            );
        }
    }

    #[test]
    fn parsed_keys_rebuild_to_the_same_bytes(which in which(), text in built_key()) {
        let format = which.format();
        let Ok(key) = format.parse(&text) else {
            return Ok(());
        };

        let rebuilt = format!("cm-{}_{}{}", key.id(), key.secret(), &text[38..]);
        prop_assert_eq!(&rebuilt, &text);
        let digest: [u8; 32] = Sha256::digest(key.secret().as_bytes()).into();
        let parsed_digest = *key.digest().as_bytes();
        prop_assert_eq!(parsed_digest, digest);
        prop_assert_eq!(key.redacted().to_string(), format!("cm-{}_…{}", key.id(), &text[40..]));
        let debug = format!("{key:?}");
        prop_assert!(!debug.contains(key.secret()));
    }

    #[test]
    fn generated_keys_fail_after_any_single_byte_change(
        which in which(),
        at in 0usize..44,
        byte in any::<u8>(),
    ) {
        let format = which.format();
        let key = format.generate().unwrap();
        let text = key.expose().as_bytes();
        prop_assume!(text[at] != byte);

        prop_assert!(has_documented_shape(text));
        prop_assert!(which.accepts(text));
        let mut changed = text.to_vec();
        changed[at] = byte;
        let changed = String::from_utf8_lossy(&changed).into_owned();
        prop_assert!(format.parse(&changed).is_err(), "position {}", at);
    }

    #[test]
    fn id_or_key_takes_a_bare_id_or_a_whole_valid_key(which in which(), text in key_like_text()) {
        let format = which.format();
        let trimmed = text.trim();
        let parsed = KeyId::from_id_or_key(&text, &format);

        let expected = if trimmed.starts_with("cm-") {
            format.parse(trimmed).ok().map(|key| key.id())
        } else {
            KeyId::parse(trimmed).ok()
        };
        prop_assert_eq!(parsed.as_ref().ok().copied(), expected);
        if let Err(error) = parsed {
            prop_assert_eq!(
                without_digits(&format!("{error} | {error:?}")),
                "not a key id or key ( characters); a key id is  letters and digits, \
                 as `keys list` shows it | InvalidKeyId { len:  }"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// A store with one key in each state, behind a recorder.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Accepted,
    KeyInactive,
    UserInactive,
    Unknown,
}

#[derive(Debug, Clone)]
struct FixtureKey {
    text: String,
    id: KeyId,
    expect: Expect,
}

async fn fixture_store() -> (MemoryKeyStore, Vec<FixtureKey>) {
    let store = MemoryKeyStore::new();
    let past = SystemTime::now() - Duration::from_secs(3600);
    let plan = [
        (NewKey::for_user("alice"), Expect::Accepted),
        (NewKey::for_user("bob"), Expect::Accepted),
        (NewKey::for_user("alice"), Expect::KeyInactive),
        (NewKey::for_user("alice"), Expect::KeyInactive),
        (
            NewKey::for_user("alice").expires_at(past),
            Expect::KeyInactive,
        ),
        (NewKey::for_user("mallory"), Expect::UserInactive),
        (NewKey::for_user("alice"), Expect::Unknown),
    ];

    let mut keys = Vec::new();
    for (new, expect) in plan {
        let created = store.create_key(new).await.unwrap();
        keys.push(FixtureKey {
            text: created.key.expose().to_owned(),
            id: created.key.id(),
            expect,
        });
    }
    store.disable_key(&keys[2].id).await.unwrap();
    store.revoke_key(&keys[3].id).await.unwrap();
    store.disable_user("mallory").await.unwrap();
    store.delete_key(&keys[6].id).await.unwrap();
    (store, keys)
}

/// Writes down every id it is asked for, on the synchronous and the waiting path.
#[derive(Debug, Clone)]
struct RecordingStore {
    inner: MemoryKeyStore,
    asked: Arc<Mutex<Vec<KeyId>>>,
    answer_now: bool,
}

impl RecordingStore {
    fn take_asked(&self) -> Vec<KeyId> {
        std::mem::take(&mut *self.asked.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn note(&self, id: &KeyId) {
        self.asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(*id);
    }
}

#[async_trait]
impl KeyStore for RecordingStore {
    async fn lookup(&self, id: &KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        self.note(id);
        self.inner.lookup(id).await
    }

    fn lookup_now(&self, id: &KeyId) -> Option<Result<Option<Arc<KeyRecord>>, StoreError>> {
        if !self.answer_now {
            return None;
        }
        self.note(id);
        self.inner.lookup_now(id)
    }
}

struct World {
    runtime: tokio::runtime::Runtime,
    store: MemoryKeyStore,
    keys: Vec<FixtureKey>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let (store, keys) = runtime.block_on(fixture_store());
        World {
            runtime,
            store,
            keys,
        }
    })
}

// ---------------------------------------------------------------------------
// Generated header maps.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    Authorization,
    XApiKey,
    AnthropicVersion,
    XRequestId,
    Cookie,
}

#[derive(Debug, Clone)]
enum Credential {
    Stored(usize),
    Changed(usize, prop::sample::Index, u8),
    Truncated(usize, prop::sample::Index),
    Appended(usize, Vec<u8>),
    UpperPrefix(usize),
    Forged(String),
    Foreign(Vec<u8>),
    Embedded(Vec<u8>, usize),
    Raw(Vec<u8>),
}

#[derive(Debug, Clone)]
enum Value {
    Raw(Vec<u8>),
    Scheme(String, &'static str, String, Credential, String),
    Bare(String, Credential, String),
}

fn name() -> impl Strategy<Value = Name> {
    prop_oneof![
        4 => Just(Name::Authorization),
        4 => Just(Name::XApiKey),
        1 => Just(Name::AnthropicVersion),
        1 => Just(Name::XRequestId),
        1 => Just(Name::Cookie),
    ]
}

fn whitespace() -> impl Strategy<Value = String> {
    proptest::collection::vec(prop_oneof![Just(' '), Just('\t')], 0..3)
        .prop_map(|chars| chars.into_iter().collect())
}

/// Any bytes `HeaderValue::from_bytes` admits: tab, 0x20–0x7e, 0x80–0xff.
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff];
    proptest::collection::vec(byte, 0..60)
}

fn credential() -> impl Strategy<Value = Credential> {
    let key = 0usize..7;
    prop_oneof![
        4 => key.clone().prop_map(Credential::Stored),
        2 => (key.clone(), any::<prop::sample::Index>(), any::<u8>())
            .prop_map(|(k, at, byte)| Credential::Changed(k, at, byte)),
        1 => (key.clone(), any::<prop::sample::Index>())
            .prop_map(|(k, len)| Credential::Truncated(k, len)),
        1 => (key.clone(), header_bytes()).prop_map(|(k, extra)| Credential::Appended(k, extra)),
        1 => key.clone().prop_map(Credential::UpperPrefix),
        1 => (base62_bytes(12), base62_bytes(22))
            .prop_map(|(id, secret)| Credential::Forged(assemble(&id, &secret, public_checksum))),
        1 => header_bytes().prop_map(Credential::Foreign),
        1 => (header_bytes(), key).prop_map(|(prefix, k)| Credential::Embedded(prefix, k)),
        1 => header_bytes().prop_map(Credential::Raw),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let scheme = proptest::sample::select(vec![
        "Bearer",
        "bearer",
        "BEARER",
        "bEaReR",
        "Basic",
        "Bearer Bearer",
    ]);
    prop_oneof![
        1 => header_bytes().prop_map(Value::Raw),
        3 => (whitespace(), scheme, whitespace(), credential(), whitespace())
            .prop_map(|(lead, scheme, gap, credential, trail)| {
                Value::Scheme(lead, scheme, gap, credential, trail)
            }),
        2 => (whitespace(), credential(), whitespace())
            .prop_map(|(lead, credential, trail)| Value::Bare(lead, credential, trail)),
    ]
}

fn render_credential(credential: &Credential, keys: &[FixtureKey]) -> Vec<u8> {
    let key = |index: &usize| keys[*index].text.clone().into_bytes();
    match credential {
        Credential::Stored(k) => key(k),
        Credential::Changed(k, at, byte) => {
            let mut text = key(k);
            let at = at.index(text.len());
            text[at] = *byte;
            text
        }
        Credential::Truncated(k, len) => {
            let mut text = key(k);
            text.truncate(len.index(text.len()));
            text
        }
        Credential::Appended(k, extra) => [key(k), extra.clone()].concat(),
        Credential::UpperPrefix(k) => {
            let mut text = key(k);
            text[..3].copy_from_slice(b"CM-");
            text
        }
        Credential::Forged(text) => text.clone().into_bytes(),
        Credential::Foreign(rest) => [b"sk-".as_slice(), rest].concat(),
        Credential::Embedded(prefix, k) => [prefix.clone(), key(k)].concat(),
        Credential::Raw(bytes) => bytes.clone(),
    }
}

fn render(value: &Value, keys: &[FixtureKey]) -> Vec<u8> {
    match value {
        Value::Raw(bytes) => bytes.clone(),
        Value::Scheme(lead, scheme, gap, credential, trail) => [
            lead.as_bytes(),
            scheme.as_bytes(),
            // A scheme needs at least one space before its credential.
            if gap.is_empty() { b" " } else { gap.as_bytes() },
            &render_credential(credential, keys),
            trail.as_bytes(),
        ]
        .concat(),
        Value::Bare(lead, credential, trail) => [
            lead.as_bytes(),
            &render_credential(credential, keys),
            trail.as_bytes(),
        ]
        .concat(),
    }
}

fn header_name(name: Name) -> HeaderName {
    match name {
        Name::Authorization => http::header::AUTHORIZATION,
        Name::XApiKey => HeaderName::from_static("x-api-key"),
        Name::AnthropicVersion => HeaderName::from_static("anthropic-version"),
        Name::XRequestId => HeaderName::from_static("x-request-id"),
        Name::Cookie => http::header::COOKIE,
    }
}

fn family() -> impl Strategy<Value = RouteFamily> {
    prop_oneof![
        Just(RouteFamily::Both),
        Just(RouteFamily::OpenAi),
        Just(RouteFamily::Anthropic),
    ]
}

// ---------------------------------------------------------------------------
// One request through the layer, and what each side saw.

struct Outcome {
    sent: HeaderMap,
    response: Response<Bytes>,
    asked: Vec<KeyId>,
    inner: Option<(HeaderMap, Option<Identity>)>,
}

type Seen = Arc<Mutex<Option<(HeaderMap, Option<Identity>)>>>;

fn run(
    lines: &[(Name, Value)],
    family: RouteFamily,
    keep_foreign: bool,
    answer_now: bool,
) -> Outcome {
    let world = world();
    let mut request = Request::post("/v1/messages?api_key=cm-in-the-query")
        .body(())
        .unwrap();
    for (name, value) in lines {
        if let Ok(value) = HeaderValue::from_bytes(&render(value, &world.keys)) {
            request.headers_mut().append(header_name(*name), value);
        }
    }
    let sent = request.headers().clone();

    let store = RecordingStore {
        inner: world.store.clone(),
        asked: Arc::default(),
        answer_now,
    };
    let seen = Seen::default();
    let inner = {
        let seen = Arc::clone(&seen);
        tower::service_fn(move |request: Request<()>| {
            let seen = Arc::clone(&seen);
            async move {
                let identity = request.extensions().get::<Identity>().cloned();
                *seen.lock().unwrap() = Some((request.headers().clone(), identity));
                Ok::<_, Infallible>(Response::new(Bytes::from_static(b"inner")))
            }
        })
    };
    let service = ApiKeyLayer::new(store.clone())
        .route_family(family)
        .keep_foreign_credentials(keep_foreign)
        .layer(inner);

    let response = world.runtime.block_on(service.oneshot(request)).unwrap();
    let inner = seen.lock().unwrap().take();
    Outcome {
        sent,
        response,
        asked: store.take_asked(),
        inner,
    }
}

/// Every id of a checksum-valid key found anywhere inside `value`.
fn valid_ids_within(value: &[u8]) -> Vec<KeyId> {
    if value.len() < 44 {
        return Vec::new();
    }
    value
        .windows(44)
        .filter(|window| Which::Public.accepts(window))
        .map(|window| KeyId::parse(std::str::from_utf8(&window[3..15]).unwrap()).unwrap())
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

fn read_values(sent: &HeaderMap, family: RouteFamily) -> Vec<Vec<u8>> {
    let mut names = vec![http::header::AUTHORIZATION];
    if family != RouteFamily::OpenAi {
        names.push(HeaderName::from_static("x-api-key"));
    }
    names
        .iter()
        .flat_map(|name| sent.get_all(name).iter())
        .map(|value| value.as_bytes().to_vec())
        .collect()
}

/// Whether a header value holds our key as the crate documents it: a token that
/// starts with `cm-`, or a key-shaped run anywhere. Such values are dropped even when
/// foreign credentials are kept.
fn holds_our_key(value: &[u8]) -> bool {
    value
        .split(|&byte| byte == b' ' || byte == b'\t')
        .any(|token| token.starts_with(b"cm-"))
        || value.windows(44).any(has_documented_shape)
}

fn lines() -> impl Strategy<Value = Vec<(Name, Value)>> {
    proptest::collection::vec((name(), value()), 0..6)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_store_is_asked_only_for_checksum_valid_ids_the_request_carried(
        lines in lines(),
        family in family(),
        keep in any::<bool>(),
        now in any::<bool>(),
    ) {
        let outcome = run(&lines, family, keep, now);
        let read = read_values(&outcome.sent, family);

        prop_assert!(outcome.asked.len() <= 1);
        for id in &outcome.asked {
            prop_assert!(read.iter().any(|value| valid_ids_within(value).contains(id)));
        }
    }

    #[test]
    fn only_a_whole_active_key_is_accepted_and_state_is_told_only_to_its_holder(
        lines in lines(),
        family in family(),
        keep in any::<bool>(),
        now in any::<bool>(),
    ) {
        let outcome = run(&lines, family, keep, now);
        let keys = &world().keys;
        let read = read_values(&outcome.sent, family);
        let holds = |key: &FixtureKey| read.iter().any(|value| contains(value, key.text.as_bytes()));
        let status = outcome.response.status();

        prop_assert!(status == StatusCode::OK || status == StatusCode::UNAUTHORIZED);
        prop_assert_eq!(status == StatusCode::OK, outcome.inner.is_some());
        if let Some((_, identity)) = &outcome.inner {
            let identity = identity.as_ref().unwrap();
            let key = keys.iter().find(|key| key.id == identity.key_id()).unwrap();
            prop_assert_eq!(key.expect, Expect::Accepted);
            prop_assert!(holds(key));
            prop_assert_eq!(&outcome.asked, &vec![key.id]);
        } else {
            let kind = *outcome.response.extensions().get::<RejectionKind>().unwrap();
            let told = match kind {
                RejectionKind::ApiKeyInactive => Some(Expect::KeyInactive),
                RejectionKind::UserInactive => Some(Expect::UserInactive),
                _ => None,
            };
            if let Some(told) = told {
                // The one key asked about is in that state, and the caller holds it whole.
                prop_assert_eq!(outcome.asked.len(), 1);
                let key = keys.iter().find(|key| key.id == outcome.asked[0]).unwrap();
                prop_assert_eq!(key.expect, told);
                prop_assert!(holds(key));
            }
        }
    }

    #[test]
    fn the_inner_service_never_sees_our_key(
        lines in lines(),
        family in family(),
        keep in any::<bool>(),
        now in any::<bool>(),
    ) {
        let outcome = run(&lines, family, keep, now);
        let Some((inner, _)) = &outcome.inner else {
            return Ok(());
        };

        for name in [http::header::AUTHORIZATION, HeaderName::from_static("x-api-key")] {
            let reached: Vec<&[u8]> = inner.get_all(&name).iter().map(HeaderValue::as_bytes).collect();
            let foreign: Vec<&[u8]> = outcome
                .sent
                .get_all(&name)
                .iter()
                .map(HeaderValue::as_bytes)
                .filter(|value| !holds_our_key(value))
                .collect();
            // No stored key, whole, travels on: not even inside a foreign token.
            for value in &reached {
                for key in &world().keys {
                    prop_assert!(!contains(value, key.text.as_bytes()), "{} kept {:?}", name, key);
                }
            }
            if keep {
                prop_assert_eq!(reached, foreign);
            } else {
                prop_assert!(reached.is_empty());
            }
        }
    }

    #[test]
    fn no_response_shows_a_secret_or_the_query(
        lines in lines(),
        family in family(),
        keep in any::<bool>(),
        now in any::<bool>(),
    ) {
        let outcome = run(&lines, family, keep, now);
        let echoed: Vec<&[u8]> = outcome
            .sent
            .get_all("x-request-id")
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        let mut shown = outcome.response.body().to_vec();
        for (name, value) in outcome.response.headers() {
            shown.extend_from_slice(name.as_str().as_bytes());
            shown.extend_from_slice(value.as_bytes());
        }

        for key in &world().keys {
            let secret = &key.text.as_bytes()[16..38];
            if !echoed.iter().any(|value| contains(value, secret)) {
                prop_assert!(!contains(&shown, secret));
            }
        }
        prop_assert!(!contains(&shown, b"cm-in-the-query"));
    }

    /// One key in one accepted form, alone or repeated identically, and foreign
    /// tokens beside it: the outcome is exactly the key's.
    #[test]
    fn a_clean_request_gets_exactly_its_keys_outcome(
        key in 0usize..7,
        form in 0usize..3,
        copies in 1usize..3,
        foreign in any::<bool>(),
        lead in whitespace(),
        trail in whitespace(),
        now in any::<bool>(),
    ) {
        let (name, scheme) = [
            (Name::XApiKey, None),
            (Name::Authorization, Some("Bearer")),
            (Name::Authorization, Some("bearer")),
        ][form];
        let credential = Credential::Stored(key);
        let value = match scheme {
            Some(scheme) => Value::Scheme(lead, scheme, " ".into(), credential, trail),
            None => Value::Bare(lead, credential, trail),
        };
        let mut lines = vec![(name, value); copies];
        if foreign {
            let other = if name == Name::XApiKey { Name::Authorization } else { Name::XApiKey };
            let token = Credential::Foreign(b"upstream-token".to_vec());
            lines.push((other, Value::Scheme(String::new(), "Bearer", " ".into(), token, String::new())));
        }

        let outcome = run(&lines, RouteFamily::Both, false, now);
        let expected = match world().keys[key].expect {
            Expect::Accepted => None,
            Expect::KeyInactive => Some(RejectionKind::ApiKeyInactive),
            Expect::UserInactive => Some(RejectionKind::UserInactive),
            Expect::Unknown => Some(RejectionKind::InvalidApiKey),
        };
        let kind = outcome.response.extensions().get::<RejectionKind>().copied();
        prop_assert_eq!(kind, expected);
        prop_assert_eq!(&outcome.asked, &vec![world().keys[key].id]);
    }

    /// `Verifier::verify` accepts exactly the active stored keys, surrounding
    /// whitespace aside, and asks the store only for checksum-valid ids.
    #[test]
    fn verify_accepts_exactly_whole_active_keys(
        lead in whitespace(),
        credential in credential(),
        trail in whitespace(),
        now in any::<bool>(),
    ) {
        let world = world();
        let rendered = render_credential(&credential, &world.keys);
        let Ok(core) = String::from_utf8(rendered) else {
            return Ok(());
        };
        let text = format!("{lead}{core}{trail}");
        let store = RecordingStore {
            inner: world.store.clone(),
            asked: Arc::default(),
            answer_now: now,
        };
        let verifier = Verifier::new(store.clone());

        let verdict = world.runtime.block_on(verifier.verify(&text));
        let whole = world.keys.iter().find(|key| key.text == core.trim_matches([' ', '\t']));
        match verdict {
            Ok(identity) => {
                let key = whole.unwrap();
                prop_assert_eq!(key.expect, Expect::Accepted);
                prop_assert_eq!(identity.key_id(), key.id);
            }
            Err(_) => {
                prop_assert!(whole.is_none_or(|key| key.expect != Expect::Accepted));
            }
        }
        for id in store.take_asked() {
            prop_assert!(valid_ids_within(text.as_bytes()).contains(&id));
        }
    }
}
