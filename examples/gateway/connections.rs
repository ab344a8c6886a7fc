//! Serving connections: HTTP/1.1 with a deadline for request headers, and a
//! shutdown that waits for requests in flight, but not for ever.
//!
//! `axum::serve` sets no header deadline, so a client that sends half a request
//! holds its connection open for good and keeps a graceful shutdown waiting. This
//! loop drives hyper directly to set one.

use std::io;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
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
