//! The HTTP listener: accepts connections, gives each client a bounded time to send its request,
//! and drains within a bounded time when the server stops.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

/// How long a stopping server waits for requests in flight and signalling connections to close.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets requests in flight
/// finish and waits for them, and for `upgraded` (the signalling connections, which close
/// themselves on `shutdown`), at most [`SHUTDOWN_GRACE`] in all.
///
/// A client has `read_timeout` to send a request's headers, from the moment it connects or its
/// previous response went out; a silent or half-sent connection is closed then. (Bodies are held
/// to the same time by the router's own layer.)
pub async fn serve(
    listener: TcpListener,
    router: Router,
    read_timeout: Duration,
    shutdown: CancellationToken,
    upgraded: TaskTracker,
) {
    let connections = TaskTracker::new();
    // Cancelled when the grace is over: what is still open then is dropped.
    let hard_stop = CancellationToken::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // wait a little rather than spin.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(serve_connection(
            stream,
            peer,
            router.clone(),
            read_timeout,
            (shutdown.clone(), hard_stop.clone()),
        ));
    }
    drop(listener);
    connections.close();
    upgraded.close();
    let drained = async {
        connections.wait().await;
        upgraded.wait().await;
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, drained).await.is_err() {
        tracing::warn!("connections still open at shutdown were dropped");
        hard_stop.cancel();
        connections.wait().await;
    }
}

/// One HTTP/1.1 connection (WebSocket upgrades included): closed gracefully on `shutdown` (a
/// request under way finishes), dropped on `hard_stop`.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    read_timeout: Duration,
    (shutdown, hard_stop): (CancellationToken, CancellationToken),
) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(request)
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let finished = tokio::select! {
        finished = connection.as_mut() => finished,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                finished = connection.as_mut() => finished,
                () = hard_stop.cancelled() => return,
            }
        }
    };
    if let Err(error) = finished {
        tracing::debug!(%error, "an HTTP connection ended with an error");
    }
}
