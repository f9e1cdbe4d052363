//! The sensor's settings: flags, then a config file (`--config-file`,
//! TOML/YAML/JSON with the flags' names as keys), then defaults. An
//! unknown key or a bad value stops start-up with the key named.

use std::path::PathBuf;

use clap::Parser;
use serde::Deserialize;

pub const DEFAULT_SERVER_ADDRESS: &str = "localhost:54321";
pub const DEFAULT_PROCESS_CACHE_SIZE: usize = 65_536;
pub const DEFAULT_SUBSCRIBER_QUEUE: usize = 10_000;

pub use serving::daemon::LogFormat;

/// Command-line flags; every one may also be set in the config file.
#[derive(Debug, Parser, Default)]
#[command(
    name = "vigil-sensor",
    version,
    about = "Vigil node sensor: eBPF process lifecycle events over Tetragon's gRPC API"
)]
pub struct Flags {
    /// Node name on every event [default: $NODE_NAME, then the hostname].
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// gRPC listen address: host:port or unix:///path [default: localhost:54321].
    #[arg(long)]
    pub server_address: Option<String>,
    /// Most processes kept in the process cache [default: 65536].
    #[arg(long)]
    pub process_cache_size: Option<usize>,
    /// Events queued per GetEvents subscriber before its events are
    /// dropped and reported to it [default: 10000].
    #[arg(long)]
    pub subscriber_queue_size: Option<usize>,
    /// Also write every event as a JSON line to this file.
    #[arg(long)]
    pub export_filename: Option<PathBuf>,
    /// Config file (TOML, YAML or JSON) with the same keys as the flags.
    #[arg(long)]
    pub config_file: Option<PathBuf>,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive [default: info].
    #[arg(long)]
    pub log_level: Option<String>,
    /// Log output format [default: plain].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Kernel BTF to resolve struct offsets from [default: /sys/kernel/btf/vmlinux].
    #[arg(long)]
    pub btf: Option<String>,
    /// procfs mount used for the start-up process walk [default: /proc].
    #[arg(long)]
    pub procfs: Option<PathBuf>,
    /// Add capabilities, full credentials and binary properties (setuid,
    /// setgid, privileges raised by exec) to every process.
    #[arg(long)]
    pub enable_process_cred: bool,
    /// Add namespace inodes, and whether each is the host's, to every process.
    #[arg(long)]
    pub enable_process_ns: bool,
    /// Add every ancestor beyond the parent (up to init) to the events of
    /// these types, as Tetragon's flag does; Vigil's events are all `base`
    /// (process_exec, process_exit), so `--enable-ancestors base`.
    #[arg(long, value_delimiter = ',')]
    pub enable_ancestors: Vec<String>,
    /// Relay to stream every event to (host:port; repeatable; a name with
    /// several addresses streams to each).
    #[arg(long = "relay-address")]
    pub relay_address: Vec<String>,
    /// Directory with ca.pem, sensor.pem and sensor-key.pem for mTLS to relays.
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
    /// Stream to relays in plaintext (tests; logs a warning).
    #[arg(long)]
    pub insecure: bool,
    /// Events kept for resending to relays after a reconnect [default: 100000].
    #[arg(long)]
    pub replay_buffer_size: Option<usize>,
    /// Seconds between DNS lookups of each --relay-address, to follow relay
    /// replicas as they come and go [default: 30].
    #[arg(long)]
    pub relay_resolve_interval: Option<u64>,
    /// Report only processes in the sensor's own network namespace (to run
    /// several sensors as separate "nodes" on one kernel, as the tests do).
    #[arg(long)]
    pub only_own_netns: bool,
    /// Add Kubernetes pod data to events, from a watch on this node's pods
    /// (in-cluster credentials unless --kubeconfig is given).
    #[arg(long)]
    pub enable_k8s_api: bool,
    /// Kubeconfig file for --enable-k8s-api (instead of in-cluster credentials).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Also copy pod annotations onto events (--enable-k8s-api).
    #[arg(long)]
    pub k8s_pod_annotations: bool,
}

/// The config file's keys: the flags' names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileSettings {
    node_name: Option<String>,
    server_address: Option<String>,
    process_cache_size: Option<usize>,
    subscriber_queue_size: Option<usize>,
    export_filename: Option<PathBuf>,
    log_level: Option<String>,
    log_format: Option<LogFormat>,
    btf: Option<String>,
    procfs: Option<PathBuf>,
    enable_process_cred: Option<bool>,
    enable_process_ns: Option<bool>,
    enable_ancestors: Option<Vec<String>>,
    relay_address: Option<Vec<String>>,
    tls_dir: Option<PathBuf>,
    insecure: Option<bool>,
    replay_buffer_size: Option<usize>,
    relay_resolve_interval: Option<u64>,
    only_own_netns: Option<bool>,
    enable_k8s_api: Option<bool>,
    kubeconfig: Option<PathBuf>,
    k8s_pod_annotations: Option<bool>,
}

/// `--enable-ancestors` types: only `base` exists here (exec and exit).
fn ancestors_for_base(types: Vec<String>) -> Result<bool, ConfigError> {
    for t in &types {
        if t != "base" {
            return Err(ConfigError::Value {
                key: "enable-ancestors",
                reason: format!(
                    "{t:?} is not an event type Vigil produces; the only one is \"base\" (process_exec, process_exit)"
                ),
            });
        }
    }
    Ok(!types.is_empty())
}

/// Resolved settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub node_name: String,
    pub server_address: serving::address::ServerAddress,
    pub process_cache_size: usize,
    pub subscriber_queue_size: usize,
    pub export_filename: Option<PathBuf>,
    pub log_level: String,
    pub log_format: LogFormat,
    pub btf: String,
    pub procfs: PathBuf,
    pub enable_process_cred: bool,
    pub enable_process_ns: bool,
    pub enable_ancestors: bool,
    pub relay_address: Vec<String>,
    pub tls_dir: Option<PathBuf>,
    pub insecure: bool,
    pub replay_buffer_size: usize,
    pub relay_resolve_interval: std::time::Duration,
    pub only_own_netns: bool,
    pub enable_k8s_api: bool,
    pub kubeconfig: Option<PathBuf>,
    pub k8s_pod_annotations: bool,
}

pub const DEFAULT_REPLAY_BUFFER: usize = 100_000;
pub const DEFAULT_RELAY_RESOLVE_SECONDS: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("invalid {key}: {reason}")]
    Value { key: &'static str, reason: String },
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_owned()).unwrap_or_default()
}

fn read_file(path: &std::path::Path) -> Result<FileSettings, ConfigError> {
    let err = |reason: String| ConfigError::File { path: path.display().to_string(), reason };
    if !path.exists() {
        return Err(err("no such file".into()));
    }
    config::Config::builder()
        .add_source(config::File::from(path))
        .build()
        .and_then(|c| c.try_deserialize::<FileSettings>())
        .map_err(|e| err(e.to_string()))
}

/// Checks a config file's keys and values without starting anything.
pub fn check_file(path: &std::path::Path) -> Result<(), ConfigError> {
    read_file(path).map(|_| ())
}

impl Settings {
    pub fn resolve(flags: Flags) -> Result<Self, ConfigError> {
        let file = match &flags.config_file {
            Some(p) => read_file(p)?,
            None => FileSettings::default(),
        };
        let server_address =
            flags.server_address.or(file.server_address).unwrap_or_else(|| DEFAULT_SERVER_ADDRESS.to_owned());
        let server_address: serving::address::ServerAddress =
            server_address.parse().map_err(|e: serving::address::AddressError| ConfigError::Value {
                key: "server-address",
                reason: e.to_string(),
            })?;
        fn positive<T: PartialEq + Default>(key: &'static str, v: T) -> Result<T, ConfigError> {
            if v == T::default() { Err(ConfigError::Value { key, reason: "must be at least 1".into() }) } else { Ok(v) }
        }
        let node_name = flags.node_name.or(file.node_name).filter(|n| !n.is_empty()).unwrap_or_else(hostname);
        let relays_given =
            !flags.relay_address.is_empty() || file.relay_address.as_ref().is_some_and(|r| !r.is_empty());
        let tls_given = flags.tls_dir.is_some() || file.tls_dir.is_some();
        let insecure = flags.insecure || file.insecure.unwrap_or(false);
        if relays_given && !tls_given && !insecure {
            return Err(ConfigError::Value {
                key: "relay-address",
                reason: "streaming to a relay needs --tls-dir (mTLS), or --insecure for plaintext".into(),
            });
        }
        if !server_address.is_local() && !tls_given && !insecure {
            return Err(ConfigError::Value {
                key: "server-address",
                reason: format!(
                    "{server_address} is reachable from other hosts: serve with mTLS (--tls-dir; clients then need \
                     client certificates) or pass --insecure for plaintext"
                ),
            });
        }
        Ok(Settings {
            node_name,
            server_address,
            process_cache_size: positive(
                "process-cache-size",
                flags.process_cache_size.or(file.process_cache_size).unwrap_or(DEFAULT_PROCESS_CACHE_SIZE),
            )?,
            subscriber_queue_size: positive(
                "subscriber-queue-size",
                flags.subscriber_queue_size.or(file.subscriber_queue_size).unwrap_or(DEFAULT_SUBSCRIBER_QUEUE),
            )?,
            export_filename: flags.export_filename.or(file.export_filename),
            log_level: flags.log_level.or(file.log_level).unwrap_or_else(|| "info".into()),
            log_format: flags.log_format.or(file.log_format).unwrap_or_default(),
            btf: flags.btf.or(file.btf).unwrap_or_else(|| crate::btf_offsets::VMLINUX_BTF.into()),
            procfs: flags.procfs.or(file.procfs).unwrap_or_else(|| "/proc".into()),
            enable_process_cred: flags.enable_process_cred || file.enable_process_cred.unwrap_or(false),
            enable_process_ns: flags.enable_process_ns || file.enable_process_ns.unwrap_or(false),
            enable_ancestors: ancestors_for_base(if flags.enable_ancestors.is_empty() {
                file.enable_ancestors.unwrap_or_default()
            } else {
                flags.enable_ancestors
            })?,
            relay_address: if flags.relay_address.is_empty() {
                file.relay_address.unwrap_or_default()
            } else {
                flags.relay_address
            },
            tls_dir: flags.tls_dir.or(file.tls_dir),
            insecure: flags.insecure || file.insecure.unwrap_or(false),
            replay_buffer_size: positive(
                "replay-buffer-size",
                flags.replay_buffer_size.or(file.replay_buffer_size).unwrap_or(DEFAULT_REPLAY_BUFFER),
            )?,
            relay_resolve_interval: std::time::Duration::from_secs(positive(
                "relay-resolve-interval",
                flags.relay_resolve_interval.or(file.relay_resolve_interval).unwrap_or(DEFAULT_RELAY_RESOLVE_SECONDS),
            )?),
            only_own_netns: flags.only_own_netns || file.only_own_netns.unwrap_or(false),
            enable_k8s_api: flags.enable_k8s_api || file.enable_k8s_api.unwrap_or(false),
            kubeconfig: flags.kubeconfig.or(file.kubeconfig),
            k8s_pod_annotations: flags.k8s_pod_annotations || file.k8s_pod_annotations.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vigil-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn flags_override_file_override_defaults() {
        let p = file(
            "a.toml",
            "node-name = \"from-file\"\nprocess-cache-size = 10\nlog-format = \"json\"\nenable-process-cred = true\n",
        );
        let s = Settings::resolve(Flags { config_file: Some(p.clone()), ..Default::default() }).unwrap();
        assert_eq!(s.node_name, "from-file");
        assert_eq!(s.process_cache_size, 10);
        assert_eq!(s.log_format, LogFormat::Json);
        assert!(s.enable_process_cred && !s.enable_process_ns);
        assert_eq!(s.server_address.to_string(), "localhost:54321");
        let s = Settings::resolve(Flags { config_file: Some(p), node_name: Some("flag".into()), ..Default::default() })
            .unwrap();
        assert_eq!(s.node_name, "flag");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let p = file("b.yaml", "node-name: x\nprocess-cahce-size: 5\n");
        let e = Settings::resolve(Flags { config_file: Some(p), ..Default::default() }).unwrap_err().to_string();
        assert!(e.contains("process-cahce-size"), "{e}");
        let e = Settings::resolve(Flags { server_address: Some("nope".into()), ..Default::default() })
            .unwrap_err()
            .to_string();
        assert!(e.contains("server-address"), "{e}");
        let e = Settings::resolve(Flags { process_cache_size: Some(0), ..Default::default() }).unwrap_err().to_string();
        assert!(e.contains("process-cache-size"), "{e}");
        let e = Settings::resolve(Flags { config_file: Some("/nonexistent.toml".into()), ..Default::default() })
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent.toml: no such file"), "{e}");
        let e =
            Settings::resolve(Flags { relay_resolve_interval: Some(0), ..Default::default() }).unwrap_err().to_string();
        assert!(e.contains("relay-resolve-interval") && e.contains("at least 1"), "{e}");
    }

    #[test]
    fn enable_ancestors_takes_tetragons_base_only() {
        assert!(!Settings::resolve(Flags::default()).unwrap().enable_ancestors);
        let on = Flags { enable_ancestors: vec!["base".into()], ..Default::default() };
        assert!(Settings::resolve(on).unwrap().enable_ancestors);
        let p = file("d.yaml", "enable-ancestors: [base]\n");
        assert!(Settings::resolve(Flags { config_file: Some(p), ..Default::default() }).unwrap().enable_ancestors);
        let kprobe = Flags { enable_ancestors: vec!["base".into(), "kprobe".into()], ..Default::default() };
        let e = Settings::resolve(kprobe).unwrap_err().to_string();
        assert!(e.contains("enable-ancestors") && e.contains("\"kprobe\""), "{e}");
    }

    #[test]
    fn relay_resolve_interval_from_file_and_default() {
        let s = Settings::resolve(Flags::default()).unwrap();
        assert_eq!(s.relay_resolve_interval, std::time::Duration::from_secs(DEFAULT_RELAY_RESOLVE_SECONDS));
        let p = file("c.toml", "relay-resolve-interval = 5\n");
        let s = Settings::resolve(Flags { config_file: Some(p), ..Default::default() }).unwrap();
        assert_eq!(s.relay_resolve_interval, std::time::Duration::from_secs(5));
    }

    #[test]
    fn help_documents_every_flag() {
        use clap::CommandFactory;
        let help = Flags::command().render_long_help().to_string();
        for flag in [
            "--node-name",
            "--server-address",
            "--process-cache-size",
            "--subscriber-queue-size",
            "--export-filename",
            "--config-file",
            "--log-level",
            "--log-format",
            "--btf",
            "--procfs",
            "--relay-address",
            "--replay-buffer-size",
            "--relay-resolve-interval",
            "--enable-ancestors",
        ] {
            assert!(help.contains(flag), "{flag} missing from --help");
        }
    }
}
