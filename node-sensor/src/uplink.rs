//! Streams every event to one or more relays: sequence numbers, a bounded
//! replay buffer, acknowledged and resumable streams, capped exponential
//! backoff with jitter. Anything the buffer had to drop shows up at the
//! relay as a gap in the sequence, which the relay reports as a loss.
//! Relays also send their tracing policies down the same stream; each
//! link hands them to `policies::managed` and sends back its report.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use events::bus::EventBus;
use parking_lot::Mutex;
use proto::ingest::BatchEncoder;
use proto::shared::{OutEvent, SharedEvent};
use proto::tetragon::get_events_response::Event;
use proto::vigil::relay::v1::{Hello, IngestReply, PolicySet, ingest_reply};
use tokio::sync::{Notify, mpsc};
use tokio_stream::StreamExt;
use tonic::transport::Endpoint;

use crate::policies::managed::Managed;

/// Events sent per batch.
const BATCH: usize = 512;
/// Largest message sent; the relay accepts up to 16 MiB.
const MAX_MESSAGE: usize = 16 << 20;
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How to reach relays.
#[derive(Debug, Clone)]
pub struct UplinkSettings {
    pub node_name: String,
    /// `host:port`, each resolving to one or more addresses.
    pub relays: Vec<String>,
    /// Directory with ca.pem, sensor.pem, sensor-key.pem; None = plaintext.
    pub tls_dir: Option<PathBuf>,
    pub buffer_size: usize,
    /// How often each relay name is looked up again.
    pub resolve_interval: Duration,
    /// A token naming this node to relays, read for each connection.
    pub token_file: Option<PathBuf>,
}

/// Largest relay token read (a service-account token is about 1 KiB).
const MAX_TOKEN_BYTES: u64 = 16 << 10;

/// The token in `path`, trimmed; refused if empty or oversized.
fn read_token(path: &std::path::Path) -> Result<String, SessionError> {
    use std::io::Read;
    let bad = |reason: String| SessionError::Token { path: path.display().to_string(), reason };
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TOKEN_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| bad(e.to_string()))?;
    if text.len() as u64 > MAX_TOKEN_BYTES {
        return Err(bad(format!("longer than {MAX_TOKEN_BYTES} bytes")));
    }
    let token = text.trim();
    if token.is_empty() {
        return Err(bad("empty".into()));
    }
    Ok(token.to_owned())
}

/// Events as the bus shares them: encoded once, for local clients and every
/// relay link alike.
#[derive(Default)]
struct Buffer {
    entries: VecDeque<(u64, Arc<SharedEvent>)>,
    next_seq: u64,
    evicted: u64,
}

/// The replay buffer shared by every relay connection.
pub struct Replay {
    inner: Mutex<Buffer>,
    cap: usize,
    notify: Notify,
}

impl Replay {
    pub fn new(cap: usize) -> Self {
        Replay {
            inner: Mutex::new(Buffer { next_seq: 1, ..Default::default() }),
            cap: cap.max(1),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Buffer> {
        self.inner.lock()
    }

    /// Appends an event with the next sequence number, evicting the oldest
    /// past the bound.
    pub fn push(&self, event: Arc<SharedEvent>) {
        let mut b = self.lock();
        let seq = b.next_seq;
        b.next_seq += 1;
        b.entries.push_back((seq, event));
        if b.entries.len() > self.cap {
            b.entries.pop_front();
            b.evicted += 1;
        }
        drop(b);
        self.notify.notify_waiters();
    }

    /// Events that never got into the buffer: their sequence numbers are
    /// skipped so the relay sees (and reports) the gap.
    pub fn skip(&self, n: u64) {
        self.lock().next_seq += n;
    }

    /// Up to `max` events with sequence ≥ `from`.
    pub fn from(&self, from: u64, max: usize) -> Vec<(u64, Arc<SharedEvent>)> {
        let b = self.lock();
        let start = b.entries.partition_point(|(s, _)| *s < from);
        b.entries.range(start..).take(max).cloned().collect()
    }

    pub fn evicted(&self) -> u64 {
        self.lock().evicted
    }

    /// How full the buffer is, for the metrics.
    pub fn fill(&self) -> ReplayFill {
        let b = self.lock();
        ReplayFill { events: b.entries.len(), capacity: self.cap, last_seq: b.next_seq - 1, evicted: b.evicted }
    }
}

/// The replay buffer's fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayFill {
    pub events: usize,
    pub capacity: usize,
    /// The sequence number of the newest event (0: none yet).
    pub last_seq: u64,
    /// Events pushed out by newer ones.
    pub evicted: u64,
}

/// One relay link's state (one address a `--relay-address` resolves to).
#[derive(Debug, Default)]
pub struct LinkState {
    pub connected: AtomicBool,
    /// The last sequence number sent on the current stream.
    pub sent: AtomicU64,
    /// The last sequence number the relay acknowledged.
    pub acked: AtomicU64,
    /// Streams opened (a reconnect opens one more).
    pub streams: AtomicU64,
    /// Events that left the replay buffer before this relay took them
    /// (lost to it; it reports them as lost too).
    pub skipped: AtomicU64,
}

/// The uplink as the metrics see it: the replay buffer and each link.
pub struct Uplink {
    pub replay: Arc<Replay>,
    links: Mutex<BTreeMap<(String, SocketAddr), Arc<LinkState>>>,
    /// Events skipped to links since closed (their relay address went away).
    closed_skipped: AtomicU64,
}

impl Uplink {
    /// Each open link, by relay flag and address.
    pub fn links(&self) -> Vec<(String, SocketAddr, Arc<LinkState>)> {
        self.links.lock().iter().map(|((relay, addr), s)| (relay.clone(), *addr, s.clone())).collect()
    }

    fn open(&self, relay: &str, addr: SocketAddr) -> Arc<LinkState> {
        self.links.lock().entry((relay.to_owned(), addr)).or_default().clone()
    }

    /// Events skipped to every relay link, open or closed.
    pub fn skipped(&self) -> u64 {
        let open: u64 = self.links.lock().values().map(|l| l.skipped.load(Ordering::Relaxed)).sum();
        open + self.closed_skipped.load(Ordering::Relaxed)
    }

    fn close(&self, relay: &str, addr: SocketAddr) {
        if let Some(link) = self.links.lock().remove(&(relay.to_owned(), addr)) {
            self.closed_skipped.fetch_add(link.skipped.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

/// Why the uplink could not start: a `--relay-address` that is unusable.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("invalid --relay-address {0:?}: expected host:port")]
    Address(String),
    #[error("cannot resolve --relay-address {relay}: {reason}")]
    Resolve { relay: String, reason: String },
    #[error("--relay-address {0} resolves to no address")]
    NoAddress(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Why one stream to a relay ended (it is retried).
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Transport(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("relay refused the stream: {}", .0.message())]
    Status(tonic::Status),
    #[error("relay did not answer the hello")]
    NoWelcome,
    #[error("stream closed")]
    Closed,
    #[error("--relay-token-file {path}: {reason}")]
    Token { path: String, reason: String },
}

impl From<tonic::Status> for SessionError {
    fn from(s: tonic::Status) -> Self {
        SessionError::Status(s)
    }
}

impl From<tonic::transport::Error> for SessionError {
    fn from(e: tonic::transport::Error) -> Self {
        SessionError::Transport(serving::listen::with_causes(&e))
    }
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// Starts the collector and one connection task per relay address;
/// relays' policies go to `policies`.
pub async fn start(
    bus: &EventBus,
    settings: UplinkSettings,
    policies: Arc<Managed>,
) -> Result<Arc<Uplink>, UplinkError> {
    let replay = Arc::new(Replay::new(settings.buffer_size));
    let uplink = Arc::new(Uplink {
        replay: replay.clone(),
        links: Mutex::new(BTreeMap::new()),
        closed_skipped: AtomicU64::new(0),
    });
    // The collector must never fall behind the bus: its queue is as deep as
    // the replay buffer, and whatever the bus still drops becomes a gap.
    let mut sub = bus.subscribe_internal(events::RequestFilters::default());
    let r = replay.clone();
    tokio::spawn(async move {
        while let Some(out) = StreamExt::next(&mut sub).await {
            match out {
                OutEvent::Shared(e) => r.push(e),
                OutEvent::Own(e) => match &e.event {
                    Some(Event::RateLimitInfo(info)) => r.skip(info.number_of_dropped_process_events),
                    _ => r.push(Arc::new(SharedEvent::from_box(e))),
                },
            }
        }
    });
    let instance = format!("{}-{}-{}", settings.node_name, std::process::id(), proto::Timestamp::now().unix_nanos());
    let boot = boot_id();
    for relay in &settings.relays {
        let (host, _) = relay.rsplit_once(':').ok_or_else(|| UplinkError::Address(relay.clone()))?;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(relay)
            .await
            .map_err(|e| UplinkError::Resolve { relay: relay.clone(), reason: e.to_string() })?
            .collect();
        if addrs.is_empty() {
            return Err(UplinkError::NoAddress(relay.clone()));
        }
        let tls = match &settings.tls_dir {
            Some(dir) => {
                let tls = TlsFiles {
                    dir: dir.clone(),
                    server_name: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
                };
                // Fail at start-up on unusable certificates rather than in a retry loop.
                tls.load()?;
                Some(tls)
            }
            None => None,
        };
        let hello = Hello {
            node_name: settings.node_name.clone(),
            boot_id: boot.clone(),
            sensor_version: env!("CARGO_PKG_VERSION").into(),
            instance_id: instance.clone(),
            replay_buffer_size: settings.buffer_size as u64,
        };
        let link = Link {
            addr: addrs[0],
            label: relay.clone(),
            tls,
            token_file: settings.token_file.clone(),
            hello,
            replay: replay.clone(),
            uplink: uplink.clone(),
            state: Arc::default(),
            id: 0,
            policies: policies.clone(),
        };
        tokio::spawn(follow(link, addrs, settings.resolve_interval));
    }
    Ok(uplink)
}

/// Numbers links in the order they open (the first one's policies win a
/// conflict between relays; see `policies::managed`).
static NEXT_LINK: AtomicU64 = AtomicU64::new(1);

/// Which links to open and close so the open ones match what a relay name
/// resolves to now.
fn link_changes(open: &BTreeSet<SocketAddr>, resolved: &[SocketAddr]) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    let now: BTreeSet<SocketAddr> = resolved.iter().copied().collect();
    (now.difference(open).copied().collect(), open.difference(&now).copied().collect())
}

/// Streams to every address a relay name resolves to (each is a replica),
/// looking the name up again every `interval`: a new replica gets a link
/// (and, resuming from its acknowledgement, everything still buffered); a
/// replica no longer in the answer loses its link. A failed or empty lookup
/// changes nothing.
async fn follow(template: Link, first: Vec<SocketAddr>, interval: Duration) {
    let mut links: BTreeMap<SocketAddr, (u64, tokio::task::JoinHandle<()>)> = BTreeMap::new();
    let mut resolved = first;
    loop {
        let open: BTreeSet<SocketAddr> = links.keys().copied().collect();
        let (add, remove) = link_changes(&open, &resolved);
        for addr in remove {
            tracing::info!(relay = %template.label, %addr, "relay address no longer resolves; closing its stream");
            if let Some((id, task)) = links.remove(&addr) {
                task.abort();
                let policies = template.policies.clone();
                let _ = tokio::task::spawn_blocking(move || policies.forget(id)).await;
            }
            template.uplink.close(&template.label, addr);
        }
        for addr in add {
            if !open.is_empty() {
                tracing::info!(relay = %template.label, %addr, "new relay address; streaming to it too");
            }
            let state = template.uplink.open(&template.label, addr);
            let id = NEXT_LINK.fetch_add(1, Ordering::Relaxed);
            template.policies.open(id);
            links.insert(addr, (id, tokio::spawn(Link { addr, state, id, ..template.clone() }.run())));
        }
        tokio::time::sleep(interval).await;
        match tokio::net::lookup_host(&template.label).await {
            Ok(found) => {
                let found: Vec<SocketAddr> = found.collect();
                if found.is_empty() {
                    tracing::warn!(relay = %template.label, "relay name resolves to no address; keeping the current streams");
                } else {
                    resolved = found;
                }
            }
            Err(e) => {
                tracing::warn!(relay = %template.label, error = %e, "cannot resolve the relay name; keeping the current streams")
            }
        }
    }
}

/// Certificate files, re-read at every (re)connect so replaced files take
/// effect without a restart.
#[derive(Clone)]
struct TlsFiles {
    dir: PathBuf,
    server_name: String,
}

impl TlsFiles {
    fn load(&self) -> Result<tonic::transport::ClientTlsConfig, tls::TlsError> {
        tls::client_config(
            &self.dir.join(tls::CertFiles::CA),
            &self.dir.join(tls::CertFiles::cert(tls::Role::Sensor)),
            &self.dir.join(tls::CertFiles::key(tls::Role::Sensor)),
            &self.server_name,
        )
    }
}

#[derive(Clone)]
struct Link {
    addr: SocketAddr,
    label: String,
    tls: Option<TlsFiles>,
    token_file: Option<PathBuf>,
    hello: Hello,
    replay: Arc<Replay>,
    uplink: Arc<Uplink>,
    state: Arc<LinkState>,
    /// This link's number, for the policies it brings.
    id: u64,
    policies: Arc<Managed>,
}

fn jitter(d: Duration) -> Duration {
    let n = u64::from(proto::Timestamp::now().nanos.unsigned_abs());
    d + Duration::from_millis(n % (d.as_millis() as u64 / 2 + 1))
}

impl Link {
    /// Loads what the relay's set asks for (BPF loads block: off the
    /// runtime's threads) and returns the report for it.
    async fn apply_policies(&self, set: PolicySet) -> Result<proto::vigil::relay::v1::PolicyReport, SessionError> {
        let (policies, id) = (self.policies.clone(), self.id);
        tracing::debug!(relay = %self.label, generation = set.generation, policies = set.policies.len(), "relay policy set");
        tokio::task::spawn_blocking(move || policies.apply(id, set))
            .await
            .map_err(|e| SessionError::Transport(format!("applying the relay's policies: {e}")))
    }

    async fn run(self) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let ended = self.session().await;
            self.state.connected.store(false, Ordering::Relaxed);
            match ended {
                Ok(()) => {
                    tracing::warn!(relay = %self.label, addr = %self.addr, "relay stream ended; reconnecting");
                    backoff = Duration::from_millis(200);
                }
                Err(e) => {
                    tracing::warn!(relay = %self.label, addr = %self.addr, error = %e, "relay stream failed; retrying")
                }
            }
            tokio::time::sleep(jitter(backoff)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn session(&self) -> Result<(), SessionError> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", self.addr))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10));
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.load()?)?;
        }
        let token = self.token_file.as_deref().map(read_token).transpose()?;
        let channel = endpoint.connect().await?;
        let (tx, rx) = mpsc::channel(4);
        tx.send(proto::ingest::hello(self.hello.clone())).await.map_err(|_| SessionError::Closed)?;
        let messages = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut inbound = proto::ingest::stream(channel, messages, MAX_MESSAGE, token.as_deref()).await?;
        let acked = match inbound.message().await?.and_then(|r| r.msg) {
            Some(ingest_reply::Msg::Welcome(w)) => w.acked,
            _ => return Err(SessionError::NoWelcome),
        };
        tracing::info!(relay = %self.label, addr = %self.addr, acked, "streaming to relay");
        self.state.streams.fetch_add(1, Ordering::Relaxed);
        self.state.acked.store(acked, Ordering::Relaxed);
        self.state.sent.store(acked, Ordering::Relaxed);
        self.state.connected.store(true, Ordering::Relaxed);
        let mut cursor = acked + 1;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        // The relay's first set is answered with the Kubernetes policies
        // too; changes after it are reported as they come.
        let mut kubernetes = self.policies.kubernetes_changes();
        kubernetes.borrow_and_update();
        let overflow = serving::log_limit::LogLimit::new(Duration::from_secs(10));
        let mut skipped_unlogged = 0u64;
        loop {
            let notified = self.replay.notify.notified();
            let batch = self.replay.from(cursor, BATCH);
            if let Some((last, _)) = batch.last() {
                // Numbers between the cursor and the batch's end that it does
                // not carry: evicted before this relay got them, or never
                // buffered. Declared, so the relay can tell them from a jump.
                let skipped = (last + 1 - cursor).saturating_sub(batch.len() as u64);
                cursor = last + 1;
                let mut message = BatchEncoder::new();
                for (seq, e) in &batch {
                    message.push(*seq, &[e.encoded()]);
                }
                if skipped > 0 {
                    self.state.skipped.fetch_add(skipped, Ordering::Relaxed);
                    skipped_unlogged += skipped;
                    if overflow.hit().is_some() {
                        tracing::warn!(
                            relay = %self.label,
                            lost = skipped_unlogged,
                            "events left the replay buffer before this relay took them; it reports them as lost"
                        );
                        skipped_unlogged = 0;
                    }
                }
                tx.send(message.finish(0, skipped)).await.map_err(|_| SessionError::Closed)?;
                self.state.sent.store(*last, Ordering::Relaxed);
                continue;
            }
            tokio::select! {
                _ = notified => {}
                _ = tick.tick() => {}
                reply = inbound.message() => match reply? {
                    Some(IngestReply { msg: Some(ingest_reply::Msg::Ack(ack)) }) => {
                        self.state.acked.store(ack.seq, Ordering::Relaxed);
                    }
                    Some(IngestReply { msg: Some(ingest_reply::Msg::Policies(set)) }) => {
                        let report = self.apply_policies(set).await?;
                        tx.send(proto::ingest::policy_report(report)).await.map_err(|_| SessionError::Closed)?;
                    }
                    Some(_) => {}
                    None => return Ok(()),
                },
                Ok(()) = kubernetes.changed() => {
                    let (policies, id) = (self.policies.clone(), self.id);
                    let report = tokio::task::spawn_blocking(move || policies.report(id))
                        .await
                        .map_err(|e| SessionError::Transport(format!("reporting the Kubernetes policies: {e}")))?;
                    tx.send(proto::ingest::policy_report(report)).await.map_err(|_| SessionError::Closed)?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: &str) -> Arc<SharedEvent> {
        Arc::new(SharedEvent::new(proto::tetragon::GetEventsResponse { node_name: n.into(), ..Default::default() }))
    }

    #[test]
    fn links_follow_what_the_name_resolves_to() {
        let a: SocketAddr = "10.0.0.1:54331".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:54331".parse().unwrap();
        let c: SocketAddr = "10.0.0.3:54331".parse().unwrap();
        assert_eq!(link_changes(&BTreeSet::new(), &[a, b]), (vec![a, b], vec![]));
        let open: BTreeSet<SocketAddr> = [a, b].into();
        assert_eq!(link_changes(&open, &[b, a]), (vec![], vec![]), "order does not matter");
        assert_eq!(link_changes(&open, &[b, c, c]), (vec![c], vec![a]));
    }

    #[test]
    fn bounded_with_gaps_for_what_it_lost() {
        let r = Replay::new(3);
        for n in ["a", "b", "c", "d"] {
            r.push(ev(n));
        }
        assert_eq!(r.evicted(), 1);
        let seqs: Vec<u64> = r.from(1, 10).iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![2, 3, 4], "seq 1 was evicted: the relay will see the gap");
        r.skip(5);
        r.push(ev("e"));
        let seqs: Vec<u64> = r.from(4, 10).iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![4, 10]);
        assert_eq!(r.from(11, 10).len(), 0);
    }
}
