//! Command-line flags, named and defaulted as `tetra`'s.

use clap::{Args, Parser, Subcommand, ValueEnum};

pub const DEFAULT_SERVER: &str = "localhost:54321";

#[derive(Debug, Parser)]
#[command(name = "vigil", version, about = "Query Vigil sensors and relays (tetra-compatible)")]
pub struct Cli {
    /// gRPC server address: host:port or unix:///path. When given, events
    /// come from the server even if standard input is not a terminal.
    #[arg(long, global = true, env = "VIGIL_SERVER_ADDRESS")]
    pub server_address: Option<String>,
    /// Seconds to wait for the connection.
    #[arg(long, global = true, default_value_t = 10)]
    pub timeout: u64,
    /// CA certificate(s) the server must chain to (PEM; enables mTLS).
    #[arg(long, global = true)]
    pub tls_ca_cert_files: Vec<std::path::PathBuf>,
    /// Client certificate (PEM) for mTLS.
    #[arg(long, global = true)]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// Client key (PEM) for mTLS.
    #[arg(long, global = true)]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// Name to check the server certificate against [default: the address's host].
    #[arg(long, global = true)]
    pub tls_server_name: Option<String>,
    /// Directory from `vigil certs generate`: uses ca.pem, client.pem and client-key.pem
    /// (admin.pem and admin-key.pem, where present, to change tracing policies).
    #[arg(long, global = true)]
    pub tls_dir: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print events (from the server, or JSON lines on standard input when
    /// it is not a terminal and no --server-address is given).
    #[command(name = "getevents")]
    GetEvents(Box<GetEventsArgs>),
    /// Print the server's health.
    Status,
    /// Print the client's and the server's version.
    Version,
    /// Per-node status from a relay: connected, last seen, events, lost, lag.
    Nodes,
    /// Certificates for mTLS between sensors, relays and clients.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// TracingPolicy files (Tetragon's format).
    #[command(name = "tracingpolicy", subcommand)]
    TracingPolicy(TracingPolicyCommand),
}

#[derive(Debug, Subcommand)]
pub enum TracingPolicyCommand {
    /// Check policy files as the sensor would before loading them: every
    /// problem named by its path in the YAML. Exits 1 if any is refused.
    Validate {
        /// Policy files.
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
    /// Load a policy file into the server (checked here first).
    Add {
        /// The policy file.
        file: std::path::PathBuf,
    },
    /// Unload a policy and forget it.
    Delete(PolicyName),
    /// Put a disabled policy's hooks back into the kernel.
    Enable(PolicyName),
    /// Take a policy's hooks out of the kernel, keeping the policy.
    Disable(PolicyName),
    /// Switch a policy's enforcement on (enforce) or off (monitor: its
    /// signals are counted, not sent).
    SetMode {
        #[command(flatten)]
        policy: PolicyName,
        /// The mode.
        #[arg(value_enum)]
        mode: PolicyMode,
    },
    /// The server's policies: state, hooks, kernel memory, events.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = ListFormat::Text)]
        output: ListFormat,
    },
}

/// A loaded policy, by name.
#[derive(Debug, clap::Args)]
pub struct PolicyName {
    /// The policy's metadata.name.
    pub name: String,
    /// The namespace of a TracingPolicyNamespaced.
    #[arg(long, default_value = "")]
    pub namespace: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyMode {
    Enforce,
    Monitor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Write a CA, relay and client certificates and sensor credentials
    /// (PEM) to a directory: one per --sensor-node in nodes/NAME/, and an
    /// any-node sensor.pem only with --any-node-sensor.
    Generate {
        /// Output directory.
        #[arg(long)]
        out: std::path::PathBuf,
        /// DNS names the relay is reached by (repeatable); localhost,
        /// 127.0.0.1 and ::1 are always included.
        #[arg(long = "relay-dns")]
        relay_dns: Vec<String>,
        /// Names (or addresses) sensors are reached by when they serve
        /// their API off loopback with mTLS (repeatable); localhost,
        /// 127.0.0.1 and ::1 are always included.
        #[arg(long = "sensor-dns")]
        sensor_dns: Vec<String>,
        /// A node to issue a sensor credential for, bound to that node name
        /// (repeatable): nodes/NAME/ holds ca.pem, sensor.pem and
        /// sensor-key.pem, a ready --tls-dir for that node's sensor.
        #[arg(long = "sensor-node")]
        sensor_nodes: Vec<String>,
        /// Also write sensor.pem, a sensor credential valid for any node
        /// name. The relay accepts it, logs it and flags its nodes in
        /// `vigil nodes`; per-node credentials are the safe choice.
        #[arg(long)]
        any_node_sensor: bool,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Issue one node's sensor credential from an existing CA (ca.pem and
    /// ca-key.pem in --ca-dir) into CA_DIR/nodes/NODE/.
    Sensor {
        #[arg(long)]
        ca_dir: std::path::PathBuf,
        /// The node name the credential is bound to.
        #[arg(long)]
        node: String,
        /// Names (or addresses) the sensor is reached by (repeatable).
        #[arg(long = "sensor-dns")]
        sensor_dns: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Json,
    Compact,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorMode {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Args)]
pub struct GetEventsArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Json)]
    pub output: Output,
    /// Colour compact output.
    #[arg(long, value_enum, default_value_t = ColorMode::Auto)]
    pub color: ColorMode,
    /// Kubernetes namespaces (repeatable).
    #[arg(short = 'n', long = "namespace")]
    pub namespaces: Vec<String>,
    /// Kubernetes namespace regexes (repeatable).
    #[arg(long = "namespace-regex")]
    pub namespace_regex: Vec<String>,
    /// Binary regexes (repeatable).
    #[arg(long = "process")]
    pub processes: Vec<String>,
    /// Pod name regexes (repeatable).
    #[arg(long = "pod")]
    pub pods: Vec<String>,
    /// Only processes outside any pod.
    #[arg(long)]
    pub host: bool,
    /// Event types such as PROCESS_EXEC (one per flag, repeatable).
    #[arg(short = 'e', long = "event-types")]
    pub event_types: Vec<String>,
    /// Tracing policy names (repeatable).
    #[arg(long = "policy-names")]
    pub policy_names: Vec<String>,
    /// Fields to keep, comma separated (e.g. process.binary,parent).
    #[arg(short = 'f', long = "include-fields")]
    pub include_fields: Vec<String>,
    /// Fields to drop, comma separated.
    #[arg(short = 'F', long = "exclude-fields")]
    pub exclude_fields: Vec<String>,
    /// Only processes with these capabilities effective (any of them;
    /// repeatable or comma separated), e.g. CAP_SYS_ADMIN. Needs a sensor
    /// started with --enable-process-cred.
    #[arg(long = "cap", value_delimiter = ',')]
    pub caps: Vec<String>,
    /// Only processes in the host's namespace of any of these kinds
    /// (net, pid, ipc, uts, mnt, user, cgroup, time, …; comma separated).
    /// Needs a sensor started with --enable-process-ns.
    #[arg(long = "host-ns", value_delimiter = ',')]
    pub host_ns: Vec<String>,
    /// Only events from these nodes (repeatable; relay).
    #[arg(long = "node")]
    pub nodes: Vec<String>,
    /// First replay the relay's history of this long (e.g. 30s, 5m, 2h, 1d), then live events.
    #[arg(long, value_parser = parse_duration_secs)]
    pub since: Option<u64>,
    /// First replay the relay's last N matching events, then live events.
    #[arg(long)]
    pub last: Option<u64>,
    /// Prefix compact lines with the event time.
    #[arg(long)]
    pub timestamps: bool,
    /// Reconnect with backoff when the stream ends or fails.
    #[arg(long)]
    pub reconnect: bool,
}

/// `90`, `30s`, `5m`, `2h`, `1d` to seconds.
pub fn parse_duration_secs(s: &str) -> Result<u64, String> {
    let (num, unit) = s.trim().split_at(s.trim().find(|c: char| !c.is_ascii_digit()).unwrap_or(s.trim().len()));
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}: expected e.g. 30s, 5m, 2h, 1d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("invalid duration {s:?}: unit must be s, m, h or d")),
    };
    Ok(n * mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("5m"), Ok(300));
        assert_eq!(parse_duration_secs("90"), Ok(90));
        assert_eq!(parse_duration_secs("1d"), Ok(86400));
        assert!(parse_duration_secs("5 minutes").is_err());
        assert!(parse_duration_secs("m").is_err());
    }
}
