//! What the sensor's health service says: SERVING while the ring buffer is
//! being read (its reader passes at least once a second; a reader stalled
//! for `STALLED_AFTER` is not serving), NOT_SERVING before that and from
//! shutdown on.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serving::health::Health;
use tokio::sync::watch;

use crate::stats::SensorStats;

/// How often the reader's progress is checked.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// A reader with no pass for this long is stalled.
const STALLED_AFTER: Duration = Duration::from_secs(5);

/// Keeps `health` in step with the ring-buffer reader until `shutdown`.
pub fn watch(health: Health, stats: Arc<SensorStats>, shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = (stats.ring_polls.load(Ordering::Relaxed), Instant::now());
        let mut serving = false;
        let stop = serving::listen::stopped(shutdown);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep(CHECK_EVERY) => {}
            }
            let polls = stats.ring_polls.load(Ordering::Relaxed);
            if polls != last.0 {
                last = (polls, Instant::now());
            }
            let reading = polls > 0 && last.1.elapsed() < STALLED_AFTER;
            if reading != serving {
                if !reading {
                    tracing::warn!(stalled_for = ?last.1.elapsed(), "the ring-buffer reader stalled: health NOT_SERVING");
                }
                health.set(reading).await;
                serving = reading;
            }
        }
        health.set(false).await;
    })
}
