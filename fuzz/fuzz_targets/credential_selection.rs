//! Credential selection over arbitrary header maps, through the real `ApiKeyService`
//! over a store that records every id it is asked for.
//!
//! Properties checked on every input:
//! - the answer is 200 or 401 (the store is healthy), and the inner service runs
//!   exactly for the 200s;
//! - an accepted request held, in a header the route family reads, the whole text of
//!   an active key of the store, and the identity is that key's;
//! - the store is asked at most once, and only for the id of a checksum-valid key
//!   found in a header the family reads;
//! - a key's state (inactive key, inactive user) is told only to a caller who sent
//!   that whole key;
//! - the inner service never sees our key in `authorization` or `x-api-key`, and
//!   sees neither header at all unless foreign credentials are kept;
//! - no response carries a secret the request did not echo in its own request id.
#![no_main]

use std::convert::Infallible;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use arbitrary::Arbitrary;
use bytes::Bytes;
use crossmodel_auth::{
    ApiKeyLayer, ApiKeyService, Identity, JsonEnvelope, MemoryKeyStore, RejectionKind, RouteFamily,
};
use crossmodel_auth_fuzz::{
    Expect, FixtureKey, KEY_LEN, RecordingStore, assemble, base62, contains, fixture_store,
    has_documented_shape, public_checksum, valid_ids_within,
};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use libfuzzer_sys::fuzz_target;
use tokio::runtime::Runtime;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

type Inner = BoxCloneSyncService<Request<()>, Response<Bytes>, Infallible>;
type Guarded = ApiKeyService<Inner, RecordingStore<MemoryKeyStore>, JsonEnvelope>;

/// What the inner service saw of the last request it was called with.
type Seen = Arc<Mutex<Option<(HeaderMap, Option<Identity>)>>>;

struct World {
    runtime: Runtime,
    keys: Vec<FixtureKey>,
    seen: Seen,
    // One service per (family, keep foreign, answer now), with its recording store.
    services: Vec<(Guarded, RecordingStore<MemoryKeyStore>)>,
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    let (store, keys) = runtime.block_on(fixture_store());
    let seen = Seen::default();

    let mut services = Vec::new();
    for family in FAMILIES {
        for keep_foreign in [false, true] {
            for answer_now in [false, true] {
                let recording = RecordingStore::new(store.clone(), answer_now);
                let layer = ApiKeyLayer::new(recording.clone())
                    .route_family(family)
                    .keep_foreign_credentials(keep_foreign);
                services.push((tower::Layer::layer(&layer, inner(&seen)), recording));
            }
        }
    }
    World {
        runtime,
        keys,
        seen,
        services,
    }
});

const FAMILIES: [RouteFamily; 3] = [
    RouteFamily::Both,
    RouteFamily::OpenAi,
    RouteFamily::Anthropic,
];

fn inner(seen: &Seen) -> Inner {
    let seen = Arc::clone(seen);
    BoxCloneSyncService::new(tower::service_fn(move |request: Request<()>| {
        let seen = Arc::clone(&seen);
        async move {
            let identity = request.extensions().get::<Identity>().cloned();
            *seen.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((request.headers().clone(), identity));
            Ok::<_, Infallible>(Response::new(Bytes::from_static(b"inner")))
        }
    }))
}

#[derive(Arbitrary, Debug)]
struct Input {
    family: u8,
    keep_foreign: bool,
    answer_now: bool,
    lines: Vec<Line>,
}

#[derive(Arbitrary, Debug)]
struct Line {
    name: Name,
    value: Value,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    Authorization,
    XApiKey,
    AnthropicVersion,
    XRequestId,
    Cookie,
}

#[derive(Arbitrary, Debug)]
enum Value {
    Raw(Vec<u8>),
    Scheme {
        lead: u8,
        scheme: Scheme,
        gap: u8,
        credential: Credential,
        trail: u8,
    },
    Bare {
        lead: u8,
        credential: Credential,
        trail: u8,
    },
}

#[derive(Arbitrary, Debug)]
enum Scheme {
    Bearer,
    Lower,
    Upper,
    Mixed,
    Basic,
    Doubled,
}

#[derive(Arbitrary, Debug)]
enum Credential {
    Stored(u8),
    Changed { key: u8, at: u8, byte: u8 },
    Truncated { key: u8, len: u8 },
    Appended { key: u8, extra: Vec<u8> },
    UpperPrefix(u8),
    Forged { id: [u8; 12], secret: [u8; 22] },
    Foreign(Vec<u8>),
    Embedded { prefix: Vec<u8>, key: u8 },
    Raw(Vec<u8>),
}

fuzz_target!(|input: Input| {
    let world = &*WORLD;
    let family = usize::from(input.family) % FAMILIES.len();
    let index = family * 4 + usize::from(input.keep_foreign) * 2 + usize::from(input.answer_now);
    let (service, store) = &world.services[index];

    let request = build_request(&input.lines, &world.keys);
    let headers = request.headers().clone();
    store.take_asked();
    world
        .seen
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();

    let response = world
        .runtime
        .block_on(service.clone().oneshot(request))
        .unwrap_or_else(|never| match never {});
    let asked = store.take_asked();
    let seen = world
        .seen
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();

    let read = ReadHeaders::of(&headers, FAMILIES[family]);
    check_store_calls(&asked, &read);
    check_outcome(&response, seen.as_ref(), &asked, &read, &world.keys);
    if let Some((inner_headers, _)) = &seen {
        check_inner_headers(inner_headers, &headers, input.keep_foreign, &world.keys);
    }
    check_no_secret_in_response(&response, &headers, &world.keys);
});

fn build_request(lines: &[Line], keys: &[FixtureKey]) -> Request<()> {
    let mut request = Request::post("/v1/messages?api_key=cm-in-the-query")
        .body(())
        .expect("a valid request");
    for line in lines.iter().take(8) {
        let name = match line.name {
            Name::Authorization => http::header::AUTHORIZATION,
            Name::XApiKey => HeaderName::from_static("x-api-key"),
            Name::AnthropicVersion => HeaderName::from_static("anthropic-version"),
            Name::XRequestId => HeaderName::from_static("x-request-id"),
            Name::Cookie => http::header::COOKIE,
        };
        // Only what `HeaderValue::from_bytes` admits can reach a service.
        if let Ok(value) = HeaderValue::from_bytes(&render(&line.value, keys)) {
            request.headers_mut().append(name, value);
        }
    }
    request
}

fn render(value: &Value, keys: &[FixtureKey]) -> Vec<u8> {
    match value {
        Value::Raw(bytes) => bytes.clone(),
        Value::Scheme {
            lead,
            scheme,
            gap,
            credential,
            trail,
        } => {
            let mut out = whitespace(*lead);
            out.extend_from_slice(match scheme {
                Scheme::Bearer => b"Bearer",
                Scheme::Lower => b"bearer",
                Scheme::Upper => b"BEARER",
                Scheme::Mixed => b"bEaReR",
                Scheme::Basic => b"Basic",
                Scheme::Doubled => b"Bearer Bearer",
            });
            out.extend(whitespace(*gap));
            out.extend(credential_bytes(credential, keys));
            out.extend(whitespace(*trail));
            out
        }
        Value::Bare {
            lead,
            credential,
            trail,
        } => {
            let mut out = whitespace(*lead);
            out.extend(credential_bytes(credential, keys));
            out.extend(whitespace(*trail));
            out
        }
    }
}

/// Zero to three spaces or tabs, as the low bits of `bits` say.
fn whitespace(bits: u8) -> Vec<u8> {
    (0..bits % 4)
        .map(|i| {
            if bits >> (2 + i) & 1 == 0 {
                b' '
            } else {
                b'\t'
            }
        })
        .collect()
}

fn credential_bytes(credential: &Credential, keys: &[FixtureKey]) -> Vec<u8> {
    let key = |index: &u8| {
        keys[usize::from(*index) % keys.len()]
            .text
            .as_bytes()
            .to_vec()
    };
    match credential {
        Credential::Stored(index) => key(index),
        Credential::Changed {
            key: index,
            at,
            byte,
        } => {
            let mut text = key(index);
            let at = usize::from(*at) % text.len();
            text[at] = *byte;
            text
        }
        Credential::Truncated { key: index, len } => {
            let mut text = key(index);
            text.truncate(usize::from(*len) % text.len());
            text
        }
        Credential::Appended { key: index, extra } => {
            let mut text = key(index);
            text.extend_from_slice(extra);
            text
        }
        Credential::UpperPrefix(index) => {
            let mut text = key(index);
            text[..3].copy_from_slice(b"CM-");
            text
        }
        Credential::Forged { id, secret } => {
            assemble(&id.map(base62), &secret.map(base62), public_checksum).into_bytes()
        }
        Credential::Foreign(rest) => [b"sk-".as_slice(), rest].concat(),
        Credential::Embedded { prefix, key: index } => [prefix.clone(), key(index)].concat(),
        Credential::Raw(bytes) => bytes.clone(),
    }
}

/// The values of the credential headers the route family reads.
struct ReadHeaders {
    values: Vec<Vec<u8>>,
}

impl ReadHeaders {
    fn of(headers: &HeaderMap, family: RouteFamily) -> Self {
        let mut values: Vec<Vec<u8>> = headers
            .get_all(http::header::AUTHORIZATION)
            .iter()
            .map(|value| value.as_bytes().to_vec())
            .collect();
        if family != RouteFamily::OpenAi {
            values.extend(
                headers
                    .get_all("x-api-key")
                    .iter()
                    .map(|value| value.as_bytes().to_vec()),
            );
        }
        Self { values }
    }

    fn holds_whole(&self, key: &FixtureKey) -> bool {
        self.values
            .iter()
            .any(|value| contains(value, key.text.as_bytes()))
    }
}

/// At most one store call, and only for a checksum-valid id the request carried in a
/// header the family reads.
fn check_store_calls(asked: &[crossmodel_auth::KeyId], read: &ReadHeaders) {
    assert!(
        asked.len() <= 1,
        "{} store calls for one request",
        asked.len()
    );
    for id in asked {
        let carried = read
            .values
            .iter()
            .any(|value| valid_ids_within(value).contains(id));
        assert!(
            carried,
            "store asked for {id}, which no read header carried"
        );
    }
}

fn check_outcome(
    response: &Response<Bytes>,
    seen: Option<&(HeaderMap, Option<Identity>)>,
    asked: &[crossmodel_auth::KeyId],
    read: &ReadHeaders,
    keys: &[FixtureKey],
) {
    let status = response.status();
    assert!(
        status == StatusCode::OK || status == StatusCode::UNAUTHORIZED,
        "status {status} from a healthy store"
    );
    assert_eq!(
        status == StatusCode::OK,
        seen.is_some(),
        "inner ran iff 200"
    );

    if let Some((_, identity)) = seen {
        let identity = identity
            .as_ref()
            .expect("an accepted request carries an Identity");
        let key = keys
            .iter()
            .find(|key| key.id == identity.key_id())
            .expect("the identity is a key of the store");
        assert_eq!(key.expect, Expect::Accepted, "{key:?} was accepted");
        assert!(read.holds_whole(key), "accepted without the whole key");
        assert_eq!(asked, [key.id], "the store was asked for the accepted key");
        return;
    }

    let kind = *response
        .extensions()
        .get::<RejectionKind>()
        .expect("every rejection carries its kind");
    let told = match kind {
        RejectionKind::ApiKeyInactive => Some(Expect::KeyInactive),
        RejectionKind::UserInactive => Some(Expect::UserInactive),
        _ => None,
    };
    if let Some(told) = told {
        let [asked] = asked else {
            panic!("state told after {} store calls", asked.len());
        };
        let owner = keys
            .iter()
            .find(|key| key.id == *asked)
            .expect("a key of the store");
        assert_eq!(owner.expect, told, "{owner:?} told as {kind}");
        assert!(
            read.holds_whole(owner),
            "state told to a caller without the whole key"
        );
    }
}

/// The inner service never sees our key: without the keep option, no credential
/// header at all; with it, exactly the values that were not ours, in order.
fn check_inner_headers(
    inner: &HeaderMap,
    sent: &HeaderMap,
    keep_foreign: bool,
    keys: &[FixtureKey],
) {
    for name in [
        http::header::AUTHORIZATION,
        HeaderName::from_static("x-api-key"),
    ] {
        let reached: Vec<&[u8]> = inner
            .get_all(&name)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        let foreign: Vec<&[u8]> = sent
            .get_all(&name)
            .iter()
            .map(HeaderValue::as_bytes)
            .filter(|value| !holds_our_key(value))
            .collect();

        for value in &reached {
            for key in keys {
                assert!(
                    !contains(value, key.text.as_bytes()),
                    "{name}: a whole key went on"
                );
            }
        }
        if keep_foreign {
            assert_eq!(
                reached, foreign,
                "{name}: kept values differ from the foreign ones"
            );
        } else {
            assert!(reached.is_empty(), "{name} reached the inner service");
        }
    }
}

/// Whether a header value holds our key as the crate documents it: a token that
/// starts with `cm-`, or a key-shaped run anywhere.
fn holds_our_key(value: &[u8]) -> bool {
    value
        .split(|&byte| byte == b' ' || byte == b'\t')
        .any(|token| token.starts_with(b"cm-"))
        || value.windows(KEY_LEN).any(has_documented_shape)
}

fn check_no_secret_in_response(response: &Response<Bytes>, sent: &HeaderMap, keys: &[FixtureKey]) {
    let echoed: Vec<&[u8]> = sent
        .get_all("x-request-id")
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    let mut shown = response.body().to_vec();
    for (name, value) in response.headers() {
        shown.extend_from_slice(name.as_str().as_bytes());
        shown.extend_from_slice(value.as_bytes());
    }

    for key in keys {
        let secret = &key.text.as_bytes()[16..38];
        if echoed.iter().any(|value| contains(value, secret)) {
            continue;
        }
        assert!(!contains(&shown, secret), "a secret reached the response");
    }
    assert!(
        !contains(&shown, b"cm-in-the-query"),
        "the query string reached the response"
    );
}
