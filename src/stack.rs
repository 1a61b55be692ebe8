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

use crate::auth::{AuthLayer, Callers};
use crate::cache::{CacheLayer, CredentialId};
use crate::config::Config;
use crate::error::{ErrorBoundaryLayer, ResponseBody};
use crate::lockout::AuthFailures;
use crate::normalize::NormalizeLayer;
use crate::scope::ScopeLayer;
use crate::upstream::Upstreams;

/// Builds the gateway service for one configuration.
/// Builds the gateway service for one configuration, and the handle that reloads its callers.
// The service's type is the whole layer stack; `impl Trait` keeps it unnamed.
#[allow(clippy::type_complexity)]
pub fn build<B>(
    config: &Config,
) -> Result<
    (
        impl Service<
                Request<B>,
                Response = Response<impl Body<Data = Bytes, Error = Infallible> + Send + 'static>,
                Error = Infallible,
                Future = impl Send + 'static,
            > + Clone
            + Send
            + 'static,
        Callers,
    ),
    std::io::Error,
>
where
    B: Body + Send + 'static,
{
    let profiles = config.all_profiles();
    let upstreams = Upstreams::new(config)?;
    let credentials = profiles
        .iter()
        .map(|p| CredentialId::of(&p.token))
        .collect();
    let callers = Callers::new(
        &config.callers,
        profiles.iter().map(|p| p.name.clone()).collect(),
    )
    .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error))?;
    let failures = Arc::new(AuthFailures::new(
        config.server.auth_failures_per_minute,
        Duration::from_secs(60),
    ));
    let service = ServiceBuilder::new()
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
        .layer(AuthLayer::new(callers.clone(), failures))
        // Then what they ask, so only canonical, valid questions go further.
        .layer(NormalizeLayer)
        // Whether they may ask it, before it can cost a cache entry or an upstream call.
        .layer(ScopeLayer)
        // Repeats and identical concurrent misses stop here.
        .layer(CacheLayer::new(&config.cache, credentials))
        // Misses go upstream with their profile's token, inside its budget.
        .service(upstreams);
    Ok((service, callers))
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
