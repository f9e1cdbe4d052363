//! `--export-filename`: every event as a protojson line, like Tetragon's
//! export file, written by a bus subscriber so a slow disk loses (and
//! reports, as `rate_limit_info` lines) events rather than slowing the sensor.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use events::bus::EventBus;
use proto::tetragon::get_events_response::Event;
use serving::log_limit::LogLimit;

use crate::stats::SensorStats;

/// How often a failing export logs that it fails.
const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts the writer task; errors opening the file are returned at once.
///
/// Every event the file does not get is counted in `export_dropped`: those
/// the bus dropped because the writer fell behind (the file gets the
/// `rate_limit_info` line saying how many), and those whose write failed
/// (logged once per interval; writing goes on with the next event).
pub fn start(bus: &EventBus, path: &Path, stats: Arc<SensorStats>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    let mut sub = bus.subscribe_internal(events::RequestFilters::default());
    let path = path.display().to_string();
    let failing = LogLimit::new(LOG_EVERY);
    Ok(tokio::spawn(async move {
        while let Some(event) = sub.next().await {
            if let Some(Event::RateLimitInfo(info)) = &event.event {
                stats.export_dropped.fetch_add(info.number_of_dropped_process_events, Ordering::Relaxed);
            }
            let mut line = proto::json::to_json_line(&event);
            line.push('\n');
            // One write per line: a failed write loses that line only.
            if let Err(e) = file.write_all(line.as_bytes()) {
                stats.export_dropped.fetch_add(1, Ordering::Relaxed);
                if let Some(n) = failing.hit() {
                    tracing::error!(path = %path, error = %e, failed = n, "export file writes failing; events lost");
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drops_are_counted_and_the_file_says_so() {
        // A bus queue of 4: the export subscriber cannot keep up with 10
        // events published before it runs.
        let bus = EventBus::new("n", 4);
        let stats = Arc::new(SensorStats::default());
        let dir = std::env::temp_dir().join(format!("vigil-export-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        let task = start(&bus, &path, stats.clone()).unwrap();
        for i in 0..10 {
            bus.publish(test_support::events::exec(&format!("/bin/{i}")).build());
        }
        // The notice comes before the next event after the drops: publish
        // one more once the queue has room, then wait for the count.
        while stats.export_dropped.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
            bus.publish(test_support::events::exec("/bin/last").build());
        }
        assert_eq!(stats.export_dropped.load(Ordering::Relaxed), 6, "10 published into a queue of 4");
        task.abort();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.lines().any(|l| l.contains(r#""rate_limit_info":{"number_of_dropped_process_events":"6"}"#)),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
