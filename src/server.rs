//! The accept loop: HTTP/1.1 and HTTP/2 on one listener, and a graceful shutdown that stops
//! accepting, lets in-flight requests finish, and gives up on stragglers after a grace period.
//!
//! Connection-level limits ([`ConnectionLimits`]): at most `max_connections` open at once (more
//! are closed as soon as they are accepted, so a flood of sockets cannot exhaust descriptors);
//! a client must send a request's headers within `header_timeout`, which also closes keep-alive
//! connections idle that long (hyper restarts the timer when a connection goes idle); and a
//! request head larger than `max_head_bytes` is cut off by hyper with a bare 431 before it is
//! buffered further. Below that bound the gateway's own layer answers 414/431 in JSON.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::Service;
use tower_http::add_extension::AddExtension;

use crate::config::RequestLimits;
use crate::lockout::ClientAddr;
use crate::metrics::ConnectionMetrics;

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Room in a request head beyond the gateway's URI and header limits: the request line's method
/// and version, and each header line's `": "` and CRLF.
const HEAD_SLACK: usize = 8 * 1024;

/// What one listener allows its connections.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    /// hyper's bound on a whole request head (request line and headers).
    pub max_head_bytes: usize,
    pub metrics: ConnectionMetrics,
}

impl ConnectionLimits {
    pub fn new(limits: &RequestLimits, metrics: ConnectionMetrics) -> Self {
        Self {
            max_connections: limits.max_connections,
            header_timeout: limits.header_timeout,
            max_head_bytes: limits.max_uri_bytes + limits.max_header_bytes + HEAD_SLACK,
            metrics,
        }
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self::new(&RequestLimits::default(), ConnectionMetrics::default())
    }
}

/// Counts a connection open from accept until its task ends, however it ends.
struct OpenConnection(ConnectionMetrics);

impl OpenConnection {
    fn new(metrics: &ConnectionMetrics) -> Self {
        metrics.open.inc();
        Self(metrics.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.dec();
    }
}

/// Serves `service` on `listener` within `limits` until `shutdown` completes, then lets
/// in-flight requests finish for up to `grace`. Each request carries the peer's [`ClientAddr`].
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    limits: ConnectionLimits,
) -> std::io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connect = move |stream: TcpStream, peer: SocketAddr| {
        // Who is at the other end travels with each request (auth counts failures by it).
        let service = AddExtension::new(service.clone(), ClientAddr(peer));
        (stream, TowerToHyperService::new(service))
    };
    serve_connections(listener, connect, shutdown, grace, limits).await
}

/// The accept loop itself: `connect` turns each accepted socket into the I/O and the hyper
/// service its connection uses (the simulator wraps the socket to misbehave on it).
pub async fn serve_connections<C, IO, S, B>(
    listener: TcpListener,
    mut connect: C,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    limits: ConnectionLimits,
) -> std::io::Result<()>
where
    C: FnMut(TcpStream, SocketAddr) -> (IO, S),
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // hyper's minimum buffer is 8 KiB; a head that fills the buffer is refused with 431.
        .max_buf_size(limits.max_head_bytes.max(8 * 1024));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_head_bytes).unwrap_or(u32::MAX));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    // Closed at once: a waiting client learns now rather than at its timeout.
                    let before = limits.metrics.refused.inc();
                    if before % 1000 == 0 {
                        tracing::warn!(
                            max_connections = limits.max_connections,
                            refused = before + 1,
                            "connection limit reached; closing new connections"
                        );
                    }
                    drop(stream);
                    continue;
                };
                let open = OpenConnection::new(&limits.metrics);
                // Small JSON answers: send them at once rather than wait for Nagle.
                let _ = stream.set_nodelay(true);
                let (io, service) = connect(stream, peer);
                let connection = builder
                    .serve_connection(TokioIo::new(io), service)
                    .into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%peer, error = %error, "connection ended with an error");
                    }
                    drop((slot, open));
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "connections still open after the grace period; closing")
        }
    }
    Ok(())
}
