//! The relay's certificates at start-up: a rotation caught half-written (a
//! key that belongs to another certificate) is waited for; a pair that never
//! loads, or a missing file, stops the relay with an error naming the file
//! and the reason. Loopback only, no root.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

#[path = "support/local.rs"]
mod local;

use std::time::{Duration, Instant};

use local::{Relay, cert_dir};

/// Replaces the relay's key with the sensor's: a pair that does not match.
fn mismatch_key(dir: &std::path::Path) -> Vec<u8> {
    let good = std::fs::read(dir.join("relay-key.pem")).expect("relay key");
    std::fs::copy(dir.join("sensor-key.pem"), dir.join("relay-key.pem")).expect("copy key");
    good
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_written_pair_at_start_is_waited_for() {
    let dir = cert_dir("half-written");
    let good = mismatch_key(&dir);
    let relay = Relay::spawn(dir.clone(), &[]);
    // Observed, not timed: the relay has found the pair unusable and waits.
    let retrying = relay.daemon.wait_for(Duration::from_secs(30), |l| l.contains("retrying in case").then_some(()));
    assert!(retrying.is_some(), "the relay did not wait for the pair:\n{}", relay.log());
    assert!(relay.daemon.exited().is_none(), "the relay gave up on a pair being rewritten");
    std::fs::write(dir.join("relay-key.pem"), good).expect("finish the rotation");
    assert!(relay.serving_within(Duration::from_secs(10)).await, "the relay did not start once the pair matched");
}

#[test]
fn a_pair_that_never_loads_stops_the_relay_with_the_reason() {
    let dir = cert_dir("never-loads");
    mismatch_key(&dir);
    let started = Instant::now();
    let relay = Relay::spawn(dir, &[]);
    let (status, stderr) = relay.exit_within(Duration::from_secs(30)).expect("relay exits");
    assert!(!status.success());
    assert!(started.elapsed() >= Duration::from_secs(9), "gave up after {:?}, not ~10 s", started.elapsed());
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("vigil-relay: TLS settings from "), "{stderr}");
    assert!(
        last.contains("relay.pem and ") && last.contains("relay-key.pem") && last.contains("KeyMismatch"),
        "{stderr}"
    );
}

#[test]
fn a_missing_key_stops_the_relay_at_once_naming_the_file() {
    let dir = cert_dir("missing-key");
    std::fs::remove_file(dir.join("relay-key.pem")).expect("remove key");
    let relay = Relay::spawn(dir.clone(), &[]);
    let (status, stderr) = relay.exit_within(Duration::from_secs(60)).expect("relay exits");
    assert!(!status.success());
    // At once: a missing file is not a rotation in progress.
    assert!(!stderr.contains("retrying in case"), "{stderr}");
    let expected =
        format!("vigil-relay: {}: No such file or directory (os error 2)", dir.join("relay-key.pem").display());
    assert_eq!(stderr.lines().last(), Some(expected.as_str()), "{stderr}");
}
