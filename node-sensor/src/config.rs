//! The sensor's settings, layered by `serving::settings`: defaults, then a
//! config file (`--config-file`, TOML/YAML/JSON with the flags' names as
//! keys), then `VIGIL_*` environment variables, then flags. Every unknown
//! key and bad value stops start-up, all of them named at once.

use std::path::PathBuf;

use clap::Parser;
use serde::{Deserialize, Serialize};
use serving::settings::{ConfigErrors, ConfigProblem};

pub const DEFAULT_SERVER_ADDRESS: &str = "localhost:54321";
pub const DEFAULT_PROCESS_CACHE_SIZE: usize = 65_536;
pub const DEFAULT_SUBSCRIBER_QUEUE: usize = 10_000;
pub const DEFAULT_RING_BATCH_MS: u64 = 10;
pub const DEFAULT_REPLAY_BUFFER: usize = 100_000;
pub const DEFAULT_RELAY_RESOLVE_SECONDS: u64 = 30;

pub use serving::daemon::LogFormat;

/// The sensor's one settings type: its flags (clap, with the defaults),
/// and the keys of the config file and of `VIGIL_<KEY>` variables (serde),
/// all named alike (`process-cache-size`, `VIGIL_PROCESS_CACHE_SIZE`).
#[derive(Debug, Clone, Parser, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
#[command(
    name = "vigil-sensor",
    version,
    about = "Vigil node sensor: eBPF process lifecycle events over Tetragon's gRPC API"
)]
pub struct Flags {
    /// Node name on every event [default: $NODE_NAME, then the hostname].
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// gRPC listen address: host:port or unix:///path.
    #[arg(long, default_value = DEFAULT_SERVER_ADDRESS)]
    pub server_address: String,
    /// Most processes kept in the process cache.
    #[arg(long, default_value_t = DEFAULT_PROCESS_CACHE_SIZE)]
    pub process_cache_size: usize,
    /// How long a burst's first event waits for the rest before they are
    /// read from the kernel, in ms (1 to 1000): longer costs less CPU per
    /// event on a busy node and delays events by as much.
    #[arg(long, default_value_t = DEFAULT_RING_BATCH_MS)]
    pub ring_batch_ms: u64,
    /// Events queued per GetEvents subscriber before its events are
    /// dropped and reported to it.
    #[arg(long, default_value_t = DEFAULT_SUBSCRIBER_QUEUE)]
    pub subscriber_queue_size: usize,
    /// Bytes one GetEvents subscriber's queue may hold, in MiB (each event
    /// charged its encoded size plus 256 bytes).
    #[arg(long, default_value_t = 16)]
    pub subscriber_queue_mib: usize,
    /// Bytes all subscribers' queues together may hold, in MiB; past it
    /// subscribers that are behind lose events (one keeping up never does).
    #[arg(long, default_value_t = 256)]
    pub subscriber_queues_total_mib: usize,
    /// Also write every event as a JSON line to this file.
    #[arg(long)]
    pub export_filename: Option<PathBuf>,
    /// Rotate the export file before it passes this size, in MB.
    #[arg(long, default_value_t = 10)]
    pub export_file_max_size_mb: u64,
    /// Rotated export files kept.
    #[arg(long, default_value_t = 5)]
    pub export_file_max_backups: usize,
    /// Rotate the export file this often: 0 (never), or seconds, or with s, m or h.
    #[arg(long, default_value = "0")]
    pub export_file_rotation_interval: String,
    /// Gzip rotated export files.
    #[arg(long)]
    pub export_file_compress: bool,
    /// Only events some of these filters pass go to the export file: JSON
    /// objects one after another, each a `GetEvents` filter (Tetragon's
    /// format, e.g. {"event_set":["PROCESS_EXEC"]}).
    #[arg(long, default_value = "")]
    pub export_allowlist: String,
    /// Events any of these filters pass stay out of the export file (the
    /// allowlist's format).
    #[arg(long, default_value = "")]
    pub export_denylist: String,
    /// Field filters for the export file: JSON objects one after another,
    /// each a `GetEvents` field filter (e.g. {"fields":"process.binary",
    /// "action":"INCLUDE"}).
    #[arg(long, alias = "export-field-filters", default_value = "")]
    #[serde(alias = "export-field-filters")]
    pub field_filters: String,
    /// Events written to the export file a minute at most (-1: no limit);
    /// what is cut is reported in the file each minute as rate_limit_info.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub export_rate_limit: i64,
    /// Config file (TOML, YAML or JSON) with the same keys as the flags.
    #[arg(long)]
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Log output format.
    #[arg(long, value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
    /// Kernel BTF to resolve struct offsets from.
    #[arg(long, default_value = crate::btf_offsets::VMLINUX_BTF)]
    pub btf: String,
    /// procfs mount used for the start-up process walk.
    #[arg(long, default_value = "/proc")]
    pub procfs: PathBuf,
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
    /// A file holding a token that names this node to relays (on
    /// Kubernetes, the pod's projected service-account token for audience
    /// vigil-relay); read again for every connection, as the kubelet
    /// rotates it.
    #[arg(long)]
    pub relay_token_file: Option<PathBuf>,
    /// Events kept for resending to relays after a reconnect.
    #[arg(long, default_value_t = DEFAULT_REPLAY_BUFFER)]
    pub replay_buffer_size: usize,
    /// Seconds between DNS lookups of each --relay-address, to follow relay
    /// replicas as they come and go.
    #[arg(long, default_value_t = DEFAULT_RELAY_RESOLVE_SECONDS)]
    pub relay_resolve_interval: u64,
    /// Report only processes in the sensor's own network namespace (to run
    /// several sensors as separate "nodes" on one kernel, as the tests do).
    #[arg(long)]
    pub only_own_netns: bool,
    /// Load no tracing policy a relay sends: this node runs only its own
    /// (the relay lists the relay's as refused here, saying why).
    #[arg(long)]
    pub ignore_relay_policies: bool,
    /// Show the addresses in policy events' stack traces (by default only
    /// symbols and offsets, as in Tetragon: addresses tell the kernel's
    /// layout).
    #[arg(long)]
    pub expose_stack_addresses: bool,
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
    /// A TracingPolicy file to load at start (repeatable); a policy that
    /// does not load stops start-up.
    #[arg(long = "tracing-policy")]
    pub tracing_policy: Vec<PathBuf>,
    /// A directory whose *.yaml and *.yml TracingPolicy files load at start.
    #[arg(long)]
    pub tracing_policy_dir: Option<PathBuf>,
    /// Plain gRPC health service (grpc.health.v1) for probes: host:port or
    /// :port [default: off].
    #[arg(long)]
    pub health_server_address: Option<String>,
    /// Prometheus metrics at http://ADDRESS/metrics: host:port or :port
    /// [default: off].
    #[arg(long)]
    pub metrics_address: Option<String>,
    /// Labels of the per-event metrics (namespace, workload, pod, binary).
    #[arg(long, default_value = "namespace,workload,pod,binary")]
    pub metrics_label_filter: String,
}

/// The defaults are the flags' (one place states them).
impl Default for Flags {
    fn default() -> Self {
        Flags::parse_from(["vigil-sensor"])
    }
}

/// The parsed command line.
pub type CommandLine = serving::settings::CommandLine<Flags>;

/// Resolved settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub node_name: String,
    pub server_address: serving::address::ServerAddress,
    pub process_cache_size: usize,
    pub ring_batch: std::time::Duration,
    pub subscriber_queue_size: usize,
    pub subscriber_queue_bytes: events::bus::QueueBytes,
    pub export_filename: Option<PathBuf>,
    pub export: serving::export::ExportSettings,
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
    pub relay_token_file: Option<PathBuf>,
    pub only_own_netns: bool,
    pub ignore_relay_policies: bool,
    pub expose_stack_addresses: bool,
    pub enable_k8s_api: bool,
    pub kubeconfig: Option<PathBuf>,
    pub k8s_pod_annotations: bool,
    pub tracing_policy: Vec<PathBuf>,
    pub tracing_policy_dir: Option<PathBuf>,
    pub health_server_address: Option<serving::address::ServerAddress>,
    pub metrics_address: Option<serving::address::ServerAddress>,
    pub metrics_label_filter: crate::metrics::LabelFilter,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// Checks a config file's keys and values without starting anything.
pub fn check_file(path: &std::path::Path) -> Result<(), ConfigErrors> {
    serving::settings::check_file::<Flags>(path)
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
    pub fn resolve(cli: CommandLine) -> Result<Self, ConfigErrors> {
        Self::resolve_with_env(cli, |var| std::env::var(var).ok())
    }

    /// [`Settings::resolve`] with the environment given (tests).
    pub fn resolve_with_env(cli: CommandLine, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigErrors> {
        let l: Flags = serving::settings::layered(cli.flags.config_file.as_deref(), env, &cli.given)?;
        let mut p = Problems::default();
        let server_address = match l.server_address.parse::<serving::address::ServerAddress>() {
            Ok(a) => Some(a),
            Err(e) => {
                p.add("server-address", e.to_string());
                None
            }
        };
        p.positive("process-cache-size", l.process_cache_size as u64);
        if !(1..=1000).contains(&l.ring_batch_ms) {
            p.add("ring-batch-ms", "must be 1 to 1000 (ms)");
        }
        p.positive("subscriber-queue-size", l.subscriber_queue_size as u64);
        p.positive("subscriber-queue-mib", l.subscriber_queue_mib as u64);
        p.positive("subscriber-queues-total-mib", l.subscriber_queues_total_mib as u64);
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
        let mut port = |key: &str, value: Option<&str>| match value.map(serving::address::ServerAddress::parse_port) {
            Some(Err(reason)) => {
                p.add(key, reason);
                None
            }
            Some(Ok(a)) => Some(a),
            None => None,
        };
        let health_server_address = port("health-server-address", l.health_server_address.as_deref());
        let metrics_address = port("metrics-address", l.metrics_address.as_deref());
        let export = serving::export::ExportSettings::resolve(serving::export_flags!(l)).unwrap_or_else(|problems| {
            for (key, reason) in problems {
                p.add(key, reason);
            }
            Default::default()
        });
        let metrics_label_filter = l.metrics_label_filter.parse().unwrap_or_else(|reason: String| {
            p.add("metrics-label-filter", reason);
            crate::metrics::LabelFilter::default()
        });
        let Some(server_address) = server_address.filter(|_| p.0.is_empty()) else {
            return Err(ConfigErrors(p.0));
        };
        Ok(Settings {
            node_name: l.node_name.filter(|n| !n.is_empty()).unwrap_or_else(hostname),
            server_address,
            process_cache_size: l.process_cache_size,
            ring_batch: std::time::Duration::from_millis(l.ring_batch_ms),
            subscriber_queue_size: l.subscriber_queue_size,
            subscriber_queue_bytes: events::bus::QueueBytes {
                per_client: l.subscriber_queue_mib.saturating_mul(1 << 20),
                total: l.subscriber_queues_total_mib.saturating_mul(1 << 20),
            },
            export_filename: l.export_filename,
            export,
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
            relay_token_file: l.relay_token_file,
            only_own_netns: l.only_own_netns,
            ignore_relay_policies: l.ignore_relay_policies,
            expose_stack_addresses: l.expose_stack_addresses,
            enable_k8s_api: l.enable_k8s_api,
            kubeconfig: l.kubeconfig,
            k8s_pod_annotations: l.k8s_pod_annotations,
            tracing_policy: l.tracing_policy,
            tracing_policy_dir: l.tracing_policy_dir,
            health_server_address,
            metrics_address,
            metrics_label_filter,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> String {
        let dir = std::env::temp_dir().join(format!("vigil-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    fn with_env(args: &[&str], env: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigErrors> {
        Settings::resolve_with_env(
            CommandLine::parse_from(std::iter::once("vigil-sensor").chain(args.iter().copied())),
            env,
        )
    }

    fn resolve(args: &[&str]) -> Result<Settings, ConfigErrors> {
        with_env(args, |_| None)
    }

    #[test]
    fn flags_override_file_override_defaults() {
        let p = file(
            "a.toml",
            "node-name = \"from-file\"\nprocess-cache-size = 10\nlog-format = \"json\"\nenable-process-cred = true\n",
        );
        let s = resolve(&["--config-file", &p]).unwrap();
        assert_eq!(s.node_name, "from-file");
        assert_eq!(s.process_cache_size, 10);
        assert_eq!(s.log_format, LogFormat::Json);
        assert!(s.enable_process_cred && !s.enable_process_ns);
        assert_eq!(s.server_address.to_string(), "localhost:54321");
        let s = resolve(&["--config-file", &p, "--node-name", "flag"]).unwrap();
        assert_eq!(s.node_name, "flag");
        // A flag given with its default value still wins over the file.
        let s = resolve(&["--config-file", &p, "--process-cache-size", "65536"]).unwrap();
        assert_eq!(s.process_cache_size, 65536);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let p = file("e.yaml", "process-cahce-size: 5\nreplay-buffer-size: lots\nsubscriber-queue-size: 0\n");
        let e = resolve(&["--config-file", &p, "--server-address", "nope"]).unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, vec!["process-cahce-size", "replay-buffer-size"], "{e}");
        // Once the layers parse, the values are checked, again all of them.
        let p = file("f.yaml", "subscriber-queue-size: 0\n");
        let e = resolve(&["--config-file", &p, "--server-address", "nope"]).unwrap_err();
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
        let s = with_env(&["--config-file", &p], env).unwrap();
        assert_eq!(s.process_cache_size, 20);
        assert_eq!(s.relay_address, vec!["r1:54331".to_owned(), "r2:54331".to_owned()]);
        assert_eq!(with_env(&["--config-file", &p, "--process-cache-size", "30"], env).unwrap().process_cache_size, 30);
        let e = with_env(&[], |v| (v == "VIGIL_PROCESS_CACHE_SIZE").then(|| "x".into())).unwrap_err().to_string();
        assert!(e.contains("invalid process-cache-size (environment VIGIL_PROCESS_CACHE_SIZE)"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let p = file("b.yaml", "node-name: x\nprocess-cahce-size: 5\n");
        let e = resolve(&["--config-file", &p]).unwrap_err().to_string();
        assert!(e.contains("process-cahce-size"), "{e}");
        let e = resolve(&["--server-address", "nope"]).unwrap_err().to_string();
        assert!(e.contains("server-address"), "{e}");
        let e = resolve(&["--process-cache-size", "0"]).unwrap_err().to_string();
        assert!(e.contains("process-cache-size"), "{e}");
        let e = resolve(&["--config-file", "/nonexistent.toml"]).unwrap_err().to_string();
        assert!(e.contains("/nonexistent.toml: no such file"), "{e}");
        let e = resolve(&["--relay-resolve-interval", "0"]).unwrap_err().to_string();
        assert!(e.contains("relay-resolve-interval") && e.contains("at least 1"), "{e}");
        for bad in ["0", "1001"] {
            let e = resolve(&["--ring-batch-ms", bad]).unwrap_err().to_string();
            assert!(e.contains("ring-batch-ms") && e.contains("1 to 1000"), "{e}");
        }
        assert_eq!(resolve(&[]).unwrap().ring_batch, std::time::Duration::from_millis(10));
        assert_eq!(resolve(&["--ring-batch-ms", "50"]).unwrap().ring_batch, std::time::Duration::from_millis(50));
    }

    #[test]
    fn enable_ancestors_takes_tetragons_base_only() {
        assert!(!resolve(&[]).unwrap().enable_ancestors);
        assert!(resolve(&["--enable-ancestors", "base"]).unwrap().enable_ancestors);
        let p = file("d.yaml", "enable-ancestors: [base]\n");
        assert!(resolve(&["--config-file", &p]).unwrap().enable_ancestors);
        let e = resolve(&["--enable-ancestors", "base,kprobe"]).unwrap_err().to_string();
        assert!(e.contains("enable-ancestors") && e.contains("\"kprobe\""), "{e}");
    }

    #[test]
    fn relay_resolve_interval_from_file_and_default() {
        let s = resolve(&[]).unwrap();
        assert_eq!(s.relay_resolve_interval, std::time::Duration::from_secs(DEFAULT_RELAY_RESOLVE_SECONDS));
        let p = file("c.toml", "relay-resolve-interval = 5\n");
        let s = resolve(&["--config-file", &p]).unwrap();
        assert_eq!(s.relay_resolve_interval, std::time::Duration::from_secs(5));
    }

    #[test]
    fn help_documents_every_flag() {
        let help = <Flags as clap::CommandFactory>::command().render_long_help().to_string();
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
