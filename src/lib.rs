//! usage-gateway: a caching gateway in front of the Onomondo usage API.
//!
//! Internal services call it with their own keys; it answers repeats from memory, turns
//! identical concurrent misses into one upstream call, and sends misses upstream with the
//! organization's token. See `stack.rs` for the request's way through.

pub mod auth;
pub mod cache;
pub mod config;
pub mod demo;
pub mod error;
pub mod lockout;
pub mod normalize;
pub mod query;
pub mod reload;
pub mod scope;
pub mod server;
pub mod sim;
pub mod stack;
pub mod telemetry;
pub mod upstream;

use std::future::Future;

use tokio::net::TcpListener;

pub use config::Config;

/// Runs the gateway on `listener` until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (_no_reloads, reloads) = reload::channel();
    run_reloadable(config, listener, shutdown, reloads).await
}

/// Runs the gateway on `listener` until `shutdown` completes, applying what `reloads` brings.
pub async fn run_reloadable(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    reloads: reload::Reloads,
) -> std::io::Result<()> {
    let (service, callers) = stack::build(&config)?;
    tracing::info!(
        address = %listener.local_addr()?,
        upstream = %config.upstream.base_url,
        profiles = config.all_profiles().len(),
        callers = config.callers.len(),
        "usage-gateway listening"
    );
    let reloading = tokio::spawn(reloads.apply(callers, config));
    let served = server::serve(listener, service, shutdown).await;
    reloading.abort();
    served
}
