//! [`ApiKeyService`]: the service [`ApiKeyLayer`](crate::ApiKeyLayer) wraps around
//! the inner one.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderMap, HeaderName};
use http::{Method, Request, Response};
use tower_service::Service;

use crate::future::{Pending, ResponseFuture};
use crate::header::{self, Credential, RouteFamily, X_API_KEY};
use crate::redact::{redact_method, redact_path};
use crate::rejection::{Reason, Rejection, RenderRejection};
use crate::response;
use crate::store::KeyStore;
use crate::verify::{Checked, LookupResult, Verifier};

/// Switches of the layer, fixed when it is built.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    pub(crate) family: RouteFamily,
    pub(crate) pass_preflight: bool,
    pub(crate) keep_foreign: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            family: RouteFamily::Both,
            pass_preflight: true,
            keep_foreign: false,
        }
    }
}

/// What every clone of one service shares: one `Arc` per clone.
#[derive(Debug)]
pub(crate) struct Shared<K, R> {
    pub(crate) verifier: Verifier<K>,
    pub(crate) options: Options,
    pub(crate) renderer: R,
}

impl<K: KeyStore, R: RenderRejection> Shared<K, R> {
    /// Decides a request whose lookup has answered: the request to pass on, with
    /// the identity inside, or the error response.
    pub(crate) fn decide<B, ResBody: From<Bytes>>(
        &self,
        checked: Checked,
        outcome: LookupResult,
        mut request: Request<B>,
        x_api_key_sent: bool,
    ) -> Result<Request<B>, Response<ResBody>> {
        match self.verifier.judge(checked, outcome) {
            Ok(identity) => {
                tracing::trace!(
                    target: "crossmodel_auth",
                    outcome = "authenticated",
                    key.id = %checked.id,
                    user.id = identity.user_id(),
                    "request authenticated"
                );
                request.extensions_mut().insert(identity);
                Ok(request)
            }
            Err(reason) => Err(self.reject(&request, reason, x_api_key_sent, Some(checked))),
        }
    }

    pub(crate) fn reject<B, ResBody: From<Bytes>>(
        &self,
        request: &Request<B>,
        reason: Reason,
        x_api_key_sent: bool,
        checked: Option<Checked>,
    ) -> Response<ResBody> {
        let envelope = self
            .options
            .family
            .envelope(x_api_key_sent, request.headers());
        let rejection = Rejection::new(reason, envelope);

        // Only a checksum-valid id may be shown; the path goes without its query,
        // and without any key a client pasted into it.
        match checked {
            Some(checked) => tracing::debug!(
                target: "crossmodel_auth",
                outcome = rejection.kind().code(),
                key.id = %checked.id,
                method = redact_method(request.method()),
                path = &*redact_path(request.uri().path()),
                "request rejected"
            ),
            None => tracing::debug!(
                target: "crossmodel_auth",
                outcome = rejection.kind().code(),
                method = redact_method(request.method()),
                path = &*redact_path(request.uri().path()),
                "request rejected"
            ),
        }
        response::reject(request, rejection, envelope, &self.renderer)
    }
}

/// Authenticates requests, then calls the inner service. Made by
/// [`ApiKeyLayer`](crate::ApiKeyLayer).
pub struct ApiKeyService<S, K, R> {
    inner: S,
    shared: Arc<Shared<K, R>>,
}

impl<S, K, R> ApiKeyService<S, K, R> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<K, R>>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, K, R> Clone for ApiKeyService<S, K, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: std::fmt::Debug, K, R> std::fmt::Debug for ApiKeyService<S, K, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyService")
            .field("inner", &self.inner)
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl<S, K, R, ReqBody, ResBody> Service<Request<ReqBody>> for ApiKeyService<S, K, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    K: KeyStore,
    R: RenderRejection,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, K, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let shared = &*self.shared;
        let options = shared.options;

        if options.pass_preflight && is_cors_preflight(&request) {
            // Unauthenticated, so whatever key it carries must not travel on either.
            strip_credentials(request.headers_mut(), options.keep_foreign);
            return ResponseFuture::calling(self.inner.call(request));
        }

        let selection = header::select(request.headers(), options.family);
        let x_api_key_sent = selection.x_api_key_sent;
        let checked = match selection.credential {
            Credential::Candidate(candidate) => shared.verifier.check(candidate),
            Credential::Rejected(reason) => Err(reason),
        };
        let checked = match checked {
            Ok(checked) => checked,
            Err(reason) => {
                let response = shared.reject(&request, reason, x_api_key_sent, None);
                return ResponseFuture::done(response);
            }
        };

        // The key has done its work; from here on the request never carries it.
        strip_credentials(request.headers_mut(), options.keep_foreign);

        if let Some(outcome) = shared.verifier.lookup_now(&checked.id) {
            return match shared.decide(checked, outcome, request, x_api_key_sent) {
                Ok(request) => ResponseFuture::calling(self.inner.call(request)),
                Err(response) => ResponseFuture::done(response),
            };
        }

        // The service that `poll_ready` readied is the one to call later; leave a
        // fresh clone behind for the next request.
        let fresh = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, fresh);
        let lookup = tokio::time::timeout(
            shared.verifier.deadline(),
            shared.verifier.lookup_owned(checked.id),
        );
        let pending = Pending {
            inner: ready,
            request,
            checked,
            x_api_key_sent,
            shared: Arc::clone(&self.shared),
        };
        ResponseFuture::verifying(lookup, pending)
    }
}

fn is_cors_preflight<B>(request: &Request<B>) -> bool {
    let headers = request.headers();
    request.method() == Method::OPTIONS
        && headers.contains_key(http::header::ORIGIN)
        && headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

fn strip_credentials(headers: &mut HeaderMap, keep_foreign: bool) {
    for name in [AUTHORIZATION, X_API_KEY] {
        if keep_foreign {
            remove_our_values(headers, name);
        } else {
            headers.remove(&name);
        }
    }
}

fn remove_our_values(headers: &mut HeaderMap, name: HeaderName) {
    let http::header::Entry::Occupied(entry) = headers.entry(&name) else {
        return;
    };
    let kept: Vec<_> = entry
        .remove_entry_mult()
        .1
        .filter(|value| !header::holds_our_key(value))
        .collect();

    for value in kept {
        headers.append(&name, value);
    }
}
