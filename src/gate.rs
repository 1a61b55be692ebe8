//! One mechanism for the layers that admit or refuse a request before it goes further
//! (request limits, auth, normalize, scope): each is a [`Gate`], a check that may add what it
//! learnt to the request's extensions, wrapped by [`GateLayer`] into a tower layer.
//!
//! A refusal is answered at once and never reaches the inner service; neither path allocates
//! (the future is an `Either` of a ready refusal and the inner service's future).

use std::task::{Context, Poll};

use futures_util::future::{ready, Either, Ready};
use http::{Request, Response};
use tower::{Layer, Service};

use crate::error::{GatewayError, ResponseBody};

/// A check on the way in: admit the request (possibly adding to its extensions) or say why not.
pub trait Gate {
    fn admit<B>(&self, request: &mut Request<B>) -> Result<(), GatewayError>;
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

impl<G, S, B> Service<Request<B>> for Gated<G, S>
where
    G: Gate,
    S: Service<Request<B>, Response = Response<ResponseBody>, Error = GatewayError>,
{
    type Response = Response<ResponseBody>;
    type Error = GatewayError;
    type Future = GateFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        match self.gate.admit(&mut request) {
            Ok(()) => Either::Right(self.inner.call(request)),
            Err(error) => Either::Left(ready(Err(error))),
        }
    }
}
