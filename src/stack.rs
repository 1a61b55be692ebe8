//! The request's way through the gateway, written once, outermost layer first.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower::{Service, ServiceBuilder};
use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::auth::{AuthLayer, KeyStore};
use crate::cache::{CacheLayer, CredentialId};
use crate::config::Config;
use crate::error::{ErrorBoundaryLayer, ResponseBody};
use crate::normalize::NormalizeLayer;
use crate::upstream::{Shield, Upstream};

/// Builds the gateway service for one configuration.
pub fn build<B>(
    config: &Config,
) -> Result<
    impl Service<
            Request<B>,
            Response = Response<impl Body<Data = Bytes, Error = Infallible> + Send + 'static>,
            Error = Infallible,
            Future = impl Send + 'static,
        > + Clone
        + Send
        + 'static,
    std::io::Error,
>
where
    B: Body + Send + 'static,
{
    let shield = Arc::new(Shield::new(&config.upstream));
    let upstream = Upstream::new(&config.upstream, shield)?;
    let credential = CredentialId::of(&config.upstream.token);
    Ok(ServiceBuilder::new()
        // Outermost, so the span and its closing line cover every answer, errors included.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(make_span::<B>)
                .on_request(())
                .on_response(on_response)
                .on_failure(()),
        )
        // The one error boundary: every GatewayError below becomes its JSON response here.
        .layer(ErrorBoundaryLayer)
        // Who is calling comes first: nothing about a request is examined for strangers.
        .layer(AuthLayer::new(KeyStore::new(&config.callers)))
        // Then what they ask, so only canonical, valid questions reach the cache.
        .layer(NormalizeLayer)
        // Repeats and identical concurrent misses stop here.
        .layer(CacheLayer::new(&config.cache, credential))
        // Misses go upstream with the organization token, inside the budget.
        .service(upstream))
}

/// One span per request. `caller`, `route`, `cache` and `upstream_ms` are recorded by the
/// layers that learn them; the request's query string is never logged (a confused client may
/// put a secret there).
fn make_span<B>(request: &Request<B>) -> Span {
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        caller = tracing::field::Empty,
        route = tracing::field::Empty,
        cache = tracing::field::Empty,
        upstream_ms = tracing::field::Empty,
    )
}

/// The one info-level line per request.
fn on_response(response: &Response<ResponseBody>, latency: Duration, _span: &Span) {
    tracing::info!(
        status = response.status().as_u16(),
        latency_us = latency.as_micros() as u64,
        "request finished"
    );
}
