//! `--export-filename`: every event as a protojson line, like Tetragon's
//! export file (rotated as [`crate::export_file`] says), written by a bus
//! subscriber so a slow or full disk loses (and reports) events rather
//! than slowing the daemon. What the file does not get is said in it, as
//! `rate_limit_info` lines: events the bus dropped because the writer fell
//! behind, and events whose write failed (a full disk), the latter in the
//! first line written once writing works again. Tetragon's export flags
//! choose what it gets: `--export-allowlist`/`--export-denylist` and
//! `--field-filters` (applied by the bus subscription, so what is left out
//! costs no queue space) and `--export-rate-limit` (what it cuts is
//! reported each minute, and at the end, as a `rate_limit_info` line).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use events::bus::EventBus;
use proto::tetragon::get_events_response::Event;
use proto::tetragon::{GetEventsResponse, RateLimitInfo};

use crate::export_file::{RotatingFile, Rotation};
use crate::export_filter::ExportFilters;
use crate::log_limit::LogLimit;
use crate::rate_limit::RateLimiter;

/// How often a failing export logs that it fails.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// How often events cut by `--export-rate-limit` are reported in the file
/// (Tetragon's: its limit's interval, a minute); and once more at the end.
const RATE_LIMIT_REPORT: Duration = Duration::from_secs(60);

/// The export flags both daemons take, with Tetragon's names.
#[derive(Debug, Clone, Copy)]
pub struct ExportFlags<'a> {
    pub max_size_mb: u64,
    pub max_backups: usize,
    pub rotation_interval: &'a str,
    pub compress: bool,
    pub allowlist: &'a str,
    pub denylist: &'a str,
    pub field_filters: &'a str,
    /// Events a minute; negative for no limit.
    pub rate_limit: i64,
}

/// [`ExportFlags`] from a daemon's flags struct, whose fields are named
/// as the flags (`export_file_max_size_mb`, …, `export_rate_limit`).
#[macro_export]
macro_rules! export_flags {
    ($flags:expr) => {
        $crate::export::ExportFlags {
            max_size_mb: $flags.export_file_max_size_mb,
            max_backups: $flags.export_file_max_backups,
            rotation_interval: &$flags.export_file_rotation_interval,
            compress: $flags.export_file_compress,
            allowlist: &$flags.export_allowlist,
            denylist: &$flags.export_denylist,
            field_filters: &$flags.field_filters,
            rate_limit: $flags.export_rate_limit,
        }
    };
}

/// What the export file gets, and how it rotates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExportSettings {
    pub rotation: Rotation,
    pub filters: ExportFilters,
    /// Events a minute at most (`--export-rate-limit`).
    pub rate_limit: Option<u64>,
}

impl ExportSettings {
    /// Every problem of the flags, each with the flag's name.
    pub fn resolve(flags: ExportFlags<'_>) -> Result<Self, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        let rotation =
            Rotation::from_flags(flags.max_size_mb, flags.max_backups, flags.rotation_interval, flags.compress)
                .map_err(|p| problems.push(p))
                .unwrap_or_default();
        let filters = ExportFilters::parse(flags.allowlist, flags.denylist, flags.field_filters)
            .map_err(|p| problems.push(p))
            .unwrap_or_default();
        let rate_limit = u64::try_from(flags.rate_limit).ok();
        if problems.is_empty() { Ok(ExportSettings { rotation, filters, rate_limit }) } else { Err(problems) }
    }
}

/// What the export did, for the metrics (Tetragon's export metrics).
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Events written.
    pub exported: AtomicU64,
    /// Bytes written, notices included.
    pub bytes: AtomicU64,
    /// The time of the last event written, in Unix seconds.
    pub last_exported: AtomicI64,
    /// Events whose write failed.
    pub failed: AtomicU64,
    /// Events `--export-rate-limit` cut.
    pub rate_limited: AtomicU64,
}

/// Tetragon's export metrics, read from [`ExportStats`] at each scrape.
#[derive(Debug)]
pub struct ExportCollector(pub Arc<ExportStats>);

impl prometheus_client::collector::Collector for ExportCollector {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use crate::metrics::{counter, gauge};
        let s = &self.0;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(&mut encoder, "tetragon_events_exported", "Total number of events exported", get(&s.exported))?;
        counter(&mut encoder, "tetragon_events_exported_bytes", "Number of bytes exported for events", get(&s.bytes))?;
        gauge(
            &mut encoder,
            "tetragon_events_last_exported_timestamp",
            "Timestamp of the most recent event to be exported",
            s.last_exported.load(Ordering::Relaxed),
        )?;
        counter(
            &mut encoder,
            "tetragon_events_export_failed",
            "Total number of events that failed to export",
            get(&s.failed),
        )?;
        counter(
            &mut encoder,
            "tetragon_export_ratelimit_events_dropped",
            "Number of events dropped on export due to rate limiting",
            get(&s.rate_limited),
        )
    }
}

/// The running export: its task and its counts.
pub struct Export {
    pub task: tokio::task::JoinHandle<()>,
    pub stats: Arc<ExportStats>,
}

/// How long the export may go without writing at shutdown before what it
/// still has queued is given up.
pub const FINISH_STALL: std::time::Duration = std::time::Duration::from_secs(5);

impl Export {
    /// Once the bus is closed: waits for the writer to write its queue and
    /// end for as long as it makes progress, so a slow disk or machine
    /// still finishes (the queue is bounded in bytes), and a hung one is
    /// given up after `FINISH_STALL` without a write (logged: the rest is
    /// lost).
    pub async fn finish(mut self) {
        let progress = |s: &ExportStats| s.bytes.load(Ordering::Relaxed) + s.failed.load(Ordering::Relaxed);
        let mut seen = progress(&self.stats);
        loop {
            if tokio::time::timeout(FINISH_STALL, &mut self.task).await.is_ok() {
                return;
            }
            let now = progress(&self.stats);
            if now == seen {
                tracing::warn!(
                    after = ?FINISH_STALL,
                    "the export file stopped writing with events still queued; the rest is lost"
                );
                return;
            }
            seen = now;
        }
    }
}

/// Starts the writer task; errors opening the file are returned at once.
/// `lost` is told of every event the file does not get but should have
/// (the bus dropped it, or its write failed; not what the rate limit cut).
pub fn start(
    bus: &EventBus,
    path: &std::path::Path,
    settings: &ExportSettings,
    lost: impl Fn(u64) + Send + 'static,
) -> std::io::Result<Export> {
    let filters = settings.filters.compile().map_err(|(flag, e)| std::io::Error::other(format!("--{flag}: {e}")))?;
    let file = RotatingFile::open(path, settings.rotation)?;
    let mut sub = bus.subscribe_internal(filters);
    let stats = Arc::new(ExportStats::default());
    let mut writer = Writer {
        file,
        path: path.display().to_string(),
        node: bus.node().to_owned(),
        failing: LogLimit::new(LOG_EVERY),
        unwritten: 0,
        stats: stats.clone(),
        lost: Box::new(lost),
    };
    let mut limit = settings.rate_limit.map(|n| RateLimiter::per_minute(n, Instant::now()));
    // On a thread of its own (tokio's blocking pool): file writes block,
    // and a slow or hung disk must not hold a worker the gRPC streams and
    // the relay uplink run on.
    let runtime = tokio::runtime::Handle::current();
    let task = tokio::task::spawn_blocking(move || {
        runtime.block_on(async move {
            let mut report =
                tokio::time::interval_at(tokio::time::Instant::now() + RATE_LIMIT_REPORT, RATE_LIMIT_REPORT);
            let mut cut = 0u64;
            loop {
                let event = tokio::select! {
                    event = sub.next() => event,
                    _ = report.tick(), if limit.is_some() => {
                        writer.report_cut(std::mem::take(&mut cut));
                        continue;
                    }
                };
                let Some(event) = event else { break };
                if let Some(Event::RateLimitInfo(info)) = &event.event {
                    // The bus's notice of what it dropped: written, not limited.
                    (writer.lost)(info.number_of_dropped_process_events);
                } else if let Some(limit) = &mut limit
                    && !limit.allow(Instant::now())
                {
                    cut += 1;
                    writer.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                writer.put(&event);
            }
            writer.report_cut(cut);
        })
    });
    Ok(Export { task, stats })
}

struct Writer {
    file: RotatingFile,
    path: String,
    node: String,
    failing: LogLimit,
    /// Events whose write failed since the last line that was written.
    unwritten: u64,
    stats: Arc<ExportStats>,
    lost: Box<dyn Fn(u64) + Send>,
}

impl Writer {
    fn notice(&self, dropped: u64) -> GetEventsResponse {
        GetEventsResponse {
            event: Some(Event::RateLimitInfo(RateLimitInfo { number_of_dropped_process_events: dropped })),
            node_name: self.node.clone(),
            time: Some(proto::Timestamp::now()),
            ..Default::default()
        }
    }

    /// Events the rate limit cut since the last report, as Tetragon says
    /// it: a `rate_limit_info` line.
    fn report_cut(&mut self, cut: u64) {
        if cut > 0 {
            let notice = self.notice(cut);
            self.put(&notice);
        }
    }

    /// Writes one event; after a gap the loss notice is the first line, or
    /// nothing is.
    fn put(&mut self, event: &GetEventsResponse) {
        let resumed = match self.unwritten {
            0 => Ok(()),
            n => {
                let notice = self.notice(n);
                write(&mut self.file, &notice, &self.stats).inspect(|()| {
                    tracing::info!(path = %self.path, lost = n, "export file writes work again");
                    self.unwritten = 0;
                })
            }
        };
        // One write per line: a failed write loses that line only.
        match resumed.and_then(|()| write(&mut self.file, event, &self.stats)) {
            Ok(()) => {
                if !matches!(event.event, Some(Event::RateLimitInfo(_))) {
                    self.stats.exported.fetch_add(1, Ordering::Relaxed);
                    let seconds = event.time.as_ref().map_or(0, |t| t.seconds);
                    self.stats.last_exported.store(seconds, Ordering::Relaxed);
                }
            }
            Err(e) => {
                self.unwritten += 1;
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                (self.lost)(1);
                if let Some(n) = self.failing.hit() {
                    tracing::error!(path = %self.path, error = %e, failed = n, "export file writes failing; events lost");
                }
            }
        }
    }
}

fn write(file: &mut RotatingFile, event: &GetEventsResponse, stats: &ExportStats) -> std::io::Result<()> {
    let mut line = proto::json::to_json_line(event);
    line.push('\n');
    file.write_line(line.as_bytes())?;
    stats.bytes.fetch_add(line.len() as u64, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drops_are_counted_and_the_file_says_so() {
        // A bus queue of 4 and 1,000 events published at once: the writer
        // (on its own thread) cannot keep up with all of them.
        let bus = EventBus::new("n", 4);
        let lost = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = lost.clone();
        let dir = std::env::temp_dir().join(format!("vigil-export-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        let export = start(&bus, &path, &ExportSettings::default(), move |n| {
            counted.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        })
        .unwrap();
        let n = 1000;
        for i in 0..n {
            bus.publish(test_support::events::exec(&format!("/bin/{i}")).build());
        }
        // The bus gone, the writer takes what is queued (a notice of what
        // it lost first) and ends.
        drop(bus);
        export.task.await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let written = text.lines().filter(|l| l.contains("process_exec")).count() as u64;
        let said: u64 = text
            .lines()
            .filter_map(|l| l.split(r#""number_of_dropped_process_events":""#).nth(1))
            .map(|r| r.split('"').next().unwrap().parse::<u64>().unwrap())
            .sum();
        let lost = lost.load(std::sync::atomic::Ordering::Relaxed);
        assert!(lost > 0, "a queue of 4 kept up with {n} events at once");
        assert_eq!(said, lost, "the file says what was counted:\n{text}");
        assert_eq!(written + lost, n, "every event is written or counted, once");
        assert_eq!(export.stats.exported.load(Ordering::Relaxed), written);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
