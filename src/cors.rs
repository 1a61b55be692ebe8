//! CORS for browser dashboards (`[server.cors] allow_origins`), with tower-http's
//! `CorsLayer`.
//!
//! Guarantees:
//! - no origins configured (the default): no layer at all, so no answer carries CORS headers
//!   and browsers keep every other origin's pages out;
//! - for a listed origin, a preflight (`OPTIONS` with no key, as browsers send it) is answered
//!   here, 204 with `Access-Control-Allow-Origin`, the one method (`GET`) and the two key
//!   headers (`Authorization`, `X-API-Key`); it never reaches auth, so it is never a failed
//!   authentication and never costs anything;
//! - answers to a listed origin expose what a dashboard reads besides the body: `Cache-Status`,
//!   `Age`, `X-Request-Id`, `Retry-After` and the `x-ratelimit-*` headers;
//! - credentials mode (cookies) is never allowed: the key travels in a header the page sets.
//!
//! With CORS on, every `OPTIONS` is answered as a preflight (the layer cannot tell a stray
//! one from a browser's); a listed origin is compared exactly, as the browser serializes it.

use std::task::{Context, Poll};

use futures_util::future::{Either, Map};
use futures_util::FutureExt;
use http::header::{HeaderName, HeaderValue, AGE, AUTHORIZATION, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use tower::{Layer, Service};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::X_API_KEY;
use crate::cache::CACHE_STATUS;
use crate::config::CorsConfig;
use crate::observe::X_REQUEST_ID;
use crate::ratelimit::{X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET};

/// The CORS layer for `config`, or `None` when no origin is allowed.
pub fn layer(config: &CorsConfig) -> Option<PreflightLayer> {
    let origins: Vec<HeaderValue> = config
        .allow_origins
        .iter()
        .filter_map(|origin| HeaderValue::from_str(origin).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    let exposed: [HeaderName; 7] = [
        CACHE_STATUS.clone(),
        AGE,
        X_REQUEST_ID.clone(),
        RETRY_AFTER,
        X_RATELIMIT_LIMIT.clone(),
        X_RATELIMIT_REMAINING.clone(),
        X_RATELIMIT_RESET.clone(),
    ];
    Some(PreflightLayer {
        cors: CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET])
            .allow_headers([AUTHORIZATION, X_API_KEY.clone()])
            .expose_headers(exposed),
    })
}

/// tower-http's `CorsLayer`, with its preflight answers as 204 No Content (it answers 200;
/// a preflight has no content, and 204 is what browsers' own tooling and most servers send).
#[derive(Debug, Clone)]
pub struct PreflightLayer {
    cors: CorsLayer,
}

impl<S> Layer<S> for PreflightLayer {
    type Service = Preflight<tower_http::cors::Cors<S>>;

    fn layer(&self, inner: S) -> Self::Service {
        Preflight {
            inner: self.cors.layer(inner),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Preflight<S> {
    inner: S,
}

type NoContent<B, E> = fn(Result<Response<B>, E>) -> Result<Response<B>, E>;

/// A preflight's answer, as 204 when it was a success.
fn no_content<B, E>(result: Result<Response<B>, E>) -> Result<Response<B>, E> {
    result.map(|mut response| {
        if response.status() == StatusCode::OK {
            *response.status_mut() = StatusCode::NO_CONTENT;
        }
        response
    })
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Preflight<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Either<Map<S::Future, NoContent<ResBody, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The CORS layer answers every OPTIONS itself, without asking the inner service.
        if request.method() == Method::OPTIONS {
            Either::Left(self.inner.call(request).map(no_content as NoContent<_, _>))
        } else {
            Either::Right(self.inner.call(request))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ResponseBody;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    fn config(origins: &[&str]) -> CorsConfig {
        CorsConfig {
            allow_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
        }
    }

    async fn call(origins: &[&str], request: Request<()>) -> Response<ResponseBody> {
        let inner = service_fn(|request: Request<()>| async move {
            assert_ne!(request.method(), Method::OPTIONS, "preflights stop at CORS");
            let mut response = Response::new(ResponseBody::from("{}"));
            response
                .headers_mut()
                .insert(CACHE_STATUS.clone(), HeaderValue::from_static("x"));
            Ok::<_, std::convert::Infallible>(response)
        });
        let layer = layer(&config(origins)).expect("origins configured");
        let service = ServiceBuilder::new().layer(layer).service(inner);
        service.oneshot(request).await.expect("infallible")
    }

    #[test]
    fn no_origins_means_no_layer() {
        assert!(layer(&CorsConfig::default()).is_none());
    }

    #[tokio::test]
    async fn a_listed_origins_preflight_is_204_allowing_get_and_the_key_headers() {
        let preflight = Request::builder()
            .method(Method::OPTIONS)
            .uri("/usage")
            .header("origin", "http://127.0.0.1:8000")
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .body(())
            .expect("request");
        let response = call(&["http://127.0.0.1:8000"], preflight).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let headers = response.headers();
        assert_eq!(
            headers["access-control-allow-origin"],
            "http://127.0.0.1:8000"
        );
        assert_eq!(headers["access-control-allow-methods"], "GET");
        let allowed = headers["access-control-allow-headers"]
            .to_str()
            .expect("ASCII");
        assert!(allowed.contains("authorization") && allowed.contains("x-api-key"));
        assert!(!headers.contains_key("access-control-allow-credentials"));
    }

    #[tokio::test]
    async fn answers_to_a_listed_origin_expose_the_gateways_headers_and_others_get_none() {
        let get = |origin: &'static str| {
            Request::builder()
                .uri("/usage")
                .header("origin", origin)
                .body(())
                .expect("request")
        };
        let listed = call(
            &["https://dash.example.com"],
            get("https://dash.example.com"),
        )
        .await;
        let headers = listed.headers();
        assert_eq!(
            headers["access-control-allow-origin"],
            "https://dash.example.com"
        );
        let exposed = headers["access-control-expose-headers"]
            .to_str()
            .expect("ASCII");
        for name in [
            "cache-status",
            "age",
            "x-request-id",
            "retry-after",
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ] {
            assert!(exposed.contains(name), "{name} not in {exposed}");
        }
        let other = call(&["https://dash.example.com"], get("https://evil.example")).await;
        assert!(!other.headers().contains_key("access-control-allow-origin"));
        assert_eq!(
            other.status(),
            StatusCode::OK,
            "the answer itself is unchanged"
        );
    }
}
