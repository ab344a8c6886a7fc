//! Finding the key among a request's headers: `Authorization: Bearer` and
//! `x-api-key`, with the rules of the SPEC's §2.
//!
//! Only values that start with `cm-` are candidates; anything else a client sends
//! (its own upstream token, another scheme) is either ignored beside a candidate or,
//! alone, decides which rejection the caller gets. Every value of a repeated header
//! is read (`get_all`): `HeaderMap::get` would silently pick the first.

use http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};

use crate::key::{KEY_ID_LEN, KEY_LEN, KEY_PREFIX};
use crate::rejection::Reason;

/// The `x-api-key` header of Anthropic-style APIs.
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The header Anthropic SDKs send on every request.
pub const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");

/// Which API's conventions a layer follows: where it reads keys from and which
/// error envelope it answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RouteFamily {
    /// OpenAI-compatible routes: `Authorization: Bearer` only, OpenAI envelope.
    OpenAi,
    /// Anthropic-compatible routes: `x-api-key` (preferred) and `Authorization:
    /// Bearer`, Anthropic envelope.
    Anthropic,
    /// A whole gateway: both headers, `x-api-key` preferred, and the envelope chosen
    /// per request (Anthropic when the request carries `anthropic-version` or a
    /// non-empty `x-api-key`).
    #[default]
    Both,
}

/// Which error envelope a response uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Envelope {
    /// `{"error":{"message","type","param","code"}}`.
    OpenAi,
    /// `{"type":"error","error":{…},"request_id"}`.
    Anthropic,
}

impl RouteFamily {
    pub(crate) fn reads_x_api_key(self) -> bool {
        !matches!(self, Self::OpenAi)
    }

    /// The envelope a rejection uses, given whether the request sent a non-empty
    /// `x-api-key` (as [`select`] found) and its other headers. Worked out only when
    /// rejecting: a request that passes never needs it.
    pub(crate) fn envelope(self, x_api_key_sent: bool, headers: &HeaderMap) -> Envelope {
        match self {
            Self::OpenAi => Envelope::OpenAi,
            Self::Anthropic => Envelope::Anthropic,
            Self::Both => {
                if x_api_key_sent || headers.contains_key(ANTHROPIC_VERSION) {
                    Envelope::Anthropic
                } else {
                    Envelope::OpenAi
                }
            }
        }
    }
}

/// What the headers of a request hold, as far as authentication goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Credential<'a> {
    /// One `cm-` candidate, visible ASCII and no longer than a key; not yet parsed.
    Candidate(&'a str),
    /// No candidate: the request is rejected for this reason.
    Rejected(Reason),
}

/// One header value, classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value<'a> {
    /// Empty, whitespace, or a scheme with nothing after it: as if absent.
    Empty,
    /// Starts with `cm-`.
    Ours(&'a [u8]),
    /// A credential that is not ours (`sk-…`, `CM-…`).
    Foreign,
    /// `Authorization` with another scheme than Bearer.
    OtherScheme,
    /// `Authorization` with a bare value and no scheme.
    NoScheme,
}

/// Everything one header name contributed.
#[derive(Debug, Default, Clone, Copy)]
struct Scan<'a> {
    sent: bool,
    ours: Option<&'a [u8]>,
    conflicting: bool,
    foreign: bool,
    other_scheme: bool,
    no_scheme: bool,
}

impl<'a> Scan<'a> {
    fn of(values: impl Iterator<Item = &'a HeaderValue>, classify: fn(&[u8]) -> Value<'_>) -> Self {
        let mut scan = Self::default();

        for value in values {
            let value = classify(value.as_bytes());
            scan.sent |= value != Value::Empty;

            match value {
                Value::Empty => {}
                Value::Ours(candidate) => match scan.ours {
                    None => scan.ours = Some(candidate),
                    Some(seen) if seen == candidate => {}
                    Some(_) => scan.conflicting = true,
                },
                Value::Foreign => scan.foreign = true,
                Value::OtherScheme => scan.other_scheme = true,
                Value::NoScheme => scan.no_scheme = true,
            }
        }
        scan
    }
}

/// The credential of a request, and what decides the envelope of its rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Selection<'a> {
    pub(crate) credential: Credential<'a>,
    /// Whether a non-empty `x-api-key` came (read only where the family reads it).
    pub(crate) x_api_key_sent: bool,
}

/// Picks the credential of a request under the rules of `family`.
pub(crate) fn select(headers: &HeaderMap, family: RouteFamily) -> Selection<'_> {
    let x_api_key = if family.reads_x_api_key() {
        Scan::of(headers.get_all(X_API_KEY).iter(), classify_x_api_key)
    } else {
        Scan::default()
    };
    let authorization = Scan::of(
        headers.get_all(AUTHORIZATION).iter(),
        classify_authorization,
    );

    Selection {
        credential: choose(&x_api_key, &authorization),
        x_api_key_sent: x_api_key.sent,
    }
}

fn choose<'a>(x_api_key: &Scan<'a>, authorization: &Scan<'a>) -> Credential<'a> {
    // Different keys in one header are never resolved by picking one.
    if x_api_key.conflicting || authorization.conflicting {
        return Credential::Rejected(Reason::ConflictingKeys);
    }

    // The preferred header wins outright: no fallback to the other.
    if let Some(candidate) = x_api_key.ours.or(authorization.ours) {
        return candidate_or_malformed(candidate);
    }

    let reason = if x_api_key.foreign || authorization.foreign {
        Reason::ForeignKey
    } else if authorization.other_scheme {
        Reason::OtherScheme
    } else if authorization.no_scheme {
        Reason::NoScheme
    } else {
        Reason::Missing
    };
    Credential::Rejected(reason)
}

/// Whether a header value holds a `cm-` key anywhere: such a value is dropped even
/// when foreign credentials are kept.
///
/// Wider than what counts as a candidate on purpose: a bare key, `Bearer Bearer
/// cm-…` or a losing second key are not candidates, but forwarding them would still
/// hand one of our keys to the inner service. So is a whole key embedded in a
/// token (`"cm-…"`, `token=cm-…`, `sk-x,cm-…`): a client that wraps our key in its
/// own credential still must not have it forwarded.
pub(crate) fn holds_our_key(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    bytes
        .split(|&byte| is_ows(byte))
        .any(|token| token.starts_with(KEY_PREFIX.as_bytes()))
        || bytes.windows(KEY_LEN).any(has_key_layout)
}

/// `cm-`, twelve alphanumerics, `_`, 28 alphanumerics: the key layout without its
/// checksum, which needs the key format and does not matter here.
fn has_key_layout(window: &[u8]) -> bool {
    let separator = KEY_PREFIX.len() + KEY_ID_LEN;
    window.starts_with(KEY_PREFIX.as_bytes())
        && window[separator] == b'_'
        && window[KEY_PREFIX.len()..]
            .iter()
            .enumerate()
            .all(|(at, byte)| at + KEY_PREFIX.len() == separator || byte.is_ascii_alphanumeric())
}

fn candidate_or_malformed(candidate: &[u8]) -> Credential<'_> {
    // Cheap checks first: nothing longer than a key is hashed or parsed.
    if candidate.len() > KEY_LEN || !candidate.iter().all(u8::is_ascii_graphic) {
        return Credential::Rejected(Reason::Malformed);
    }

    match std::str::from_utf8(candidate) {
        Ok(text) => Credential::Candidate(text),
        Err(_) => Credential::Rejected(Reason::Malformed),
    }
}

fn classify_x_api_key(value: &[u8]) -> Value<'_> {
    credential_value(trim(value))
}

fn classify_authorization(value: &[u8]) -> Value<'_> {
    let value = trim(value);
    if value.is_empty() {
        return Value::Empty;
    }

    let Some(split) = value.iter().position(|&byte| is_ows(byte)) else {
        // A lone `Bearer` carries nothing; any other lone word is a bare value.
        return if value.eq_ignore_ascii_case(b"bearer") {
            Value::Empty
        } else {
            Value::NoScheme
        };
    };
    let (scheme, rest) = value.split_at(split);

    if scheme.eq_ignore_ascii_case(b"bearer") {
        credential_value(trim(rest))
    } else {
        Value::OtherScheme
    }
}

fn credential_value(credential: &[u8]) -> Value<'_> {
    if credential.is_empty() {
        Value::Empty
    } else if credential.starts_with(KEY_PREFIX.as_bytes()) {
        Value::Ours(credential)
    } else {
        Value::Foreign
    }
}

/// Optional whitespace of RFC 9110 §5.6.3: spaces and tabs.
fn is_ows(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

pub(crate) fn trim(mut value: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = value {
        if !is_ows(*first) {
            break;
        }
        value = rest;
    }
    while let [rest @ .., last] = value {
        if !is_ows(*last) {
            break;
        }
        value = rest;
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "cm-AAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBCCCCCC";
    const OTHER: &str = "cm-DDDDDDDDDDDD_BBBBBBBBBBBBBBBBBBBBBBCCCCCC";

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        map
    }

    fn pick(pairs: &[(&str, &[u8])]) -> Credential<'static> {
        let map = Box::leak(Box::new(headers(pairs)));
        select(map, RouteFamily::Both).credential
    }

    fn rejected(reason: Reason) -> Credential<'static> {
        Credential::Rejected(reason)
    }

    #[test]
    fn no_headers_is_missing() {
        assert_eq!(pick(&[]), rejected(Reason::Missing));
    }

    #[test]
    fn empty_and_whitespace_values_count_as_absent() {
        for value in [
            &b""[..],
            b"   ",
            b"\t",
            b"Bearer",
            b"bearer   ",
            b"Bearer \t ",
        ] {
            assert_eq!(
                pick(&[("authorization", value)]),
                rejected(Reason::Missing),
                "{value:?}"
            );
        }
        assert_eq!(pick(&[("x-api-key", b"  ")]), rejected(Reason::Missing));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_whitespace_tolerant() {
        for value in [
            format!("Bearer {KEY}"),
            format!("bearer {KEY}"),
            format!("BEARER {KEY}"),
            format!("BeArEr    {KEY}"),
            format!("Bearer\t{KEY}"),
            format!("  Bearer {KEY}  "),
        ] {
            assert_eq!(
                pick(&[("authorization", value.as_bytes())]),
                Credential::Candidate(KEY),
                "{value:?}"
            );
        }
    }

    #[test]
    fn other_schemes_and_bare_keys_are_missing_with_a_reason() {
        assert_eq!(
            pick(&[("authorization", b"Basic dXNlcjpwYXNz")]),
            rejected(Reason::OtherScheme)
        );
        assert_eq!(
            pick(&[("authorization", KEY.as_bytes())]),
            rejected(Reason::NoScheme)
        );
    }

    #[test]
    fn foreign_credentials_alone_are_invalid() {
        for value in [
            "Bearer sk-abc123",
            "Bearer CM-abc",
            &format!("Bearer Bearer {KEY}"),
        ] {
            assert_eq!(
                pick(&[("authorization", value.as_bytes())]),
                rejected(Reason::ForeignKey),
                "{value}"
            );
        }
        assert_eq!(
            pick(&[("x-api-key", b"sk-ant-123")]),
            rejected(Reason::ForeignKey)
        );
    }

    #[test]
    fn foreign_credential_beside_ours_is_ignored_both_ways() {
        let bearer_ours = format!("Bearer {KEY}");

        assert_eq!(
            pick(&[
                ("x-api-key", b"sk-ant-xyz"),
                ("authorization", bearer_ours.as_bytes())
            ]),
            Credential::Candidate(KEY)
        );
        assert_eq!(
            pick(&[
                ("x-api-key", KEY.as_bytes()),
                ("authorization", b"Bearer sk-upstream")
            ]),
            Credential::Candidate(KEY)
        );
    }

    #[test]
    fn x_api_key_is_preferred_without_fallback() {
        let bearer_other = format!("Bearer {OTHER}");

        assert_eq!(
            pick(&[
                ("authorization", bearer_other.as_bytes()),
                ("x-api-key", KEY.as_bytes())
            ]),
            Credential::Candidate(KEY)
        );
    }

    #[test]
    fn openai_family_ignores_x_api_key() {
        let map = headers(&[("x-api-key", KEY.as_bytes())]);

        assert_eq!(
            select(&map, RouteFamily::OpenAi).credential,
            rejected(Reason::Missing)
        );
    }

    #[test]
    fn repeated_headers_collapse_or_conflict() {
        assert_eq!(
            pick(&[("x-api-key", KEY.as_bytes()), ("x-api-key", KEY.as_bytes())]),
            Credential::Candidate(KEY)
        );
        assert_eq!(
            pick(&[
                ("x-api-key", KEY.as_bytes()),
                ("x-api-key", OTHER.as_bytes())
            ]),
            rejected(Reason::ConflictingKeys)
        );
        assert_eq!(
            pick(&[
                ("x-api-key", KEY.as_bytes()),
                ("x-api-key", b""),
                ("x-api-key", b"sk-1")
            ]),
            Credential::Candidate(KEY)
        );
    }

    #[test]
    fn long_or_non_ascii_candidates_are_malformed_but_long_foreign_tokens_are_ignored() {
        let long = format!("cm-{}", "a".repeat(65_000));
        assert_eq!(
            pick(&[("x-api-key", long.as_bytes())]),
            rejected(Reason::Malformed)
        );
        assert_eq!(
            pick(&[("x-api-key", b"cm-\xff\xfe")]),
            rejected(Reason::Malformed)
        );

        let foreign = format!("Bearer sk-{}", "a".repeat(65_000));
        assert_eq!(
            pick(&[
                ("authorization", foreign.as_bytes()),
                ("x-api-key", KEY.as_bytes())
            ]),
            Credential::Candidate(KEY)
        );
    }

    #[test]
    fn any_token_starting_with_cm_makes_a_value_ours_to_drop() {
        for value in [
            KEY,
            "Bearer cm-x",
            "Bearer Bearer cm-x",
            "Basic cm-x",
            "\tcm-x ",
            "sk-1 cm-x",
        ] {
            assert!(
                holds_our_key(&HeaderValue::from_str(value).unwrap()),
                "{value}"
            );
        }
        for value in [
            format!("!{KEY}"),
            format!("Bearer \"{KEY}\""),
            format!("token={KEY}"),
            format!("Bearer sk-x,{KEY}"),
        ] {
            assert!(
                holds_our_key(&HeaderValue::from_str(&value).unwrap()),
                "{value}"
            );
        }
        for value in ["Bearer sk-cm-x", "CM-x", "Bearer sk-ant", ""] {
            assert!(
                !holds_our_key(&HeaderValue::from_str(value).unwrap()),
                "{value}"
            );
        }
    }

    fn envelope_for(family: RouteFamily, map: &HeaderMap) -> Envelope {
        family.envelope(select(map, family).x_api_key_sent, map)
    }

    #[test]
    fn envelope_follows_the_request_in_the_default_family() {
        let family = RouteFamily::Both;

        assert_eq!(envelope_for(family, &headers(&[])), Envelope::OpenAi);
        assert_eq!(
            envelope_for(family, &headers(&[("anthropic-version", b"2023-06-01")])),
            Envelope::Anthropic
        );
        assert_eq!(
            envelope_for(family, &headers(&[("x-api-key", b"x")])),
            Envelope::Anthropic
        );
        assert_eq!(
            envelope_for(family, &headers(&[("x-api-key", b" ")])),
            Envelope::OpenAi
        );
        assert_eq!(
            envelope_for(RouteFamily::Anthropic, &headers(&[])),
            Envelope::Anthropic
        );
    }
}
