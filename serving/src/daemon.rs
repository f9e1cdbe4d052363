//! The process around a daemon: logging, the stop signal, the runtime and
//! exit codes, the same for the sensor and the relay.

use std::future::Future;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Exit code for bad configuration (flags, config file, environment).
pub const EXIT_CONFIG: u8 = 2;

/// Log output format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Plain,
    Json,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid log level {level:?}: {reason}")]
pub struct LogLevelError {
    level: String,
    reason: String,
}

/// Logs to stderr at `level` (a level or `tracing` directives).
pub fn init_logging(level: &str, format: LogFormat) -> Result<(), LogLevelError> {
    let filter = tracing_subscriber::EnvFilter::try_new(with_quiet_libraries(level))
        .map_err(|e| LogLevelError { level: level.to_owned(), reason: e.to_string() })?;
    // Colours only on a terminal: a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Libraries whose debug output is per connection, frame or request.
const CHATTY_LIBRARIES: &[&str] = &[
    "h2",
    "hyper",
    "hyper_util",
    "rustls",
    "tokio_rustls",
    "tonic",
    "tower",
    "kube_client",
    "kube_runtime",
    "aya",
    "aya_obj",
    "mio",
    "want",
];

/// `level` with the chatty libraries held at `warn` unless it names them:
/// `--log-level debug` is Vigil's own debug output (refused handshakes and
/// streams are Vigil's lines, at info), not every HTTP/2 frame; a user who
/// wants a library's says so (`debug,h2=debug`).
pub fn with_quiet_libraries(level: &str) -> String {
    let named: Vec<&str> =
        level.split(',').filter_map(|d| d.split_once('=').map(|(target, _)| target.trim())).collect();
    // Never louder than the level asked for everything.
    let quiet = match level.split(',').map(str::trim).find(|d| !d.contains('=')) {
        Some(l) if l.eq_ignore_ascii_case("error") || l.eq_ignore_ascii_case("off") => l,
        _ => "warn",
    };
    let mut out = level.to_owned();
    for lib in CHATTY_LIBRARIES {
        if !named.iter().any(|t| t == lib || t.starts_with(&format!("{lib}::"))) {
            out.push_str(&format!(",{lib}={quiet}"));
        }
    }
    out
}

/// A receiver that turns true on SIGTERM or SIGINT. Call inside the runtime.
pub fn stop_on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down");
        let _ = tx.send(true);
        // Keep the sender so receivers see `true`, not a closed channel.
        std::future::pending::<()>().await;
    });
    rx
}

/// The runtime a program runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// One thread (a short-lived client).
    Current,
    /// A worker pool: this many workers, or one per core.
    Workers(Option<usize>),
}

/// Runs `body` on a multi-threaded runtime (`threads` workers, or one per
/// core) and turns its outcome into the exit code: success, or the error
/// with its causes on stderr, prefixed with `name`, and exit 1.
pub fn run<E, F>(name: &str, threads: Option<usize>, body: impl FnOnce() -> F) -> ExitCode
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    run_as(name, Threads::Workers(threads), None, body, |_| false)
}

/// How often, at most, a worker going idle calls the release hook.
pub const RELEASE_EVERY: Duration = Duration::from_secs(1);

/// [`run`], with `release` called on a worker thread when it goes idle (at
/// most once per [`RELEASE_EVERY`] per thread): the allocator's hook for
/// giving memory freed on that thread back to the system. An allocator
/// such as mimalloc returns memory only when the thread that owns it runs
/// allocator code; a thread idle after a burst (clients gone) otherwise
/// keeps what the burst took.
pub fn run_releasing<E, F>(name: &str, threads: Option<usize>, release: fn(), body: impl FnOnce() -> F) -> ExitCode
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    run_as(name, Threads::Workers(threads), Some(release), body, |_| false)
}

fn release_when_idle(release: fn()) {
    thread_local! {
        static LAST: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
    }
    let now = Instant::now();
    if LAST.get().is_some_and(|t| now.duration_since(t) < RELEASE_EVERY) {
        return;
    }
    LAST.set(Some(now));
    release();
}

/// [`run`] with the runtime chosen, and errors for which `quiet` holds
/// ending with success and nothing printed (a CLI whose reader went away).
pub fn run_as<E, F>(
    name: &str,
    threads: Threads,
    release: Option<fn()>,
    body: impl FnOnce() -> F,
    quiet: impl Fn(&E) -> bool,
) -> ExitCode
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut builder = match threads {
        Threads::Current => tokio::runtime::Builder::new_current_thread(),
        Threads::Workers(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = n {
                b.worker_threads(n);
            }
            b
        }
    };
    if let Some(release) = release {
        builder.on_thread_park(move || release_when_idle(release));
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(body());
    // Threads still blocked (an export write on a hung disk) do not hold
    // the exit longer than this.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if quiet(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A configuration error: printed, and the config exit code.
pub fn config_error(name: &str, error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("{name}: {error}");
    ExitCode::from(EXIT_CONFIG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libraries_stay_quiet_unless_named() {
        let debug = with_quiet_libraries("debug");
        assert!(debug.starts_with("debug,") && debug.contains(",h2=warn") && debug.contains(",rustls=warn"), "{debug}");
        let named = with_quiet_libraries("debug,h2=trace");
        assert!(!named.contains("h2=warn") && named.contains("hyper=warn"), "{named}");
        assert!(with_quiet_libraries("error").contains(",tonic=error"), "never louder than asked");
        tracing_subscriber::EnvFilter::try_new(with_quiet_libraries("info,serving::listen=debug")).unwrap();
    }
}
