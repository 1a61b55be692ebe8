//! `ScopeLayer`: a caller asks only what it may ask.
//!
//! Checked after auth and normalize (it needs who asks and the canonical question: it takes an
//! [`Admitted`] request) and before the cache, so a refusal costs no upstream call and touches
//! no entry. Scoping decides who may ask, not what is cached: allowed answers still come from
//! the shared cache. A refusal names what is not allowed and never says whether a SIM or tag
//! exists. The rules themselves are `caller::Scope`'s.

use crate::caller::Admitted;
use crate::error::GatewayError;
use crate::gate::{Gate, GateLayer};

/// The scope check, as a [`Gate`] after auth and normalize.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScopeCheck;

/// The scope check as a layer: `ScopeLayer::new(ScopeCheck)`.
pub type ScopeLayer = GateLayer<ScopeCheck>;

impl Gate<Admitted> for ScopeCheck {
    type Admitted = Admitted;

    fn admit(&self, admitted: Admitted) -> Result<Admitted, GatewayError> {
        admitted
            .caller
            .policy
            .scope
            .check(&admitted.query)
            .map_err(GatewayError::Forbidden)?;
        Ok(admitted)
    }
}
