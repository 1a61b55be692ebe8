//! `AuthLayer`: only callers with a configured key get past; who they are travels on as a
//! [`Caller`] in the request extensions.
//!
//! The key may come as `Authorization: Bearer <key>`, as `Authorization: <key>` (what Onomondo
//! clients send) or as `X-API-Key: <key>`. Keys are kept only as SHA-256 hashes and compared in
//! constant time against every configured caller, so neither timing nor the error tells which
//! part of a key was right. The key itself goes no further than this file.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::{Either, Ready};
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, Request, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

use crate::config::CallerConfig;
use crate::error::{GatewayError, ResponseBody};
use crate::upstream::budget::SlidingWindow;

/// The `X-API-Key` header, the third accepted credential form.
pub static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Who is calling: inserted by [`Auth`], read by inner layers and the trace span.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: Arc<str>,
    pub policy: Arc<CallerPolicy>,
}

/// What a caller may do beyond asking: its own upstream quota and forced refreshes.
#[derive(Debug)]
pub struct CallerPolicy {
    /// `Cache-Control: no-cache` from this caller forces an upstream fetch.
    pub allow_refresh: bool,
    /// Upstream calls this caller may cause per minute; `None` is no quota.
    quota: Option<Mutex<SlidingWindow>>,
}

impl CallerPolicy {
    pub fn new(config: &CallerConfig) -> Self {
        Self {
            allow_refresh: config.allow_refresh,
            quota: config
                .upstream_per_minute
                .map(|n| Mutex::new(SlidingWindow::new(n as usize, Duration::from_secs(60)))),
        }
    }

    /// Charges one upstream call to this caller, or says how long until its quota allows one.
    pub fn charge_upstream_call(&self) -> Result<(), Duration> {
        let Some(quota) = &self.quota else {
            return Ok(());
        };
        let now = Instant::now();
        quota
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .try_take(now)
            .map_err(|free_at| free_at.saturating_duration_since(now))
    }
}

/// The configured callers, by key hash.
#[derive(Debug, Clone)]
pub struct KeyStore {
    callers: Arc<[(CallerConfig, Arc<CallerPolicy>)]>,
}

impl KeyStore {
    pub fn new(callers: &[CallerConfig]) -> Self {
        Self {
            callers: callers
                .iter()
                .map(|caller| (caller.clone(), Arc::new(CallerPolicy::new(caller))))
                .collect(),
        }
    }

    /// The caller whose key this is. Every configured hash is compared, in constant time.
    pub fn identify(&self, presented: &[u8]) -> Option<Caller> {
        let hash: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for (caller, policy) in self.callers.iter() {
            if bool::from(caller.key_sha256.ct_eq(&hash)) {
                found = Some(Caller {
                    name: caller.name.clone(),
                    policy: policy.clone(),
                });
            }
        }
        found
    }
}

/// The key a request presents, if exactly one is presented.
///
/// Refused (`None`): no credential; an empty one; several `Authorization` or `X-API-Key`
/// headers; `Authorization` and `X-API-Key` carrying different keys (a request must not be
/// able to pick which of two keys the gateway believes).
pub fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    let single = |name: &HeaderName| -> Result<Option<&[u8]>, ()> {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (None, _) => Ok(None),
            (Some(value), None) => Ok(Some(value.as_bytes())),
            (Some(_), Some(_)) => Err(()),
        }
    };
    let from_authorization = single(&AUTHORIZATION).ok()?.map(strip_bearer);
    let from_api_key = single(&X_API_KEY).ok()?;
    let key = match (from_authorization, from_api_key) {
        (Some(a), Some(b)) if a == b => a,
        (Some(_), Some(_)) => return None,
        (Some(key), None) | (None, Some(key)) => key,
        (None, None) => return None,
    };
    let key = key.trim_ascii();
    (!key.is_empty()).then_some(key)
}

/// `Bearer <key>` (scheme case-insensitive, RFC 9110 §11.1) or the raw key.
fn strip_bearer(value: &[u8]) -> &[u8] {
    match value.split_at_checked(7) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer ") => rest,
        _ => value,
    }
}

#[derive(Debug, Clone)]
pub struct AuthLayer {
    keys: KeyStore,
}

impl AuthLayer {
    pub fn new(keys: KeyStore) -> Self {
        Self { keys }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            keys: self.keys.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    keys: KeyStore,
}

impl<S, B> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Response<ResponseBody>, Error = GatewayError>,
{
    type Response = Response<ResponseBody>;
    type Error = GatewayError;
    type Future = Either<Ready<Result<Response<ResponseBody>, GatewayError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let caller = presented_key(request.headers()).and_then(|key| self.keys.identify(key));
        match caller {
            Some(caller) => {
                tracing::Span::current().record("caller", &*caller.name);
                request.extensions_mut().insert(caller);
                Either::Right(self.inner.call(request))
            }
            None => Either::Left(futures_util::future::ready(Err(GatewayError::Unauthorized))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::hash_key;
    use http::HeaderValue;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    fn store() -> KeyStore {
        let caller = |name: &str, key: &str| CallerConfig {
            name: name.into(),
            key_sha256: hex::decode(hash_key(key))
                .expect("hex")
                .try_into()
                .expect("32 bytes"),
            upstream_per_minute: (name == "ops").then_some(2),
            allow_refresh: false,
        };
        KeyStore::new(&[caller("billing", "key-billing"), caller("ops", "key-ops")])
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

    #[tokio::test]
    async fn known_key_reaches_the_inner_service_with_its_caller() {
        let service = ServiceBuilder::new()
            .layer(AuthLayer::new(store()))
            .service(service_fn(|request: Request<()>| async move {
                let caller = request.extensions().get::<Caller>().cloned();
                let name = caller.map(|c| c.name.to_string()).unwrap_or_default();
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
            .layer(AuthLayer::new(store()))
            .service(service_fn(|_: Request<()>| async {
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
