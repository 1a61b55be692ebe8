//! `ScopeLayer`: a caller asks only what it may ask.
//!
//! Checked after auth and normalize (it needs who asks and the canonical question) and before
//! the cache, so a refusal costs no upstream call and touches no entry. Scoping decides who may
//! ask, not what is cached: allowed answers still come from the shared cache. A refusal names
//! what is not allowed and never says whether a SIM or tag exists.

use std::collections::BTreeSet;

use http::Request;

use crate::auth::Caller;
use crate::error::GatewayError;
use crate::gate::{Gate, GateLayer};
use crate::query::{FilterKey, Route, UsageQuery};

/// The three endpoints, as `[[callers]] routes` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteName {
    Usage,
    UsageBySim,
    TagTotal,
}

impl RouteName {
    pub const ALL: [RouteName; 3] = [RouteName::Usage, RouteName::UsageBySim, RouteName::TagTotal];

    pub fn as_str(self) -> &'static str {
        match self {
            RouteName::Usage => "usage",
            RouteName::UsageBySim => "usage_by_sim",
            RouteName::TagTotal => "tag_total",
        }
    }

    pub fn parse(name: &str) -> Option<RouteName> {
        RouteName::ALL
            .into_iter()
            .find(|route| route.as_str() == name)
    }

    pub fn of(route: &Route) -> RouteName {
        match route {
            Route::Usage => RouteName::Usage,
            Route::UsageBySim(_) => RouteName::UsageBySim,
            Route::TagTotal(_) => RouteName::TagTotal,
        }
    }
}

/// What one caller may ask. `None` means unrestricted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub routes: Option<BTreeSet<RouteName>>,
    /// SIM ids (9 digits) and ICCIDs (19-20 digits), each matching only itself.
    pub sims: Option<BTreeSet<String>>,
    /// Tag ids (lower-case UUIDs).
    pub tags: Option<BTreeSet<String>>,
}

impl Scope {
    /// Why this scope's restrictions refuse every question on `route`, if they do.
    ///
    /// A restriction denies whatever it cannot check: a tag's total sums SIMs that a caller
    /// limited to SIMs may not see, and the gateway cannot know which SIMs carry a tag, so a
    /// caller limited to tags cannot be checked on per-SIM questions.
    pub fn refuses_route(&self, route: RouteName) -> Option<&'static str> {
        match route {
            RouteName::TagTotal if self.sims.is_some() && self.tags.is_none() => Some(
                "this caller is limited to SIMs and may not read tag totals (a tag's total sums SIMs it may not see) unless its scope lists tags too",
            ),
            RouteName::Usage | RouteName::UsageBySim
                if self.tags.is_some() && self.sims.is_none() =>
            {
                Some(
                    "this caller is limited to tags and may not read per-SIM usage (the gateway cannot tell which SIMs carry a tag) unless its scope lists SIMs too",
                )
            }
            _ => None,
        }
    }

    /// Whether this scope allows `query`; the refusal says what is not allowed.
    pub fn check(&self, query: &UsageQuery) -> Result<(), String> {
        let route = RouteName::of(query.route());
        if let Some(routes) = &self.routes {
            if !routes.contains(&route) {
                return Err(format!(
                    "this caller may not use the {} endpoint",
                    route.as_str()
                ));
            }
        }
        if let Some(why) = self.refuses_route(route) {
            return Err(why.into());
        }
        match query.route() {
            Route::UsageBySim(sim) => self.check_sims(std::iter::once(sim.as_str())),
            Route::Usage => {
                let sims: Vec<&str> = query
                    .filters()
                    .iter()
                    .filter(|filter| filter.key == FilterKey::SimId)
                    .map(|filter| filter.value.as_str())
                    .collect();
                if self.sims.is_some() && sims.is_empty() {
                    // Without a sim_id filter, /usage would answer about every SIM.
                    return Err(
                        "this caller may ask /usage only with sim_id filters naming its SIMs"
                            .into(),
                    );
                }
                self.check_sims(sims.into_iter())
            }
            Route::TagTotal(tag) => match &self.tags {
                Some(tags) if !tags.contains(tag) => {
                    Err(format!("this caller may not ask about tag {tag}"))
                }
                _ => Ok(()),
            },
        }
    }

    fn check_sims<'a>(&self, mut asked: impl Iterator<Item = &'a str>) -> Result<(), String> {
        let Some(allowed) = &self.sims else {
            return Ok(());
        };
        match asked.find(|sim| !allowed.contains(*sim)) {
            Some(sim) => Err(format!("this caller may not ask about SIM {sim}")),
            None => Ok(()),
        }
    }
}

/// The scope check, as a [`Gate`] after auth and normalize.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScopeCheck;

/// The scope check as a layer: `ScopeLayer::new(ScopeCheck)`.
pub type ScopeLayer = GateLayer<ScopeCheck>;

impl Gate for ScopeCheck {
    fn admit<B>(&self, request: &mut Request<B>) -> Result<(), GatewayError> {
        match (
            request.extensions().get::<Caller>(),
            request.extensions().get::<UsageQuery>(),
        ) {
            (Some(caller), Some(query)) => caller
                .policy
                .scope
                .check(query)
                .map_err(GatewayError::Forbidden),
            _ => Err(GatewayError::Internal(
                "the auth and normalize layers must run before the scope layer",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(target: &str) -> UsageQuery {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        UsageQuery::parse(path, Some(query))
            .expect("valid")
            .expect("route")
    }

    fn set<T: Ord + Clone>(items: &[T]) -> Option<BTreeSet<T>> {
        Some(items.iter().cloned().collect())
    }

    const TAG_A: &str = "5f0c7a2e-9b1d-4c3e-8a55-0d2f6b7e1c90";
    const TAG_B: &str = "00000000-0000-4000-8000-000000000000";

    #[test]
    fn an_empty_scope_allows_everything() {
        let scope = Scope::default();
        for target in [
            "/usage",
            "/usage/000000001",
            &format!("/usage/tag-total/{TAG_A}"),
        ] {
            assert_eq!(scope.check(&query(target)), Ok(()), "{target}");
        }
    }

    #[test]
    fn each_rule_allows_and_refuses_what_it_says() {
        let routes = Scope {
            routes: set(&[RouteName::UsageBySim]),
            ..Scope::default()
        };
        let sims = Scope {
            sims: set(&["000000001".to_owned(), "000000002".to_owned()]),
            ..Scope::default()
        };
        let tags = Scope {
            tags: set(&[TAG_A.to_owned()]),
            ..Scope::default()
        };
        let sims_and_tags = Scope {
            sims: sims.sims.clone(),
            tags: tags.tags.clone(),
            ..Scope::default()
        };
        // (scope, request, allowed)
        let rows = [
            (&routes, "/usage/000000009".to_owned(), true),
            (&routes, "/usage".to_owned(), false),
            (&routes, format!("/usage/tag-total/{TAG_A}"), false),
            (&sims, "/usage/000000001".to_owned(), true),
            (&sims, "/usage/000000003".to_owned(), false),
            (&sims, "/usage?filter=sim_id:000000002".to_owned(), true),
            (
                &sims,
                "/usage?filter[]=sim_id:000000001&filter[]=sim_id:000000002".to_owned(),
                true,
            ),
            (
                &sims,
                "/usage?filter[]=sim_id:000000001&filter[]=sim_id:000000003".to_owned(),
                false,
            ),
            // an unfiltered /usage would reveal every SIM
            (&sims, "/usage".to_owned(), false),
            (&sims, "/usage?filter=country_code:dk".to_owned(), false),
            // a SIM scope cannot check a tag's total: it sums SIMs the caller may not see
            (&sims, format!("/usage/tag-total/{TAG_B}"), false),
            (&sims_and_tags, format!("/usage/tag-total/{TAG_A}"), true),
            (&sims_and_tags, format!("/usage/tag-total/{TAG_B}"), false),
            (&tags, format!("/usage/tag-total/{TAG_A}"), true),
            (&tags, format!("/usage/tag-total/{TAG_B}"), false),
            // a tag scope cannot check per-SIM usage: which SIMs carry a tag is unknown here
            (&tags, "/usage".to_owned(), false),
            (&tags, "/usage?filter=sim_id:000000001".to_owned(), false),
            (&tags, "/usage/000000001".to_owned(), false),
            (&sims_and_tags, "/usage/000000001".to_owned(), true),
            (&sims_and_tags, "/usage/000000003".to_owned(), false),
        ];
        for (scope, target, allowed) in rows {
            assert_eq!(
                scope.check(&query(&target)).is_ok(),
                allowed,
                "{target} with {scope:?}"
            );
        }
    }

    #[test]
    fn refusals_name_what_is_not_allowed() {
        let scope = Scope {
            sims: set(&["000000001".to_owned()]),
            ..Scope::default()
        };
        let why = scope
            .check(&query("/usage/000000007"))
            .expect_err("refused");
        assert!(why.contains("000000007"), "{why}");
    }
}
