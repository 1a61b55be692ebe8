//! `DiscardBodyLayer`: a known caller's request body is read, up to `server.max_body_bytes`,
//! and dropped, so the layers below (and the upstream) never see one.
//!
//! Onomondo's older examples send a JSON body on GET and the upstream answers them as if it
//! were absent; so does the gateway. The body is never forwarded and never part of the cache
//! key (both are built from the canonical query alone). Guarantees:
//! - a body that grows past `max_body_bytes` while it is read (chunked, or lying about its
//!   length) is 413 `body_too_large`; one that announces more than that never gets here
//!   (`limits.rs` refuses it unread);
//! - a body must arrive within `timeout` (`server.header_timeout_ms`), else 408
//!   `body_timeout`: a caller cannot hold a request open by trickling a body;
//! - a request without a body (the usual GET) costs no read, no allocation and no task.
//!
//! It sits after auth, so only known callers' bodies are ever read: a stranger's request is
//! refused unread, and hyper closes that connection rather than drain it.

use std::error::Error as StdError;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{BoxFuture, Either};
use futures_util::FutureExt;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower::{Layer, Service, ServiceExt};

use crate::caller::Authenticated;
use crate::error::{GatewayError, InvalidRequest, ResponseBody};

/// Reads and drops request bodies of at most `max_bytes`, each within `timeout`.
#[derive(Debug, Clone, Copy)]
pub struct DiscardBodyLayer {
    max_bytes: usize,
    timeout: Duration,
}

impl DiscardBodyLayer {
    pub fn new(max_bytes: usize, timeout: Duration) -> Self {
        Self { max_bytes, timeout }
    }
}

impl<S> Layer<S> for DiscardBodyLayer {
    type Service = DiscardBody<S>;

    fn layer(&self, inner: S) -> DiscardBody<S> {
        DiscardBody {
            inner,
            max_bytes: self.max_bytes,
            timeout: self.timeout,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DiscardBody<S> {
    inner: S,
    max_bytes: usize,
    timeout: Duration,
}

/// Why a body could not be read and dropped. Pure of the service, so it is tested alone.
pub async fn drain<B>(body: B, max_bytes: usize, timeout: Duration) -> Result<(), GatewayError>
where
    B: Body,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    match tokio::time::timeout(timeout, Limited::new(body, max_bytes).collect()).await {
        Ok(Ok(_dropped)) => Ok(()),
        Ok(Err(error)) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(GatewayError::BodyTooLarge { limit: max_bytes })
        }
        // The caller went away or broke its framing mid-body; nobody reads this answer.
        Ok(Err(_)) => Err(GatewayError::InvalidRequest(InvalidRequest::new(
            "body_invalid",
            "the request body could not be read to its end",
        ))),
        Err(_) => Err(GatewayError::BodyTimeout(timeout)),
    }
}

impl<S, B> Service<Authenticated<B>> for DiscardBody<S>
where
    S: Service<Authenticated<()>, Response = Response<ResponseBody>, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Response = Response<ResponseBody>;
    type Error = GatewayError;
    type Future =
        Either<S::Future, BoxFuture<'static, Result<Response<ResponseBody>, GatewayError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, authenticated: Authenticated<B>) -> Self::Future {
        let Authenticated { caller, request } = authenticated;
        let (parts, body) = request.into_parts();
        let without_body = move |parts| Authenticated {
            caller,
            request: Request::from_parts(parts, ()),
        };
        if body.is_end_stream() {
            return Either::Left(self.inner.call(without_body(parts)));
        }
        // The ready service stays for the next call; this one waits for the body first.
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        let (max_bytes, timeout) = (self.max_bytes, self.timeout);
        Either::Right(
            async move {
                drain(body, max_bytes, timeout).await?;
                inner.oneshot(without_body(parts)).await
            }
            .boxed(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{Full, StreamBody};
    use tower::{service_fn, ServiceBuilder};

    fn layer() -> DiscardBodyLayer {
        DiscardBodyLayer::new(16, Duration::from_millis(200))
    }

    /// The inner service answers with whether it was reached; it never sees a body.
    fn inner() -> impl Service<
        Authenticated<()>,
        Response = Response<ResponseBody>,
        Error = GatewayError,
        Future = impl Send,
    > + Clone
           + Send
           + 'static {
        service_fn(|authenticated: Authenticated<()>| async move {
            Ok::<_, GatewayError>(Response::new(ResponseBody::from(format!(
                "reached {}",
                authenticated.request.uri()
            ))))
        })
    }

    async fn answer<B>(body: B) -> Result<String, &'static str>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let service = ServiceBuilder::new().layer(layer()).service(inner());
        let request = Authenticated {
            caller: crate::caller::Caller::unrestricted("billing"),
            request: Request::get("/usage").body(body).expect("request"),
        };
        match service.oneshot(request).await {
            Ok(response) => {
                let bytes = response.into_body().collect().await.expect("body");
                Ok(String::from_utf8_lossy(&bytes.to_bytes()).into_owned())
            }
            Err(error) => Err(error.code()),
        }
    }

    #[tokio::test]
    async fn a_body_within_the_bound_is_dropped_and_the_request_goes_on() {
        assert_eq!(
            answer(Full::new(Bytes::from_static(b"{\"a\":1}"))).await,
            Ok("reached /usage".to_owned())
        );
        assert_eq!(
            answer(Full::new(Bytes::from(vec![b'x'; 16]))).await,
            Ok("reached /usage".to_owned())
        );
        assert_eq!(
            answer(http_body_util::Empty::<Bytes>::new()).await,
            Ok("reached /usage".to_owned())
        );
    }

    #[tokio::test]
    async fn a_body_past_the_bound_is_413_and_never_reaches_the_inner_service() {
        assert_eq!(
            answer(Full::new(Bytes::from(vec![b'x'; 17]))).await,
            Err("body_too_large")
        );
        // Many small chunks add up past the bound as surely as one large one.
        let chunks = (0..20)
            .map(|_| Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from_static(b"x"))));
        assert_eq!(
            answer(StreamBody::new(futures_util::stream::iter(chunks))).await,
            Err("body_too_large")
        );
    }

    #[tokio::test]
    async fn a_body_that_never_ends_is_408_after_the_timeout() {
        let endless =
            futures_util::stream::pending::<Result<http_body::Frame<Bytes>, std::io::Error>>();
        assert_eq!(answer(StreamBody::new(endless)).await, Err("body_timeout"));
    }

    #[tokio::test]
    async fn a_body_that_breaks_off_is_400() {
        let broken = futures_util::stream::iter([
            Ok(http_body::Frame::data(Bytes::from_static(b"{"))),
            Err(std::io::Error::other("connection reset")),
        ]);
        assert_eq!(answer(StreamBody::new(broken)).await, Err("body_invalid"));
    }
}
