//! Who is calling: what the layer puts in the request extensions on success.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use crate::key::KeyId;
use crate::store::KeyRecord;

/// The caller of an authenticated request: its key and the key's user.
///
/// The layer inserts it into the request extensions before calling the inner
/// service. Read it with `request.extensions().get::<Identity>()`, or, with the
/// `axum` feature, as a handler argument. Cloning is cheap (one `Arc`).
///
/// Holds the store's record, digest included, but shows neither secret nor digest:
/// `Debug` prints only the key id, key name and user id.
#[derive(Clone)]
pub struct Identity {
    record: Arc<KeyRecord>,
}

impl Identity {
    pub(crate) fn new(record: Arc<KeyRecord>) -> Self {
        Self { record }
    }

    /// The public id of the key used.
    pub fn key_id(&self) -> KeyId {
        self.record.id
    }

    /// The key's display name.
    pub fn key_name(&self) -> &str {
        &self.record.name
    }

    /// The id of the user who owns the key.
    pub fn user_id(&self) -> &str {
        &self.record.user_id
    }

    /// The key's metadata, as the store keeps it.
    pub fn metadata(&self) -> &serde_json::Value {
        &self.record.metadata
    }

    /// When the key expires, if ever.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.record.expires_at
    }

    /// The whole record the store returned.
    pub fn record(&self) -> &KeyRecord {
        &self.record
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("key_id", &self.record.id)
            .field("key_name", &self.record.name)
            .field("user_id", &self.record.user_id)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "axum")]
mod extract {
    use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
    use axum_core::response::{IntoResponse, Response};
    use http::StatusCode;
    use http::request::Parts;

    use super::Identity;

    /// The handler asked for an [`Identity`] but no `ApiKeyLayer` ran before it.
    ///
    /// A routing mistake, not the caller's: answered with a bare 500 so that a
    /// route left outside the layer fails closed instead of running unauthenticated.
    #[derive(Debug, Clone, Copy)]
    pub struct MissingIdentity;

    impl IntoResponse for MissingIdentity {
        fn into_response(self) -> Response {
            tracing::error!(
                target: "crossmodel_auth",
                "handler expects an Identity but no ApiKeyLayer runs before this route"
            );
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }

    impl<S: Send + Sync> FromRequestParts<S> for Identity {
        type Rejection = MissingIdentity;

        async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
            parts
                .extensions
                .get::<Self>()
                .cloned()
                .ok_or(MissingIdentity)
        }
    }

    impl<S: Send + Sync> OptionalFromRequestParts<S> for Identity {
        type Rejection = std::convert::Infallible;

        async fn from_request_parts(
            parts: &mut Parts,
            _: &S,
        ) -> Result<Option<Self>, Self::Rejection> {
            Ok(parts.extensions.get::<Self>().cloned())
        }
    }
}

#[cfg(feature = "axum")]
pub use extract::MissingIdentity;
