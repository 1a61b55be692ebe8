//! usage-gateway: a caching gateway in front of the Onomondo usage API.
//!
//! Internal services call it with their own keys; it answers repeats from memory, turns
//! identical concurrent misses into one upstream call, and sends misses upstream with the
//! organization's token. See `stack.rs` for the request's way through.

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod breaker;
pub mod cache;
pub mod caller;
pub mod config;
pub mod cors;
#[cfg(feature = "demo")]
pub mod demo;
pub mod discard;
pub mod error;
pub mod facts;
pub mod gate;
pub mod gzip;
pub mod limits;
pub mod lockout;
pub mod metrics;
pub mod normalize;
pub mod observe;
pub mod outcome;
pub mod query;
pub mod ratelimit;
pub mod reload;
pub mod scope;
pub mod server;
pub mod shared;
pub mod stack;
pub mod sync;
pub mod telemetry;
pub mod upstream;
pub mod window;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;

pub use config::Config;

/// Where the gateway listens: callers, and (optionally) the admin endpoints.
#[derive(Debug)]
pub struct Listeners {
    pub api: TcpListener,
    pub admin: Option<TcpListener>,
}

/// Runs the gateway on `listener` until `shutdown` completes (no admin listener, no reloads).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (_no_reloads, reloads) = reload::channel();
    let listeners = Listeners {
        api: listener,
        admin: None,
    };
    serve(config, listeners, shutdown, reloads).await
}

/// Runs the gateway until `shutdown` completes, applying what `reloads` brings.
///
/// On shutdown: readiness turns 503, no new connection is accepted, in-flight requests finish
/// within `server.shutdown_grace_secs`, then the admin listener closes too.
pub async fn serve(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    reloads: reload::Reloads,
) -> std::io::Result<()> {
    let (service, handles) = stack::build(&config)?;
    let draining = Arc::new(AtomicBool::new(false));
    let admin = admin::Admin::new(
        handles.clone(),
        draining.clone(),
        config.admin.token_sha256,
        config.server.auth_failures_per_minute,
    );
    let (stop_admin, admin_stopped) = tokio::sync::watch::channel(false);
    let admin_task = match listeners.admin {
        Some(listener) => {
            tracing::info!(address = %listener.local_addr()?, "admin endpoints listening");
            let service = admin.service();
            let mut stopped = admin_stopped;
            Some(tokio::spawn(server::serve(
                listener,
                service,
                async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                },
                ADMIN_DRAIN,
                server::ConnectionLimits::default(),
            )))
        }
        None => None,
    };
    let history = tokio::spawn(admin::keep_history(admin));
    // With `[shared]`, other replicas' purges reach this replica's memory.
    let following = handles
        .shared
        .as_ref()
        .map(|shared| tokio::spawn(handles.cache.clone().follow_purges(shared.purges().feed())));
    tracing::info!(
        address = %listeners.api.local_addr()?,
        upstream = %config.upstream.base_url,
        profiles = config.all_profiles().len(),
        callers = config.callers.len(),
        "usage-gateway listening"
    );
    let grace = config.server.shutdown_grace;
    let limits =
        server::ConnectionLimits::new(&config.server.limits, handles.metrics.connections.clone());
    let reloading = tokio::spawn(reloads.apply(handles, config));
    let shutdown = async move {
        shutdown.await;
        draining.store(true, Ordering::Relaxed);
        tracing::info!("shutting down: readiness is now 503");
    };
    let served = server::serve(listeners.api, service, shutdown, grace, limits).await;
    reloading.abort();
    history.abort();
    if let Some(following) = following {
        following.abort();
    }
    let _ = stop_admin.send(true);
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    served
}

/// How long admin requests in flight may finish once the callers' side has drained.
const ADMIN_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);
