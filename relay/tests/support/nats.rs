//! A real `nats-server` with JetStream on loopback (a random port, a
//! temporary store), for the backbone tests. `cargo xtask setup` installs
//! Debian's.
#![allow(dead_code, reason = "each test file uses part of it")]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use test_support::daemon::Daemon;

pub struct Nats {
    pub daemon: Daemon,
    pub dir: PathBuf,
    pub port: u16,
}

/// Why the backbone tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    let found = Command::new("nats-server").arg("--version").output().is_ok_and(|o| o.status.success());
    (!found).then(|| "nats-server is not installed (cargo xtask setup installs it)".to_owned())
}

impl Nats {
    /// Starts a server with JetStream and waits until it takes clients.
    pub fn start(name: &str) -> Nats {
        let dir = std::env::temp_dir().join(format!("vigil-nats-{name}-{}", test_support::nonce()));
        std::fs::create_dir_all(&dir).expect("store directory");
        let daemon = Daemon::spawn(
            Command::new("nats-server")
                .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-n", name])
                .args(["-sd", &dir.display().to_string()]),
        );
        let port = daemon
            .wait_for(Duration::from_secs(30), |line| {
                let at = line.split("Listening for client connections on ").nth(1)?;
                at.trim().rsplit(':').next()?.parse::<u16>().ok()
            })
            .unwrap_or_else(|| panic!("nats-server did not start; log:\n{}", daemon.log()));
        daemon
            .wait_for(Duration::from_secs(30), |line| line.contains("Server is ready").then_some(()))
            .unwrap_or_else(|| panic!("nats-server is not ready; log:\n{}", daemon.log()));
        Nats { daemon, dir, port }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.daemon.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
