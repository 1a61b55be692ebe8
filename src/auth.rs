//! `AuthLayer`: only callers with a configured key get past; who they are travels on with the
//! request, as an [`Authenticated`] request's [`Caller`].
//!
//! The key may come as `Authorization: Bearer <key>`, as `Authorization: <key>` (what Onomondo
//! clients send) or as `X-API-Key: <key>`. Keys are kept only as SHA-256 hashes and compared in
//! constant time against every configured caller, so neither timing nor the error tells which
//! part of a key was right. The key itself goes no further than this file.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, Request};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::caller::{Authenticated, Caller, CallerPolicy};
use crate::config::CallerConfig;
use crate::error::GatewayError;
use crate::facts::RequestFacts;
use crate::gate::{Gate, GateLayer};
use crate::lockout::{AuthFailures, ClientAddr};
use crate::metrics::{CallerIndex, Metrics};

/// The `X-API-Key` header, the third accepted credential form.
pub static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// One configured caller: its key hashes and its policy.
#[derive(Debug)]
struct Entry {
    name: Arc<str>,
    index: CallerIndex,
    key_sha256: Vec<[u8; 32]>,
    policy: Arc<CallerPolicy>,
}

/// The configured callers, by key hash.
#[derive(Debug)]
pub struct KeyStore {
    callers: Vec<Entry>,
}

/// A caller names a credential profile the running gateway does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("caller {caller} uses upstream profile {profile}, which the running gateway does not have (adding profiles needs a restart)")]
pub struct UnknownProfile {
    pub caller: String,
    pub profile: String,
}

impl KeyStore {
    /// Builds the store for `callers`, resolving their profiles by name in `profiles`
    /// (default first) and keeping the quota windows of `previous` callers whose quota is
    /// unchanged.
    pub fn build(
        callers: &[CallerConfig],
        profiles: &[Arc<str>],
        previous: Option<&KeyStore>,
        metrics: &Metrics,
    ) -> Result<Self, UnknownProfile> {
        let callers = callers
            .iter()
            .map(|caller| {
                let profile =
                    match &caller.upstream {
                        None => 0,
                        Some(name) => profiles.iter().position(|p| p == name).ok_or_else(|| {
                            UnknownProfile {
                                caller: caller.name.to_string(),
                                profile: name.to_string(),
                            }
                        })?,
                    };
                let old = previous
                    .and_then(|store| store.callers.iter().find(|e| e.name == caller.name))
                    .map(|entry| &*entry.policy);
                Ok(Entry {
                    name: caller.name.clone(),
                    index: metrics.caller_index(&caller.name),
                    key_sha256: caller.key_sha256.clone(),
                    policy: Arc::new(CallerPolicy::new(
                        caller.scope.clone(),
                        profile,
                        caller.allow_refresh,
                        caller.upstream_per_minute,
                        old,
                    )),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { callers })
    }

    /// The caller whose key this is. Every configured hash is compared, in constant time,
    /// whichever matches.
    pub fn identify(&self, presented: &[u8]) -> Option<Caller> {
        let hash: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for entry in &self.callers {
            for known in &entry.key_sha256 {
                if bool::from(known.ct_eq(&hash)) {
                    found = Some(Caller {
                        name: entry.name.clone(),
                        index: entry.index,
                        policy: entry.policy.clone(),
                    });
                }
            }
        }
        found
    }
}

/// The live caller list, replaced whole on reload.
#[derive(Debug, Clone)]
pub struct Callers {
    current: Arc<ArcSwap<KeyStore>>,
    profiles: Arc<[Arc<str>]>,
    /// Gives each caller its metrics index when it is loaded.
    metrics: Arc<Metrics>,
}

impl Callers {
    pub fn new(
        callers: &[CallerConfig],
        profiles: Vec<Arc<str>>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, UnknownProfile> {
        let store = KeyStore::build(callers, &profiles, None, &metrics)?;
        Ok(Self {
            current: Arc::new(ArcSwap::from_pointee(store)),
            profiles: profiles.into(),
            metrics,
        })
    }

    /// Replaces the callers at once: removed keys stop working with the next request.
    pub fn reload(&self, callers: &[CallerConfig]) -> Result<(), UnknownProfile> {
        let previous = self.current.load();
        let store = KeyStore::build(callers, &self.profiles, Some(&previous), &self.metrics)?;
        self.current.store(Arc::new(store));
        Ok(())
    }

    pub fn identify(&self, presented: &[u8]) -> Option<Caller> {
        self.current.load().identify(presented)
    }
}

/// What a request presents as its credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented<'a> {
    /// No credential at all, or an empty one: a CORS preflight, a health probe, a client not
    /// yet configured. Refused, but no attempt at guessing a key.
    Nothing,
    /// Several `Authorization` or `X-API-Key` headers, or the two carrying different keys (a
    /// request must not be able to pick which of two keys the gateway believes).
    Ambiguous,
    /// Exactly one key.
    Key(&'a [u8]),
}

impl<'a> Presented<'a> {
    pub fn key(self) -> Option<&'a [u8]> {
        match self {
            Presented::Key(key) => Some(key),
            Presented::Nothing | Presented::Ambiguous => None,
        }
    }
}

/// The key a request presents, if exactly one is presented.
pub fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    presented(headers).key()
}

/// What a request presents (see [`Presented`]).
pub fn presented(headers: &HeaderMap) -> Presented<'_> {
    let single = |name: &HeaderName| -> Result<Option<&[u8]>, ()> {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (None, _) => Ok(None),
            (Some(value), None) => Ok(Some(value.as_bytes())),
            (Some(_), Some(_)) => Err(()),
        }
    };
    let (Ok(from_authorization), Ok(from_api_key)) = (single(&AUTHORIZATION), single(&X_API_KEY))
    else {
        return Presented::Ambiguous;
    };
    let from_authorization = from_authorization.map(strip_bearer).and_then(nonempty);
    let from_api_key = from_api_key.and_then(nonempty);
    match (from_authorization, from_api_key) {
        (Some(a), Some(b)) if a == b => Presented::Key(a),
        (Some(_), Some(_)) => Presented::Ambiguous,
        (Some(key), None) | (None, Some(key)) => Presented::Key(key),
        (None, None) => Presented::Nothing,
    }
}

/// A key with surrounding whitespace trimmed, unless nothing is left.
fn nonempty(key: &[u8]) -> Option<&[u8]> {
    Some(key.trim_ascii()).filter(|key| !key.is_empty())
}

/// `Bearer <key>` (scheme case-insensitive, RFC 9110 §11.1) or the raw key.
fn strip_bearer(value: &[u8]) -> &[u8] {
    bearer_token(value).unwrap_or(value)
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive, RFC 9110
/// §11.1), if it is one. The admin listener reads its token with it too.
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    match value.split_at_checked(7) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer ") => Some(rest),
        _ => None,
    }
}

/// The key check, as a [`Gate`]: a request with a known key goes on as [`Authenticated`].
#[derive(Debug, Clone)]
pub struct Authenticate {
    callers: Callers,
    failures: Arc<AuthFailures>,
}

impl Authenticate {
    pub fn new(callers: Callers, failures: Arc<AuthFailures>) -> Self {
        Self { callers, failures }
    }
}

/// The key check as a layer: `AuthLayer::new(Authenticate::new(callers, failures))`.
pub type AuthLayer = GateLayer<Authenticate>;

impl<B> Gate<Request<B>> for Authenticate {
    type Admitted = Authenticated<B>;

    fn admit(&self, request: Request<B>) -> Result<Authenticated<B>, GatewayError> {
        let source = request
            .extensions()
            .get::<ClientAddr>()
            .map(|addr| addr.0.ip());
        let now = Instant::now();
        if let Some(source) = source {
            if let Err(retry_after) = self.failures.check(source, now) {
                return Err(GatewayError::TooManyAuthFailures { retry_after });
            }
        }
        let presented = presented(request.headers());
        let Some(caller) = presented.key().and_then(|key| self.callers.identify(key)) else {
            // Only a wrong key is a guess. A request with no key at all (a CORS preflight, a
            // health probe) is refused without counting, so it can never lock an address out.
            let reason = match presented {
                Presented::Nothing => None,
                Presented::Ambiguous => Some("conflicting keys"),
                Presented::Key(_) => Some("unknown key"),
            };
            if let (Some(source), Some(reason)) = (source, reason) {
                self.failures.fail(source, now, reason);
            }
            return Err(GatewayError::Unauthorized);
        };
        if let Some(facts) = RequestFacts::of(request.extensions()) {
            facts.set_caller(&caller);
        }
        Ok(Authenticated { caller, request })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caller::Scope;
    use crate::config::hash_key;
    use crate::error::ResponseBody;
    use http::{HeaderValue, Response};
    use std::time::Duration;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    fn hash(key: &str) -> [u8; 32] {
        hex::decode(hash_key(key))
            .expect("hex")
            .try_into()
            .expect("32 bytes")
    }

    fn caller(name: &str, keys: &[&str]) -> CallerConfig {
        CallerConfig {
            name: name.into(),
            key_sha256: keys.iter().map(|key| hash(key)).collect(),
            scope: Scope::default(),
            upstream: None,
            upstream_per_minute: (name == "ops").then_some(2),
            allow_refresh: false,
        }
    }

    fn store() -> Callers {
        Callers::new(
            &[
                caller("billing", &["key-billing"]),
                caller("ops", &["key-ops"]),
            ],
            vec!["default".into()],
            Arc::new(Metrics::new()),
        )
        .expect("profiles resolve")
    }

    fn layer(callers: Callers) -> AuthLayer {
        AuthLayer::new(Authenticate::new(
            callers,
            Arc::new(AuthFailures::new(60, Duration::from_secs(60))),
        ))
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    #[test]
    fn each_credential_form_presents_the_key() {
        // (headers, presented key) — one row per accepted form.
        type Row<'a> = (&'a [(&'a str, &'a str)], Option<&'a [u8]>);
        let rows: [Row; 10] = [
            (&[("authorization", "Bearer k1")], Some(b"k1")),
            (&[("authorization", "bearer k1")], Some(b"k1")),
            (&[("authorization", "BEARER k1")], Some(b"k1")),
            (&[("authorization", "k1")], Some(b"k1")),
            (&[("x-api-key", "k1")], Some(b"k1")),
            (
                &[("x-api-key", "k1"), ("authorization", "Bearer k1")],
                Some(b"k1"),
            ),
            (&[], None),
            (&[("authorization", "Bearer ")], None),
            (&[("x-api-key", "k1"), ("authorization", "k2")], None),
            (&[("authorization", "k1"), ("authorization", "k1")], None),
        ];
        for (pairs, expected) in rows {
            assert_eq!(presented_key(&headers(pairs)), expected, "{pairs:?}");
        }
    }

    #[test]
    fn a_missing_key_is_nothing_and_two_different_keys_are_ambiguous() {
        let rows: [(&[(&str, &str)], Presented); 6] = [
            (&[], Presented::Nothing),
            (&[("authorization", "")], Presented::Nothing),
            (&[("authorization", "Bearer ")], Presented::Nothing),
            (
                &[("x-api-key", "k1"), ("authorization", "k2")],
                Presented::Ambiguous,
            ),
            (
                &[("x-api-key", "k1"), ("x-api-key", "k1")],
                Presented::Ambiguous,
            ),
            (&[("authorization", "Bearer k1")], Presented::Key(b"k1")),
        ];
        for (pairs, expected) in rows {
            assert_eq!(presented(&headers(pairs)), expected, "{pairs:?}");
        }
    }

    #[test]
    fn only_wrong_keys_count_towards_the_failed_authentication_limit() {
        let failures = Arc::new(AuthFailures::new(2, Duration::from_secs(60)));
        let gate = Authenticate::new(store(), failures.clone());
        let addr = ClientAddr("127.0.0.9:5000".parse().expect("address"));
        let attempt = |headers: &[(&str, &str)]| {
            let mut request = Request::builder().uri("/usage");
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let mut request = request.body(()).expect("request");
            request.extensions_mut().insert(addr);
            gate.admit(request).err().map(|error| error.code())
        };
        // Preflights and probes without a key, however many, never lock the address out.
        for _ in 0..10 {
            assert_eq!(attempt(&[]), Some("unauthorized"));
        }
        assert_eq!(attempt(&[("authorization", "key-ops")]), None);
        // Two wrong keys do (the limit is 2), valid keys included.
        assert_eq!(
            attempt(&[("authorization", "guess-1")]),
            Some("unauthorized")
        );
        assert_eq!(attempt(&[("x-api-key", "guess-2")]), Some("unauthorized"));
        assert_eq!(
            attempt(&[("authorization", "key-ops")]),
            Some("too_many_auth_failures")
        );
    }

    #[test]
    fn the_caller_found_is_published_to_the_facts_attached_outside() {
        let gate = Authenticate::new(
            store(),
            Arc::new(AuthFailures::new(60, Duration::from_secs(60))),
        );
        let mut request = Request::builder()
            .header("authorization", "key-billing")
            .body(())
            .expect("request");
        let facts = RequestFacts::attach(request.extensions_mut());
        gate.admit(request).expect("known key");
        assert_eq!(facts.caller().map(|c| &*c.name), Some("billing"));
    }

    #[test]
    fn keys_identify_their_caller() {
        let keys = store();
        assert_eq!(
            keys.identify(b"key-ops").map(|c| c.name),
            Some("ops".into())
        );
        assert_eq!(
            keys.identify(b"key-billing").map(|c| c.name),
            Some("billing".into())
        );
        assert!(keys.identify(b"key-nobody").is_none());
        assert!(keys.identify(b"key-ops ").is_none());
    }

    #[test]
    fn a_quota_allows_its_calls_per_minute_and_then_says_when() {
        let keys = store();
        let ops = keys.identify(b"key-ops").expect("ops");
        assert_eq!(ops.policy.charge_upstream_call(), Ok(()));
        assert_eq!(ops.policy.charge_upstream_call(), Ok(()));
        let wait = ops.policy.charge_upstream_call().expect_err("spent");
        assert!(wait > Duration::from_secs(59), "{wait:?}");
        // Callers without a quota are never refused.
        let billing = keys.identify(b"key-billing").expect("billing");
        for _ in 0..1000 {
            assert_eq!(billing.policy.charge_upstream_call(), Ok(()));
        }
    }

    #[test]
    fn every_key_of_a_caller_identifies_it_and_a_reload_revokes_at_once() {
        let callers = Callers::new(
            &[caller("billing", &["old", "new"])],
            vec!["default".into()],
            Arc::new(Metrics::new()),
        )
        .expect("valid");
        assert!(callers.identify(b"old").is_some());
        assert!(callers.identify(b"new").is_some());
        callers
            .reload(&[caller("billing", &["new"])])
            .expect("reloaded");
        assert!(callers.identify(b"old").is_none());
        assert!(callers.identify(b"new").is_some());
    }

    #[test]
    fn a_reload_keeps_an_unchanged_quota_window() {
        let callers = store();
        let ops = callers.identify(b"key-ops").expect("ops");
        ops.policy.charge_upstream_call().expect("first");
        ops.policy.charge_upstream_call().expect("second");
        callers
            .reload(&[
                caller("billing", &["key-billing"]),
                caller("ops", &["key-ops"]),
            ])
            .expect("reloaded");
        let ops = callers.identify(b"key-ops").expect("ops");
        assert!(
            ops.policy.charge_upstream_call().is_err(),
            "the spent quota stayed spent"
        );
    }

    #[test]
    fn a_reload_naming_an_unknown_profile_is_refused_and_changes_nothing() {
        let callers = store();
        let mut moved = caller("billing", &["key-billing"]);
        moved.upstream = Some("partner".into());
        assert!(callers.reload(&[moved]).is_err());
        assert!(callers.identify(b"key-ops").is_some());
    }

    #[tokio::test]
    async fn known_key_reaches_the_inner_service_with_its_caller() {
        let service = ServiceBuilder::new()
            .layer(layer(store()))
            .service(service_fn(|request: Authenticated<()>| async move {
                let name = request.caller.name.to_string();
                Ok::<_, GatewayError>(Response::new(ResponseBody::from(name)))
            }));
        let request = Request::builder()
            .header("authorization", "Bearer key-ops")
            .body(())
            .expect("request");
        let response = service.oneshot(request).await.expect("authorized");
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&body[..], b"ops");
    }

    #[tokio::test]
    async fn unknown_key_never_reaches_the_inner_service() {
        let service = ServiceBuilder::new()
            .layer(layer(store()))
            .service(service_fn(|_: Authenticated<()>| async {
                panic!("the inner service must not be called");
                #[allow(unreachable_code)]
                Ok::<Response<ResponseBody>, GatewayError>(Response::default())
            }));
        let request = Request::builder()
            .header("x-api-key", "guess")
            .body(())
            .expect("request");
        let error = service.oneshot(request).await.expect_err("refused");
        assert!(matches!(error, GatewayError::Unauthorized));
    }
}
