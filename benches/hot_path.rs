//! Micro-benchmarks of the hit path's pure parts, each beside a baseline measured in the same
//! run (the machine is shared and noisy: read the ratios, not the absolute times).
//!
//! - canonicalizing a typical query (issue 5 target: < 2 µs), against copying the raw query
//!   string (the least any parser must do);
//! - a cache-hit lookup, key build plus moka get (target: < 1 µs), against a `HashMap` get of the
//!   same key behind a mutex;
//! - choosing a caller's form from `Accept-Encoding` (as Python requests writes it), against
//!   finding the header in the map.
//!
//! Run: `cargo bench --bench hot_path`.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use usage_gateway::cache::{Accept, CacheKey, CachedResponse, CredentialId};
use usage_gateway::config::Secret;
use usage_gateway::query::UsageQuery;

const RAW_QUERY: &str = "filter[]=country_code:DK&filter[]=time:2024-03&limit=100";

fn canonicalize(c: &mut Criterion) {
    let mut group = c.benchmark_group("canonicalize");
    group.bench_function("baseline: copy the raw query", |b| {
        b.iter(|| black_box(RAW_QUERY).to_owned())
    });
    group.bench_function("parse and canonicalize", |b| {
        b.iter(|| UsageQuery::parse(black_box("/usage"), Some(black_box(RAW_QUERY))))
    });
    group.finish();
}

fn hit_lookup(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let credential = CredentialId::of(&Secret::new("org-token"));
    let query = UsageQuery::parse("/usage", Some(RAW_QUERY))
        .expect("valid")
        .expect("route");
    let entry = Arc::new(CachedResponse::plain(
        http::StatusCode::OK,
        None,
        Bytes::from(vec![b'x'; 2048]),
        Instant::now(),
        Duration::from_secs(3600),
    ));
    let moka: moka::future::Cache<CacheKey, Arc<CachedResponse>> = moka::future::Cache::new(10_000);
    let baseline: Mutex<HashMap<CacheKey, Arc<CachedResponse>>> = Mutex::new(HashMap::new());
    let key = CacheKey::new(credential, query.canonical_shared());
    runtime.block_on(moka.insert(key.clone(), entry.clone()));
    baseline.lock().expect("lock").insert(key, entry);

    let mut group = c.benchmark_group("hit lookup");
    group.bench_function("baseline: HashMap get behind a mutex", |b| {
        b.iter(|| {
            let key = CacheKey::new(credential, query.canonical_shared());
            baseline.lock().expect("lock").get(&key).cloned()
        })
    });
    group.bench_function("key build and moka get", |b| {
        b.to_async(&runtime).iter(|| async {
            let key = CacheKey::new(credential, query.canonical_shared());
            moka.get(&key).await
        })
    });
    group.finish();
}

fn accept_encoding(c: &mut Criterion) {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::USER_AGENT,
        "python-requests/2.32.3".parse().expect("valid"),
    );
    headers.insert(http::header::ACCEPT, "*/*".parse().expect("valid"));
    headers.insert(
        http::header::ACCEPT_ENCODING,
        "gzip, deflate, br, zstd".parse().expect("valid"),
    );
    let mut group = c.benchmark_group("accept-encoding");
    group.bench_function("baseline: find the header", |b| {
        b.iter(|| {
            black_box(&headers)
                .get(http::header::ACCEPT_ENCODING)
                .is_some()
        })
    });
    group.bench_function("parse and choose", |b| {
        b.iter(|| Accept::from_headers(black_box(&headers)).choose(true))
    });
    group.finish();
}

criterion_group!(benches, canonicalize, hit_lookup, accept_encoding);
criterion_main!(benches);
