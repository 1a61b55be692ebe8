//! The access log: one line per answered request, formatted on the serving thread into a
//! reused buffer and written to stdout by a thread of its own, as NGINX's buffered
//! `access_log` does.
//!
//! Guarantees:
//! - a serving thread never waits for the output: it appends a finished line to a bounded
//!   pending buffer (a short lock, no allocation once the buffers have grown) and goes on;
//! - lines are whole and in the order they were appended; once a line is pending the writer
//!   lets more gather for [`GATHER_FOR`] (10 ms) and writes them in one go, so under load
//!   hundreds of lines share one `write` and one wake-up;
//! - when the output cannot keep up and the pending buffer is full, the line is dropped and
//!   counted (`usage_gateway_access_log_dropped_total`) rather than slowing every request;
//! - the line carries the fields (and the JSON shape) the gateway's tracing-based line had,
//!   and never a key, a token or a query string: only what [`AccessLine`] holds.
//!
//! Written here rather than as a `tracing` event through `tracing-appender`: the line has a
//! fixed set of fields and runs once per request, and a `tracing` event with a span around
//! it cost ~38% of a cache hit's throughput (issue 14), most of it in generic field
//! formatting and a buffer allocated per line; this writes the known fields straight into a
//! reused buffer. Other log events (rare: warnings, failures) still go through `tracing`.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::sync::{Arc, Condvar, LazyLock, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;

use crate::outcome::CacheOutcome;
use crate::query::RouteName;
use crate::sync::lock;

/// Bytes of finished lines that may wait for the writer; past this, lines are dropped.
pub const PENDING_BYTES: usize = 1 << 20;

/// How long the writer lets lines gather once some are pending: a line reaches stdout within
/// about this long.
pub const GATHER_FOR: Duration = Duration::from_millis(10);

/// Pending bytes past which the writer is woken at once rather than at the end of its gather.
const HIGH_WATER: usize = PENDING_BYTES / 4;

/// Lines dropped because the output could not keep up, for every access log of the process.
pub static DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

static INSTALLED: OnceLock<AccessLog> = OnceLock::new();

/// How lines are written: as JSON objects, or as `key=value` text for terminals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Text,
}

/// What one access line says.
#[derive(Debug, Clone, Copy)]
pub struct AccessLine<'a> {
    /// Visible ASCII (the observe layer keeps no other), at most 128 bytes.
    pub request_id: &'a [u8],
    pub caller: Option<&'a str>,
    pub method: &'a str,
    pub route: Option<RouteName>,
    pub status: u16,
    pub cache: Option<CacheOutcome>,
    pub duration: Duration,
    pub upstream: Option<Duration>,
}

#[derive(Debug, Default)]
struct Pending {
    lines: Vec<u8>,
    /// Bytes ever appended, and ever handed to the output: `flush` waits for the second to
    /// reach the first.
    appended: u64,
    written: u64,
    /// The writer is asleep and must be woken for the next line.
    writer_asleep: bool,
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Signalled after each batch is written.
    wrote: Condvar,
}

/// The process's access log (see the module documentation).
#[derive(Debug, Clone)]
pub struct AccessLog {
    format: Format,
    shared: Arc<Shared>,
}

/// Stops the writer when dropped, after it has written every pending line.
#[derive(Debug)]
pub struct AccessLogGuard {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl AccessLog {
    /// An access log writing `format` lines to `output` from a thread of its own.
    pub fn start(
        format: Format,
        output: Box<dyn Write + Send>,
    ) -> std::io::Result<(AccessLog, AccessLogGuard)> {
        let shared = Arc::new(Shared::default());
        let writer = std::thread::Builder::new()
            .name("access-log".into())
            .spawn({
                let shared = shared.clone();
                move || write_until_closed(&shared, output)
            })?;
        Ok((
            AccessLog {
                format,
                shared: shared.clone(),
            },
            AccessLogGuard {
                shared,
                writer: Some(writer),
            },
        ))
    }

    /// Makes `log` the process's access log, the one [`installed`] returns. Only the first
    /// call installs; it says whether this one did.
    pub fn install(self) -> bool {
        INSTALLED.set(self).is_ok()
    }

    /// Formats and queues one line.
    pub fn write(&self, line: &AccessLine<'_>) {
        SCRATCH.with(|scratch| {
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                return;
            };
            scratch.clear();
            match self.format {
                Format::Json => json_line(&mut scratch, line),
                Format::Text => text_line(&mut scratch, line),
            }
            self.queue(&scratch);
        });
    }

    fn queue(&self, line: &[u8]) {
        let mut pending = lock(&self.shared.pending);
        if pending.closed || pending.lines.len() + line.len() > PENDING_BYTES {
            drop(pending);
            DROPPED.inc();
            return;
        }
        let below = pending.lines.len() < HIGH_WATER;
        pending.lines.extend_from_slice(line);
        pending.appended += line.len() as u64;
        // Waking a thread is a system call: made only for the first line after the writer fell
        // asleep on an empty buffer, or when the buffer passes its high water, so under load
        // (the writer gathering or writing) appending a line costs none.
        let crossed = below && pending.lines.len() >= HIGH_WATER;
        let wake = std::mem::take(&mut pending.writer_asleep) || crossed;
        drop(pending);
        if wake {
            self.shared.wake.notify_one();
        }
    }
}

impl AccessLog {
    /// Waits until every line queued before the call has been handed to the output (for a
    /// test reading what was logged, or an orderly stop), or until `timeout`.
    pub fn flush(&self, timeout: Duration) {
        let pending = lock(&self.shared.pending);
        let target = pending.appended;
        let _ = self
            .shared
            .wrote
            .wait_timeout_while(pending, timeout, |pending| {
                pending.written < target && !pending.closed
            });
    }
}

/// The access log [`AccessLog::install`] installed, if any.
pub fn installed() -> Option<&'static AccessLog> {
    INSTALLED.get()
}

impl Drop for AccessLogGuard {
    fn drop(&mut self) {
        lock(&self.shared.pending).closed = true;
        self.shared.wake.notify_one();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn write_until_closed(shared: &Shared, mut output: Box<dyn Write + Send>) {
    let mut batch = Vec::with_capacity(64 * 1024);
    loop {
        {
            let mut pending = lock(&shared.pending);
            while pending.lines.is_empty() {
                if pending.closed {
                    let _ = output.flush();
                    return;
                }
                pending.writer_asleep = true;
                pending = shared
                    .wake
                    .wait(pending)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            // Lines are coming: let more gather before writing, so that a busy gateway writes
            // hundreds of lines per system call and its serving threads wake this one once per
            // `GATHER_FOR` at most, not once per line.
            let deadline = Instant::now() + GATHER_FOR;
            while !pending.closed && pending.lines.len() < HIGH_WATER {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                pending = shared
                    .wake
                    .wait_timeout(pending, left)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
            }
            // Swapped, not copied: the serving threads append to the buffer written last time.
            std::mem::swap(&mut pending.lines, &mut batch);
        }
        if output
            .write_all(&batch)
            .and_then(|()| output.flush())
            .is_err()
        {
            let lost = batch.iter().filter(|&&byte| byte == b'\n').count();
            DROPPED.inc_by(lost as u64);
        }
        lock(&shared.pending).written += batch.len() as u64;
        shared.wrote.notify_all();
        batch.clear();
    }
}

thread_local! {
    /// Each serving thread's line being formatted.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
    /// The last second formatted (`YYYY-MM-DDTHH:MM:SS`), reused within that second.
    static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
}

/// RFC 3339 UTC with microseconds, as `tracing-subscriber` writes its timestamps.
fn timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (cached, mut text) = SECOND.get();
    if cached != secs {
        text = civil_second(secs);
        SECOND.set((secs, text));
    }
    out.extend_from_slice(&text);
    out.push(b'.');
    let micros = since.subsec_micros();
    let mut digits = [b'0'; 6];
    let mut rest = micros;
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend_from_slice(&digits);
    out.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix second (days to a civil date: Howard Hinnant's
/// `civil_from_days`, valid for every date a clock can read).
fn civil_second(secs: u64) -> [u8; 19] {
    let days = (secs / 86_400) as i64;
    let in_day = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut text = [0u8; 19];
    let mut put = |at: usize, value: u64, width: usize| {
        let mut value = value;
        for i in (0..width).rev() {
            text[at + i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, year.clamp(0, 9999) as u64, 4);
    put(5, month as u64, 2);
    put(8, day as u64, 2);
    put(11, in_day / 3600, 2);
    put(14, in_day / 60 % 60, 2);
    put(17, in_day % 60, 2);
    text[4] = b'-';
    text[7] = b'-';
    text[10] = b'T';
    text[13] = b':';
    text[16] = b':';
    text
}

/// A JSON string's contents: `"`, `\` and control characters escaped (RFC 8259 §7).
fn json_escaped(out: &mut Vec<u8>, text: &[u8]) {
    // Ids, names and methods almost never need escaping: copied whole, not byte by byte.
    if !text
        .iter()
        .any(|&byte| byte == b'"' || byte == b'\\' || byte < 0x20)
    {
        out.extend_from_slice(text);
        return;
    }
    for &byte in text {
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(byte >> 4)]);
                out.push(HEX[usize::from(byte & 0xf)]);
            }
            _ => out.push(byte),
        }
    }
}

fn json_string(out: &mut Vec<u8>, text: &[u8]) {
    out.push(b'"');
    json_escaped(out, text);
    out.push(b'"');
}

fn integer(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// Milliseconds with microsecond precision, as a JSON number (`0.042`).
fn milliseconds(out: &mut Vec<u8>, duration: Duration) {
    let micros = duration.as_micros();
    integer(out, u64::try_from(micros / 1000).unwrap_or(u64::MAX));
    let fraction = (micros % 1000) as u16;
    out.extend_from_slice(&[
        b'.',
        b'0' + (fraction / 100) as u8,
        b'0' + (fraction / 10 % 10) as u8,
        b'0' + (fraction % 10) as u8,
    ]);
}

fn route_name(route: Option<RouteName>) -> &'static str {
    route.map_or("none", RouteName::as_str)
}

fn upstream_ms(upstream: Duration) -> u64 {
    u64::try_from(upstream.as_millis()).unwrap_or(u64::MAX)
}

/// The JSON line: the shape `tracing-subscriber`'s JSON formatter gave the `request` event
/// (flattened fields, and the request's span with its id).
fn json_line(out: &mut Vec<u8>, line: &AccessLine<'_>) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out, SystemTime::now());
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"request_id\":");
    json_string(out, line.request_id);
    if let Some(caller) = line.caller {
        out.extend_from_slice(b",\"caller\":");
        json_string(out, caller.as_bytes());
    }
    out.extend_from_slice(b",\"method\":");
    json_string(out, line.method.as_bytes());
    out.extend_from_slice(b",\"route\":\"");
    out.extend_from_slice(route_name(line.route).as_bytes());
    out.extend_from_slice(b"\",\"status\":");
    integer(out, u64::from(line.status));
    out.extend_from_slice(b",\"cache\":\"");
    out.extend_from_slice(CacheOutcome::label(line.cache).as_bytes());
    out.extend_from_slice(b"\",\"duration_ms\":");
    milliseconds(out, line.duration);
    if let Some(upstream) = line.upstream {
        out.extend_from_slice(b",\"upstream_ms\":");
        integer(out, upstream_ms(upstream));
    }
    out.extend_from_slice(b",\"span\":{\"request_id\":");
    json_string(out, line.request_id);
    out.extend_from_slice(b",\"name\":\"request\"}}\n");
}

/// A quoted text value, escaped as Rust's `Debug` would for the characters that matter.
fn text_string(out: &mut Vec<u8>, text: &[u8]) {
    out.push(b'"');
    for &byte in text {
        match byte {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', byte]),
            0..=0x1f | 0x7f => out.push(b'?'),
            _ => out.push(byte),
        }
    }
    out.push(b'"');
}

/// The text line, in `tracing-subscriber`'s `key=value` style.
fn text_line(out: &mut Vec<u8>, line: &AccessLine<'_>) {
    timestamp(out, SystemTime::now());
    out.extend_from_slice(b"  INFO request: request_id=");
    text_string(out, line.request_id);
    if let Some(caller) = line.caller {
        out.extend_from_slice(b" caller=");
        text_string(out, caller.as_bytes());
    }
    out.extend_from_slice(b" method=");
    out.extend_from_slice(line.method.as_bytes());
    out.extend_from_slice(b" route=");
    out.extend_from_slice(route_name(line.route).as_bytes());
    out.extend_from_slice(b" status=");
    integer(out, u64::from(line.status));
    out.extend_from_slice(b" cache=");
    out.extend_from_slice(CacheOutcome::label(line.cache).as_bytes());
    out.extend_from_slice(b" duration_ms=");
    milliseconds(out, line.duration);
    if let Some(upstream) = line.upstream {
        out.extend_from_slice(b" upstream_ms=");
        integer(out, upstream_ms(upstream));
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything written, for assertions.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line<'a>(request_id: &'a [u8], caller: Option<&'a str>) -> AccessLine<'a> {
        AccessLine {
            request_id,
            caller,
            method: "GET",
            route: Some(RouteName::UsageBySim),
            status: 200,
            cache: Some(CacheOutcome::Hit),
            duration: Duration::from_micros(1_234_567),
            upstream: None,
        }
    }

    fn written(format: Format, lines: &[AccessLine<'_>]) -> String {
        let sink = Sink::default();
        let (log, guard) = AccessLog::start(format, Box::new(sink.clone())).expect("thread");
        for line in lines {
            log.write(line);
        }
        drop(guard);
        let bytes = lock(&sink.0).clone();
        String::from_utf8(bytes).expect("UTF-8")
    }

    #[test]
    fn json_lines_carry_the_request_fields() {
        let mut miss = line(b"req-1", Some("billing"));
        miss.cache = Some(CacheOutcome::Miss);
        miss.upstream = Some(Duration::from_micros(42_900));
        let text = written(Format::Json, &[miss]);
        let value: serde_json::Value = serde_json::from_str(text.trim_end()).expect("JSON");
        assert_eq!(value["message"], "request");
        assert_eq!(value["level"], "INFO");
        assert_eq!(value["request_id"], "req-1");
        assert_eq!(value["caller"], "billing");
        assert_eq!(value["method"], "GET");
        assert_eq!(value["route"], "usage_by_sim");
        assert_eq!(value["status"], 200);
        assert_eq!(value["cache"], "miss");
        assert_eq!(value["duration_ms"], 1234.567);
        assert_eq!(value["upstream_ms"], 42);
        assert_eq!(value["span"]["request_id"], "req-1");
    }

    #[test]
    fn absent_facts_are_omitted_or_named_none() {
        let mut refused = line(b"r", None);
        refused.route = None;
        refused.cache = None;
        let text = written(Format::Json, &[refused]);
        let value: serde_json::Value = serde_json::from_str(text.trim_end()).expect("JSON");
        assert!(value.get("caller").is_none(), "{value}");
        assert!(value.get("upstream_ms").is_none(), "{value}");
        assert_eq!(value["route"], "none");
        assert_eq!(value["cache"], "none");
    }

    #[test]
    fn strings_are_escaped_so_a_line_stays_one_json_object() {
        let text = written(Format::Json, &[line(br#"a"b\c"#, Some("we\"ird\nname"))]);
        assert_eq!(text.lines().count(), 1, "{text}");
        let value: serde_json::Value = serde_json::from_str(text.trim_end()).expect("JSON");
        assert_eq!(value["request_id"], r#"a"b\c"#);
        assert_eq!(value["caller"], "we\"ird\nname");
    }

    #[test]
    fn text_lines_read_as_key_value_pairs() {
        let text = written(Format::Text, &[line(b"req-2", Some("ops"))]);
        assert!(
            text.contains(
                r#"INFO request: request_id="req-2" caller="ops" method=GET route=usage_by_sim status=200 cache=hit duration_ms=1234.567"#
            ),
            "{text}"
        );
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn every_line_is_written_whole_and_in_order() {
        let ids: Vec<String> = (0..2000).map(|i| format!("id-{i}")).collect();
        let lines: Vec<AccessLine<'_>> = ids.iter().map(|id| line(id.as_bytes(), None)).collect();
        let text = written(Format::Json, &lines);
        let seen: Vec<String> = text
            .lines()
            .map(|l| {
                let value: serde_json::Value = serde_json::from_str(l).expect("whole line");
                value["request_id"].as_str().expect("id").to_owned()
            })
            .collect();
        assert_eq!(seen, ids);
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let mut out = Vec::new();
        timestamp(
            &mut out,
            UNIX_EPOCH + Duration::from_micros(1_764_495_077_000_042),
        );
        assert_eq!(out, b"2025-11-30T09:31:17.000042Z");
        out.clear();
        timestamp(&mut out, UNIX_EPOCH + Duration::from_secs(951_782_400));
        assert_eq!(out, b"2000-02-29T00:00:00.000000Z");
    }

    /// An output that blocks until released, to fill the pending buffer.
    struct Stalled(Arc<(Mutex<bool>, Condvar)>);

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (released, changed) = &*self.0;
            let mut released = lock(released);
            while !*released {
                released = changed.wait(released).expect("lock");
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_past_the_pending_bound_are_dropped_and_counted_not_waited_for() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let (log, guard) =
            AccessLog::start(Format::Json, Box::new(Stalled(gate.clone()))).expect("thread");
        let before = DROPPED.get();
        // Far more than PENDING_BYTES while the output is stuck: the calls all return.
        let id = [b'x'; 128];
        let lines = 4 * PENDING_BYTES / 200;
        for _ in 0..lines {
            log.write(&line(&id, Some("billing")));
        }
        let dropped = DROPPED.get() - before;
        assert!(dropped > 0, "nothing dropped");
        assert!(dropped < lines as u64, "everything dropped");
        *lock(&gate.0) = true;
        gate.1.notify_all();
        drop(guard);
    }
}
