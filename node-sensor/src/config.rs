//! The sensor's settings, layered by `serving::settings`: defaults, then a
//! config file (`--config-file`, TOML/YAML/JSON with the flags' names as
//! keys), then `VIGIL_*` environment variables, then flags. Every unknown
//! key and bad value stops start-up, all of them named at once.

use std::path::PathBuf;

use clap::Parser;
use serde::{Deserialize, Serialize};
use serving::settings::{ConfigErrors, ConfigProblem, FlagLayer};

pub const DEFAULT_SERVER_ADDRESS: &str = "localhost:54321";
pub const DEFAULT_PROCESS_CACHE_SIZE: usize = 65_536;
pub const DEFAULT_SUBSCRIBER_QUEUE: usize = 10_000;

pub use serving::daemon::LogFormat;

/// Command-line flags; every one may also be set in the config file or as
/// `VIGIL_<FLAG>` (e.g. `VIGIL_PROCESS_CACHE_SIZE`).
#[derive(Debug, Parser, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
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

/// Every setting with its default: the layers' common shape. Keys are the
/// flags' names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Layered {
    pub node_name: Option<String>,
    pub server_address: String,
    pub process_cache_size: usize,
    pub subscriber_queue_size: usize,
    pub export_filename: Option<PathBuf>,
    pub log_level: String,
    pub log_format: LogFormat,
    pub btf: String,
    pub procfs: PathBuf,
    pub enable_process_cred: bool,
    pub enable_process_ns: bool,
    pub enable_ancestors: Vec<String>,
    pub relay_address: Vec<String>,
    pub tls_dir: Option<PathBuf>,
    pub insecure: bool,
    pub replay_buffer_size: usize,
    pub relay_resolve_interval: u64,
    pub only_own_netns: bool,
    pub enable_k8s_api: bool,
    pub kubeconfig: Option<PathBuf>,
    pub k8s_pod_annotations: bool,
}

impl Default for Layered {
    fn default() -> Self {
        Layered {
            node_name: None,
            server_address: DEFAULT_SERVER_ADDRESS.into(),
            process_cache_size: DEFAULT_PROCESS_CACHE_SIZE,
            subscriber_queue_size: DEFAULT_SUBSCRIBER_QUEUE,
            export_filename: None,
            log_level: "info".into(),
            log_format: LogFormat::Plain,
            btf: crate::btf_offsets::VMLINUX_BTF.into(),
            procfs: "/proc".into(),
            enable_process_cred: false,
            enable_process_ns: false,
            enable_ancestors: Vec::new(),
            relay_address: Vec::new(),
            tls_dir: None,
            insecure: false,
            replay_buffer_size: DEFAULT_REPLAY_BUFFER,
            relay_resolve_interval: DEFAULT_RELAY_RESOLVE_SECONDS,
            only_own_netns: false,
            enable_k8s_api: false,
            kubeconfig: None,
            k8s_pod_annotations: false,
        }
    }
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

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// Checks a config file's keys and values without starting anything.
pub fn check_file(path: &std::path::Path) -> Result<(), ConfigErrors> {
    serving::settings::layered::<Layered>(Some(path), |_| None, &FlagLayer::new()).map(|_| ())
}

/// Collects the problems of resolving, to report them all.
#[derive(Default)]
struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn add(&mut self, key: &str, reason: impl Into<String>) {
        self.0.push(ConfigProblem { key: key.into(), source: "value".into(), reason: reason.into() });
    }

    fn positive(&mut self, key: &str, v: u64) {
        if v == 0 {
            self.add(key, "must be at least 1");
        }
    }
}

impl Settings {
    pub fn resolve(flags: Flags) -> Result<Self, ConfigErrors> {
        Self::resolve_with_env(flags, |var| std::env::var(var).ok())
    }

    /// [`Settings::resolve`] with the environment given (tests).
    pub fn resolve_with_env(flags: Flags, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigErrors> {
        let layer = serving::settings::flags_given(&flags, &["config-file"]);
        let l: Layered = serving::settings::layered(flags.config_file.as_deref(), env, &layer)?;
        let mut p = Problems::default();
        let server_address = match l.server_address.parse::<serving::address::ServerAddress>() {
            Ok(a) => Some(a),
            Err(e) => {
                p.add("server-address", e.to_string());
                None
            }
        };
        p.positive("process-cache-size", l.process_cache_size as u64);
        p.positive("subscriber-queue-size", l.subscriber_queue_size as u64);
        p.positive("replay-buffer-size", l.replay_buffer_size as u64);
        p.positive("relay-resolve-interval", l.relay_resolve_interval);
        for t in &l.enable_ancestors {
            if t != "base" {
                p.add(
                    "enable-ancestors",
                    format!(
                        "{t:?} is not an event type Vigil produces; the only one is \"base\" (process_exec, process_exit)"
                    ),
                );
            }
        }
        let tls_given = l.tls_dir.is_some();
        if !l.relay_address.is_empty() && !tls_given && !l.insecure {
            p.add("relay-address", "streaming to a relay needs --tls-dir (mTLS), or --insecure for plaintext");
        }
        if let Some(a) = &server_address
            && !a.is_local()
            && !tls_given
            && !l.insecure
        {
            p.add(
                "server-address",
                format!(
                    "{a} is reachable from other hosts: serve with mTLS (--tls-dir; clients then need client \
                     certificates) or pass --insecure for plaintext"
                ),
            );
        }
        let Some(server_address) = server_address.filter(|_| p.0.is_empty()) else {
            return Err(ConfigErrors(p.0));
        };
        Ok(Settings {
            node_name: l.node_name.filter(|n| !n.is_empty()).unwrap_or_else(hostname),
            server_address,
            process_cache_size: l.process_cache_size,
            subscriber_queue_size: l.subscriber_queue_size,
            export_filename: l.export_filename,
            log_level: l.log_level,
            log_format: l.log_format,
            btf: l.btf,
            procfs: l.procfs,
            enable_process_cred: l.enable_process_cred,
            enable_process_ns: l.enable_process_ns,
            enable_ancestors: !l.enable_ancestors.is_empty(),
            relay_address: l.relay_address,
            tls_dir: l.tls_dir,
            insecure: l.insecure,
            replay_buffer_size: l.replay_buffer_size,
            relay_resolve_interval: std::time::Duration::from_secs(l.relay_resolve_interval),
            only_own_netns: l.only_own_netns,
            enable_k8s_api: l.enable_k8s_api,
            kubeconfig: l.kubeconfig,
            k8s_pod_annotations: l.k8s_pod_annotations,
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
    fn every_problem_is_reported_at_once() {
        let p = file("e.yaml", "process-cahce-size: 5\nreplay-buffer-size: lots\nsubscriber-queue-size: 0\n");
        let flags = Flags { config_file: Some(p), server_address: Some("nope".into()), ..Default::default() };
        let e = Settings::resolve_with_env(flags, |_| None).unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, vec!["process-cahce-size", "replay-buffer-size"], "{e}");
        // Once the layers parse, the values are checked, again all of them.
        let p = file("f.yaml", "subscriber-queue-size: 0\n");
        let flags = Flags { config_file: Some(p), server_address: Some("nope".into()), ..Default::default() };
        let e = Settings::resolve_with_env(flags, |_| None).unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, vec!["server-address", "subscriber-queue-size"], "{e}");
    }

    #[test]
    fn environment_sits_between_file_and_flags() {
        let p = file("g.toml", "process-cache-size = 10\n");
        let env = |v: &str| match v {
            "VIGIL_PROCESS_CACHE_SIZE" => Some("20".to_owned()),
            "VIGIL_RELAY_ADDRESS" => Some("r1:54331,r2:54331".to_owned()),
            "VIGIL_INSECURE" => Some("true".to_owned()),
            _ => None,
        };
        let s = Settings::resolve_with_env(Flags { config_file: Some(p.clone()), ..Default::default() }, env).unwrap();
        assert_eq!(s.process_cache_size, 20);
        assert_eq!(s.relay_address, vec!["r1:54331".to_owned(), "r2:54331".to_owned()]);
        let flags = Flags { config_file: Some(p), process_cache_size: Some(30), ..Default::default() };
        assert_eq!(Settings::resolve_with_env(flags, env).unwrap().process_cache_size, 30);
        let e = Settings::resolve_with_env(Flags::default(), |v| (v == "VIGIL_PROCESS_CACHE_SIZE").then(|| "x".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid process-cache-size (environment VIGIL_PROCESS_CACHE_SIZE)"), "{e}");
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
