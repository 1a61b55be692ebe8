//! `[log]`: the format and the level filter of log lines, and the access log switch.

use crate::config::raw::RawLog;
use crate::config::LogConfig;

pub(super) fn validate(raw: RawLog, problems: &mut Vec<String>) -> LogConfig {
    let level = raw.level.unwrap_or_else(|| "info".to_owned());
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        problems.push(format!(
            "log.level: `{level}` is not a level (error, warn, info, debug, trace) or filter directive"
        ));
    }
    LogConfig {
        format: raw.format,
        level,
        access: raw.access.unwrap_or(true),
    }
}
