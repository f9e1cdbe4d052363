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
    /// Prefix compact lines with the event time.
    #[arg(long)]
    pub timestamps: bool,
    /// Reconnect with backoff when the stream ends or fails.
    #[arg(long)]
    pub reconnect: bool,
}
