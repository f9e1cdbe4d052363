//! `vigil-relay`: wiring only. Sensors' streams come in on the ingest
//! listener, go through the merge stage into the hub, and leave to clients
//! on the client listener; serving, TLS and the process are `serving`'s.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use events::bus::EventBus;
use proto::vigil::relay::v1::ingest_server::IngestServer;
use proto::vigil::relay::v1::relay_admin_server::RelayAdminServer;
use relay::backbone::Backbone;
use relay::backbone::consume::{self, ConsumeCounters};
use relay::config::{CommandLine, SensorIdentity, Settings};
use relay::hub::Hub;
use relay::ingest::{IngestService, Sink};
use relay::merge::MergeCounters;
use relay::merge::stage::{self as merge_stage, MergeSettings};
use relay::nodes::Nodes;
use relay::policies::RelayPolicies;
use relay::query::{AdminService, QueryService};
use relay::token_review::TokenReviewer;
use serving::daemon;
use serving::health::{Health, TETRAGON_SERVICE};
use serving::listen::{self, Certificates, Listener};
use serving::metrics::MetricsListener;
use tls::Role;
use tls::auth::RoleCheck;
use tls::reload::ServerFiles;
use tokio::sync::mpsc;
use tonic::service::interceptor::InterceptedService;

/// Every event is a few allocations made on one thread and freed on another
/// (ingest decodes, a client stream sends last); glibc's allocator spent
/// ~30% of the relay's CPU on that, mimalloc far less (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gives the memory mimalloc holds freed on this thread back to the system
/// (called by an idle worker, at most once a second): after a burst, such
/// as stalled clients' queues let go, the relay's RSS falls back.
fn release_freed_memory() {
    // SAFETY: mi_collect has no preconditions: it collects the calling
    // thread's own heap and purges what is free; any thread may call it.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

/// What the health service answers for, besides the relay as a whole.
const HEALTH_SERVICES: &[&str] = &[
    TETRAGON_SERVICE,
    proto::vigil::relay::v1::ingest_server::SERVICE_NAME,
    proto::vigil::relay::v1::relay_admin_server::SERVICE_NAME,
];

/// Largest ingest message: a batch of events.
const MAX_BATCH_BYTES: usize = 16 << 20;

async fn run(flags: Settings) -> anyhow::Result<()> {
    if flags.insecure {
        tracing::warn!("--insecure: plaintext, no client authentication; use only on loopback or in tests");
    }
    let stop = daemon::stop_on_signal();
    let certificates = match &flags.tls_dir {
        Some(dir) => Some(Certificates::load(ServerFiles::in_dir(dir, Role::Relay)).await?),
        None => None,
    };
    let health = match &flags.health_server_address {
        Some(address) => {
            let (health, listener) = Health::bind(address, HEALTH_SERVICES).await.context("--health-server-address")?;
            tokio::spawn(listener.serve(stop.clone()));
            Some(health)
        }
        None => None,
    };
    // With a health service, a taken address is waited for (NOT_SERVING
    // meanwhile): a replacement pod may start before the old one let go.
    // Without one, it stops start-up at once.
    let wait = health.is_some();
    let Some(ingest_listener) = bind("ingest", &flags.ingest_address, certificates.clone(), wait, &stop).await? else {
        return Ok(());
    };
    let Some(client_listener) = bind("clients", &flags.client_address, certificates, wait, &stop).await? else {
        return Ok(());
    };
    let ingest_listener = ingest_listener.with_limits(flags.connections);
    let client_listener = client_listener.with_limits(flags.connections);
    let enforce = ingest_listener.is_tls();

    let nodes = Arc::new(Nodes::new(flags.forget_nodes_after, flags.max_nodes));
    let hub = Arc::new(Hub::new(
        EventBus::new(&flags.name, flags.client_queue_size).with_queue_bytes(flags.client_queue_bytes),
        flags.history_size,
        flags.history_bytes,
    ));
    let counters = Arc::new(MergeCounters::default());
    let (merge_tx, merge_rx) = mpsc::channel(merge_stage::QUEUE);
    let settings = MergeSettings {
        reorder_window: flags.reorder_window,
        max_pending: flags.max_pending,
        max_pending_bytes: flags.max_pending_bytes,
    };
    let merge = tokio::spawn(merge_stage::run(merge_rx, hub.clone(), settings, counters.clone(), stop.clone()));

    let backbone = match &flags.backbone {
        Some(settings) => {
            let backbone = Backbone::connect(settings.clone()).await.context("--backbone")?;
            tracing::info!(url = %settings.url, stream = %settings.stream, role = ?settings.role, "backbone ready");
            Some(backbone)
        }
        None => None,
    };
    let policies = match &backbone {
        Some(b) => shared_policies(b, &nodes, &stop).await?,
        None => {
            let store = relay::policies::store::Store::open(flags.policy_store.as_deref())?;
            let policies = Arc::new(RelayPolicies::open(store, nodes.clone())?);
            match &flags.policy_store {
                Some(path) => {
                    tracing::info!(store = %path.display(), policies = policies.list_len(), generation = policies.generation(), "tracing policies for every sensor")
                }
                None => tracing::info!(
                    "tracing policies added here are kept in memory only (--policy-store keeps them across restarts)"
                ),
            }
            policies
        }
    };
    let consumed = Arc::new(ConsumeCounters::default());
    let sink = match &backbone {
        None => Sink::Merge(merge_tx.clone()),
        Some(b) if b.settings.role.ingests() => Sink::Backbone(Arc::new(b.clone())),
        Some(_) => Sink::QueryOnly,
    };
    if let Some(b) = backbone.as_ref().filter(|b| b.settings.role.queries()) {
        let run = consume::run(
            b.clone(),
            nodes.clone(),
            // A relay that also ingests counts its nodes' events there.
            !b.settings.role.ingests(),
            merge_tx.clone(),
            flags.history_size,
            consumed.clone(),
            stop.clone(),
        );
        tokio::spawn(run);
    }
    drop(merge_tx);
    let mut ingest_service = IngestService::new(nodes.clone(), sink, policies.clone());
    if flags.sensor_identity == SensorIdentity::Kubernetes {
        let client = kube_client(flags.kubeconfig.as_deref()).await?;
        tracing::info!(audience = %flags.token_audience, account = %flags.sensor_service_account, "sensor node names come from service-account tokens (TokenReview)");
        ingest_service = ingest_service.with_token_review(TokenReviewer::new(
            client,
            flags.token_audience.clone(),
            flags.sensor_service_account.clone(),
        ));
    }
    let ingest = InterceptedService::new(
        IngestServer::new(ingest_service).max_decoding_message_size(MAX_BATCH_BYTES),
        RoleCheck::new(tls::auth::SENSOR_ROLES, enforce),
    );
    let export_dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let exporter = match &flags.export_filename {
        Some(path) => {
            let counted = export_dropped.clone();
            let lost = move |n| {
                counted.fetch_add(n, Ordering::Relaxed);
            };
            let export = serving::export::start(&hub.bus, path, &flags.export, lost)
                .with_context(|| format!("--export-filename {}", path.display()))?;
            Some(export)
        }
        None => None,
    };
    let backbone_status = backbone.as_ref().map(|b| (b.settings.clone(), consumed.clone()));
    let query = Arc::new(QueryService {
        hub: hub.clone(),
        nodes,
        merge: counters.clone(),
        export_dropped,
        policies,
        backbone: backbone_status,
    });
    if let Some(address) = &flags.metrics_address {
        let listener = MetricsListener::bind(address).await.context("--metrics-address")?;
        let refusals = vec![("ingest", ingest_listener.refusals()), ("clients", client_listener.refusals())];
        let export = exporter.as_ref().map(|e| e.stats.clone());
        let registry = relay::metrics::registry(query.clone(), refusals, export);
        tokio::spawn(listener.serve(Arc::new(registry), stop.clone()));
    }
    let admin = RelayAdminServer::with_interceptor(
        AdminService(query.clone()),
        RoleCheck::new(tls::auth::CLIENT_ROLES, enforce),
    );
    let clients = serving::api::tetragon_service(query, enforce);
    tracing::info!(ingest = %flags.ingest_address, clients = %flags.client_address, mtls = enforce, "relay serving");
    let ingest_server = tokio::spawn(ingest_listener.serve(listen::server().add_service(ingest), stop.clone()));
    let client_server =
        tokio::spawn(client_listener.serve(listen::server().add_service(clients).add_service(admin), stop.clone()));
    // SERVING from now, while both listeners serve; NOT_SERVING from the
    // stop on (either listener failing stops the relay).
    if let Some(health) = health {
        health.set(true).await;
        let stopping = stop.clone();
        tokio::spawn(async move {
            listen::stopped(stopping).await;
            health.set(false).await;
        });
    }
    tokio::try_join!(joined(ingest_server, "--ingest-address"), joined(client_server, "--client-address"))?;
    let _ = merge.await;
    // The export writes what is queued for it, then ends.
    hub.bus.close();
    if let Some(export) = exporter {
        export.finish().await;
    }
    tracing::info!(merged = counters.merged.load(Ordering::Relaxed), "stopped");
    Ok(())
}

/// The tracing policies every relay on the backbone shares: followed from
/// its bucket, and waited for, so that no sensor is sent an empty set
/// before the bucket's.
async fn shared_policies(
    backbone: &Backbone,
    nodes: &Arc<Nodes>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Arc<RelayPolicies>> {
    let bucket = backbone.policy_bucket().await.context("--backbone-policy-bucket")?;
    let newest = bucket.last_revision().await.context("--backbone-policy-bucket")?;
    let policies = Arc::new(RelayPolicies::shared(bucket.clone(), nodes.clone()));
    tokio::spawn(bucket.follow(policies.clone(), stop.clone()));
    if !policies.caught_up(newest, POLICY_BUCKET_WAIT).await {
        anyhow::bail!(
            "--backbone-policy-bucket {}: the bucket's policies did not arrive within {} s",
            backbone.settings.policy_bucket,
            POLICY_BUCKET_WAIT.as_secs()
        );
    }
    tracing::info!(bucket = %backbone.settings.policy_bucket, policies = policies.list_len(), generation = policies.generation(), "tracing policies for every sensor, shared on the backbone");
    Ok(policies)
}

/// How long start-up waits for the policy bucket's contents.
const POLICY_BUCKET_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Binds `address`; if it is in use and `wait`, tries again every second
/// until it is free or the relay is stopped (`None`).
async fn bind(
    label: &'static str,
    address: &serving::address::ServerAddress,
    certificates: Option<Certificates>,
    wait: bool,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<Option<Listener>, listen::ListenError> {
    let taken = serving::log_limit::LogLimit::new(std::time::Duration::from_secs(10));
    loop {
        match Listener::bind(label, address, certificates.clone()).await {
            Ok(l) => return Ok(Some(l)),
            Err(listen::ListenError::Bind { error, .. }) if wait && error.kind() == std::io::ErrorKind::AddrInUse => {
                if let Some(n) = taken.hit() {
                    tracing::warn!(listener = label, %address, tries = n, "address in use; NOT_SERVING, trying again every second");
                }
                tokio::select! {
                    () = listen::stopped(stop.clone()) => return Ok(None),
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// A Kubernetes client: from `kubeconfig`, or the pod's in-cluster credentials.
async fn kube_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        None => kube::Config::incluster().context("in-cluster Kubernetes credentials (or pass --kubeconfig)")?,
    };
    kube::Client::try_from(config).context("Kubernetes client")
}

async fn joined(
    task: tokio::task::JoinHandle<Result<(), listen::ListenError>>,
    flag: &'static str,
) -> anyhow::Result<()> {
    task.await.with_context(|| format!("{flag} listener task"))?.with_context(|| flag)
}

fn main() -> std::process::ExitCode {
    let settings = match Settings::resolve(CommandLine::parse()) {
        Ok(s) => s,
        Err(e) => return daemon::config_error("vigil-relay", &e),
    };
    if let Err(e) = daemon::init_logging(&settings.log_level, settings.log_format) {
        return daemon::config_error("vigil-relay", &e);
    }
    daemon::run_releasing("vigil-relay", None, release_freed_memory, || run(settings))
}
