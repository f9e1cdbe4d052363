//! vigil-relay's settings, layered by `serving::settings` as the sensor's
//! are: defaults, then a config file (`--config-file`, the flags' names as
//! keys), then `VIGIL_*` environment variables, then flags. Every unknown
//! key and bad value is reported at once.

use std::path::PathBuf;

use clap::Parser;
use serde::{Deserialize, Serialize};
use serving::ServerAddress;
use serving::daemon::LogFormat;
use serving::settings::{ConfigErrors, ConfigProblem};

pub const DEFAULT_CLIENT_ADDRESS: &str = "0.0.0.0:54330";
pub const DEFAULT_INGEST_ADDRESS: &str = "0.0.0.0:54331";

/// Where sensors' node names come from (`--sensor-identity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SensorIdentity {
    Certificate,
    Kubernetes,
}

/// The relay's one settings type: its flags (clap, with the defaults), and
/// the keys of the config file and of `VIGIL_<KEY>` variables (serde), all
/// named alike (`history-size`, `VIGIL_HISTORY_SIZE`).
#[derive(Debug, Clone, Parser, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
#[command(name = "vigil-relay", version, about = "Vigil relay: one cluster-wide stream from every node's sensor")]
pub struct Flags {
    /// Listen address for clients (tetragon.FineGuidanceSensors and the admin API).
    #[arg(long, default_value = DEFAULT_CLIENT_ADDRESS)]
    pub client_address: String,
    /// Listen address for sensors (vigil.relay.v1.Ingest).
    #[arg(long, default_value = DEFAULT_INGEST_ADDRESS)]
    pub ingest_address: String,
    /// Directory with ca.pem, relay.pem and relay-key.pem (`vigil certs generate`).
    /// Clients must present client certificates, sensors sensor certificates.
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
    /// Serve plaintext without client authentication (tests, loopback only).
    #[arg(long)]
    pub insecure: bool,
    /// How long events wait to be put in time order across nodes.
    #[arg(long, default_value_t = 100)]
    pub reorder_window_ms: u64,
    /// Most events held for reordering; past it the oldest leave early
    /// (counted as sent early). A 100 ms window at 300,000 events/s holds
    /// about 30,000; each held event costs about 2 KB.
    #[arg(long, default_value_t = 200_000)]
    pub max_pending: usize,
    /// Memory the events held for reordering may take, in MiB (charged as
    /// history's are); past it the oldest leave early.
    #[arg(long, default_value_t = 256)]
    pub max_pending_mib: usize,
    /// Recent events kept for --since/--last queries.
    #[arg(long, default_value_t = 100_000)]
    pub history_size: usize,
    /// Seconds a node that went away stays in `vigil nodes` (with where its
    /// sensor's numbering stood) before it is forgotten.
    #[arg(long, default_value_t = 86_400)]
    pub forget_nodes_after: u64,
    /// Nodes the relay tracks; a gone one makes room for a new one, and
    /// with all connected a new one is refused (RESOURCE_EXHAUSTED). The
    /// default keeps `vigil nodes`' reply under 4 MiB.
    #[arg(long, default_value_t = crate::nodes::DEFAULT_MAX_NODES)]
    pub max_nodes: usize,
    /// Memory the history may take, in MiB (each event is charged twice its
    /// encoded size plus 512 bytes); past it the oldest events go first.
    #[arg(long, default_value_t = 512)]
    pub history_mib: usize,
    /// Events queued per client before its events are dropped and reported
    /// to it (about 0.2 s at 300,000 events/s; a queued event is a shared
    /// pointer, the event itself is not copied per client).
    #[arg(long, default_value_t = 65_536)]
    pub client_queue_size: usize,
    /// Bytes one client's queue may hold, in MiB (each event charged its
    /// encoded size plus 256 bytes); past it its events are dropped and
    /// reported to it.
    #[arg(long, default_value_t = 64)]
    pub client_queue_mib: usize,
    /// Bytes all client queues together may hold, in MiB; past it clients
    /// that are behind lose events (a client keeping up never does).
    #[arg(long, default_value_t = 1024)]
    pub client_queues_total_mib: usize,
    /// Seconds a TLS handshake may take before the connection is dropped.
    #[arg(long, default_value_t = 10)]
    pub handshake_timeout_seconds: u64,
    /// Seconds a connection may stay open with no stream (call) in progress.
    #[arg(long, default_value_t = 120)]
    pub idle_timeout_seconds: u64,
    /// Connections one peer address may hold on each listener; past it, new
    /// ones are closed at once (before TLS).
    #[arg(long, default_value_t = 256)]
    pub max_connections_per_peer: usize,
    /// Streams (calls in progress) one peer address may hold on each
    /// listener; past it, calls fail with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 1024)]
    pub max_streams_per_peer: usize,
    /// Where a sensor's node name comes from: its certificate (issued per
    /// node, `vigil certs generate --sensor-node`), or on Kubernetes its
    /// pod's service-account token, checked with TokenReview.
    #[arg(long, value_enum, default_value_t = SensorIdentity::Certificate)]
    pub sensor_identity: SensorIdentity,
    /// Kubeconfig for TokenReview (in-cluster credentials without it).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The audience sensor tokens must be issued for.
    #[arg(long, default_value = "vigil-relay")]
    pub token_audience: String,
    /// The user a sensor token must belong to.
    #[arg(long, default_value = "system:serviceaccount:vigil:vigil-sensor")]
    pub sensor_service_account: String,
    /// Name on the relay's own notices.
    #[arg(long, default_value = "vigil-relay")]
    pub name: String,
    /// Log filter.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Log output format.
    #[arg(long, value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
    /// Config file (TOML, YAML or JSON) with the same keys as the flags.
    #[arg(long)]
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
    /// Plain gRPC health service (grpc.health.v1) for probes: host:port or
    /// :port [default: off].
    #[arg(long)]
    pub health_server_address: Option<String>,
    /// Prometheus metrics at http://ADDRESS/metrics: host:port or :port
    /// [default: off].
    #[arg(long)]
    pub metrics_address: Option<String>,
    /// File keeping the tracing policies added at this relay (for every
    /// sensor) across restarts: an embedded database, created if missing.
    /// Without it they are kept in memory only [default: memory].
    #[arg(long)]
    pub policy_store: Option<PathBuf>,
    /// Also write every merged event as a JSON line to this file (the
    /// cluster's stream, as the sensor's export file).
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
    /// NATS JetStream as the backbone between relays:
    /// nats://host:port (comma-separated for several servers). Without it
    /// the relay ingests and serves alone, its history in memory.
    #[arg(long)]
    pub backbone: Option<String>,
    /// With --backbone: take sensors' streams and publish them (ingest),
    /// serve clients from the stream (query), or both.
    #[arg(long, value_enum, default_value_t = crate::backbone::Role::Both)]
    pub backbone_role: crate::backbone::Role,
    /// The JetStream stream events go to (created if missing; one with
    /// other settings is reported, not changed).
    #[arg(long, default_value = "VIGIL_EVENTS")]
    pub backbone_stream: String,
    /// Events go to subject PREFIX.<node>.
    #[arg(long, default_value = "vigil.events")]
    pub backbone_subject_prefix: String,
    /// How long the stream keeps events, in seconds.
    #[arg(long, default_value_t = 86_400)]
    pub backbone_max_age_seconds: u64,
    /// Bytes the stream keeps at most, in MiB (the oldest go first).
    #[arg(long, default_value_t = 10_240)]
    pub backbone_max_mib: u64,
    /// Copies JetStream keeps of each event (its servers' count at most).
    #[arg(long, default_value_t = 1)]
    pub backbone_replicas: usize,
    /// Seconds within which an event a sensor sends again (after a
    /// reconnect, through any ingest relay) is dropped as a duplicate.
    #[arg(long, default_value_t = 600)]
    pub backbone_duplicate_window_seconds: u64,
    /// Publish acknowledgements awaited at once at most.
    #[arg(long, default_value_t = 16_384)]
    pub backbone_max_in_flight: usize,
    /// How an ingest relay lays events out in a message: protobuf
    /// (length-delimited GetEventsResponse) or json (Tetragon's JSON, a
    /// line per event). Query relays read both.
    #[arg(long, value_enum, default_value_t = crate::backbone::payload::Format::Protobuf)]
    pub backbone_format: crate::backbone::payload::Format,
    /// The JetStream key-value bucket that holds the tracing policies every
    /// relay on the backbone shares (created if missing).
    #[arg(long, default_value = crate::backbone::policies::DEFAULT_BUCKET)]
    pub backbone_policy_bucket: String,
    /// CA certificate (PEM) the NATS servers' certificates must chain to;
    /// requires TLS.
    #[arg(long)]
    pub backbone_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for servers that ask for one (with
    /// --backbone-tls-key).
    #[arg(long)]
    pub backbone_tls_cert: Option<PathBuf>,
    #[arg(long)]
    pub backbone_tls_key: Option<PathBuf>,
    /// NATS credentials file (JWT and nkey seed).
    #[arg(long)]
    pub backbone_credentials: Option<PathBuf>,
    /// Events written to the export file a minute at most (-1: no limit);
    /// what is cut is reported in the file each minute as rate_limit_info.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub export_rate_limit: i64,
}

/// The defaults are the flags' (one place states them).
impl Default for Flags {
    fn default() -> Self {
        Flags::parse_from(["vigil-relay"])
    }
}

/// The parsed command line.
pub type CommandLine = serving::settings::CommandLine<Flags>;

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub client_address: ServerAddress,
    pub ingest_address: ServerAddress,
    pub tls_dir: Option<PathBuf>,
    pub insecure: bool,
    pub reorder_window: std::time::Duration,
    pub max_pending: usize,
    pub max_pending_bytes: usize,
    pub history_size: usize,
    pub history_bytes: usize,
    pub forget_nodes_after: std::time::Duration,
    pub max_nodes: usize,
    pub client_queue_size: usize,
    pub client_queue_bytes: events::bus::QueueBytes,
    pub connections: serving::connections::ConnectionLimits,
    pub sensor_identity: SensorIdentity,
    pub kubeconfig: Option<PathBuf>,
    pub token_audience: String,
    pub sensor_service_account: String,
    pub name: String,
    pub log_level: String,
    pub log_format: LogFormat,
    pub health_server_address: Option<ServerAddress>,
    pub metrics_address: Option<ServerAddress>,
    pub export_filename: Option<PathBuf>,
    pub export: serving::export::ExportSettings,
    pub policy_store: Option<PathBuf>,
    pub backbone: Option<crate::backbone::BackboneSettings>,
}

/// Checks a config file's keys and values without starting anything.
pub fn check_file(path: &std::path::Path) -> Result<(), ConfigErrors> {
    serving::settings::check_file::<Flags>(path)
}

impl Settings {
    pub fn resolve(cli: CommandLine) -> Result<Self, ConfigErrors> {
        Self::resolve_with_env(cli, |var| std::env::var(var).ok())
    }

    /// [`Settings::resolve`] with the environment given (tests).
    pub fn resolve_with_env(cli: CommandLine, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigErrors> {
        let l: Flags = serving::settings::layered(cli.flags.config_file.as_deref(), env, &cli.given)?;
        let mut problems = Vec::new();
        let mut problem = |key: &str, reason: String| {
            problems.push(ConfigProblem { key: key.into(), source: "value".into(), reason });
        };
        let mut address = |key: &str, text: &str| match text.parse::<ServerAddress>() {
            Ok(a @ ServerAddress::Tcp(_)) => Some(a),
            Ok(ServerAddress::Unix(_)) => {
                problem(key, "the relay listens on TCP (host:port)".into());
                None
            }
            Err(e) => {
                problem(key, e.to_string());
                None
            }
        };
        let client_address = address("client-address", &l.client_address);
        let ingest_address = address("ingest-address", &l.ingest_address);
        match (&l.tls_dir, l.insecure) {
            (None, false) => problem(
                "tls-dir",
                "mTLS is required: pass --tls-dir (see `vigil certs generate`), or --insecure for plaintext".into(),
            ),
            (Some(_), true) => problem("insecure", "--tls-dir and --insecure exclude each other".into()),
            _ => {}
        }
        for (key, v) in [
            ("max-pending", l.max_pending),
            ("history-size", l.history_size),
            ("history-mib", l.history_mib),
            ("client-queue-size", l.client_queue_size),
            ("max-pending-mib", l.max_pending_mib),
            ("max-nodes", l.max_nodes),
            ("client-queue-mib", l.client_queue_mib),
            ("client-queues-total-mib", l.client_queues_total_mib),
            ("handshake-timeout-seconds", l.handshake_timeout_seconds as usize),
            ("idle-timeout-seconds", l.idle_timeout_seconds as usize),
            ("max-connections-per-peer", l.max_connections_per_peer),
            ("max-streams-per-peer", l.max_streams_per_peer),
        ] {
            if v == 0 {
                problem(key, "must be at least 1".into());
            }
        }
        let mut port = |key: &str, value: Option<&str>| match value.map(ServerAddress::parse_port) {
            Some(Err(reason)) => {
                problem(key, reason);
                None
            }
            Some(Ok(a)) => Some(a),
            None => None,
        };
        let health_server_address = port("health-server-address", l.health_server_address.as_deref());
        let metrics_address = port("metrics-address", l.metrics_address.as_deref());
        let export = serving::export::ExportSettings::resolve(serving::export_flags!(l)).unwrap_or_else(|problems| {
            for (key, reason) in problems {
                problem(key, reason);
            }
            Default::default()
        });
        let backbone = backbone_settings(&l, &mut problem);
        let (Some(client_address), Some(ingest_address), true) = (client_address, ingest_address, problems.is_empty())
        else {
            return Err(ConfigErrors(problems));
        };
        Ok(Settings {
            client_address,
            ingest_address,
            tls_dir: l.tls_dir,
            insecure: l.insecure,
            reorder_window: std::time::Duration::from_millis(l.reorder_window_ms),
            max_pending: l.max_pending,
            max_pending_bytes: l.max_pending_mib.saturating_mul(1 << 20),
            history_size: l.history_size,
            history_bytes: l.history_mib.saturating_mul(1 << 20),
            forget_nodes_after: std::time::Duration::from_secs(l.forget_nodes_after),
            max_nodes: l.max_nodes,
            client_queue_size: l.client_queue_size,
            client_queue_bytes: events::bus::QueueBytes {
                per_client: l.client_queue_mib.saturating_mul(1 << 20),
                total: l.client_queues_total_mib.saturating_mul(1 << 20),
            },
            connections: serving::connections::ConnectionLimits {
                handshake_timeout: std::time::Duration::from_secs(l.handshake_timeout_seconds),
                idle_timeout: std::time::Duration::from_secs(l.idle_timeout_seconds),
                max_connections_per_peer: l.max_connections_per_peer,
                max_streams_per_peer: l.max_streams_per_peer,
            },
            sensor_identity: l.sensor_identity,
            kubeconfig: l.kubeconfig,
            token_audience: l.token_audience,
            sensor_service_account: l.sensor_service_account,
            name: l.name,
            log_level: l.log_level,
            log_format: l.log_format,
            health_server_address,
            metrics_address,
            export_filename: l.export_filename,
            export,
            policy_store: l.policy_store,
            backbone,
        })
    }
}

/// The backbone's settings, if `--backbone` is given; each bad one is a
/// problem named by its key.
fn backbone_settings(l: &Flags, problem: &mut impl FnMut(&str, String)) -> Option<crate::backbone::BackboneSettings> {
    let url = l.backbone.clone()?;
    if !url.split(',').all(|u| u.trim().starts_with("nats://") || u.trim().starts_with("tls://")) {
        problem("backbone", "nats://host:port (or tls://), comma-separated for several servers".into());
    }
    let stream_name_ok = !l.backbone_stream.is_empty()
        && l.backbone_stream.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !stream_name_ok {
        problem("backbone-stream", "letters, digits, - and _ only".into());
    }
    let prefix_ok = !l.backbone_subject_prefix.is_empty()
        && l.backbone_subject_prefix
            .split('.')
            .all(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
    if !prefix_ok {
        problem("backbone-subject-prefix", "dot-separated tokens of letters, digits, - and _".into());
    }
    for (key, v) in [
        ("backbone-max-age-seconds", l.backbone_max_age_seconds as usize),
        ("backbone-max-mib", l.backbone_max_mib as usize),
        ("backbone-duplicate-window-seconds", l.backbone_duplicate_window_seconds as usize),
        ("backbone-max-in-flight", l.backbone_max_in_flight),
    ] {
        if v == 0 {
            problem(key, "must be at least 1".into());
        }
    }
    let bucket_ok = !l.backbone_policy_bucket.is_empty()
        && l.backbone_policy_bucket.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !bucket_ok {
        problem("backbone-policy-bucket", "letters, digits, - and _ only".into());
    }
    if l.policy_store.is_some() {
        problem(
            "policy-store",
            "with --backbone the tracing policies are kept in the backbone's bucket (--backbone-policy-bucket), shared \
             by every relay on it; drop --policy-store"
                .into(),
        );
    }
    if !(1..=5).contains(&l.backbone_replicas) {
        problem("backbone-replicas", "JetStream keeps 1 to 5 copies".into());
    }
    if l.backbone_duplicate_window_seconds > l.backbone_max_age_seconds {
        problem("backbone-duplicate-window-seconds", "longer than --backbone-max-age-seconds".into());
    }
    let tls_cert = match (&l.backbone_tls_cert, &l.backbone_tls_key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        _ => {
            problem("backbone-tls-cert", "--backbone-tls-cert and --backbone-tls-key go together".into());
            None
        }
    };
    Some(crate::backbone::BackboneSettings {
        url,
        role: l.backbone_role,
        stream: l.backbone_stream.clone(),
        subject_prefix: l.backbone_subject_prefix.clone(),
        max_age: std::time::Duration::from_secs(l.backbone_max_age_seconds),
        max_bytes: i64::try_from(l.backbone_max_mib.saturating_mul(1 << 20)).unwrap_or(i64::MAX),
        replicas: l.backbone_replicas,
        duplicate_window: std::time::Duration::from_secs(l.backbone_duplicate_window_seconds),
        tls_ca: l.backbone_tls_ca.clone(),
        tls_cert,
        credentials: l.backbone_credentials.clone(),
        max_in_flight: l.backbone_max_in_flight,
        format: l.backbone_format,
        policy_bucket: l.backbone_policy_bucket.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(args: &[&str], env: &[(&str, &str)]) -> Result<Settings, ConfigErrors> {
        let cli = CommandLine::parse_from(std::iter::once("vigil-relay").chain(args.iter().copied()));
        Settings::resolve_with_env(cli, |v| env.iter().find(|(k, _)| *k == v).map(|(_, x)| (*x).to_owned()))
    }

    #[test]
    fn defaults_file_environment_flags() {
        let s = resolve(&["--insecure"], &[]).unwrap();
        assert_eq!(s.client_address.to_string(), DEFAULT_CLIENT_ADDRESS);
        assert_eq!(s.history_size, 100_000);
        let dir = std::env::temp_dir().join(format!("vigil-relay-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("relay.yaml");
        std::fs::write(&file, "insecure: true\nhistory-size: 10\nreorder-window-ms: 20\n").unwrap();
        let f = file.display().to_string();
        let s = resolve(&["--config-file", &f], &[("VIGIL_HISTORY_SIZE", "11")]).unwrap();
        assert_eq!((s.history_size, s.reorder_window.as_millis()), (11, 20));
        let s = resolve(&["--config-file", &f, "--history-size", "12"], &[("VIGIL_HISTORY_SIZE", "11")]).unwrap();
        assert_eq!(s.history_size, 12);
        let _ = std::fs::remove_dir_all(&dir);
        // Tetragon's export flags, and the issue's name for its field filters.
        assert_eq!(s.export.rate_limit, None, "-1: no limit");
        let fields = r#"{"fields":"process.binary","action":"INCLUDE"}"#;
        let s = resolve(&["--insecure", "--export-rate-limit", "100", "--export-field-filters", fields], &[]).unwrap();
        assert_eq!((s.export.rate_limit, s.export.filters.fields.len()), (Some(100), 1));
    }

    #[test]
    fn every_problem_is_named() {
        let e = resolve(&["--client-address", "nope", "--history-size", "0"], &[]).unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, vec!["client-address", "tls-dir", "history-size"], "{e}");
        let e = resolve(&["--insecure"], &[("VIGIL_MAX_PENDING", "many")]).unwrap_err().to_string();
        assert!(e.contains("invalid max-pending (environment VIGIL_MAX_PENDING)"), "{e}");
        let e = resolve(&["--insecure", "--export-allowlist", "{", "--field-filters", "[]"], &[]).unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, vec!["export-allowlist"], "the first bad export filter flag: {e}");
        let backbone = [
            "--insecure",
            "--backbone",
            "nats://n:4222",
            "--backbone-policy-bucket",
            "a.b",
            "--policy-store",
            "/tmp/p.redb",
            "--backbone-replicas",
            "7",
        ];
        let e = resolve(&backbone, &[]).unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, vec!["backbone-policy-bucket", "policy-store", "backbone-replicas"], "{e}");
        assert!(e.to_string().contains("kept in the backbone's bucket"), "{e}");
    }
}
