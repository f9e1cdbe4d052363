//! A daemon under test: its stderr is collected as it is written, so a test
//! can read the address a listener bound (`listening … address=…` lines
//! from `serving::listen`) and the log so far, and the whole log at exit.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub struct Daemon {
    child: Mutex<Child>,
    log: Arc<(Mutex<String>, Condvar)>,
}

impl Daemon {
    /// Starts `cmd` with its stderr collected.
    pub fn spawn(cmd: &mut Command) -> Daemon {
        let mut child = cmd.stdin(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start daemon");
        let stderr = child.stderr.take().expect("stderr pipe");
        let log = Arc::new((Mutex::new(String::new()), Condvar::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let (text, changed) = &*sink;
                let mut text = text.lock().unwrap_or_else(|e| e.into_inner());
                text.push_str(&line);
                text.push('\n');
                changed.notify_all();
            }
        });
        Daemon { child: Mutex::new(child), log }
    }

    pub fn id(&self) -> u32 {
        self.child().id()
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The exit status, if the daemon has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.child().try_wait().ok().flatten()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.log.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits (at most `limit`) until the log holds a line for which `found`
    /// gives a value; None if the daemon exits or time runs out first.
    pub fn wait_for<T>(&self, limit: Duration, found: impl Fn(&str) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + limit;
        let (text, changed) = &*self.log;
        let mut guard = text.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(v) = guard.lines().find_map(&found) {
                return Some(v);
            }
            let now = Instant::now();
            if now >= deadline || self.exited().is_some() {
                return None;
            }
            // Woken by each new line; the exit check needs a bound too.
            let wait = (deadline - now).min(Duration::from_millis(200));
            guard = changed.wait_timeout(guard, wait).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// The address the listener named `label` bound, from its `listening`
    /// log line (the daemon must log `serving::listen` at info).
    pub fn listening(&self, label: &str) -> SocketAddr {
        let wanted = format!("listener={label} ");
        self.wait_for(Duration::from_secs(30), |line| {
            if !line.contains("listening") || !line.contains(&wanted) {
                return None;
            }
            line.split_whitespace().find_map(|w| w.strip_prefix("address=")?.parse().ok())
        })
        .unwrap_or_else(|| panic!("no {label} listener came up; log:\n{}", self.log()))
    }

    /// Waits (at most `limit`) for the daemon to exit: its status and log.
    pub fn exit_within(&self, limit: Duration) -> Option<(ExitStatus, String)> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                // The reader thread ends at EOF; give it the last lines.
                let end = Instant::now() + Duration::from_secs(5);
                while Arc::strong_count(&self.log) > 1 && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return Some((status, self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Stops the daemon (SIGKILL); its log.
    pub fn stop(&self) -> String {
        let _ = self.child().kill();
        self.exit_within(Duration::from_secs(10)).map(|(_, log)| log).unwrap_or_else(|| self.log())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let mut child = self.child();
        let _ = child.kill();
        let _ = child.wait();
    }
}
