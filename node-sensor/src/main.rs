//! `vigil-sensor`: loads the lifecycle programs, seeds the process cache
//! from /proc, and serves events over Tetragon's gRPC API.

use std::sync::Arc;

use anyhow::Context;
use events::bus::EventBus;
use node_sensor::btf_offsets::Features;
use node_sensor::clock::Clock;
use node_sensor::config::{CommandLine, Settings};
use node_sensor::k8s::{self, ApiSource};
use node_sensor::pipeline::Pipeline;
use node_sensor::policies::PolicyHost;
use node_sensor::policies::api::SharedPolicies;
use node_sensor::privileges::{Collect, HostNamespaces};
use node_sensor::stats::SensorStats;
use node_sensor::uplink::{self, UplinkSettings};
use node_sensor::{loader, server};
use serving::daemon;
use serving::export;
use serving::health::{Health, TETRAGON_SERVICE};
use serving::listen::{Certificates, Listener};
use serving::metrics::MetricsListener;

/// Each event is many small allocations (records, cache entries, the
/// wire event, its encoding) made on the pipeline's thread and freed on a
/// client's; glibc spent about a fifth of the sensor's CPU per exec on
/// that (`malloc_consolidate` alone 9%), mimalloc far less (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gives the memory mimalloc holds freed on this thread back to the system
/// (called by an idle worker, at most once a second): after a burst, such
/// as stalled clients' queues let go, the sensor's RSS falls back.
fn release_freed_memory() {
    // SAFETY: mi_collect has no preconditions: it collects the calling
    // thread's own heap and purges what is free; any thread may call it.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

/// TLS for the sensor's own API: none on a unix socket or loopback (as
/// Tetragon serves `localhost:54321`); off loopback, mTLS with the sensor
/// certificate from --tls-dir and client certificates required, unless
/// --insecure (config resolution refuses neither).
fn serving_tls(settings: &Settings) -> Option<tls::reload::ServerFiles> {
    if settings.server_address.is_local() {
        return None;
    }
    match (&settings.tls_dir, settings.insecure) {
        (Some(dir), false) => {
            tracing::info!(address = %settings.server_address, "serving the API with mTLS (client certificates required)");
            Some(tls::reload::ServerFiles::in_dir(dir, tls::Role::Sensor))
        }
        _ => {
            tracing::warn!(address = %settings.server_address, "--insecure: serving the API in plaintext, without client authentication, off loopback");
            None
        }
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    // --only-own-netns needs each process's network namespace.
    let features =
        Features { creds: settings.enable_process_cred, ns: settings.enable_process_ns || settings.only_own_netns };
    let loader::Probes { ebpf, feed, hook_programs, .. } = loader::load(&settings.btf, features)?;
    let (host, warnings) = HostNamespaces::read(&settings.procfs);
    if features.ns {
        for w in warnings {
            tracing::warn!("{w}");
        }
    }
    let collect = Collect { creds: features.creds, ns: features.ns, host };
    tracing::info!(node = %settings.node_name, programs = ?loader::PROGRAMS, "BPF programs loaded and attached");
    let certificates = match serving_tls(&settings) {
        Some(files) => Some(Certificates::load(files).await?),
        None => None,
    };
    let listener = Listener::bind("api", &settings.server_address, certificates).await?;
    let listener_refusals = listener.refusals();
    let stats = Arc::new(SensorStats::default());
    let bus = EventBus::new(&settings.node_name, settings.subscriber_queue_size)
        .with_queue_bytes(settings.subscriber_queue_bytes);
    let stop = daemon::stop_on_signal();
    let health = match &settings.health_server_address {
        Some(address) => {
            let (health, listener) =
                Health::bind(address, &[TETRAGON_SERVICE]).await.context("--health-server-address")?;
            tokio::spawn(listener.serve(stop.clone()));
            Some(health)
        }
        None => None,
    };

    let exporter = match &settings.export_filename {
        Some(path) => Some(
            export::start(&bus, path, &settings.export, {
                let stats = stats.clone();
                move |n| {
                    stats.export_dropped.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
            })
            .with_context(|| format!("opening export file {}", path.display()))?,
        ),
        None => None,
    };

    // Bound now (a bad address stops start-up before the slow parts);
    // served once the policies it also reports exist.
    let metrics = match &settings.metrics_address {
        Some(address) => {
            let listener = MetricsListener::bind(address).await.context("--metrics-address")?;
            let counts = Arc::new(node_sensor::metrics::EventCounts::new(settings.metrics_label_filter));
            Some((listener, counts))
        }
        None => None,
    };
    let mut pipeline = Pipeline::new(
        &settings.node_name,
        Clock::from_system(),
        collect,
        settings.process_cache_size,
        bus.clone(),
        stats.clone(),
    )
    .with_batch_delay(settings.ring_batch);
    let mut kubernetes = None;
    if settings.enable_k8s_api {
        let source = match &settings.kubeconfig {
            Some(path) => ApiSource::Kubeconfig(path.clone()),
            None => ApiSource::InCluster,
        };
        let client = k8s::client(&source).await.context("Kubernetes API (--enable-k8s-api)")?;
        let pods = k8s::start(client.clone(), &settings.node_name, settings.k8s_pod_annotations, stats.clone()).await;
        tracing::info!(node = %settings.node_name, "watching this node's pods");
        pipeline = pipeline.with_pods(pods.clone(), &settings.procfs);
        kubernetes = Some((client, pods));
    }
    if settings.enable_ancestors {
        pipeline = pipeline.with_ancestors();
    }
    if let Some((_, counts)) = &metrics {
        pipeline = pipeline.with_metrics(counts.clone());
    }
    let mut policies = PolicyHost::new(ebpf, hook_programs);
    pipeline = pipeline.with_policies(policies.table(), &settings.procfs, settings.expose_stack_addresses);
    let policy_files =
        node_sensor::policies::startup_files(&settings.tracing_policy, settings.tracing_policy_dir.as_deref())
            .map_err(anyhow::Error::msg)?;
    for path in policy_files {
        let text = node_sensor::policies::read_file(&path).map_err(anyhow::Error::msg)?;
        policies.add_yaml(&text).with_context(|| format!("tracing policy {}", path.display()))?;
        tracing::info!(file = %path.display(), "tracing policy loaded");
    }
    let policies = SharedPolicies(Arc::new(parking_lot::Mutex::new(policies)));
    let managed =
        Arc::new(node_sensor::policies::managed::Managed::new(policies.clone(), !settings.ignore_relay_policies));
    if let Some((client, pods)) = kubernetes {
        k8s::placement::follow(client.clone(), settings.node_name.clone(), pods, policies.clone());
        k8s::policies::watch(client, managed.clone());
        tracing::info!("watching TracingPolicy and TracingPolicyNamespaced objects");
    }
    if settings.only_own_netns {
        let own =
            node_sensor::privileges::read_ns_inums(&settings.procfs, std::process::id())[node_sensor_common::NS_NET];
        tracing::info!(netns = own, "reporting only processes in the sensor's own network namespace");
        pipeline = pipeline.only_netns(own);
    }
    let mut relays = None;
    if !settings.relay_address.is_empty() {
        if settings.insecure {
            tracing::warn!("--insecure: streaming to relays in plaintext");
        }
        let uplink = UplinkSettings {
            node_name: settings.node_name.clone(),
            relays: settings.relay_address.clone(),
            tls_dir: if settings.insecure { None } else { settings.tls_dir.clone() },
            buffer_size: settings.replay_buffer_size,
            resolve_interval: settings.relay_resolve_interval,
            token_file: settings.relay_token_file.clone(),
        };
        relays = Some(uplink::start(&bus, uplink, managed).await.context("relay uplink")?);
    }
    if let Some((listener, counts)) = metrics {
        let registry = node_sensor::metrics::registry(node_sensor::metrics::Sources {
            stats: stats.clone(),
            bus: bus.clone(),
            counts,
            policies: policies.clone(),
            refusals: listener_refusals,
            export: exporter.as_ref().map(|e| e.stats.clone()),
            uplink: relays.clone(),
        });
        tokio::spawn(listener.serve(Arc::new(registry), stop.clone()));
    }
    // The /proc walks, on a blocking thread: on a busy node they take a
    // while, and the policy host may be locked by a policy loading for
    // the relay or Kubernetes, while the one runtime worker answers
    // health probes and scrapes.
    let (pipeline, seeded) = tokio::task::spawn_blocking({
        let (host, procfs) = (policies.0.clone(), settings.procfs.clone());
        move || {
            let seeded = pipeline.seed_from_procfs(&procfs);
            host.lock().seed_binaries(&procfs);
            (pipeline, seeded)
        }
    })
    .await
    .context("seeding from /proc")?;
    // Served only now: a client that sees the sensor healthy sees events
    // of processes started after the /proc walk as execs, not as `procFS`.
    // (The listener was bound earlier, so connections wait in its backlog.)
    let (dumps, dump_requests) = node_sensor::dump::channel();
    let api = server::SensorApi { bus: bus.clone(), stats: stats.clone(), dumps, policies };
    let server = tokio::spawn(server::serve(listener, api, stop.clone()));
    tracing::info!(processes = seeded, address = %settings.server_address, "process cache seeded from procfs; serving");

    let pipe = tokio::spawn(pipeline.run(feed, dump_requests, stop.clone()));
    // Until everything is written at the end (the export finishes after
    // the stop), so the last losses are logged too.
    let (losses_done, losses_stop) = tokio::sync::watch::channel(false);
    let losses = node_sensor::losses::watch(stats.clone(), bus.clone(), relays, losses_stop);
    if let Some(health) = health {
        node_sensor::health::watch(health, stats.clone(), stop);
    }
    // The server ends on shutdown or on a listen error; either way stop.
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(e) => anyhow::bail!("server task failed: {e}"),
    }
    pipe.await.context("pipeline task")??;
    // The export writes what is queued for it, then ends.
    bus.close();
    if let Some(export) = exporter {
        export.finish().await;
    }
    let _ = losses_done.send(true);
    let _ = losses.await;
    tracing::info!(stats = %stats.snapshot(&bus), "stopped");
    Ok(())
}

fn main() -> std::process::ExitCode {
    let settings = match Settings::resolve(CommandLine::parse()) {
        Ok(s) => s,
        Err(e) => return daemon::config_error("vigil-sensor", &e),
    };
    if let Err(e) = daemon::init_logging(&settings.log_level, settings.log_format) {
        return daemon::config_error("vigil-sensor", &e);
    }
    // One runtime worker: the ring reader, the bus and the client streams
    // hand each burst from task to task, and with two workers most hands
    // were a wake of the other thread (CPU per exec 10-27% lower with one,
    // BENCHMARKS.md). What may block long runs on blocking threads: policy
    // loads, metrics scrapes, export writes.
    daemon::run_releasing("vigil-sensor", Some(1), release_freed_memory, || run(settings))
}
