//! Reloading the configuration of a running gateway: callers (keys, scopes, quotas, refresh
//! rights, profile choice) and the cache's freshness and stale rules change at once, without a
//! restart and without losing the cache.
//!
//! Everything else in the new configuration that differs from the running one needs a restart;
//! it is reported (and logged by `run`), not applied. A new configuration whose callers name a
//! profile the running gateway does not have is refused whole, and the old one keeps running.

use tokio::sync::{mpsc, oneshot};

use crate::auth::UnknownProfile;
use crate::config::Config;
use crate::stack::Handles;

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub callers: usize,
    /// Settings that differ from the running configuration and wait for a restart.
    pub restart_needed: Vec<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    UnknownProfile(#[from] UnknownProfile),
    #[error("the gateway is not running")]
    NotRunning,
}

type Request = (Config, oneshot::Sender<Result<Reloaded, ReloadError>>);

/// Asks a running gateway to reload; cheap to clone.
#[derive(Debug, Clone)]
pub struct ReloadHandle {
    sender: mpsc::Sender<Request>,
}

/// The gateway's end of the reload channel.
#[derive(Debug)]
pub struct Reloads {
    receiver: mpsc::Receiver<Request>,
}

pub fn channel() -> (ReloadHandle, Reloads) {
    let (sender, receiver) = mpsc::channel(4);
    (ReloadHandle { sender }, Reloads { receiver })
}

impl ReloadHandle {
    /// Applies `config` to the running gateway and says what changed.
    pub async fn reload(&self, config: Config) -> Result<Reloaded, ReloadError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send((config, reply))
            .await
            .map_err(|_| ReloadError::NotRunning)?;
        answer.await.map_err(|_| ReloadError::NotRunning)?
    }
}

/// Settings of `next` that differ from `running` and cannot change without a restart.
pub fn restart_needed(running: &Config, next: &Config) -> Vec<&'static str> {
    let (old, new) = (&running.server, &next.server);
    let settings = [
        ("server.listen", old.listen != new.listen),
        (
            "server.auth_failures_per_minute",
            old.auth_failures_per_minute != new.auth_failures_per_minute,
        ),
        ("server.shutdown_grace_secs", old.shutdown_grace != new.shutdown_grace),
        ("server.worker_threads", old.worker_threads != new.worker_threads),
        (
            "server limits (max_uri_bytes, max_header_bytes, max_filters, max_body_bytes, header_timeout_ms, max_connections)",
            old.limits != new.limits,
        ),
        ("server.cors", old.cors != new.cors),
        ("upstream", running.upstream != next.upstream),
        ("upstreams", running.profiles != next.profiles),
        ("cache.max_bytes", running.cache.max_bytes != next.cache.max_bytes),
        (
            "cache.max_entry_bytes",
            running.cache.max_entry_bytes != next.cache.max_entry_bytes,
        ),
        ("admin.listen", running.admin.listen != next.admin.listen),
        (
            "admin.token_sha256",
            running.admin.token_sha256 != next.admin.token_sha256,
        ),
        ("log", running.log != next.log),
        ("shared", running.shared != next.shared),
    ];
    settings
        .into_iter()
        .filter_map(|(setting, changed)| changed.then_some(setting))
        .collect()
}

impl Reloads {
    /// Applies reloads until every handle is gone: callers, and the cache's freshness and
    /// stale rules.
    pub async fn apply(mut self, handles: Handles, mut running: Config) {
        while let Some((next, reply)) = self.receiver.recv().await {
            let result = handles
                .callers
                .reload(&next.callers)
                .map(|()| Reloaded {
                    callers: next.callers.len(),
                    restart_needed: restart_needed(&running, &next),
                })
                .map_err(ReloadError::from);
            match &result {
                Ok(reloaded) => {
                    tracing::info!(callers = reloaded.callers, "configuration reloaded");
                    for setting in &reloaded.restart_needed {
                        tracing::warn!(
                            setting,
                            "changed setting needs a restart; still running with the old value"
                        );
                    }
                    handles.cache.set_settings(&next.cache);
                    running.callers = next.callers;
                    running.cache = next.cache;
                }
                Err(error) => {
                    tracing::error!(%error, "reload refused; the running configuration stays")
                }
            }
            let _ = reply.send(result);
        }
    }
}
