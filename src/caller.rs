//! Who asks and what they may ask: the [`Caller`] that auth finds, its [`CallerPolicy`]
//! (scope, credential profile, quota, refresh right), and the requests that carry them inwards:
//! an [`Authenticated`] request knows its caller, an [`Admitted`] one also its canonical
//! question. Layers below normalize take an `Admitted` request, so a stack built in the wrong
//! order does not compile, and no path can reach the upstream without a caller (and so without
//! its credential profile).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Request;

use crate::metrics::CallerIndex;
use crate::query::{FilterKey, Route, RouteName, UsageQuery};
use crate::window::{Allowance, SlidingWindow};

/// Who is calling: found by auth, carried by [`Authenticated`] and [`Admitted`] requests.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: Arc<str>,
    /// Its place in the metrics' caller table, given when the configuration is loaded, so
    /// counting its requests takes no lookup by name.
    pub index: CallerIndex,
    pub policy: Arc<CallerPolicy>,
}

impl Caller {
    /// A caller with no restriction, no quota and the default profile, for tests of layers.
    #[cfg(test)]
    pub fn unrestricted(name: &str) -> Caller {
        Caller {
            name: name.into(),
            index: CallerIndex::UNREGISTERED,
            policy: Arc::new(CallerPolicy::new(Scope::default(), 0, false, None, None)),
        }
    }
}

/// Quota state, kept across reloads while a caller's quota is unchanged.
type Quota = Arc<Mutex<SlidingWindow>>;

/// What a caller may do: what it may ask, which credential its misses use, its own upstream
/// quota and forced refreshes.
#[derive(Debug)]
pub struct CallerPolicy {
    pub scope: Scope,
    /// Index of its credential profile in the running profile list (0 is `[upstream]`).
    pub profile: usize,
    /// `Cache-Control: no-cache` from this caller forces an upstream fetch.
    pub allow_refresh: bool,
    /// Upstream calls this caller may cause per minute, and the state of that window.
    quota: Option<(u32, Quota)>,
}

impl CallerPolicy {
    /// A caller's policy; a quota of `upstream_per_minute` keeps `previous`'s spent window
    /// when its limit is unchanged (a reload does not hand out a fresh quota).
    pub fn new(
        scope: Scope,
        profile: usize,
        allow_refresh: bool,
        upstream_per_minute: Option<u32>,
        previous: Option<&CallerPolicy>,
    ) -> Self {
        let quota = upstream_per_minute.map(|limit| {
            let kept = previous
                .and_then(|p| p.quota.as_ref())
                .filter(|(old_limit, _)| *old_limit == limit)
                .map(|(_, window)| window.clone());
            let window = kept.unwrap_or_else(|| {
                Arc::new(Mutex::new(SlidingWindow::new(
                    limit as usize,
                    Duration::from_secs(60),
                )))
            });
            (limit, window)
        });
        Self {
            scope,
            profile,
            allow_refresh,
            quota,
        }
    }

    /// Charges one upstream call to this caller, or says how long until its quota allows one.
    pub fn charge_upstream_call(&self) -> Result<(), Duration> {
        let Some((_, quota)) = &self.quota else {
            return Ok(());
        };
        let now = Instant::now();
        crate::sync::lock(quota)
            .try_take(now)
            .map_err(|free_at| free_at.saturating_duration_since(now))
    }

    /// The caller's quota of upstream calls per minute; `None` without one.
    pub fn quota_per_minute(&self) -> Option<u32> {
        self.quota.as_ref().map(|(limit, _)| *limit)
    }

    /// What is left of this caller's quota at `now`; `None` without a quota.
    pub fn quota_allowance(&self, now: Instant) -> Option<Allowance> {
        let (_, quota) = self.quota.as_ref()?;
        Some(crate::sync::lock(quota).allowance(now))
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

/// A request whose caller auth has found.
#[derive(Debug)]
pub struct Authenticated<B> {
    pub caller: Caller,
    pub request: Request<B>,
}

/// A request auth and normalize have admitted: who asks and the canonical question travel
/// with it. Its body has been read and dropped (none goes further).
///
/// The cache (like scope and the upstream) takes admitted requests and nothing else:
///
/// ```no_run
/// use std::sync::Arc;
/// use tower::{Layer, ServiceExt};
/// use usage_gateway::caller::{Admitted, Caller, CallerPolicy, Scope};
/// use usage_gateway::query::UsageQuery;
///
/// async fn ask(cache: usage_gateway::cache::CacheLayer) {
///     let upstream = tower::service_fn(|_: Admitted| async {
///         Ok::<_, usage_gateway::error::GatewayError>(http::Response::new(
///             usage_gateway::error::ResponseBody::default(),
///         ))
///     });
///     let policy = CallerPolicy::new(Scope::default(), 0, false, None, None);
///     let admitted = Admitted {
///         caller: Caller {
///             name: "billing".into(),
///             index: usage_gateway::metrics::CallerIndex::UNREGISTERED,
///             policy: Arc::new(policy),
///         },
///         query: UsageQuery::from_target("/usage").unwrap().unwrap(),
///         request: http::Request::new(()),
///         background: false,
///     };
///     let _ = cache.layer(upstream).oneshot(admitted).await;
/// }
/// ```
///
/// so a request that did not pass auth and normalize cannot reach it: this does not compile.
///
/// ```compile_fail
/// use tower::{Layer, ServiceExt};
/// use usage_gateway::caller::Admitted;
///
/// async fn skip_auth(cache: usage_gateway::cache::CacheLayer) {
///     let upstream = tower::service_fn(|_: Admitted| async {
///         Ok::<_, usage_gateway::error::GatewayError>(http::Response::new(
///             usage_gateway::error::ResponseBody::default(),
///         ))
///     });
///     let _ = cache.layer(upstream).oneshot(http::Request::new(())).await;
/// }
/// ```
#[derive(Debug)]
pub struct Admitted {
    pub caller: Caller,
    pub query: UsageQuery,
    /// The request's head: headers (cache directives) and extensions (request facts).
    pub request: Request<()>,
    /// A background refresh, not a caller waiting: it goes upstream only with budget free now.
    pub background: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(target: &str) -> UsageQuery {
        UsageQuery::from_target(target)
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
