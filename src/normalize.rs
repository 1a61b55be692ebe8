//! `NormalizeLayer`: only well-formed usage questions get past, as a canonical [`UsageQuery`]
//! in the request extensions.
//!
//! Unknown paths are 404, other methods on the usage paths 405, and malformed queries 400
//! naming the parameter: none of them reaches the cache or the upstream. The parsing itself is
//! the pure `query` module; this file is the glue.

use http::{Method, Request};

use crate::caller::{Admitted, Authenticated};
use crate::error::GatewayError;
use crate::facts::RequestFacts;
use crate::gate::{Gate, GateLayer};
use crate::query::{RouteName, UsageQuery};

/// The normalize gate as a layer: `NormalizeLayer::new(Normalize::new(max_filters))`.
pub type NormalizeLayer = GateLayer<Normalize>;

#[derive(Debug, Clone, Copy)]
pub struct Normalize {
    /// `server.max_filters`: more filters in one query are refused.
    max_filters: usize,
}

impl Normalize {
    pub fn new(max_filters: usize) -> Self {
        Self { max_filters }
    }
}

/// What the request asks, or why it is refused. Pure, so it is tested without a service.
pub fn classify<B>(request: &Request<B>, max_filters: usize) -> Result<UsageQuery, GatewayError> {
    let uri = request.uri();
    let query = UsageQuery::parse_within(uri.path(), uri.query(), max_filters)
        .map_err(GatewayError::InvalidRequest)?
        .ok_or(GatewayError::NotFound)?;
    if request.method() != Method::GET {
        return Err(GatewayError::MethodNotAllowed);
    }
    Ok(query)
}

impl Gate<Authenticated<()>> for Normalize {
    type Admitted = Admitted;

    fn admit(&self, authenticated: Authenticated<()>) -> Result<Admitted, GatewayError> {
        let Authenticated { caller, request } = authenticated;
        // The method is checked after the path so that an unknown path is 404 whatever the method.
        let query = classify(&request, self.max_filters)?;
        if let Some(facts) = RequestFacts::of(request.extensions()) {
            facts.set_route(RouteName::of(query.route()));
        }
        Ok(Admitted {
            caller,
            query,
            request,
            background: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ResponseBody;
    use http::Response;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    fn authenticated(method: Method, target: &str) -> Authenticated<()> {
        Authenticated {
            caller: crate::caller::Caller::unrestricted("billing"),
            request: request(method, target),
        }
    }

    fn request(method: Method, target: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(target)
            .body(())
            .expect("request")
    }

    #[test]
    fn classify_answers_each_kind_of_request() {
        // (method, target, expected status or canonical target)
        let rows = [
            (Method::GET, "/usage?limit=5", Ok("/usage?limit=5")),
            (Method::GET, "/nope", Err(404)),
            (Method::POST, "/nope", Err(404)),
            (Method::POST, "/usage", Err(405)),
            (Method::DELETE, "/usage/000000001", Err(405)),
            (Method::HEAD, "/usage", Err(405)),
            (Method::GET, "/usage?limit=0", Err(400)),
        ];
        for (method, target, expected) in rows {
            let got = classify(&request(method.clone(), target), 32)
                .map(|q| q.canonical().to_owned())
                .map_err(|e| e.status().as_u16());
            assert_eq!(got, expected.map(str::to_owned), "{method} {target}");
        }
    }

    #[tokio::test]
    async fn inner_service_sees_the_canonical_query() {
        let service = ServiceBuilder::new()
            .layer(NormalizeLayer::new(Normalize::new(32)))
            .service(service_fn(|admitted: Admitted| async move {
                let canonical = admitted.query.canonical().to_owned();
                Ok::<_, GatewayError>(Response::new(ResponseBody::from(canonical)))
            }));
        let response = service
            .oneshot(authenticated(
                Method::GET,
                "/usage?filter=TIME:2024&limit=010",
            ))
            .await
            .expect("valid");
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&body[..], b"/usage?filter=time:2024&limit=10");
    }

    #[tokio::test]
    async fn refused_requests_never_reach_the_inner_service() {
        let service = ServiceBuilder::new()
            .layer(NormalizeLayer::new(Normalize::new(32)))
            .service(service_fn(|_: Admitted| async {
                panic!("the inner service must not be called");
                #[allow(unreachable_code)]
                Ok::<Response<ResponseBody>, GatewayError>(Response::default())
            }));
        let error = service
            .oneshot(authenticated(Method::GET, "/usage?filter=colour:red"))
            .await
            .expect_err("refused");
        assert_eq!(error.code(), "filter_invalid");
    }
}
