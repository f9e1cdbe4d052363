//! `--export-filename`: every event as a protojson line, like Tetragon's
//! export file (rotated as [`crate::export_file`] says), written by a bus
//! subscriber so a slow or full disk loses (and reports) events rather
//! than slowing the daemon. What the file does not get is said in it, as
//! `rate_limit_info` lines: events the bus dropped because the writer fell
//! behind, and events whose write failed (a full disk), the latter in the
//! first line written once writing works again.

use events::bus::EventBus;
use proto::tetragon::get_events_response::Event;
use proto::tetragon::{GetEventsResponse, RateLimitInfo};

use crate::export_file::{RotatingFile, Rotation};
use crate::log_limit::LogLimit;

/// How often a failing export logs that it fails.
const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts the writer task; errors opening the file are returned at once.
/// `lost` is told of every event the file does not get.
pub fn start(
    bus: &EventBus,
    path: &std::path::Path,
    rotation: Rotation,
    lost: impl Fn(u64) + Send + 'static,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut file = RotatingFile::open(path, rotation)?;
    let mut sub = bus.subscribe_internal(events::RequestFilters::default());
    let path = path.display().to_string();
    let node = bus.node().to_owned();
    let failing = LogLimit::new(LOG_EVERY);
    // Events whose write failed since the last line that was written.
    let mut unwritten = 0u64;
    Ok(tokio::spawn(async move {
        while let Some(event) = sub.next().await {
            if let Some(Event::RateLimitInfo(info)) = &event.event {
                lost(info.number_of_dropped_process_events);
            }
            // After a gap, the notice is the first line, or nothing is.
            let notice = (unwritten > 0).then(|| GetEventsResponse {
                event: Some(Event::RateLimitInfo(RateLimitInfo { number_of_dropped_process_events: unwritten })),
                node_name: node.clone(),
                time: Some(proto::Timestamp::now()),
                ..Default::default()
            });
            let resumed = match notice {
                Some(notice) => write(&mut file, &notice).inspect(|()| {
                    tracing::info!(path = %path, lost = unwritten, "export file writes work again");
                    unwritten = 0;
                }),
                None => Ok(()),
            };
            // One write per line: a failed write loses that line only.
            let outcome = resumed.and_then(|()| write(&mut file, &event));
            if let Err(e) = outcome {
                unwritten += 1;
                lost(1);
                if let Some(n) = failing.hit() {
                    tracing::error!(path = %path, error = %e, failed = n, "export file writes failing; events lost");
                }
            }
        }
    }))
}

fn write(file: &mut RotatingFile, event: &GetEventsResponse) -> std::io::Result<()> {
    let mut line = proto::json::to_json_line(event);
    line.push('\n');
    file.write_line(line.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drops_are_counted_and_the_file_says_so() {
        // A bus queue of 4: the export subscriber cannot keep up with 10
        // events published before it runs.
        let bus = EventBus::new("n", 4);
        let lost = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = lost.clone();
        let dir = std::env::temp_dir().join(format!("vigil-export-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        let task = start(&bus, &path, Rotation::default(), move |n| {
            counted.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        })
        .unwrap();
        for i in 0..10 {
            bus.publish(test_support::events::exec(&format!("/bin/{i}")).build());
        }
        // The notice comes before the next event after the drops: publish
        // one more once the queue has room, then wait for the count.
        while lost.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
            bus.publish(test_support::events::exec("/bin/last").build());
        }
        assert_eq!(lost.load(std::sync::atomic::Ordering::Relaxed), 6, "10 published into a queue of 4");
        task.abort();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.lines().any(|l| l.contains(r#""rate_limit_info":{"number_of_dropped_process_events":"6"}"#)),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
