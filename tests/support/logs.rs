//! Every log line a test binary writes, captured in memory: the production JSON format at the
//! most verbose level, and the access log, as `telemetry::init` starts them.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use usage_gateway::access_log::{AccessLog, Format};

/// Everything every subscriber of this test binary writes.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// What was written so far, the access lines of finished requests included.
    pub fn text(&self) -> String {
        if let Some(access_log) = usage_gateway::access_log::installed() {
            access_log.flush(Duration::from_secs(5));
        }
        String::from_utf8(self.0.lock().expect("lock").clone()).expect("UTF-8 logs")
    }
}

/// The binary's capture, installed on first use.
pub fn captured() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .init();
        let (access_log, guard) =
            AccessLog::start(Format::Json, Box::new(logs.clone())).expect("access log thread");
        access_log.install();
        // Lives as long as the test binary: its lines are read through `Captured::text`.
        std::mem::forget(guard);
        logs
    })
}
