//! `vigil.relay.v1.Ingest`: one bidirectional stream per sensor. The first
//! message is a hello; the relay answers with the last sequence it holds for
//! that sensor instance, then acknowledges every batch. Replays are dropped
//! by sequence, gaps become loss notices, and a malformed message ends only
//! that sensor's stream. The same stream carries the relay's tracing
//! policies to the sensor (the whole set, after the welcome and at every
//! change) and the sensor's report of what became of them.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proto::Timestamp;
use proto::vigil::relay::v1::ingest_server::Ingest;
use proto::vigil::relay::v1::{Ack, IngestMessage, IngestReply, PolicySet, Welcome, ingest_message, ingest_reply};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::merge::Arrival;
use crate::nodes::Nodes;
use crate::policies::RelayPolicies;
use crate::token_review::TokenReviewer;

/// What ingest hands the merge task.
pub enum MergeInput {
    Events(Vec<Arrival>),
    /// Events a node could not deliver.
    Lost {
        node: String,
        count: u64,
    },
}

/// Where accepted events go: this relay's merge, or the backbone (an
/// ingest relay, whose query relays merge).
#[derive(Clone)]
pub enum Sink {
    Merge(mpsc::Sender<MergeInput>),
    Backbone(Arc<crate::backbone::Backbone>),
    /// A query-only relay takes no sensors.
    QueryOnly,
}

pub struct IngestService {
    pub nodes: Arc<Nodes>,
    pub sink: Sink,
    policies: Arc<RelayPolicies>,
    next_stream: AtomicU64,
    /// With `--sensor-identity kubernetes`: node names come from tokens.
    tokens: Option<Arc<TokenReviewer>>,
}

impl IngestService {
    pub fn new(nodes: Arc<Nodes>, sink: Sink, policies: Arc<RelayPolicies>) -> Self {
        IngestService { nodes, sink, policies, next_stream: AtomicU64::new(1), tokens: None }
    }

    /// Takes node names from service-account tokens (see [`crate::token_review`]).
    pub fn with_token_review(mut self, reviewer: TokenReviewer) -> Self {
        self.tokens = Some(Arc::new(reviewer));
        self
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<IngestReply, Status>> + Send>>;

/// Why an ingest stream is refused or ended; each maps to one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("no hello within 10 s")]
    NoHello,
    #[error("stream ended before hello")]
    EndedBeforeHello,
    #[error("the first message must be a hello")]
    HelloFirst,
    #[error("hello needs node_name and instance_id")]
    IncompleteHello,
    #[error("hello {field} is {len} bytes; the limit is {limit}")]
    HelloFieldTooLong { field: &'static str, len: usize, limit: usize },
    #[error("hello {field} holds control characters or white space")]
    HelloFieldCharacters { field: &'static str },
    #[error(transparent)]
    Claim(#[from] crate::nodes::ClaimError),
    #[error("this sensor certificate is bound to node {bound:?}; its hello claims node {claimed:?}")]
    NodeMismatch { bound: String, claimed: String },
    #[error(
        "this sensor certificate is bound to no node; issue one per node (vigil certs generate --sensor-node NAME, \
         or vigil certs sensor) or, deliberately, an any-node one (--any-node-sensor)"
    )]
    NoNodeBinding,
    #[error(transparent)]
    Token(#[from] crate::token_review::TokenError),
    #[error("a second hello on one stream")]
    SecondHello,
    #[error("empty ingest message")]
    EmptyMessage,
    #[error("sequence numbers in a batch must start at 1 or later and increase")]
    Sequence,
    #[error(
        "sequence jumped over {undeclared} numbers the batch does not declare skipped, more than the announced \
         replay buffer of {buffer}"
    )]
    SequenceJump { undeclared: u64, buffer: u64 },
    #[error("batch entry {pos} (seq {seq}) has no event")]
    NoEvent { pos: usize, seq: u64 },
    #[error("relay is shutting down")]
    ShuttingDown,
    #[error("this relay only serves queries (--backbone-role query); point sensors at an ingest relay")]
    QueryOnly,
    #[error(transparent)]
    Backbone(#[from] crate::backbone::publish::PublishError),
    /// The stream itself failed (decode error, reset): its status as is.
    #[error("{}", .0.message())]
    Stream(#[from] Status),
}

impl From<IngestError> for Status {
    fn from(e: IngestError) -> Self {
        use IngestError::*;
        match e {
            Stream(status) => status,
            NoHello => Status::deadline_exceeded(e.to_string()),
            Claim(crate::nodes::ClaimError::Taken { .. }) => Status::already_exists(e.to_string()),
            Claim(crate::nodes::ClaimError::Full { .. }) => Status::resource_exhausted(e.to_string()),
            NodeMismatch { .. } | NoNodeBinding => Status::permission_denied(e.to_string()),
            Token(crate::token_review::TokenError::Api(_)) => Status::unavailable(e.to_string()),
            Token(_) => Status::permission_denied(e.to_string()),
            ShuttingDown | Backbone(_) => Status::unavailable(e.to_string()),
            QueryOnly => Status::failed_precondition(e.to_string()),
            EndedBeforeHello
            | HelloFirst
            | IncompleteHello
            | HelloFieldTooLong { .. }
            | HelloFieldCharacters { .. }
            | SecondHello
            | EmptyMessage
            | Sequence
            | SequenceJump { .. }
            | NoEvent { .. } => Status::invalid_argument(e.to_string()),
        }
    }
}

/// Largest event (encoded) the relay takes from a sensor: well under the
/// 4 MiB a default Go or Python gRPC client accepts in one message.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// Rate limit of the refused-stream warning, per reason.
static REFUSED_LOG: std::sync::LazyLock<serving::log_limit::LogLimits> =
    std::sync::LazyLock::new(|| serving::log_limit::LogLimits::new(Duration::from_secs(10)));

/// Rate limit of the oversized-event warning.
static OVERSIZED_LOG: std::sync::LazyLock<serving::log_limit::LogLimit> =
    std::sync::LazyLock::new(|| serving::log_limit::LogLimit::new(Duration::from_secs(10)));

/// Rate limit of the warning that a hello was refused because the
/// backbone did not answer what it holds of the sensor.
static STORED_THROUGH_LOG: std::sync::LazyLock<serving::log_limit::LogLimit> =
    std::sync::LazyLock::new(|| serving::log_limit::LogLimit::new(Duration::from_secs(10)));

/// Bytes a hello field may hold: a node name is a DNS name at most (as a
/// Kubernetes node's is); the ids and the version are short tokens (a boot
/// id is a 36-character UUID).
const HELLO_LIMITS: [(&str, usize); 4] =
    [("node_name", 253), ("instance_id", 64), ("boot_id", 64), ("sensor_version", 64)];

/// Checks every hello field against its limit before anything is kept, so
/// an oversized or odd name never reaches the node table, the logs or
/// `vigil nodes`. Errors name the field and the limit, not the value.
fn check_hello(hello: &proto::vigil::relay::v1::Hello) -> Result<(), IngestError> {
    if hello.node_name.is_empty() || hello.instance_id.is_empty() {
        return Err(IngestError::IncompleteHello);
    }
    let values = [&hello.node_name, &hello.instance_id, &hello.boot_id, &hello.sensor_version];
    for ((field, limit), value) in HELLO_LIMITS.into_iter().zip(values) {
        if value.len() > limit {
            return Err(IngestError::HelloFieldTooLong { field, len: value.len(), limit });
        }
        if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(IngestError::HelloFieldCharacters { field });
        }
    }
    Ok(())
}

/// May the stream's credential speak for `node`? `Ok(true)` for an
/// any-node credential, `Ok(false)` for one bound to this node or a
/// plaintext relay (`--insecure`: no credentials at all, warned at start).
fn may_speak_for(certs: Option<&[tonic::transport::CertificateDer<'static>]>, node: &str) -> Result<bool, IngestError> {
    let Some(leaf) = certs.and_then(<[_]>::first) else {
        return Ok(false);
    };
    match tls::node::binding_of(leaf.as_ref()) {
        tls::node::NodeBinding::Node(bound) if bound == node => Ok(false),
        tls::node::NodeBinding::Node(bound) => Err(IngestError::NodeMismatch { bound, claimed: node.to_owned() }),
        tls::node::NodeBinding::AnyNode => Ok(true),
        tls::node::NodeBinding::Unbound => Err(IngestError::NoNodeBinding),
    }
}

/// A reply on its way to the sensor; a policy set carries the share of
/// the relay's sending budget it holds until tonic takes it.
type Outgoing = (Result<IngestReply, Status>, Option<tokio::sync::OwnedSemaphorePermit>);

fn reply(msg: ingest_reply::Msg) -> Outgoing {
    (Ok(IngestReply { msg: Some(msg) }), None)
}

#[tonic::async_trait]
impl Ingest for IngestService {
    type StreamStream = ReplyStream;

    async fn stream(&self, request: Request<Streaming<IngestMessage>>) -> Result<Response<ReplyStream>, Status> {
        if matches!(self.sink, Sink::QueryOnly) {
            return Err(IngestError::QueryOnly.into());
        }
        let certs = request.peer_certs();
        let token = crate::token_review::bearer(request.metadata());
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .map_err(|_| IngestError::NoHello)?
            .map_err(IngestError::Stream)?
            .ok_or(IngestError::EndedBeforeHello)?;
        let Some(ingest_message::Msg::Hello(hello)) = first.msg else {
            return Err(IngestError::HelloFirst.into());
        };
        check_hello(&hello)?;
        let cert = may_speak_for(certs.as_deref().map(Vec::as_slice), &hello.node_name);
        let identified = match &self.tokens {
            None => cert,
            // The certificate proves the sensor role, the token the node: a
            // certificate bound to no node or to any node is fine, one
            // bound to another node is not.
            Some(reviewer) => match cert {
                Ok(_) | Err(IngestError::NoNodeBinding) => {
                    reviewer.check(token.as_deref(), &hello.node_name).await.map(|()| false).map_err(IngestError::from)
                }
                Err(e) => Err(e),
            },
        };
        let any_node = match identified {
            Ok(any_node) => any_node,
            Err(e) => {
                // A hostile peer can repeat a refused hello as fast as it
                // likes: one line per reason and interval, with a count.
                let reason = e.to_string();
                if let Some(n) = REFUSED_LOG.hit(&reason) {
                    tracing::warn!(error = %reason, times = n, "sensor stream refused");
                }
                return Err(e.into());
            }
        };
        let stream_id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let mut acked = self
            .nodes
            .claim(&hello.node_name, &hello.boot_id, &hello.instance_id, stream_id, any_node)
            .map_err(IngestError::Claim)?;
        if let Sink::Backbone(backbone) = &self.sink {
            // What another ingest relay stored of this sensor is taken.
            let source = events::resume::source_id(&hello.node_name, &hello.instance_id);
            let origin = crate::backbone::publish::Origin { node: &hello.node_name, boot_id: &hello.boot_id, source };
            match backbone.stored_through(&origin).await {
                Ok(stored) if stored > acked => {
                    acked = self.nodes.advance(&hello.node_name, &hello.instance_id, stored);
                }
                Ok(_) => {}
                Err(e) => {
                    self.nodes.release(&hello.node_name, stream_id);
                    if let Some(n) = STORED_THROUGH_LOG.hit() {
                        tracing::warn!(node = %hello.node_name, error = %e, times = n, "refused a sensor: the backbone did not say what it holds of it");
                    }
                    return Err(IngestError::from(e).into());
                }
            }
        }
        if any_node {
            tracing::warn!(node = %hello.node_name, "sensor connected with an any-node credential: it is trusted to name its own node");
        }
        tracing::info!(node = %hello.node_name, version = %hello.sensor_version, acked, "sensor connected");

        let (tx, rx) = mpsc::channel(16);
        let _ = tx.send(reply(ingest_reply::Msg::Welcome(Welcome { acked }))).await;
        let nodes = self.nodes.clone();
        let sink = self.sink.clone();
        let policies = self.policies.clone();
        tokio::spawn(async move {
            let node = hello.node_name.clone();
            let stream = SensorStream {
                hello: &hello,
                id: stream_id,
                acked,
                nodes: &nodes,
                sink: &sink,
                tx: &tx,
                policies: &policies,
            };
            let result = stream.serve(&mut inbound).await;
            nodes.release(&node, stream_id);
            match result {
                Ok(()) => tracing::info!(node = %node, "sensor stream ended"),
                Err(e) => {
                    // A refusal (the peer is told why) or a broken connection.
                    let status = Status::from(e);
                    tracing::warn!(node = %node, code = ?status.code(), error = %status.message(), "sensor stream ended with an error");
                    let _ = tx.send((Err(status), None)).await;
                }
            }
        });
        // The budget share goes as tonic takes the reply to encode it.
        let replies = tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |(r, _)| r);
        Ok(Response::new(Box::pin(replies)))
    }
}

/// One sensor's stream, once its hello is accepted.
struct SensorStream<'a> {
    hello: &'a proto::vigil::relay::v1::Hello,
    id: u64,
    /// What the sensor was told at its hello was taken.
    acked: u64,
    nodes: &'a Nodes,
    sink: &'a Sink,
    tx: &'a mpsc::Sender<Outgoing>,
    policies: &'a RelayPolicies,
}

/// A batch handed to the backbone: the sequence to acknowledge once it is
/// stored.
type Storing<'a> = Pin<Box<dyn Future<Output = Result<u64, IngestError>> + Send + 'a>>;

/// What became of a batch.
enum Taken<'a> {
    /// Acknowledged to the sensor.
    Acked,
    /// The sensor no longer listens.
    Closed,
    /// Handed to the backbone: its payload's bytes, and when it is stored.
    Storing(usize, Storing<'a>),
}

/// A sensor's batches handed to the backbone and not yet stored: the next
/// ones are taken meanwhile, so a stream's rate is not one batch per
/// JetStream round trip (a replicated stream's takes milliseconds, and with
/// 8 batches in flight a 3-server cluster took 47,000 events/s where 64
/// took 117,000). Bounded in batches and in bytes; past either, the
/// sensor's stream is not read until one is stored.
struct InFlight<'a> {
    batches: futures_util::stream::FuturesOrdered<Storing<'a>>,
    /// Each batch's payload bytes, oldest first (as `batches` end).
    sizes: std::collections::VecDeque<usize>,
    bytes: usize,
}

/// Batches in flight per sensor stream at most …
const IN_FLIGHT_BATCHES: usize = 64;
/// … and their payload bytes (one batch more is taken while under).
const IN_FLIGHT_BYTES: usize = 8 << 20;

impl<'a> InFlight<'a> {
    fn new() -> Self {
        InFlight { batches: futures_util::stream::FuturesOrdered::new(), sizes: Default::default(), bytes: 0 }
    }

    fn has_room(&self) -> bool {
        self.batches.len() < IN_FLIGHT_BATCHES && self.bytes < IN_FLIGHT_BYTES
    }

    fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    fn push(&mut self, bytes: usize, batch: Storing<'a>) {
        self.bytes += bytes;
        self.sizes.push_back(bytes);
        self.batches.push_back(batch);
    }

    /// The oldest batch's outcome, once it is known.
    async fn next(&mut self) -> Option<Result<u64, IngestError>> {
        let done = futures_util::StreamExt::next(&mut self.batches).await?;
        self.bytes -= self.sizes.pop_front().unwrap_or(0);
        Some(done)
    }

    /// Forgets the batches (their outcome is no longer waited for).
    fn clear(&mut self) {
        self.batches.clear();
        self.sizes.clear();
        self.bytes = 0;
    }
}

impl<'a> SensorStream<'a> {
    /// Takes batches and policy reports, and sends the policy set now and
    /// whenever it changes, until the sensor ends the stream.
    async fn serve(&self, inbound: &mut Streaming<IngestMessage>) -> Result<(), IngestError> {
        let mut storing = InFlight::new();
        let mut stored = self.acked;
        let result = self.take(inbound, &mut storing, &mut stored).await;
        if let Sink::Backbone(_) = self.sink {
            // What this relay remembers taken of the sensor must be what
            // the backbone holds: batches in flight are waited for, and
            // what was not stored is forgotten, so that the sensor's next
            // hello is told to send it again.
            while let Some(Ok(seq)) = storing.next().await {
                stored = seq;
            }
            self.nodes.rewind(&self.hello.node_name, &self.hello.instance_id, stored);
        }
        result
    }

    async fn take(
        &self,
        inbound: &mut Streaming<IngestMessage>,
        storing: &mut InFlight<'a>,
        stored: &mut u64,
    ) -> Result<(), IngestError> {
        let boot = self.nodes.boot_number(&self.hello.boot_id);
        let source = events::resume::source_id(&self.hello.node_name, &self.hello.instance_id);
        let mut set = self.policies.watch();
        set.mark_changed();
        loop {
            let msg = tokio::select! {
                Some(done) = storing.next(), if !storing.is_empty() => {
                    *stored = match done {
                        Ok(seq) => seq,
                        Err(e) => {
                            // The batches after it are not waited for: what
                            // was stored is known only up to here.
                            storing.clear();
                            return Err(e);
                        }
                    };
                    if self.tx.send(reply(ingest_reply::Msg::Ack(Ack { seq: *stored }))).await.is_err() {
                        return Ok(());
                    }
                    continue;
                }
                changed = set.changed() => {
                    if changed.is_err() {
                        return Err(IngestError::ShuttingDown);
                    }
                    let current = set.borrow_and_update().clone();
                    // Every stream copies the set: thousands of sensors at
                    // once would copy gigabytes. Copies wait for a share of
                    // a bounded budget instead.
                    let Some(share) = self.policies.sending_share(&current).await else {
                        return Err(IngestError::ShuttingDown);
                    };
                    let message = IngestReply { msg: Some(ingest_reply::Msg::Policies(PolicySet::clone(&current))) };
                    if self.tx.send((Ok(message), Some(share))).await.is_err() {
                        return Ok(());
                    }
                    continue;
                }
                msg = inbound.message(), if storing.has_room() => match msg? {
                    Some(msg) => msg,
                    None => return Ok(()),
                },
            };
            match msg.msg {
                Some(ingest_message::Msg::Batch(b)) => match self.batch(b, boot, source).await? {
                    Taken::Acked => {}
                    Taken::Closed => return Ok(()),
                    Taken::Storing(bytes, batch) => storing.push(bytes, batch),
                },
                Some(ingest_message::Msg::PolicyReport(report)) => {
                    self.policies.report(&self.hello.node_name, self.id, report);
                }
                Some(ingest_message::Msg::Hello(_)) => return Err(IngestError::SecondHello),
                None => return Err(IngestError::EmptyMessage),
            }
        }
    }

    /// Takes one batch and acknowledges it, or hands it to the backbone.
    async fn batch(
        &self,
        batch: proto::vigil::relay::v1::Batch,
        boot: u64,
        source: u64,
    ) -> Result<Taken<'a>, IngestError> {
        let (hello, nodes, tx) = (self.hello, self.nodes, self.tx);
        let seqs: Vec<u64> = batch.events.iter().map(|e| e.seq).collect();
        if seqs.windows(2).any(|w| w[0] >= w[1]) || seqs.first() == Some(&0) {
            return Err(IngestError::Sequence);
        }
        if let Some(pos) = batch.events.iter().position(|e| e.event.is_none()) {
            return Err(IngestError::NoEvent { pos, seq: seqs[pos] });
        }
        let now = Timestamp::now().unix_nanos();
        let lag_ms = batch
            .events
            .last()
            .and_then(|e| e.event.as_ref()?.time)
            .map_or(0, |t| ((now - t.unix_nanos()).max(0) / 1_000_000) as u64);
        // A sequence number advances only by what the sensor can have
        // produced and not sent: what it declares skipped, or at most its
        // replay buffer. Checked before anything is taken, so a jump cannot
        // make the node's later events look like replays.
        let allowed = batch.skipped.saturating_add(hello.replay_buffer_size);
        let (keep, intake) = nodes
            .intake(&hello.node_name, &hello.instance_id, &seqs, allowed, batch.lost, lag_ms)
            .map_err(|gap| IngestError::SequenceJump {
                undeclared: gap.saturating_sub(batch.skipped),
                buffer: hello.replay_buffer_size,
            })?;
        let mut oversized = 0u64;
        let events: Vec<Arrival> = batch
            .events
            .into_iter()
            .zip(keep)
            .filter_map(|(e, k)| Some((e.seq, k.then_some(e.event).flatten()?)))
            .map(|(seq, mut e)| {
                // The authenticated stream names the node, not the payload.
                if e.node_name != hello.node_name {
                    e.node_name.clone_from(&hello.node_name);
                }
                Arrival::new(boot, source, seq, e)
            })
            .filter(|a| {
                // Larger than a default gRPC client takes once wrapped: refused
                // here, counted, and reported to clients as lost. The encoding
                // is the one clients are sent (made once, here instead of in
                // the fan-out).
                let fits = a.event.encoded().len() <= MAX_EVENT_BYTES;
                oversized += u64::from(!fits);
                fits
            })
            .collect();
        if oversized > 0 {
            nodes.oversized(&hello.node_name, oversized);
            if let Some(n) = OVERSIZED_LOG.hit() {
                tracing::warn!(node = %hello.node_name, oversized, lines_since = n, limit = MAX_EVENT_BYTES, "refused events larger than the limit");
            }
        }
        let lost = intake.gap + batch.lost + oversized;
        if lost > 0 {
            tracing::warn!(node = %hello.node_name, lost, "sensor lost events before they reached the relay");
        }
        match self.sink {
            Sink::Merge(merge) => {
                if lost > 0 {
                    let _ = merge.send(MergeInput::Lost { node: hello.node_name.clone(), count: lost }).await;
                }
                if !events.is_empty() && merge.send(MergeInput::Events(events)).await.is_err() {
                    return Err(IngestError::ShuttingDown);
                }
            }
            Sink::QueryOnly => return Err(IngestError::QueryOnly),
            Sink::Backbone(backbone) => {
                let origin =
                    crate::backbone::publish::Origin { node: &hello.node_name, boot_id: &hello.boot_id, source };
                let started = std::time::Instant::now();
                let count = events.len() as u64;
                // Not stored (here or when waited for), the batch is not
                // acknowledged, and `serve` forgets it was taken.
                let sent = backbone.send_batch(&origin, &events, lost, intake.last_seq).await?;
                let (limit, last_seq) = (backbone.max_payload, intake.last_seq);
                return Ok(Taken::Storing(
                    sent.bytes(),
                    Box::pin(async move {
                        let too_large = sent.stored().await?;
                        if too_large > 0 {
                            nodes.oversized(&hello.node_name, too_large);
                            if let Some(n) = OVERSIZED_LOG.hit() {
                                tracing::warn!(node = %hello.node_name, too_large, lines_since = n, limit, "events larger than a backbone message may carry (the servers' max_payload): counted lost");
                            }
                        }
                        nodes.published(&hello.node_name, count - too_large, started.elapsed());
                        Ok(last_seq)
                    }),
                ));
            }
        }
        let listening = tx.send(reply(ingest_reply::Msg::Ack(Ack { seq: intake.last_seq }))).await.is_ok();
        Ok(if listening { Taken::Acked } else { Taken::Closed })
    }
}
