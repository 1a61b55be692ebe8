//! Simulator options (§8.1): one struct that is both the CLI (`clap::Args`, every flag also
//! readable from `USAGE_SIM_<NAME>`) and the programmatic configuration.
//!
//! Guarantees: `SimOptions::default()` equals parsing an empty command line with no
//! `USAGE_SIM_*` variables set (a unit test pins this), and parsing never consults anything but
//! the arguments and those variables. Semantic checks that need more than one field (key specs
//! naming existing tags, ranges) happen in `Simulator::new`, which reports them as `SimError`.

use clap::{ArgAction, ValueEnum};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::macros::datetime;
use time::OffsetDateTime;

/// Which `Authorization` forms are accepted (§8.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Only `Authorization: <key>`.
    Raw,
    /// Only `Authorization: Bearer <key>`.
    Bearer,
    /// Either form.
    Both,
}

/// What one rate-limit bucket covers (§8.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RateScope {
    /// One bucket per API key.
    Key,
    /// One bucket shared by every key.
    Org,
    /// No limiting and no rate-limit headers (benchmarks).
    Off,
}

/// Where a fixed rate-limit window starts (§8.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RateAlign {
    /// Windows start at multiples of the window length since the epoch.
    Clock,
    /// A window opens at the first request after the previous one expired.
    First,
}

/// JSON shape of usage records (§8.5, as corrected by §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RecordShape {
    /// `{time, bill_id, sim_id, iccid, session_id, bytes, country_code, network_type,
    /// network{mcc, mnc}}`: the real API's, as a production integration records it (§4.3).
    Onomondo,
    /// `{sim_id, bytes, timestamp}`: the third-party reconstruction.
    Derived,
}

/// How `next_page` cursors are encoded (§8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CursorMode {
    /// base64 of a 9-digit zero-padded position, like the example pasted into the docs.
    Digits,
    /// base64 of an HMAC-signed token bound to the query; always contains `+`, `/` and `=`.
    /// The default: real usage cursors are general base64 ending in `==` (§4.3).
    Opaque,
}

/// How an answer that would be a 200 goes wrong (`--misbehavior`); see `crate::misbehave`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Misbehavior {
    /// Answer normally.
    None,
    /// Announce the full length, send half, then reset the connection.
    ResetMidBody,
    /// Announce the full length, send half, then close the connection.
    ShortBody,
    /// An HTML page labelled `application/json`.
    NotJson,
    /// The answer padded to at least `--oversized-bytes`.
    Oversized,
    /// The answer in 10 chunks, `--trickle-ms` apart.
    Trickle,
    /// `302` to `/usage?redirected=1`.
    Redirect,
    /// The answer gzip-compressed whatever the request accepts.
    Gzip,
}

impl Misbehavior {
    /// Every mode, `None` first.
    pub const ALL: [Misbehavior; 8] = [
        Misbehavior::None,
        Misbehavior::ResetMidBody,
        Misbehavior::ShortBody,
        Misbehavior::NotJson,
        Misbehavior::Oversized,
        Misbehavior::Trickle,
        Misbehavior::Redirect,
        Misbehavior::Gzip,
    ];

    /// The name used by the flag, the JSON and the stats.
    pub fn name(self) -> &'static str {
        match self {
            Misbehavior::None => "none",
            Misbehavior::ResetMidBody => "reset_mid_body",
            Misbehavior::ShortBody => "short_body",
            Misbehavior::NotJson => "not_json",
            Misbehavior::Oversized => "oversized",
            Misbehavior::Trickle => "trickle",
            Misbehavior::Redirect => "redirect",
            Misbehavior::Gzip => "gzip",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Misbehavior> {
        Misbehavior::ALL.into_iter().find(|m| m.name() == name)
    }
}

pub(crate) const DEFAULT_START: OffsetDateTime = datetime!(2024-01-01 0:00 UTC);

/// Every §8.1 option except `--listen` (the binary owns the socket).
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct SimOptions {
    /// 64-bit seed for all generated data.
    #[arg(long, env = "USAGE_SIM_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Number of SIMs (ids 000000001..).
    #[arg(long, env = "USAGE_SIM_SIMS", default_value_t = 200)]
    pub sims: u32,
    /// Number of tags.
    #[arg(long, env = "USAGE_SIM_TAGS", default_value_t = 8)]
    pub tags: u32,
    /// First hour of generated usage (RFC 3339, on a whole hour).
    #[arg(long, env = "USAGE_SIM_START", default_value = "2024-01-01T00:00:00Z", value_parser = parse_time)]
    pub start: OffsetDateTime,
    /// Length of generated history in hours.
    #[arg(long, env = "USAGE_SIM_HOURS", default_value_t = 2160)]
    pub hours: u32,
    /// Probability that a SIM is active in a given hour (0..=1).
    #[arg(long, env = "USAGE_SIM_ACTIVITY", default_value_t = 0.25)]
    pub activity: f64,
    /// Simulated "now" for rate limiting (default: start + hours; with --live-clock, the wall
    /// clock). Drives nothing in the data.
    #[arg(long, env = "USAGE_SIM_NOW", value_parser = parse_time)]
    pub now: Option<OffsetDateTime>,
    /// Use the wall clock (from --now if given, else from the real time, plus any
    /// `/__sim/clock` offset) for rate limiting.
    #[arg(long, env = "USAGE_SIM_LIVE_CLOCK", value_parser = clap::builder::BoolishValueParser::new())]
    pub live_clock: bool,
    /// API keys, `KEY[=tag_uuid,tag_uuid...]`; repeat the flag (or separate with `;`).
    #[arg(
        long = "keys",
        env = "USAGE_SIM_KEYS",
        default_value = "sim-key-all",
        value_delimiter = ';',
        action = ArgAction::Append
    )]
    pub keys: Vec<String>,
    /// Accepted `Authorization` forms.
    #[arg(long, env = "USAGE_SIM_AUTH_MODE", value_enum, default_value_t = AuthMode::Both)]
    pub auth_mode: AuthMode,
    /// Calls per window.
    #[arg(long, env = "USAGE_SIM_RATE_LIMIT", default_value_t = 600)]
    pub rate_limit: u32,
    /// Window length in seconds.
    #[arg(long, env = "USAGE_SIM_RATE_WINDOW", default_value_t = 60)]
    pub rate_window: u64,
    /// `key`, `org` or `off`.
    #[arg(long, env = "USAGE_SIM_RATE_SCOPE", value_enum, default_value_t = RateScope::Key)]
    pub rate_scope: RateScope,
    /// `clock` or `first`.
    #[arg(long, env = "USAGE_SIM_RATE_ALIGN", value_enum, default_value_t = RateAlign::Clock)]
    pub rate_align: RateAlign,
    /// Whether a 429 carries `Retry-After` (`on`/`off`).
    #[arg(long, env = "USAGE_SIM_RETRY_AFTER", default_value = "on", value_parser = parse_on_off, action = ArgAction::Set)]
    pub retry_after: bool,
    /// `onomondo` or `derived`.
    #[arg(long, env = "USAGE_SIM_RECORD_SHAPE", value_enum, default_value_t = RecordShape::Onomondo)]
    pub record_shape: RecordShape,
    /// `digits` or `opaque`.
    #[arg(long, env = "USAGE_SIM_CURSOR_MODE", value_enum, default_value_t = CursorMode::Opaque)]
    pub cursor_mode: CursorMode,
    /// Unknown filter keys, malformed values and unknown parameters give 400 (`on`/`off`).
    #[arg(long, env = "USAGE_SIM_STRICT_FILTERS", default_value = "on", value_parser = parse_on_off, action = ArgAction::Set)]
    pub strict_filters: bool,
    /// A bad `limit` gives 400; `off` clamps it to 1..=1000.
    #[arg(long, env = "USAGE_SIM_STRICT_LIMIT", default_value = "on", value_parser = parse_on_off, action = ArgAction::Set)]
    pub strict_limit: bool,
    /// Base latency per API request, in milliseconds.
    #[arg(long, env = "USAGE_SIM_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// Extra latency in 0..=jitter_ms, deterministic from (seed, request counter).
    #[arg(long, env = "USAGE_SIM_JITTER_MS", default_value_t = 0)]
    pub jitter_ms: u64,
    /// Fraction of API requests answered with an injected 503 (0..=1).
    #[arg(long, env = "USAGE_SIM_FAIL_RATE", default_value_t = 0.0)]
    pub fail_rate: f64,
    /// How eligible answers (would-be 200s of the usage routes) go wrong: `none`,
    /// `reset_mid_body`, `short_body`, `not_json`, `oversized`, `trickle`, `redirect` or `gzip`.
    #[arg(long, env = "USAGE_SIM_MISBEHAVIOR", value_enum, default_value_t = Misbehavior::None)]
    pub misbehavior: Misbehavior,
    /// Fraction of eligible answers that misbehave (0..=1), deterministic from (seed, request counter).
    #[arg(long, env = "USAGE_SIM_MISBEHAVIOR_RATE", default_value_t = 1.0)]
    pub misbehavior_rate: f64,
    /// Minimum body length of an `oversized` answer, in bytes (1..=1073741824).
    #[arg(long, env = "USAGE_SIM_OVERSIZED_BYTES", default_value_t = 9_437_184)]
    pub oversized_bytes: u64,
    /// Pause before each of a `trickle` answer's chunks after the first, in milliseconds.
    #[arg(long, env = "USAGE_SIM_TRICKLE_MS", default_value_t = 200)]
    pub trickle_ms: u64,
    /// If set, `/__sim/*` requires `X-Sim-Admin: <token>`.
    #[arg(long, env = "USAGE_SIM_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
}

impl Default for SimOptions {
    /// The CLI defaults, written out so that `Default` never reads the environment.
    fn default() -> Self {
        SimOptions {
            seed: 1,
            sims: 200,
            tags: 8,
            start: DEFAULT_START,
            hours: 2160,
            activity: 0.25,
            now: None,
            live_clock: false,
            keys: vec!["sim-key-all".to_owned()],
            auth_mode: AuthMode::Both,
            rate_limit: 600,
            rate_window: 60,
            rate_scope: RateScope::Key,
            rate_align: RateAlign::Clock,
            retry_after: true,
            record_shape: RecordShape::Onomondo,
            cursor_mode: CursorMode::Opaque,
            strict_filters: true,
            strict_limit: true,
            latency_ms: 0,
            jitter_ms: 0,
            fail_rate: 0.0,
            misbehavior: Misbehavior::None,
            misbehavior_rate: 1.0,
            oversized_bytes: 9_437_184,
            trickle_ms: 200,
            admin_token: None,
        }
    }
}

/// Parses an RFC 3339 timestamp such as `2024-01-01T00:00:00Z`.
pub fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| format!("expected an RFC 3339 time like 2024-01-01T00:00:00Z: {e}"))
}

/// Parses a switch written `on`/`off` (also `true`/`false`, `yes`/`no`, `1`/`0`).
pub fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("expected on or off, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        options: SimOptions,
    }

    #[test]
    fn default_equals_an_empty_command_line() {
        let parsed = Cli::try_parse_from(["usage-sim"]).expect("empty args parse");
        assert_eq!(parsed.options, SimOptions::default());
    }

    #[test]
    fn switches_and_repeated_keys_parse() {
        let parsed = Cli::try_parse_from([
            "usage-sim",
            "--retry-after",
            "off",
            "--strict-filters=off",
            "--keys",
            "a",
            "--keys",
            "b=00000000-0000-4000-8000-000000000000",
            "--rate-scope",
            "off",
            "--now",
            "2024-04-01T00:00:30Z",
        ])
        .expect("valid args parse");
        assert!(!parsed.options.retry_after);
        assert!(!parsed.options.strict_filters);
        assert!(parsed.options.strict_limit);
        assert_eq!(parsed.options.rate_scope, RateScope::Off);
        assert_eq!(parsed.options.keys.len(), 2);
        assert!(parsed.options.now.is_some());
    }

    #[test]
    fn misbehavior_flags_parse_with_snake_case_modes() {
        let parsed = Cli::try_parse_from([
            "usage-sim",
            "--misbehavior",
            "reset_mid_body",
            "--misbehavior-rate",
            "0.5",
            "--oversized-bytes",
            "1024",
            "--trickle-ms",
            "30",
        ])
        .expect("valid args parse");
        assert_eq!(parsed.options.misbehavior, Misbehavior::ResetMidBody);
        assert_eq!(parsed.options.misbehavior_rate, 0.5);
        assert_eq!(parsed.options.oversized_bytes, 1024);
        assert_eq!(parsed.options.trickle_ms, 30);
        assert!(Cli::try_parse_from(["usage-sim", "--misbehavior", "reset-mid-body"]).is_err());
    }

    #[test]
    fn a_bad_switch_value_is_rejected() {
        assert!(parse_on_off("maybe").is_err());
        assert!(parse_time("2024-13-01").is_err());
    }
}
