//! `vigil-relay`: serves sensors on the ingest listener and clients on the
//! client listener; merges, deduplicates and fans out.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use events::bus::EventBus;
use proto::Timestamp;
use proto::shared::fine_guidance_sensors_server::FineGuidanceSensorsServer;
use proto::tetragon::{GetEventsResponse, RateLimitInfo, get_events_response::Event};
use proto::vigil::relay::v1::ingest_server::IngestServer;
use proto::vigil::relay::v1::relay_admin_server::RelayAdminServer;
use relay::config::{Flags, LogFormat};
use relay::hub::Hub;
use relay::ingest::{IngestService, MergeInput};
use relay::merge::{MergeCounters, Merger};
use relay::nodes::Nodes;
use relay::query::QueryService;
use tls::reload::ServerFiles;
use tls::{Role, auth};
use tokio::sync::{mpsc, watch};
use tonic::transport::{Server, ServerTlsConfig};
use tracing_subscriber::EnvFilter;

/// Every event is a few allocations made on one thread and freed on another
/// (ingest decodes, a client stream sends last); glibc's allocator spent
/// ~30% of the relay's CPU on that, mimalloc far less (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Ingest batches waiting for the merge task; sensors wait when it is full.
const MERGE_QUEUE: usize = 64;
const FLUSH_EVERY: Duration = Duration::from_millis(5);
/// Dedup keys remembered (of waiting and already merged events).
const SEEN_KEYS: usize = 1 << 20;
/// How often certificate files are checked for changes.
const CERT_POLL: Duration = Duration::from_secs(2);
/// How long start-up waits for certificate files that exist but do not load.
const START_CERT_WAIT: Duration = Duration::from_secs(10);

async fn merge_task(
    mut rx: mpsc::Receiver<MergeInput>,
    hub: Arc<Hub>,
    flags: Flags,
    counters: Arc<MergeCounters>,
    mut stop: watch::Receiver<bool>,
) {
    let mut merger = Merger::new(Duration::from_millis(flags.reorder_window_ms), flags.max_pending, SEEN_KEYS);
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    let mut out = Vec::new();
    let publish = |out: &mut Vec<_>, merger: &Merger| {
        counters.record(merger);
        hub.publish_all(std::mem::take(out));
    };
    loop {
        tokio::select! {
            input = rx.recv() => match input {
                Some(MergeInput::Events(events)) => {
                    let now = Timestamp::now().unix_nanos();
                    for e in events {
                        merger.push(e, now, &mut out);
                    }
                    publish(&mut out, &merger);
                }
                Some(MergeInput::Lost { node, count }) => hub.publish(GetEventsResponse {
                    event: Some(Event::RateLimitInfo(RateLimitInfo { number_of_dropped_process_events: count })),
                    node_name: node,
                    time: Some(Timestamp::now()),
                    ..Default::default()
                }),
                None => break,
            },
            _ = tick.tick() => {
                merger.flush(Timestamp::now().unix_nanos(), &mut out);
                publish(&mut out, &merger);
            }
            _ = stop.changed() => break,
        }
    }
    merger.drain(&mut out);
    publish(&mut out, &merger);
}

/// A server with `tls` (None: plaintext, `--insecure`).
fn server(tls: Option<&ServerTlsConfig>) -> anyhow::Result<Server> {
    let mut builder = Server::builder().http2_keepalive_interval(Some(Duration::from_secs(30)));
    if let Some(cfg) = tls {
        // Checked when loaded (ServerFiles::load): cannot fail here.
        builder = builder.tls_config(cfg.clone()).context("TLS settings")?;
    }
    Ok(builder)
}

/// Binds a listener, retrying while a previous server generation releases it.
async fn bind(address: &str, flag: &str) -> anyhow::Result<tokio::net::TcpListener> {
    proto::transport::bind_tcp(address, Duration::from_secs(10))
        .await
        .with_context(|| format!("cannot listen on {flag} {address}"))
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    flags.check()?;
    if flags.insecure {
        tracing::warn!("--insecure: plaintext, no client authentication; use only on loopback or in tests");
    }
    let enforce = flags.tls_dir.is_some();
    let nodes = Arc::new(Nodes::default());
    let hub = Arc::new(Hub::new(EventBus::new(&flags.name, flags.client_queue_size), flags.history_size));
    let counters = Arc::new(MergeCounters::default());
    let (merge_tx, merge_rx) = mpsc::channel(MERGE_QUEUE);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (reload_tx, mut reload_rx) = watch::channel(None);
    let merge = tokio::spawn(merge_task(merge_rx, hub.clone(), flags.clone(), counters.clone(), stop_rx.clone()));
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
        }
    });
    // The relay's certificates: loaded (a half-written rotation is waited
    // for), then watched; a changed set that loads arrives on `reload_rx`.
    let files = flags.tls_dir.as_deref().map(|dir| ServerFiles::in_dir(dir, Role::Relay));
    let mut tls = match &files {
        Some(f) => Some(f.load_at_start(START_CERT_WAIT).await?),
        None => None,
    };
    if let Some(f) = files {
        tokio::spawn(f.watch(CERT_POLL, reload_tx));
    }

    // Serve until stopped; on a certificate change, serve again with the
    // new certificates (state, history and clients' queues live on; open
    // streams reconnect and resume).
    loop {
        let ingest = tonic::service::interceptor::InterceptedService::new(
            IngestServer::new(IngestService::new(nodes.clone(), merge_tx.clone())).max_decoding_message_size(16 << 20),
            auth::require(Role::Sensor, enforce),
        );
        let query = QueryService { hub: hub.clone(), nodes: nodes.clone(), merge: counters.clone() };
        let admin = QueryService { hub: hub.clone(), nodes: nodes.clone(), merge: counters.clone() };
        let client_auth = auth::require(Role::Client, enforce);
        let clients = tonic::service::interceptor::InterceptedService::new(
            FineGuidanceSensorsServer::new(query).max_decoding_message_size(4 << 20),
            client_auth.clone(),
        );
        let admin = RelayAdminServer::with_interceptor(admin, client_auth);
        let ingest_listener = bind(&flags.ingest_address, "--ingest-address").await?;
        let client_listener = bind(&flags.client_address, "--client-address").await?;
        tracing::info!(ingest = %flags.ingest_address, clients = %flags.client_address, mtls = enforce, "relay serving");
        reload_rx.mark_unchanged();
        let (done_tx, done_rx) = watch::channel(false);
        let end = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let (mut ingest_builder, mut client_builder) = (server(tls.as_ref())?, server(tls.as_ref())?);
        let ingest_server = tokio::spawn(ingest_builder.add_service(ingest).serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(ingest_listener),
            end(done_rx.clone()),
        ));
        let client_server =
            tokio::spawn(client_builder.add_service(clients).add_service(admin).serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(client_listener),
                end(done_rx.clone()),
            ));
        // Until stopped, or until changed certificates load (the old
        // listeners keep serving if they do not: see ServerFiles::watch).
        let mut stop = stop_rx.clone();
        let reloaded = tokio::select! {
            _ = stop.wait_for(|s| *s) => None,
            r = reload_rx.changed() => r.ok().and_then(|()| reload_rx.borrow_and_update().clone()),
        };
        // Stop accepting; connections already open keep their streams (and
        // the certificates they were made with) until they end.
        let _ = done_tx.send(true);
        let Some(new_tls) = reloaded else {
            // Streams never end on their own: give them a moment, then go.
            let _ = tokio::time::timeout(Duration::from_secs(3), async {
                let _ = ingest_server.await;
                let _ = client_server.await;
            })
            .await;
            break;
        };
        tls = Some(new_tls);
    }
    drop(merge_tx);
    let _ = merge.await;
    tracing::info!(merged = counters.merged.load(Ordering::Relaxed), "stopped");
    Ok(())
}

/// Refused TLS handshakes (unknown CA, expired or not yet valid, no
/// certificate) are security events, but tonic logs them at debug level:
/// they are shown whenever the relay logs at info or more.
fn log_filter(level: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    let filter = EnvFilter::try_new(level)?;
    Ok(if matches!(level, "info" | "debug" | "trace") {
        filter.add_directive("tonic::transport::server::io_stream=debug".parse()?)
    } else {
        filter
    })
}

fn main() -> std::process::ExitCode {
    let flags = Flags::parse();
    let filter = match log_filter(&flags.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("vigil-relay: invalid --log-level {:?}: {e}", flags.log_level);
            return std::process::ExitCode::from(2);
        }
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match flags.log_format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vigil-relay: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(flags)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil-relay: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
