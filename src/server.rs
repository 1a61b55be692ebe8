//! The accept loop: HTTP/1.1 and HTTP/2 on one listener, and a graceful shutdown that stops
//! accepting, lets in-flight requests finish, and gives up on stragglers after a grace period.
//!
//! Connection-level limits ([`ConnectionLimits`]): at most `max_connections` open at once (more
//! are closed as soon as they are accepted, so a flood of sockets cannot exhaust descriptors);
//! a client must send a request's headers within `header_timeout`, which also closes keep-alive
//! connections idle that long (hyper restarts the timer when a connection goes idle); and a
//! request head larger than `max_head_bytes` is cut off by hyper with a bare 431 before it is
//! buffered further. Below that bound the gateway's own layer answers 414/431 in JSON.
//!
//! A peer that stops reading cannot hold its slot either: a response write that makes no
//! progress for `send_timeout` closes the connection, and after `max_requests_per_connection`
//! requests (pipelined or not) a connection is closed once its current answer is written. For
//! HTTP/2, where hyper has no header timeout: a connection with no open stream for
//! `header_timeout` is sent GOAWAY and closed, a peer that does not answer a keep-alive ping
//! within `send_timeout` is dropped, and at most `http2_max_streams` streams run at once.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION};
use http::{Request, Response, Version};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_io_timeout::TimeoutStream;
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
    /// For the request head, and for idleness between requests (HTTP/1.1 and HTTP/2).
    pub header_timeout: Duration,
    /// Longest a response write may make no progress before the connection is closed.
    pub send_timeout: Duration,
    /// Requests one connection may carry before it is closed.
    pub max_requests_per_connection: usize,
    /// HTTP/2 streams one connection may have open at once.
    pub http2_max_streams: u32,
    /// hyper's bound on a whole request head (request line and headers).
    pub max_head_bytes: usize,
    pub metrics: ConnectionMetrics,
}

impl ConnectionLimits {
    pub fn new(limits: &RequestLimits, metrics: ConnectionMetrics) -> Self {
        Self {
            max_connections: limits.max_connections,
            header_timeout: limits.header_timeout,
            send_timeout: limits.send_timeout,
            max_requests_per_connection: limits.max_requests_per_connection,
            http2_max_streams: limits.http2_max_streams,
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
        .max_header_list_size(u32::try_from(limits.max_head_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.http2_max_streams)
        .keep_alive_interval(limits.header_timeout)
        .keep_alive_timeout(limits.send_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Each connection holds a receiver: a change asks it to finish gracefully, and once every
    // receiver is gone every connection has ended. (hyper-util's `GracefulShutdown` cannot be
    // combined with the per-connection reasons to close below: its connection trait is sealed.)
    let (stop_connections, connections_stop) = watch::channel(false);
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
                    if before.is_multiple_of(1000) {
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
                // Who is at the other end travels with each request (auth counts failures by it).
                let service = TowerToHyperService::new(AddExtension::new(
                    service.clone(),
                    ClientAddr(peer),
                ));
                let mut io = TimeoutStream::new(stream);
                io.set_write_timeout(Some(limits.send_timeout));
                let activity = Arc::new(Activity::new(limits.max_requests_per_connection));
                let service = Tracked {
                    inner: service,
                    activity: activity.clone(),
                };
                let connection = builder
                    .serve_connection(TokioIo::new(Box::pin(io)), service)
                    .into_owned();
                let mut stop = connections_stop.clone();
                let closing = Closing {
                    idle_timeout: limits.header_timeout,
                };
                tokio::spawn(async move {
                    tokio::pin!(connection);
                    // Runs to its end, asked to finish gracefully (HTTP/1.1: no more
                    // keep-alive; HTTP/2: GOAWAY) at the first reason to.
                    let ended = tokio::select! {
                        result = connection.as_mut() => Some(result),
                        _ = stop.wait_for(|stop| *stop) => None,
                        () = closing.reason_to_close(&activity) => None,
                    };
                    let result = match ended {
                        Some(result) => result,
                        None => {
                            connection.as_mut().graceful_shutdown();
                            connection.await
                        }
                    };
                    if let Err(error) = result {
                        tracing::debug!(%peer, error = %error, "connection ended with an error");
                    }
                    drop((slot, open));
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    drop(connections_stop);
    tracing::info!("shutting down: draining in-flight requests");
    let _ = stop_connections.send(true);
    tokio::select! {
        () = stop_connections.closed() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "connections still open after the grace period; closing")
        }
    }
    Ok(())
}

/// What a connection is doing, as its service sees it: requests in flight and served.
///
/// Plain counters, read by a timer (see [`Closing`]): a request costs three atomic updates,
/// never a wake-up or a timer of its own.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    served: AtomicUsize,
    max_requests: usize,
}

impl Activity {
    fn new(max_requests: usize) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
            max_requests,
        }
    }
}

/// A connection's service, counting its requests for [`Closing`].
#[derive(Debug)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, ReqBody, ResBody> hyper::service::Service<Request<ReqBody>> for Tracked<S>
where
    S: hyper::service::Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = InFlight<S::Future>;

    fn call(&self, request: Request<ReqBody>) -> Self::Future {
        let activity = &self.activity;
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        let number = activity.served.fetch_add(1, Ordering::Relaxed) + 1;
        // HTTP/1.1 ends with the answer that says `Connection: close` (RFC 9112 §9.6), so a
        // pipelined burst past the bound is cut exactly there; HTTP/2 gets its GOAWAY from
        // the connection's task instead.
        let last = number >= activity.max_requests && request.version() <= Version::HTTP_11;
        InFlight {
            inner: self.inner.call(request),
            last,
            _guard: InFlightGuard(activity.clone()),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's future; dropping it (answered or abandoned) ends the request's flight.
    struct InFlight<F> {
        #[pin]
        inner: F,
        // The connection's last answer: it says so.
        last: bool,
        _guard: InFlightGuard,
    }
}

impl<F, B, E> Future for InFlight<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        let mut answered = std::task::ready!(this.inner.poll(cx));
        if *this.last {
            if let Ok(response) = &mut answered {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
        }
        std::task::Poll::Ready(answered)
    }
}

struct InFlightGuard(Arc<Activity>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// When a connection is asked to finish: at shutdown, after its request budget, or idle.
#[derive(Debug, Clone, Copy)]
struct Closing {
    idle_timeout: Duration,
}

impl Closing {
    /// Completes when the connection has served its budget of requests (HTTP/2; HTTP/1.1
    /// is cut by its last answer's `Connection: close`), or has started no request and had
    /// none in flight for a whole `idle_timeout`: so an idle connection closes between one
    /// and two `idle_timeout`s after its last request.
    async fn reason_to_close(self, activity: &Activity) {
        let mut seen = activity.served.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(self.idle_timeout).await;
            let served = activity.served.load(Ordering::Relaxed);
            if served >= activity.max_requests {
                return;
            }
            if served == seen && activity.in_flight.load(Ordering::Relaxed) == 0 {
                return;
            }
            seen = served;
        }
    }
}
