//! `[[callers]]`: who may call (a name and the hashes of their keys), what they may ask (their
//! scope), through which credential profile, and with what quota.

use sha2::{Digest, Sha256};

use super::{decode_sha256, narrow, valid_name};
use crate::caller::Scope;
use crate::config::raw::{OneOrMany, RawCaller};
use crate::config::secret::Secret;
use crate::config::{CallerConfig, ProfileConfig, DEFAULT_PROFILE};
use crate::query::RouteName;

pub(super) fn validate(
    raw: Vec<RawCaller>,
    profiles: &[ProfileConfig],
    declared_profiles: &[String],
    problems: &mut Vec<String>,
) -> Vec<CallerConfig> {
    if raw.is_empty() {
        problems.push(
            "callers: none configured: add a [[callers]] table with a name and key_sha256".into(),
        );
    }
    let mut callers: Vec<CallerConfig> = Vec::with_capacity(raw.len());
    for (index, caller) in raw.into_iter().enumerate() {
        let at = format!("callers[{index}]");
        let Some(name) = valid_name(&at, caller.name, problems) else {
            continue;
        };
        let at = format!("callers[{index}] ({name})");
        let Some(hashes) = caller_keys(&at, caller.key_sha256, caller.key, problems) else {
            continue;
        };
        if callers.iter().any(|c| *c.name == *name) {
            problems.push(format!("{at}.name: another caller has the same name"));
            continue;
        }
        let shared = callers
            .iter()
            .find(|c| c.key_sha256.iter().any(|hash| hashes.contains(hash)));
        if let Some(other) = shared {
            problems.push(format!(
                "{at}: has the same key as caller {}; every caller needs its own key",
                other.name
            ));
            continue;
        }
        let upstream_per_minute = match caller.upstream_per_minute {
            None => None,
            Some(n) if (1..=1_000_000).contains(&n) => Some(narrow(n)),
            Some(n) => {
                problems.push(format!(
                    "{at}.upstream_per_minute: {n} is out of range: use 1 to 1000000, or leave it out for no quota"
                ));
                continue;
            }
        };
        let Some(scope) = caller_scope(&at, caller.routes, caller.sims, caller.tags, problems)
        else {
            continue;
        };
        let upstream = match caller.upstream {
            None => None,
            Some(profile) if profile == DEFAULT_PROFILE => None,
            Some(profile) => match profiles.iter().find(|p| *p.name == *profile) {
                Some(found) => Some(found.name.clone()),
                None if declared_profiles.contains(&profile) => continue,
                None => {
                    problems.push(format!(
                        "{at}.upstream: no [[upstreams]] profile is named `{profile}`"
                    ));
                    continue;
                }
            },
        };
        callers.push(CallerConfig {
            name: name.into(),
            key_sha256: hashes,
            scope,
            upstream,
            upstream_per_minute,
            allow_refresh: caller.allow_refresh.unwrap_or(false),
        });
    }
    callers
}

/// The hashes of a caller's keys: one plain `key`, or one or more `key_sha256`.
fn caller_keys(
    at: &str,
    hashes: Option<OneOrMany>,
    key: Option<Secret>,
    problems: &mut Vec<String>,
) -> Option<Vec<[u8; 32]>> {
    let hashes = match (hashes, key) {
        (Some(_), Some(_)) => {
            problems.push(format!("{at}: key_sha256 and key are both set: choose one"));
            return None;
        }
        (None, None) => {
            problems.push(format!(
                "{at}.key_sha256: missing (or set key for local development)"
            ));
            return None;
        }
        (None, Some(key)) if key.expose().is_empty() => {
            problems.push(format!("{at}.key: is empty"));
            return None;
        }
        (None, Some(key)) => vec![Sha256::digest(key.expose().as_bytes()).into()],
        (Some(hashes), None) => {
            let texts = hashes.into_vec();
            let decoded: Option<Vec<[u8; 32]>> = texts.iter().map(|t| decode_sha256(t)).collect();
            match decoded {
                Some(decoded) if !decoded.is_empty() => decoded,
                _ => {
                    problems.push(format!(
                        "{at}.key_sha256: each must be 64 hex characters (the SHA-256 of a key; see `usage-gateway hash-key`)"
                    ));
                    return None;
                }
            }
        }
    };
    let mut unique = hashes.clone();
    unique.sort_unstable();
    unique.dedup();
    if unique.len() != hashes.len() {
        problems.push(format!("{at}.key_sha256: lists the same hash twice"));
        return None;
    }
    Some(hashes)
}

/// `routes`, `sims` and `tags`, each checked; an empty list would lock the caller out.
fn caller_scope(
    at: &str,
    routes: Option<Vec<String>>,
    sims: Option<Vec<String>>,
    tags: Option<Vec<String>>,
    problems: &mut Vec<String>,
) -> Option<Scope> {
    let before = problems.len();
    let mut check_list = |key: &str, list: &Option<Vec<String>>| {
        if list.as_ref().is_some_and(Vec::is_empty) {
            problems.push(format!(
                "{at}.{key}: is empty, which would allow nothing: leave it out to allow all"
            ));
        }
    };
    check_list("routes", &routes);
    check_list("sims", &sims);
    check_list("tags", &tags);
    let routes = routes.map(|routes| {
        routes
            .iter()
            .filter_map(|route| {
                RouteName::parse(route).or_else(|| {
                    problems.push(format!(
                        "{at}.routes: `{route}` is not one of usage, usage_by_sim, tag_total"
                    ));
                    None
                })
            })
            .collect()
    });
    let sims = sims.map(|sims| {
        sims.into_iter()
            .filter(|sim| {
                let valid = crate::query::is_sim_ref(sim);
                if !valid {
                    problems.push(format!(
                        "{at}.sims: `{sim}` is neither a 9-digit SIM id nor a 19-20 digit ICCID"
                    ));
                }
                valid
            })
            .collect()
    });
    let tags = tags.map(|tags| {
        tags.iter()
            .filter_map(|tag| match crate::query::parse_tag_id(tag) {
                Ok(tag) => Some(tag),
                Err(_) => {
                    problems.push(format!("{at}.tags: `{tag}` is not a tag UUID"));
                    None
                }
            })
            .collect()
    });
    let scope = Scope { routes, sims, tags };
    // A route the caller is given but its restrictions refuse whole is a contradiction.
    for route in scope.routes.iter().flatten() {
        if let Some(why) = scope.refuses_route(*route) {
            problems.push(format!("{at}.routes: lists {}, but {why}", route.as_str()));
        }
    }
    (problems.len() == before).then_some(scope)
}
