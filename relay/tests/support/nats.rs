//! A real `nats-server` with JetStream on loopback (a random port, a
//! temporary store), for the backbone tests. `cargo xtask setup` installs
//! Debian's.
#![allow(dead_code, reason = "each test file uses part of it")]

use std::path::{Path, PathBuf};
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
        let (daemon, port) = spawn(name, &dir, -1);
        Nats { daemon, dir, port }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGKILL): an outage.
    pub fn stop(&self) {
        self.daemon.stop();
    }

    /// Starts it again on its port and store.
    pub fn restart(&mut self) {
        self.daemon.stop();
        let name = self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let (daemon, port) = spawn(&name, &self.dir, i32::from(self.port));
        assert_eq!(port, self.port);
        self.daemon = daemon;
    }
}

/// A cluster of `n` servers with JetStream (routes between all of them),
/// once it has elected its JetStream leader; the servers, and the URL a
/// client is given (all of them, comma-separated).
pub fn cluster(name: &str, n: usize) -> (Vec<Nats>, String) {
    let free = || std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap();
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free(), free())).collect();
    let routes: Vec<String> = ports.iter().map(|(_, route)| format!("nats://127.0.0.1:{route}")).collect();
    let mut servers = Vec::new();
    for (i, (client, route)) in ports.iter().enumerate() {
        let dir = std::env::temp_dir().join(format!("vigil-nats-{name}-{i}-{}", test_support::nonce()));
        std::fs::create_dir_all(&dir).expect("store directory");
        let cluster = [
            "--cluster".to_owned(),
            format!("nats://127.0.0.1:{route}"),
            "--routes".to_owned(),
            routes.join(","),
            "--cluster_name".to_owned(),
            name.to_owned(),
        ];
        let (daemon, port) = spawn_with(&format!("{name}-{i}"), &dir, i32::from(*client), &cluster);
        servers.push(Nats { daemon, dir, port });
    }
    // Each server logs the leader it learns of; any one will do.
    let elected =
        servers[0].daemon.wait_for(Duration::from_secs(60), |line| line.contains("metadata leader").then_some(()));
    assert!(elected.is_some(), "no JetStream leader; log:\n{}", servers[0].daemon.log());
    let url = servers.iter().map(Nats::url).collect::<Vec<_>>().join(",");
    (servers, url)
}

/// A server on `port` (-1: any) with its store in `dir`, ready; its port.
fn spawn(name: &str, dir: &Path, port: i32) -> (Daemon, u16) {
    spawn_with(name, dir, port, &[])
}

fn spawn_with(name: &str, dir: &Path, port: i32, extra: &[String]) -> (Daemon, u16) {
    let daemon = Daemon::spawn(
        Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-n", name])
            .args(["-sd", &dir.display().to_string()])
            .args(extra),
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
    (daemon, port)
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.daemon.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
