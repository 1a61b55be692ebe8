//! Logging setup: one event per line on stdout, as JSON or text (`[log] format`; by default
//! text on a terminal and JSON otherwise), filtered by `[log] level` unless `RUST_LOG` is set.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. Call once, from `main`.
pub fn init(log: &LogConfig) {
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
pub fn init_default() {
    init(&LogConfig {
        format: None,
        level: "info".to_owned(),
    });
}
