//! Serving connections: HTTP/1.1 with deadlines for request headers and bodies,
//! and a shutdown that waits for requests in flight, but not for ever.
//!
//! `axum::serve` sets no header deadline, so a client that sends half a request
//! holds its connection open for good and keeps a graceful shutdown waiting. This
//! loop drives hyper directly to set one.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::Response;
use axum::middleware::Next;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tower::ServiceExt;

/// How long a client may take to send a request's line and headers. The clock also
/// runs while a kept-alive connection waits for its next request, so an idle
/// connection is closed after this long too (clients reconnect as needed).
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a shutdown waits for open connections before dropping them.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` resolves, then lets requests in
/// flight finish for up to [`SHUTDOWN_GRACE`].
pub(crate) async fn serve(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()>) {
    let (stopping, stop) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            stream = accept(&listener) => stream,
            // Finished connections are collected so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        connections.spawn(serve_connection(stream, app.clone(), stop.clone()));
    }

    // No new connections; open ones finish their request in flight and close.
    drop(listener);
    let _ = stopping.send(true);
    drain(connections).await;
}

/// The next connection. A client that gave up before it was accepted is skipped; any
/// other failure (out of file descriptors) is logged and retried after a pause, so
/// the log is not flooded.
async fn accept(listener: &TcpListener) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return stream,
            Err(error) if is_client_gone(&error) => {}
            Err(error) => {
                tracing::warn!(%error, "cannot accept a connection; retrying in a second");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn is_client_gone(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// Serves one connection until the client closes it, the header deadline passes,
/// or the server stops (then after the request in flight).
async fn serve_connection(stream: TcpStream, app: Router, mut stop: watch::Receiver<bool>) {
    let service = service_fn(move |request: hyper::Request<Incoming>| app.clone().oneshot(request));
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    // The guard `wait_for` returns is dropped here, so it is not held across awaits.
    let stopped = async move {
        let _ = stop.wait_for(|stopping| *stopping).await;
    };

    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stopped => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        // A slow or vanished client, not a server fault.
        tracing::debug!(%error, "connection closed");
    }
}

/// Waits up to [`SHUTDOWN_GRACE`] for `connections` to close, then drops the rest.
async fn drain(mut connections: JoinSet<()>) {
    let all_closed = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, all_closed)
        .await
        .is_ok()
    {
        return;
    }

    tracing::warn!(
        connections = connections.len(),
        "dropping connections still open {}s after shutdown began",
        SHUTDOWN_GRACE.as_secs()
    );
    connections.shutdown().await;
}

/// How long a request body may pause between two of its pieces.
pub(crate) const BODY_PAUSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Gives every request body a deadline: [`BODY_PAUSE_TIMEOUT`] without a new piece
/// and reading it fails with [`BodyStalled`], which handlers answer with a 408.
pub(crate) async fn body_deadline(request: Request, next: Next) -> Response<Body> {
    let request = request.map(|body| Body::new(Deadline { body, pause: None }));
    next.run(request).await
}

/// A request body that fails once it pauses for longer than
/// [`BODY_PAUSE_TIMEOUT`].
struct Deadline {
    body: Body,
    // Started when the handler first reads, so time spent verifying the key does
    // not count.
    pause: Option<Pin<Box<Sleep>>>,
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let deadline = tokio::time::Instant::now() + BODY_PAUSE_TIMEOUT;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            // Each piece restarts the clock.
            if let Some(pause) = &mut this.pause {
                pause.as_mut().reset(deadline);
            }
            return Poll::Ready(frame);
        }
        let pause = this
            .pause
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match pause.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyStalled)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body that stopped arriving.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyStalled;

impl fmt::Display for BodyStalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the request body paused for more than {}s",
            BODY_PAUSE_TIMEOUT.as_secs()
        )
    }
}

impl std::error::Error for BodyStalled {}

/// Whether `error`, or an error beneath it, is [`BodyStalled`].
pub(crate) fn is_body_stalled(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<BodyStalled>() {
            return true;
        }
        current = error.source();
    }
    false
}
