//! The check itself, shared by the layer and callers that are not HTTP services.
//!
//! 1. Parse the key and check its checksum: malformed keys never reach the store.
//! 2. Look the key id up, under a deadline.
//! 3. Compare SHA-256 of the secret with the stored digest in constant time; for an
//!    unknown id, compare against a dummy digest so both paths do the same work.
//! 4. Only then look at state: key inactive, then user inactive.

use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use pin_project_lite::pin_project;

use crate::header::{Envelope, trim};
use crate::identity::Identity;
use crate::key::{KEY_PREFIX, KeyDigest, KeyFormat, KeyId};
use crate::rejection::{Reason, Rejection};
use crate::store::{KeyRecord, KeyState, KeyStore, StoreError, UserState};

/// How long a store lookup may take before the request gets a 503.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(2);

pub(crate) type LookupResult = Result<Option<Arc<KeyRecord>>, StoreError>;

pub(crate) type LookupFuture = Pin<Box<dyn Future<Output = LookupResult> + Send>>;

/// A key that passed the checksum: what goes to the store, and what the stored
/// digest is compared with. The secret itself is not kept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checked {
    pub(crate) id: KeyId,
    pub(crate) digest: KeyDigest,
}

/// Verifies presented keys against a [`KeyStore`], outside of HTTP.
///
/// The same check the layer runs, for WebSockets, gRPC metadata or command-line
/// tools. Cheap to clone.
///
/// # Example
///
/// ```
/// use crossmodel_auth::{KeyManager, MemoryKeyStore, NewKey, RejectionKind, Verifier};
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let store = MemoryKeyStore::new();
/// let created = store.create_key(NewKey::for_user("alice")).await?;
/// let verifier = Verifier::new(store);
///
/// let identity = verifier.verify(created.key.expose()).await?;
/// assert_eq!(identity.user_id(), "alice");
///
/// let rejection = verifier.verify("cm-nope").await.unwrap_err();
/// assert_eq!(rejection.kind(), RejectionKind::InvalidApiKey);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
///
/// # Panics
///
/// Lookups that do not answer at once run under a Tokio timer: call
/// [`verify`](Self::verify) inside a Tokio runtime with time enabled.
pub struct Verifier<S> {
    store: Arc<S>,
    format: KeyFormat,
    deadline: Duration,
    dummy: KeyDigest,
}

impl<S> Clone for Verifier<S> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            format: self.format.clone(),
            deadline: self.deadline,
            dummy: self.dummy,
        }
    }
}

impl<S> std::fmt::Debug for Verifier<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("format", &self.format)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl<S: KeyStore> Verifier<S> {
    /// A verifier over `store`, with public checksums and a 2 s deadline.
    pub fn new(store: S) -> Self {
        Self {
            store: Arc::new(store),
            format: KeyFormat::public(),
            deadline: DEFAULT_DEADLINE,
            // Any digest no secret maps to in practice; only the work matters.
            dummy: KeyDigest::of_secret("crossmodel-auth: no key has this secret"),
        }
    }

    /// Sets the key format (public or signed); use the one keys were issued with.
    pub fn with_key_format(mut self, format: KeyFormat) -> Self {
        self.format = format;
        self
    }

    /// Sets how long a lookup may take before it counts as a store outage.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The key format.
    pub fn key_format(&self) -> &KeyFormat {
        &self.format
    }

    /// Checks a presented key (surrounding whitespace ignored).
    ///
    /// # Errors
    ///
    /// A [`Rejection`]: missing for an empty string, invalid for anything that is
    /// not a valid, known key with the right secret, inactive for a disabled,
    /// revoked or expired key or a disabled user, service-unavailable when the store
    /// failed or missed the deadline. Messages use the OpenAI wording.
    pub async fn verify(&self, presented: &str) -> Result<Identity, Rejection> {
        let reject = |reason| Rejection::new(reason, Envelope::OpenAi);
        let presented = std::str::from_utf8(trim(presented.as_bytes())).unwrap_or_default();

        if presented.is_empty() {
            return Err(reject(Reason::Missing));
        }
        if !presented.starts_with(KEY_PREFIX) {
            return Err(reject(Reason::ForeignKey));
        }
        let checked = self.check(presented).map_err(reject)?;

        let outcome = match self.lookup_now(&checked.id) {
            Some(found) => found,
            None => self.lookup_with_deadline(checked.id).await,
        };
        self.judge(checked, outcome).map_err(reject)
    }

    /// Step 1: shape and checksum, then the digest of the secret.
    pub(crate) fn check(&self, candidate: &str) -> Result<Checked, Reason> {
        let key = self
            .format
            .parse(candidate)
            .map_err(|_| Reason::Malformed)?;
        Ok(Checked {
            id: key.id(),
            digest: key.digest(),
        })
    }

    /// Step 2, when the store can answer without waiting.
    ///
    /// A store that panics is a store that failed: the request gets a 503 instead of
    /// a dropped connection.
    pub(crate) fn lookup_now(&self, id: &KeyId) -> Option<LookupResult> {
        panic::catch_unwind(AssertUnwindSafe(|| self.store.lookup_now(id)))
            .unwrap_or_else(|_| Some(Err(store_panicked())))
    }

    /// Step 2, the waiting kind: a boxed store call that owns what it needs, with
    /// a panic inside it turned into a store failure.
    pub(crate) fn lookup_owned(&self, id: KeyId) -> LookupFuture {
        let store = Arc::clone(&self.store);
        Box::pin(PanicAsFailure {
            future: async move { store.lookup(&id).await },
        })
    }

    pub(crate) fn deadline(&self) -> Duration {
        self.deadline
    }

    async fn lookup_with_deadline(&self, id: KeyId) -> LookupResult {
        match tokio::time::timeout(self.deadline, self.lookup_owned(id)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(deadline_missed(self.deadline)),
        }
    }

    /// Steps 3 and 4: the constant-time comparison, then state.
    pub(crate) fn judge(
        &self,
        checked: Checked,
        outcome: LookupResult,
    ) -> Result<Identity, Reason> {
        let record = match outcome {
            Ok(record) => record,
            Err(error) => {
                tracing::warn!(
                    target: "crossmodel_auth",
                    outcome = "auth_service_unavailable",
                    key.id = %checked.id,
                    store.error = %error,
                    "key store failed; answering 503"
                );
                return Err(Reason::StoreUnavailable);
            }
        };

        // The same comparison runs whether or not the id exists.
        let stored = record.as_ref().map_or(&self.dummy, |record| &record.digest);
        let matches = stored.ct_eq(&checked.digest);
        let record = match record {
            Some(record) if matches => record,
            _ => return Err(Reason::NotRecognised),
        };

        let now = SystemTime::now();
        if record.state != KeyState::Active || record.is_expired_at(now) {
            return Err(Reason::KeyInactive);
        }
        if record.user_state != UserState::Active {
            return Err(Reason::UserInactive);
        }

        self.store.record_use(&record.id, now);
        Ok(Identity::new(record))
    }
}

pin_project! {
    /// Polls a lookup, answering a panic inside it as a store failure.
    struct PanicAsFailure<F> {
        #[pin]
        future: F,
    }
}

impl<F: Future<Output = LookupResult>> Future for PanicAsFailure<F> {
    type Output = LookupResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<LookupResult> {
        let future = self.project().future;

        // The future is dropped after a panic and never polled again, so whatever
        // state it broke is never observed.
        panic::catch_unwind(AssertUnwindSafe(|| future.poll(cx)))
            .unwrap_or_else(|_| Poll::Ready(Err(store_panicked())))
    }
}

fn store_panicked() -> StoreError {
    StoreError::new(
        crate::store::StoreErrorKind::Unavailable,
        "key store panicked during a lookup",
    )
}

pub(crate) fn deadline_missed(deadline: Duration) -> StoreError {
    StoreError::new(
        crate::store::StoreErrorKind::Unavailable,
        format!("key store did not answer within {deadline:?}"),
    )
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;

    use super::*;
    use crate::RejectionKind;

    /// Panics in `lookup`, or in `lookup_now` when `now` is set.
    struct Panicking {
        now: bool,
    }

    #[async_trait]
    impl KeyStore for Panicking {
        async fn lookup(&self, _: &KeyId) -> LookupResult {
            panic!("lookup broke");
        }

        fn lookup_now(&self, _: &KeyId) -> Option<LookupResult> {
            if self.now {
                panic!("lookup_now broke");
            }
            None
        }
    }

    async fn verify_against(store: Panicking) -> Rejection {
        let key = KeyFormat::public().generate().unwrap();
        Verifier::new(store).verify(key.expose()).await.unwrap_err()
    }

    #[tokio::test]
    async fn a_panicking_lookup_is_a_store_failure() {
        let rejection = verify_against(Panicking { now: false }).await;

        assert_eq!(rejection.kind(), RejectionKind::ServiceUnavailable);
    }

    #[tokio::test]
    async fn a_panicking_lookup_now_is_a_store_failure() {
        let rejection = verify_against(Panicking { now: true }).await;

        assert_eq!(rejection.kind(), RejectionKind::ServiceUnavailable);
    }
}
