//! Why a request was refused, and the JSON the official SDKs expect for it.
//!
//! | kind | status | `type` | `code` |
//! | --- | --- | --- | --- |
//! | [`MissingApiKey`](RejectionKind::MissingApiKey) | 401 | `authentication_error` | `missing_api_key` |
//! | [`InvalidApiKey`](RejectionKind::InvalidApiKey) | 401 | `authentication_error` | `invalid_api_key` |
//! | [`ApiKeyInactive`](RejectionKind::ApiKeyInactive) | 401 | `authentication_error` | `api_key_inactive` |
//! | [`UserInactive`](RejectionKind::UserInactive) | 401 | `authentication_error` | `user_inactive` |
//! | [`ServiceUnavailable`](RejectionKind::ServiceUnavailable) | 503 | `server_error` / `api_error` | `auth_service_unavailable` |

use std::fmt;
use std::sync::OnceLock;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};

use crate::header::Envelope;

/// The kind of a rejection: what the `code` field says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectionKind {
    /// No API key was presented.
    MissingApiKey,
    /// The key is malformed, unknown, or its secret does not match.
    InvalidApiKey,
    /// The key is disabled, revoked or expired.
    ApiKeyInactive,
    /// The key's user is disabled.
    UserInactive,
    /// The key store could not answer in time. Not the caller's fault: 503.
    ServiceUnavailable,
}

impl RejectionKind {
    /// The HTTP status: 401, or 503 for [`ServiceUnavailable`](Self::ServiceUnavailable).
    pub const fn status(self) -> StatusCode {
        match self {
            Self::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The `code` field.
    pub const fn code(self) -> &'static str {
        match self {
            Self::MissingApiKey => "missing_api_key",
            Self::InvalidApiKey => "invalid_api_key",
            Self::ApiKeyInactive => "api_key_inactive",
            Self::UserInactive => "user_inactive",
            Self::ServiceUnavailable => "auth_service_unavailable",
        }
    }

    /// The error `type` field of an envelope.
    pub const fn error_type(self, envelope: Envelope) -> &'static str {
        match (self, envelope) {
            (Self::ServiceUnavailable, Envelope::OpenAi) => "server_error",
            (Self::ServiceUnavailable, Envelope::Anthropic) => "api_error",
            _ => "authentication_error",
        }
    }
}

impl fmt::Display for RejectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The precise reason behind a rejection; several reasons share one kind and
/// differ only in the message that tells the caller what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    // The order is the index into `openai_body`'s table: keep `ALL` in step.
    Missing,
    OtherScheme,
    NoScheme,
    ForeignKey,
    ConflictingKeys,
    Malformed,
    // Unknown id and wrong secret are one reason on purpose: they must read the same.
    NotRecognised,
    KeyInactive,
    UserInactive,
    StoreUnavailable,
}

impl Reason {
    const ALL: [Self; 10] = [
        Self::Missing,
        Self::OtherScheme,
        Self::NoScheme,
        Self::ForeignKey,
        Self::ConflictingKeys,
        Self::Malformed,
        Self::NotRecognised,
        Self::KeyInactive,
        Self::UserInactive,
        Self::StoreUnavailable,
    ];

    pub(crate) const fn kind(self) -> RejectionKind {
        match self {
            Self::Missing | Self::OtherScheme | Self::NoScheme => RejectionKind::MissingApiKey,
            Self::ForeignKey | Self::ConflictingKeys | Self::Malformed | Self::NotRecognised => {
                RejectionKind::InvalidApiKey
            }
            Self::KeyInactive => RejectionKind::ApiKeyInactive,
            Self::UserInactive => RejectionKind::UserInactive,
            Self::StoreUnavailable => RejectionKind::ServiceUnavailable,
        }
    }

    const fn message(self, envelope: Envelope) -> &'static str {
        match (self, envelope) {
            (Self::Missing, Envelope::Anthropic) => {
                "No API key provided; send your key as `x-api-key: cm-…`."
            }
            (Self::Missing, Envelope::OpenAi) => {
                "No API key provided; send your key as `Authorization: Bearer cm-…`."
            }
            (Self::OtherScheme, _) => {
                "The Authorization header uses a scheme other than Bearer; send your key as `Authorization: Bearer cm-…`."
            }
            (Self::NoScheme, _) => {
                "The Authorization header has no scheme; send your key as `Authorization: Bearer cm-…`."
            }
            (Self::ConflictingKeys, _) => {
                "Two different API keys were sent in one header; send exactly one key."
            }
            (Self::ForeignKey | Self::Malformed | Self::NotRecognised, _) => {
                "Invalid API key; check that you sent the whole `cm-` key, or create a new one."
            }
            (Self::KeyInactive, _) => {
                "This API key is disabled, revoked or expired; enable it or create a new key."
            }
            (Self::UserInactive, _) => {
                "The account that owns this API key is disabled; contact your administrator."
            }
            (Self::StoreUnavailable, _) => {
                "The authentication service is temporarily unavailable; retry in a moment."
            }
        }
    }
}

/// A refused request: its kind and the one-sentence message shown to the caller.
///
/// Attached to the extensions of every error response the layer writes, so outer
/// layers can see why a request was refused. Never holds any of the presented key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    kind: RejectionKind,
    message: &'static str,
    reason: Reason,
}

impl Rejection {
    pub(crate) const fn new(reason: Reason, envelope: Envelope) -> Self {
        Self {
            kind: reason.kind(),
            message: reason.message(envelope),
            reason,
        }
    }

    /// The kind, which fixes the status and `code`.
    pub const fn kind(&self) -> RejectionKind {
        self.kind
    }

    /// What the caller should do, in one sentence.
    pub const fn message(&self) -> &'static str {
        self.message
    }

    /// The HTTP status.
    pub const fn status(&self) -> StatusCode {
        self.kind.status()
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.message)
    }
}

impl std::error::Error for Rejection {}

/// An error body: its bytes and content type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedBody {
    /// The `content-type` header.
    pub content_type: HeaderValue,
    /// The body.
    pub body: Bytes,
}

/// Writes the body of an error response.
///
/// The layer sets the status, the `WWW-Authenticate` challenge, `retry-after` and
/// the request id headers itself, so that a custom body cannot break what the SDKs
/// rely on; a renderer chooses only the bytes.
pub trait RenderRejection: Clone + Send + Sync + 'static {
    /// Renders `rejection` in `envelope`. `request_id` is the id also sent in the
    /// `x-request-id` and `request-id` headers.
    fn render(&self, rejection: &Rejection, envelope: Envelope, request_id: &str) -> RenderedBody;
}

/// The default renderer: the OpenAI or Anthropic JSON envelope.
///
/// ```text
/// OpenAI:    {"error":{"message":…,"type":"authentication_error","param":null,"code":…}}
/// Anthropic: {"type":"error","error":{"type":"authentication_error","message":…,
///             "code":…,"details":{"error_code":…}},"request_id":…}
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonEnvelope;

impl RenderRejection for JsonEnvelope {
    fn render(&self, rejection: &Rejection, envelope: Envelope, request_id: &str) -> RenderedBody {
        let body = match envelope {
            Envelope::OpenAi => openai_body(rejection),
            Envelope::Anthropic => Bytes::from(anthropic_body(rejection, request_id)),
        };

        RenderedBody {
            content_type: HeaderValue::from_static("application/json"),
            body,
        }
    }
}

/// The OpenAI body of a rejection. It holds no request id, so each reason has one
/// fixed body: written once per process and shared, not rendered per request.
fn openai_body(rejection: &Rejection) -> Bytes {
    static BODIES: OnceLock<Vec<(Rejection, Bytes)>> = OnceLock::new();

    let bodies = BODIES.get_or_init(|| {
        Reason::ALL
            .iter()
            .map(|&reason| {
                let rejection = Rejection::new(reason, Envelope::OpenAi);
                // Ten small bodies, made once and kept for the life of the process;
                // leaking them makes every later copy free.
                let body = Bytes::from_static(write_openai_body(&rejection).leak());
                (rejection, body)
            })
            .collect()
    });

    match bodies.get(rejection.reason as usize) {
        Some((cached, body)) if cached == rejection => body.clone(),
        // A rejection made for the other envelope carries that envelope's message.
        _ => Bytes::from(write_openai_body(rejection)),
    }
}

fn write_openai_body(rejection: &Rejection) -> Vec<u8> {
    let kind = rejection.kind();
    let mut out = Vec::with_capacity(256);

    out.extend_from_slice(b"{\"error\":{\"message\":");
    push_json_string(&mut out, rejection.message());
    out.extend_from_slice(b",\"type\":");
    push_json_string(&mut out, kind.error_type(Envelope::OpenAi));
    out.extend_from_slice(b",\"param\":null,\"code\":");
    push_json_string(&mut out, kind.code());
    out.extend_from_slice(b"}}");
    out
}

fn anthropic_body(rejection: &Rejection, request_id: &str) -> Vec<u8> {
    let kind = rejection.kind();
    let mut out = Vec::with_capacity(320);

    out.extend_from_slice(b"{\"type\":\"error\",\"error\":{\"type\":");
    push_json_string(&mut out, kind.error_type(Envelope::Anthropic));
    out.extend_from_slice(b",\"message\":");
    push_json_string(&mut out, rejection.message());
    out.extend_from_slice(b",\"code\":");
    push_json_string(&mut out, kind.code());
    out.extend_from_slice(b",\"details\":{\"error_code\":");
    push_json_string(&mut out, kind.code());
    out.extend_from_slice(b"}},\"request_id\":");
    push_json_string(&mut out, request_id);
    out.push(b'}');
    out
}

fn push_json_string(out: &mut Vec<u8>, text: &str) {
    // Writing a &str into a Vec cannot fail; serde_json does the escaping.
    let _ = serde_json::to_writer(&mut *out, text);
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn render(reason: Reason, envelope: Envelope) -> Value {
        let rejection = Rejection::new(reason, envelope);
        let body = JsonEnvelope.render(&rejection, envelope, "req_\"quoted\\");
        serde_json::from_slice(&body.body).unwrap()
    }

    #[test]
    fn openai_envelope_has_exactly_the_documented_fields() {
        let body = render(Reason::NotRecognised, Envelope::OpenAi);

        assert_eq!(
            body,
            json!({"error": {
                "message": Reason::NotRecognised.message(Envelope::OpenAi),
                "type": "authentication_error",
                "param": null,
                "code": "invalid_api_key",
            }})
        );
    }

    #[test]
    fn anthropic_envelope_carries_the_request_id_escaped() {
        let body = render(Reason::UserInactive, Envelope::Anthropic);

        assert_eq!(
            body,
            json!({
                "type": "error",
                "error": {
                    "type": "authentication_error",
                    "message": Reason::UserInactive.message(Envelope::Anthropic),
                    "code": "user_inactive",
                    "details": {"error_code": "user_inactive"},
                },
                "request_id": "req_\"quoted\\",
            })
        );
    }

    #[test]
    fn outage_types_follow_each_api() {
        let openai = render(Reason::StoreUnavailable, Envelope::OpenAi);
        let anthropic = render(Reason::StoreUnavailable, Envelope::Anthropic);

        assert_eq!(openai["error"]["type"], "server_error");
        assert_eq!(anthropic["error"]["type"], "api_error");
        assert_eq!(openai["error"]["code"], "auth_service_unavailable");
        assert_eq!(RejectionKind::ServiceUnavailable.status(), 503);
    }

    #[test]
    fn the_reason_table_is_in_declaration_order() {
        for (index, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index);
        }
    }

    #[test]
    fn cached_openai_bodies_equal_freshly_written_ones() {
        for reason in Reason::ALL {
            let rejection = Rejection::new(reason, Envelope::OpenAi);
            let fresh = write_openai_body(&rejection);

            assert_eq!(openai_body(&rejection), fresh);
            assert_eq!(openai_body(&rejection), fresh, "second use");
        }
        let anthropic_wording = Rejection::new(Reason::Missing, Envelope::Anthropic);
        let body = JsonEnvelope.render(&anthropic_wording, Envelope::OpenAi, "req_x");
        assert_eq!(body.body, write_openai_body(&anthropic_wording));
    }

    #[test]
    fn every_reason_maps_to_its_documented_code() {
        let cases = [
            (Reason::Missing, "missing_api_key"),
            (Reason::OtherScheme, "missing_api_key"),
            (Reason::NoScheme, "missing_api_key"),
            (Reason::ForeignKey, "invalid_api_key"),
            (Reason::ConflictingKeys, "invalid_api_key"),
            (Reason::Malformed, "invalid_api_key"),
            (Reason::NotRecognised, "invalid_api_key"),
            (Reason::KeyInactive, "api_key_inactive"),
            (Reason::UserInactive, "user_inactive"),
        ];
        for (reason, code) in cases {
            assert_eq!(reason.kind().code(), code);
            assert_eq!(reason.kind().status(), 401);
            assert!(reason.message(Envelope::OpenAi).ends_with('.'));
        }
    }
}
