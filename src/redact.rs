//! Keeping keys out of text that other people read: logs, listings, messages.

use std::borrow::Cow;

use http::Method;

use crate::key::{KEY_ID_LEN, KEY_PREFIX, SECRET_LEN};

/// A request path as it may be logged: a segment that holds what may be a key is
/// cut, so a key put in a URL by mistake (`/v1/models/cm-…`, a wrong SDK base URL)
/// does not reach the logs. A plain `cm-` is cut from there on (`/v1/models/cm-…`);
/// other forms (`CM-…`, percent-encoded, a key without its prefix) lose the whole
/// segment (`…`). Paths with nothing of the kind come back borrowed.
///
/// The layer logs paths this way; use it in your own request logs too.
///
/// ```
/// use crossmodel_auth::redact_path;
///
/// assert_eq!(redact_path("/v1/models"), "/v1/models");
/// assert_eq!(redact_path("/v1/models/cm-AbC123_x/info"), "/v1/models/cm-…/info");
/// assert_eq!(redact_path("/v1/models/cm%2D4f7Qk2ZpX9aB_V3nL/info"), "/v1/models/…/info");
/// ```
pub fn redact_path(path: &str) -> Cow<'_, str> {
    if !path.split('/').any(segment_may_hold_key) {
        return Cow::Borrowed(path);
    }

    let mut shown = String::with_capacity(path.len());
    for (index, segment) in path.split('/').enumerate() {
        if index > 0 {
            shown.push('/');
        }
        match segment.find(KEY_PREFIX) {
            Some(at) if !segment_may_hold_key(&segment[..at]) => {
                shown.push_str(&segment[..at]);
                shown.push_str("cm-…");
            }
            _ if segment_may_hold_key(segment) => shown.push('…'),
            _ => shown.push_str(segment),
        }
    }
    Cow::Owned(shown)
}

/// A request method as it may be logged: the standard methods as they are, any
/// other as `OTHER` (a method is any token a client chooses, a key included).
///
/// ```
/// use crossmodel_auth::redact_method;
/// use http::Method;
///
/// assert_eq!(redact_method(&Method::POST), "POST");
/// assert_eq!(redact_method(&Method::from_bytes(b"CM-ABC").unwrap()), "OTHER");
/// ```
pub fn redact_method(method: &Method) -> &str {
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::PATCH,
        Method::CONNECT,
        Method::TRACE,
    ];

    if STANDARD.contains(method) {
        method.as_str()
    } else {
        "OTHER"
    }
}

/// Whether `text` holds what may be a key, or the start of one: `cm-` in any case,
/// percent-encoded or not, followed by at least an id's worth of letters, digits
/// and `_`; or a key's id, `_` and secret without the prefix. Use it to decide
/// that a value (a client's request id, a model name) must not be logged or
/// echoed.
///
/// ```
/// use crossmodel_auth::looks_like_key;
///
/// assert!(looks_like_key("cm-4f7Qk2ZpX9aB_V3nL0c8sRr1kTq5wYx2mZ70iG0zZ"));
/// assert!(looks_like_key("CM%2D4f7Qk2ZpX9aB_V3nL0c8"));
/// assert!(!looks_like_key("cm-production"));
/// ```
pub fn looks_like_key(text: &str) -> bool {
    let decoded = percent_decoded(text);

    has_prefixed_run(decoded.as_bytes()) || has_key_body(decoded.as_bytes())
}

fn segment_may_hold_key(segment: &str) -> bool {
    looks_like_key(segment) || contains_ignore_case(segment.as_bytes(), KEY_PREFIX.as_bytes())
}

/// `cm-` in any case, then more than an id's worth of `[A-Za-z0-9_]`.
fn has_prefixed_run(bytes: &[u8]) -> bool {
    (0..bytes.len().saturating_sub(KEY_PREFIX.len() - 1))
        .filter(|&at| bytes[at..at + KEY_PREFIX.len()].eq_ignore_ascii_case(KEY_PREFIX.as_bytes()))
        .any(|at| key_chars(&bytes[at + KEY_PREFIX.len()..]) > KEY_ID_LEN)
}

/// Twelve alphanumerics, `_`, then a secret's worth more: a key without `cm-`.
fn has_key_body(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(at, &byte)| {
        byte == b'_'
            && at >= KEY_ID_LEN
            && bytes[at - KEY_ID_LEN..at]
                .iter()
                .all(u8::is_ascii_alphanumeric)
            && bytes[at + 1..]
                .iter()
                .take_while(|byte| byte.is_ascii_alphanumeric())
                .count()
                >= SECRET_LEN
    })
}

fn key_chars(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .take_while(|byte| byte.is_ascii_alphanumeric() || **byte == b'_')
        .count()
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle))
}

/// Decodes `%XX` escapes (invalid ones are kept as they are); borrows when there
/// are none.
fn percent_decoded(text: &str) -> Cow<'_, str> {
    if !text.contains('%') {
        return Cow::Borrowed(text);
    }

    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let escaped = bytes
            .get(at + 1..at + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[at], escaped) {
            (b'%', Some(byte)) => {
                out.push(byte);
                at += 3;
            }
            (byte, _) => {
                out.push(byte);
                at += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyFormat;

    #[test]
    fn logged_paths_lose_anything_from_a_key_prefix_on_within_its_segment() {
        assert_eq!(redact_path("/v1/models"), "/v1/models");
        assert_eq!(
            redact_path("/v1/keys/cm-AAAAAAAAAAAA_BBBB/usage"),
            "/v1/keys/cm-…/usage"
        );
        assert_eq!(redact_path("/x/keycm-abc/cm-"), "/x/keycm-…/cm-…");
    }

    #[test]
    fn other_spellings_of_a_key_in_a_path_lose_their_segment() {
        let key = KeyFormat::public().generate().unwrap();
        let text = key.expose();
        let secret = &text[16..38];

        for path in [
            format!("/v1/models/cm%2D{}", &text[3..]),
            format!("/v1/models/%63m-{}", &text[3..]),
            format!("/v1/models/CM-{}", &text[3..]),
            format!("/v1/models/{}", &text[3..]),
            format!("/{text}/v1/models"),
        ] {
            let shown = redact_path(&path);
            assert!(!shown.contains(secret), "{shown}");
            assert!(shown.contains("/v1/models") || shown.starts_with("/v1/models"));
        }
        assert_eq!(redact_path("/v1/some_path/2024"), "/v1/some_path/2024");
    }

    #[test]
    fn keys_and_key_fragments_look_like_keys_but_names_do_not() {
        let key = KeyFormat::public().generate().unwrap();
        let text = key.expose();

        for suspicious in [
            text.to_owned(),
            format!("owner {text}"),
            text[..30].to_owned(),
            format!("x{}", &text[..16]),
            text.replacen("cm-", "CM-", 1),
            text.replacen("cm-", "cm%2D", 1),
            text[3..].to_owned(),
        ] {
            assert!(looks_like_key(&suspicious), "{}", suspicious.len());
        }
        for fine in [
            "alice",
            "cm-team",
            "cm-production",
            "team-cm-1",
            "cm-",
            "",
            "req_5mQ2d0cV1xYb7RkT3nW8aLpZ",
            "deepseek/deepseek-v4-pro",
            "100%",
        ] {
            assert!(!looks_like_key(fine), "{fine}");
        }
    }

    #[test]
    fn only_standard_methods_are_shown() {
        assert_eq!(redact_method(&Method::GET), "GET");
        let odd = Method::from_bytes(b"cm-AAAAAAAAAAAA_BBBB").unwrap();
        assert_eq!(redact_method(&odd), "OTHER");
    }
}
