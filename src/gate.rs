//! One mechanism for the layers that admit or refuse a request before it goes further
//! (request limits, auth, normalize, scope): each is a [`Gate`], a check that turns the request
//! into what it admits (auth: an `Authenticated` request; normalize: an `Admitted` one),
//! wrapped by [`GateLayer`] into a tower layer. The types chain: a gate's inner service takes
//! what the gate admits, so layers in the wrong order do not compile.
//!
//! A refusal is answered at once and never reaches the inner service; neither path allocates
//! (the future is an `Either` of a ready refusal and the inner service's future).

use std::task::{Context, Poll};

use futures_util::future::{ready, Either, Ready};
use http::Response;
use tower::{Layer, Service};

use crate::error::{GatewayError, ResponseBody};

/// A check on the way in: admit the request (as what it learnt makes of it) or say why not.
pub trait Gate<R> {
    /// What an admitted request goes on as.
    type Admitted;
    fn admit(&self, request: R) -> Result<Self::Admitted, GatewayError>;
}

/// The future of a gated service: a refusal at once, or the inner service's future.
pub type GateFuture<F> = Either<Ready<Result<Response<ResponseBody>, GatewayError>>, F>;

/// Wraps a service in the gate `G`.
#[derive(Debug, Clone)]
pub struct GateLayer<G> {
    gate: G,
}

impl<G> GateLayer<G> {
    pub fn new(gate: G) -> Self {
        Self { gate }
    }
}

impl<G: Clone, S> Layer<S> for GateLayer<G> {
    type Service = Gated<G, S>;

    fn layer(&self, inner: S) -> Gated<G, S> {
        Gated {
            gate: self.gate.clone(),
            inner,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Gated<G, S> {
    gate: G,
    inner: S,
}

impl<G, S, R> Service<R> for Gated<G, S>
where
    G: Gate<R>,
    S: Service<G::Admitted, Response = Response<ResponseBody>, Error = GatewayError>,
{
    type Response = Response<ResponseBody>;
    type Error = GatewayError;
    type Future = GateFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        match self.gate.admit(request) {
            Ok(admitted) => Either::Right(self.inner.call(admitted)),
            Err(error) => Either::Left(ready(Err(error))),
        }
    }
}
