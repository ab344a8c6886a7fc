//! The HTTP side of a rejection: status, challenge, retry hint and request ids.

use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::header::{
    CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Request, Response};

use crate::header::Envelope;
use crate::redact::looks_like_key;
use crate::rejection::{Rejection, RejectionKind, RenderRejection};

/// Read by the OpenAI SDKs.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Read by the Anthropic SDKs.
const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");

/// A client-sent request id is reused only up to this length.
const MAX_REQUEST_ID_LEN: usize = 64;

/// Builds the error response for `rejection` of `request`.
pub(crate) fn reject<B, ResBody, R>(
    request: &Request<B>,
    rejection: Rejection,
    envelope: Envelope,
    renderer: &R,
) -> Response<ResBody>
where
    ResBody: From<Bytes>,
    R: RenderRejection,
{
    let request_id = request_id_of(request);
    let id_text = request_id.to_str().unwrap_or_default();
    let rendered = renderer.render(&rejection, envelope, id_text);

    let mut response = Response::new(ResBody::from(rendered.body));
    *response.status_mut() = rejection.status();
    // Room for every header below at once, instead of growing the map twice.
    *response.headers_mut() = HeaderMap::with_capacity(6);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, rendered.content_type);
    if let Some(challenge) = challenge(rejection.kind()) {
        headers.insert(WWW_AUTHENTICATE, challenge);
    }
    if rejection.kind() == RejectionKind::ServiceUnavailable {
        // Both SDKs honour it and retry twice, a second apart.
        headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    headers.insert(X_REQUEST_ID, request_id.clone());
    headers.insert(REQUEST_ID, request_id);

    response.extensions_mut().insert(rejection.kind());
    response.extensions_mut().insert(rejection);
    response
}

/// RFC 6750 §3: a bare challenge when no credential came, `invalid_token` otherwise;
/// none on a 503, which is no authentication failure.
fn challenge(kind: RejectionKind) -> Option<HeaderValue> {
    match kind {
        RejectionKind::MissingApiKey => Some(HeaderValue::from_static("Bearer")),
        RejectionKind::ServiceUnavailable => None,
        _ => Some(HeaderValue::from_static("Bearer error=\"invalid_token\"")),
    }
}

/// The request id of an error response: an outer layer's, else the client's own,
/// else a new one.
///
/// The length limit is for what a client sends; an outer layer's id is the server's
/// own and is kept as it is, so that its logs and this response agree. It only has
/// to be non-empty text, as the Anthropic body repeats it.
fn request_id_of<B>(request: &Request<B>) -> HeaderValue {
    let outer = outer_layer_id(request).filter(|value| !value.is_empty() && value.to_str().is_ok());
    let client = || {
        request
            .headers()
            .get(X_REQUEST_ID)
            .filter(|value| is_usable_id(value))
    };

    outer
        .or_else(client)
        .cloned()
        .unwrap_or_else(new_request_id)
}

#[cfg(feature = "tower-http")]
fn outer_layer_id<B>(request: &Request<B>) -> Option<&HeaderValue> {
    request
        .extensions()
        .get::<tower_http::request_id::RequestId>()
        .map(tower_http::request_id::RequestId::header_value)
}

#[cfg(not(feature = "tower-http"))]
fn outer_layer_id<B>(_: &Request<B>) -> Option<&HeaderValue> {
    None
}

/// A client's id is echoed only when short, visible ASCII, and not a key sent in
/// the wrong header (it would be echoed and logged).
fn is_usable_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    let fits = !bytes.is_empty()
        && bytes.len() <= MAX_REQUEST_ID_LEN
        && bytes.iter().all(u8::is_ascii_graphic);

    fits && !value.to_str().is_ok_and(looks_like_key)
}

/// `req_` and 24 base62 characters, unique in the process and unpredictable across
/// processes. Request ids are not secrets, so a keyed hash of a counter will do; it
/// costs no system call.
fn new_request_id() -> HeaderValue {
    const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    let keys = KEYS.get_or_init(RandomState::new);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Eight digits per 64-bit word: 62⁸ is far below 2⁶⁴, so every digit is close to
    // uniform and none is stuck at zero.
    let mut bits = [0u8, 1, 2].map(|part| keys.hash_one((count, part)));

    let mut id = *b"req_000000000000000000000000";
    for (index, slot) in id[4..].iter_mut().enumerate() {
        let word = &mut bits[index / 8];
        *slot = BASE62[(*word % 62) as usize];
        *word /= 62;
    }
    HeaderValue::from_maybe_shared(Bytes::copy_from_slice(&id))
        .unwrap_or_else(|_| HeaderValue::from_static("req_unavailable"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_for(request: Request<()>) -> String {
        request_id_of(&request).to_str().unwrap().to_owned()
    }

    #[test]
    fn new_ids_have_the_documented_shape_and_differ() {
        let first = new_request_id();
        let second = new_request_id();
        let text = first.to_str().unwrap();

        assert_ne!(first, second);
        assert_eq!(text.len(), 28);
        assert!(text.starts_with("req_"));
        assert!(text[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn every_position_of_new_ids_varies() {
        let ids: Vec<HeaderValue> = (0..200).map(|_| new_request_id()).collect();

        for position in 4..28 {
            let first = ids[0].as_bytes()[position];
            let varies = ids.iter().any(|id| id.as_bytes()[position] != first);
            assert!(varies, "position {position} is the same in 200 ids");
        }
    }

    #[test]
    fn client_ids_are_reused_only_when_short_and_visible() {
        let with = |value: &str| {
            Request::builder()
                .header("x-request-id", value)
                .body(())
                .unwrap()
        };

        assert_eq!(id_for(with("abc-123")), "abc-123");
        assert!(id_for(with(&"a".repeat(65))).starts_with("req_"));
        assert!(id_for(with("has space")).starts_with("req_"));
        let key = crate::KeyFormat::public().generate().unwrap();
        assert!(id_for(with(key.expose())).starts_with("req_"));
        assert!(id_for(Request::new(())).starts_with("req_"));
    }
}
