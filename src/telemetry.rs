//! Logging setup: one event per line on stdout, as JSON or text (`[log] format`; by default
//! text on a terminal and JSON otherwise), filtered by `[log] level` unless `RUST_LOG` is set;
//! and the access log (`[log] access`), whose lines go the same way but off the serving
//! threads (`access_log`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::access_log::{AccessLog, AccessLogGuard};
use crate::config::{LogConfig, LogFormat};

/// The target the access log answers to in level filters: `[log] level = "warn"` (or
/// `RUST_LOG=usage_gateway::access=off`) silences it as it silenced the info-level line.
pub const ACCESS_TARGET: &str = "usage_gateway::access";

/// Installs the global subscriber and, when `[log] access` is on and the level filter lets
/// its info lines through, the access log. Call once, from `main`, and keep the guard until
/// the end: dropping it writes the access lines still pending.
pub fn init(log: &LogConfig) -> Option<AccessLogGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let terminal = std::io::stdout().is_terminal();
    let format = log.format.unwrap_or(if terminal {
        LogFormat::Text
    } else {
        LogFormat::Json
    });
    let _ = match format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_target(false)
            .with_env_filter(filter)
            .try_init(),
        LogFormat::Text => tracing_subscriber::fmt()
            .with_target(false)
            .with_ansi(terminal)
            .with_env_filter(filter)
            .try_init(),
    };
    log_panics();
    if !log.access || !tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO) {
        return None;
    }
    let access_format = match format {
        LogFormat::Json => crate::access_log::Format::Json,
        LogFormat::Text => crate::access_log::Format::Text,
    };
    match AccessLog::start(access_format, Box::new(std::io::stdout())) {
        Ok((access_log, guard)) => {
            access_log.install();
            Some(guard)
        }
        Err(error) => {
            tracing::error!(%error, "cannot start the access log writer: no access lines");
            None
        }
    }
}

/// Panics become one log event like any other (the error boundary answers them 500), with
/// where and what; never the request, whose headers may carry a key.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let location = info
            .location()
            .map(|at| format!("{}:{}", at.file(), at.line()))
            .unwrap_or_default();
        tracing::error!(%location, panic = message, "panicked");
    }));
}

/// The logging of commands that run before (or without) a configuration.
pub fn init_default() -> Option<AccessLogGuard> {
    init(&LogConfig {
        format: None,
        level: "info".to_owned(),
        access: true,
    })
}
