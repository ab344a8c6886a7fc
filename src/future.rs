//! The response future of [`ApiKeyService`](crate::ApiKeyService): three states,
//! no boxing of its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Timeout;
use tower_service::Service;

use crate::rejection::RenderRejection;
use crate::service::Shared;
use crate::store::KeyStore;
use crate::verify::{Checked, LookupFuture, deadline_missed};

/// A request waiting on the store: everything needed to finish it either way.
pub(crate) struct Pending<S, B, K, R> {
    pub(crate) inner: S,
    pub(crate) request: Request<B>,
    pub(crate) checked: Checked,
    pub(crate) x_api_key_sent: bool,
    pub(crate) shared: Arc<Shared<K, R>>,
}

pin_project! {
    /// A lookup under its deadline and the request waiting on it. Boxed inside the
    /// response future: the hundreds of bytes it takes are paid for only by
    /// requests that wait on the store, and every other request moves a small
    /// future around.
    pub(crate) struct Waiting<S, B, K, R> {
        #[pin]
        lookup: Timeout<LookupFuture>,
        pending: Option<Pending<S, B, K, R>>,
    }
}

pin_project! {
    /// Response future of [`ApiKeyService`](crate::ApiKeyService).
    pub struct ResponseFuture<S, B, K, R>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B, K, R>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, K, R>
    where
        S: Service<Request<B>>,
    {
        // Decided without waiting: an error response, or nothing left to do.
        Done { response: Option<S::Response> },
        // Waiting on the store under the deadline.
        Verifying { waiting: Pin<Box<Waiting<S, B, K, R>>> },
        // Authenticated: running the inner service.
        Calling {
            #[pin]
            future: S::Future,
        },
    }
}

impl<S, B, K, R> ResponseFuture<S, B, K, R>
where
    S: Service<Request<B>>,
{
    pub(crate) fn done(response: S::Response) -> Self {
        Self {
            state: State::Done {
                response: Some(response),
            },
        }
    }

    pub(crate) fn calling(future: S::Future) -> Self {
        Self {
            state: State::Calling { future },
        }
    }

    pub(crate) fn verifying(lookup: Timeout<LookupFuture>, pending: Pending<S, B, K, R>) -> Self {
        Self {
            state: State::Verifying {
                waiting: Box::pin(Waiting {
                    lookup,
                    pending: Some(pending),
                }),
            },
        }
    }
}

impl<S, B, K, R, ResBody> Future for ResponseFuture<S, B, K, R>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    K: KeyStore,
    R: RenderRejection,
    ResBody: From<Bytes>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;

        loop {
            match state.as_mut().project() {
                StateProj::Done { response } => {
                    let response = response
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(response));
                }
                StateProj::Verifying { waiting } => {
                    let waiting = waiting.as_mut().project();
                    let elapsed = ready!(waiting.lookup.poll(cx));
                    let Pending {
                        mut inner,
                        request,
                        checked,
                        x_api_key_sent,
                        shared,
                    } = waiting
                        .pending
                        .take()
                        .expect("ResponseFuture polled after completion");

                    let outcome = elapsed
                        .unwrap_or_else(|_| Err(deadline_missed(shared.verifier.deadline())));
                    let next = match shared.decide(checked, outcome, request, x_api_key_sent) {
                        Ok(request) => State::Calling {
                            future: inner.call(request),
                        },
                        Err(response) => State::Done {
                            response: Some(response),
                        },
                    };
                    state.set(next);
                }
                StateProj::Calling { future } => return future.poll(cx),
            }
        }
    }
}
