//! `--export-filename`: every event as a protojson line, like Tetragon's
//! export file, written by a bus subscriber so a slow disk loses (and
//! reports, as `rate_limit_info` lines) events rather than slowing the sensor.

use std::io::Write;
use std::path::Path;

use events::fields::FieldFilters;
use events::filter::EventFilter;

use events::bus::EventBus;

/// Starts the writer task; errors opening the file are returned at once.
pub fn start(bus: &EventBus, path: &Path) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    let mut out = std::io::BufWriter::new(file);
    let mut sub = bus.subscribe(EventFilter::default(), FieldFilters::default());
    let path = path.display().to_string();
    Ok(tokio::spawn(async move {
        while let Some(event) = sub.next().await {
            let line = proto::json::to_json_line(&event);
            if let Err(e) = writeln!(out, "{line}").and_then(|_| out.flush()) {
                tracing::error!(path = %path, error = %e, "export file write failed; export stopped");
                return;
            }
        }
    }))
}
