//! The request's way through the gateway, written once, outermost layer first.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower::{Service, ServiceBuilder};

use crate::auth::{AuthLayer, Authenticate, Callers};
use crate::cache::{CacheLayer, CredentialId};
use crate::config::Config;
use crate::discard::DiscardBodyLayer;
use crate::error::ErrorBoundaryLayer;
use crate::limits::RequestLimitsLayer;
use crate::lockout::AuthFailures;
use crate::metrics::Metrics;
use crate::normalize::{Normalize, NormalizeLayer};
use crate::observe::ObserveLayer;
use crate::ratelimit::RateLimitLayer;
use crate::scope::{ScopeCheck, ScopeLayer};
use crate::shared::Shared;
use crate::upstream::Upstreams;

/// The handles the rest of the gateway keeps on a built stack: reloads change the callers and
/// the cache rules; the admin endpoints read the metrics, the cache and the shields.
#[derive(Debug, Clone)]
pub struct Handles {
    pub callers: Callers,
    pub cache: CacheLayer,
    pub upstreams: Upstreams,
    pub metrics: Arc<Metrics>,
    /// The shared tier, with `[shared]`.
    pub shared: Option<Shared>,
}

/// Builds the gateway service for one configuration, and the handles on its parts.
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
        Handles,
    ),
    std::io::Error,
>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let metrics = Arc::new(Metrics::new());
    let profiles = config.all_profiles();
    // With `[shared]`, the budget (and callers' quotas) live in Redis; without, nothing is
    // connected and everything stays in this process.
    let shared = config
        .shared
        .as_ref()
        .map(|shared| Shared::new(shared, metrics.redis.clone()))
        .transpose()?;
    let upstreams = Upstreams::new(config, metrics.clone(), shared.as_ref())?;
    let credentials = profiles
        .iter()
        .map(|p| CredentialId::of(&p.token))
        .collect();
    let callers = Callers::new(
        &config.callers,
        profiles.iter().map(|p| p.name.clone()).collect(),
        metrics.clone(),
    )
    .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error))?;
    let failures = Arc::new(AuthFailures::new(
        config.server.auth_failures_per_minute,
        Duration::from_secs(60),
    ));
    let cache = CacheLayer::new(&config.cache, credentials);
    // With `[shared]`, memory misses ask the shared cache, and fills and purges are shared.
    let cache = match &shared {
        Some(shared) => cache.with_shared(shared.clone()),
        None => cache,
    };
    let service = ServiceBuilder::new()
        // Outermost, so the request id, the log line and the metrics cover every answer.
        .layer(ObserveLayer::new(metrics.clone()))
        // Browsers' preflights are answered before auth (they carry no key) and every answer
        // to a listed origin says so; with no origins configured there is no layer at all.
        .option_layer(crate::cors::layer(&config.server.cors))
        // Outside the boundary, so error answers to a known caller say what it may still
        // spend upstream (x-ratelimit-*) as answers do.
        .layer(RateLimitLayer::new(upstreams.clone()))
        // The one error boundary: every GatewayError below, and every panic, becomes its JSON
        // response here.
        .layer(ErrorBoundaryLayer::new(metrics.panics.clone()))
        // Oversized or body-carrying requests are refused before anything reads them.
        .layer(RequestLimitsLayer::new(config.server.limits))
        // Who is calling comes first: nothing about a request is examined for strangers.
        .layer(AuthLayer::new(Authenticate::new(callers.clone(), failures)))
        // A known caller's body (old examples send one on GET) is read and dropped: below
        // here no request has one, so none can be forwarded or reach a cache key.
        .layer(DiscardBodyLayer::new(
            config.server.limits.max_body_bytes,
            config.server.limits.header_timeout,
        ))
        // Then what they ask, so only canonical, valid questions go further.
        .layer(NormalizeLayer::new(Normalize::new(
            config.server.limits.max_filters,
        )))
        // Whether they may ask it, before it can cost a cache entry or an upstream call.
        .layer(ScopeLayer::new(ScopeCheck))
        // Repeats and identical concurrent misses stop here.
        .layer(cache.clone())
        // Misses go upstream with their profile's token, inside its budget.
        .service(upstreams.clone());
    Ok((
        service,
        Handles {
            callers,
            cache,
            upstreams,
            metrics,
            shared,
        },
    ))
}
