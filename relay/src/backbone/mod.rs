//! The backbone: NATS JetStream between relays, for clusters that outgrow
//! one relay. An **ingest** relay publishes every event it accepts from
//! its sensors to one stream (subject `<prefix>.<node>`), and acknowledges
//! a sensor's batch only once JetStream has stored all of it. A **query**
//! relay consumes the stream into its merge, so it serves every node's
//! events however many ingest relays took them. JetStream drops what a
//! sensor re-sends after a reconnect by message id (its instance and the
//! run's sequence numbers), within the stream's duplicate window; query
//! relays skip what still comes twice. The tracing policies every relay
//! shares live in a key-value bucket ([`policies`]).
//!
//! Each message carries a run of one sensor stream's events, numbered
//! without a gap (`Vigil-First-Seq` to `Vigil-Seq`), with headers naming
//! their origin: JetStream's cost is per message, so one per event would
//! cap the backbone far below a relay's rate. The payload layout is in
//! [`payload`]; a node's loss notice is a message with `Vigil-Lost` and
//! no payload.

pub mod consume;
pub mod payload;
pub mod policies;
pub mod publish;

use std::time::Duration;

use async_nats::jetstream;

/// Header: the sensor's kernel boot id (shared-kernel copies collapse).
pub const HEADER_BOOT: &str = "Vigil-Boot";
/// Header: the sensor stream's number (`events::resume::source_id`).
pub const HEADER_SOURCE: &str = "Vigil-Source";
/// Header: the sequence number of the message's last event in its sensor
/// stream.
pub const HEADER_SEQ: &str = "Vigil-Seq";
/// Header: the sequence number of the message's first event.
pub const HEADER_FIRST_SEQ: &str = "Vigil-First-Seq";
/// Header: the payload's layout (`protobuf` or `json`, see [`payload`]).
pub const HEADER_FORMAT: &str = "Vigil-Format";
/// Header: on a message without payload, events the node lost.
pub const HEADER_LOST: &str = "Vigil-Lost";

/// Which halves of the relay run on the backbone (`--backbone-role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Takes sensors' streams and publishes them.
    Ingest,
    /// Serves clients from the stream.
    Query,
    /// Both.
    Both,
}

impl Role {
    pub fn ingests(self) -> bool {
        matches!(self, Role::Ingest | Role::Both)
    }

    pub fn queries(self) -> bool {
        matches!(self, Role::Query | Role::Both)
    }
}

/// Where the backbone is and how its stream is laid out.
#[derive(Debug, Clone, PartialEq)]
pub struct BackboneSettings {
    /// `nats://host:port` (several, comma-separated, for a cluster).
    pub url: String,
    pub role: Role,
    pub stream: String,
    /// Subjects are `<prefix>.<node>`.
    pub subject_prefix: String,
    pub max_age: Duration,
    pub max_bytes: i64,
    pub replicas: usize,
    pub duplicate_window: Duration,
    /// TLS: the CA that signs the servers' certificates, and a client
    /// certificate and key if the servers ask for one.
    pub tls_ca: Option<std::path::PathBuf>,
    pub tls_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// A NATS credentials file (JWT and nkey seed).
    pub credentials: Option<std::path::PathBuf>,
    /// Publish acknowledgements in flight at most (per relay).
    pub max_in_flight: usize,
    /// How ingest relays lay events out in a message (query relays read
    /// either).
    pub format: payload::Format,
    /// The key-value bucket holding the tracing policies.
    pub policy_bucket: String,
}

/// Why the backbone cannot be used. Errors name the address and the
/// stream, never what a server sent back beyond its error text.
#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    #[error("the backbone at {url} does not answer: {reason}")]
    Connect { url: String, reason: String },
    #[error("--backbone-credentials {path}: {reason}")]
    Credentials { path: String, reason: String },
    #[error("the backbone at {url} has no JetStream (start nats-server with -js): {reason}")]
    NoJetStream { url: String, reason: String },
    #[error(
        "stream {stream} exists with other settings ({differences}); it is not changed: delete it, or pass \
         settings that match"
    )]
    Incompatible { stream: String, differences: String },
    #[error("stream {stream}: {reason}")]
    Stream { stream: String, reason: String },
}

/// Bytes kept back from the servers' `max_payload` for a message's
/// subject and headers (under 300 bytes as Vigil writes them).
const HEADER_ROOM: usize = 4096;

/// How long start-up waits for JetStream to answer (a cluster electing
/// its leader) before it gives up.
const JETSTREAM_WAIT: Duration = Duration::from_secs(30);

/// A connection to the backbone and its checked stream.
#[derive(Clone)]
pub struct Backbone {
    pub js: jetstream::Context,
    pub stream: jetstream::stream::Stream,
    pub settings: std::sync::Arc<BackboneSettings>,
    /// Payload bytes a message may carry: the servers' `max_payload`, less
    /// room for the headers.
    pub max_payload: usize,
}

impl Backbone {
    /// Connects (failing at once if no server answers) and creates the
    /// stream, or checks the one there: a stream with other settings is
    /// reported, never reconfigured.
    pub async fn connect(settings: BackboneSettings) -> Result<Backbone, BackboneError> {
        let url = settings.url.clone();
        let mut options = async_nats::ConnectOptions::new()
            .name("vigil-relay")
            .connection_timeout(Duration::from_secs(5))
            // After the first connection, outages are ridden out: sensors
            // keep their replay buffers meanwhile (nothing is acknowledged).
            .max_reconnects(None)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Disconnected => tracing::warn!("backbone connection lost; reconnecting"),
                    async_nats::Event::Connected => tracing::info!("backbone connected"),
                    other => tracing::debug!(event = %other, "backbone"),
                }
            });
        if let Some(path) = &settings.credentials {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| BackboneError::Credentials { path: path.display().to_string(), reason: e.to_string() })?;
        }
        if let Some(ca) = &settings.tls_ca {
            options = options.require_tls(true).add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &settings.tls_cert {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let servers = url
            .split(',')
            .map(|u| u.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BackboneError::Connect { url: url.clone(), reason: e.to_string() })?;
        let client = options
            .connect(servers)
            .await
            .map_err(|e| BackboneError::Connect { url: url.clone(), reason: e.to_string() })?;
        let max_payload = client.server_info().max_payload.saturating_sub(HEADER_ROOM);
        let js = jetstream::ContextBuilder::new()
            // API requests and publish acknowledgements: a request lost to a
            // server that went is tried again soon (a publish, by the sensor).
            .timeout(Duration::from_secs(5))
            .max_ack_inflight(settings.max_in_flight)
            .backpressure_on_inflight(true)
            .build(client);
        // A cluster still electing its JetStream leader times requests
        // out: waited for, up to a bound.
        let deadline = tokio::time::Instant::now() + JETSTREAM_WAIT;
        let stream = loop {
            match ensure_stream(&js, &settings).await {
                Err(BackboneError::NoJetStream { reason, .. }) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(url = %url, error = %reason, "the backbone's JetStream does not answer yet; waiting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                other => break other?,
            }
        };
        Ok(Backbone { js, stream, settings: std::sync::Arc::new(settings), max_payload })
    }

    /// The subject of `node`'s events.
    pub fn subject_of(&self, node: &str) -> String {
        subject_of(&self.settings.subject_prefix, node)
    }
}

/// The number in header `name`, if it is there and one.
pub fn header_number(headers: &async_nats::HeaderMap, name: &str) -> Option<u64> {
    headers.get(name).and_then(|v| v.as_str().parse().ok())
}

/// `<prefix>.<node>`, the node name kept to the characters a subject
/// token may hold (a DNS name's dots become further tokens).
pub fn subject_of(prefix: &str, node: &str) -> String {
    let token: String =
        node.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect();
    let token = token.trim_matches('.');
    format!("{prefix}.{}", if token.is_empty() { "_" } else { token })
}

/// The stream as these settings want it.
fn wanted(settings: &BackboneSettings) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: settings.stream.clone(),
        subjects: vec![format!("{}.>", settings.subject_prefix)],
        max_age: settings.max_age,
        max_bytes: settings.max_bytes,
        num_replicas: settings.replicas,
        duplicate_window: settings.duplicate_window,
        storage: jetstream::stream::StorageType::File,
        retention: jetstream::stream::RetentionPolicy::Limits,
        discard: jetstream::stream::DiscardPolicy::Old,
        ..Default::default()
    }
}

/// What differs between the stream there and the one wanted, by setting.
fn differences(have: &jetstream::stream::Config, want: &jetstream::stream::Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut differ = |name: &str, have: String, want: String| {
        if have != want {
            out.push(format!("{name} {have}, wanted {want}"));
        }
    };
    differ("subjects", format!("{:?}", have.subjects), format!("{:?}", want.subjects));
    differ("max_age", format!("{:?}", have.max_age), format!("{:?}", want.max_age));
    differ("max_bytes", have.max_bytes.to_string(), want.max_bytes.to_string());
    differ("replicas", have.num_replicas.to_string(), want.num_replicas.to_string());
    differ("duplicate_window", format!("{:?}", have.duplicate_window), format!("{:?}", want.duplicate_window));
    differ("storage", format!("{:?}", have.storage), format!("{:?}", want.storage));
    differ("retention", format!("{:?}", have.retention), format!("{:?}", want.retention));
    out
}

async fn ensure_stream(
    js: &jetstream::Context,
    settings: &BackboneSettings,
) -> Result<jetstream::stream::Stream, BackboneError> {
    let want = wanted(settings);
    let name = settings.stream.clone();
    let checked = |mut stream: jetstream::stream::Stream| async {
        let have = stream
            .info()
            .await
            .map_err(|e| BackboneError::Stream { stream: name.clone(), reason: e.to_string() })?
            .config
            .clone();
        let diff = differences(&have, &want);
        if !diff.is_empty() {
            return Err(BackboneError::Incompatible { stream: name.clone(), differences: diff.join("; ") });
        }
        Ok(stream)
    };
    match js.get_stream(&name).await {
        Ok(stream) => checked(stream).await,
        Err(e) => match e.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                match js.create_stream(want.clone()).await {
                    Ok(stream) => Ok(stream),
                    Err(created) if created.to_string().contains("insufficient storage") => {
                        Err(BackboneError::Stream {
                            stream: name.clone(),
                            reason: format!(
                                "{created} (the servers' JetStream storage cannot hold --backbone-max-mib {} \
                                 × --backbone-replicas {})",
                                settings.max_bytes >> 20,
                                settings.replicas
                            ),
                        })
                    }
                    // Another relay starting at once made it first.
                    Err(created) => match js.get_stream(&name).await {
                        Ok(stream) => checked(stream).await,
                        Err(_) => Err(BackboneError::Stream { stream: name.clone(), reason: created.to_string() }),
                    },
                }
            }
            jetstream::context::GetStreamErrorKind::JetStream(j) => {
                Err(BackboneError::Stream { stream: name, reason: j.to_string() })
            }
            // No answer to a JetStream request: the server runs without it.
            _ => Err(BackboneError::NoJetStream { url: settings.url.clone(), reason: e.to_string() }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_become_one_subject_each() {
        assert_eq!(subject_of("vigil.events", "node-1"), "vigil.events.node-1");
        assert_eq!(subject_of("vigil.events", "ip-10-0-0-1.ec2.internal"), "vigil.events.ip-10-0-0-1.ec2.internal");
        assert_eq!(subject_of("vigil.events", "a*b>c"), "vigil.events.a_b_c");
        assert_eq!(subject_of("vigil.events", "..."), "vigil.events._");
    }

    #[test]
    fn a_stream_with_other_settings_is_named_setting_by_setting() {
        let settings = BackboneSettings {
            url: "nats://x".into(),
            role: Role::Both,
            stream: "S".into(),
            subject_prefix: "vigil.events".into(),
            max_age: Duration::from_secs(60),
            max_bytes: 1 << 20,
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            tls_ca: None,
            tls_cert: None,
            credentials: None,
            max_in_flight: 1024,
            format: payload::Format::Protobuf,
            policy_bucket: policies::DEFAULT_BUCKET.into(),
        };
        let want = wanted(&settings);
        assert!(differences(&want, &want).is_empty());
        let have = jetstream::stream::Config { num_replicas: 3, max_bytes: 5, ..want.clone() };
        assert_eq!(differences(&have, &want), ["max_bytes 5, wanted 1048576", "replicas 3, wanted 1"]);
    }
}
