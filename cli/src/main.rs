//! `vigil`: query Vigil sensors and relays.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use events::compact::CompactOptions;
use proto::tetragon::fine_guidance_sensors_client::FineGuidanceSensorsClient;
use proto::tetragon::{GetHealthStatusRequest, GetVersionRequest, HealthStatusResult};
use proto::vigil::relay::v1::ListNodesRequest;
use proto::vigil::relay::v1::relay_admin_client::RelayAdminClient;
use vigil_cli::args::{CertsCommand, Cli, ColorMode, Command, GetEventsArgs, TracingPolicyCommand};
use vigil_cli::getevents::{self, LocalFilter, Printer, status_error};
use vigil_cli::request;
use vigil_cli::target::Target;

async fn get_events(cli: &Cli, args: &GetEventsArgs) -> anyhow::Result<()> {
    let request = request::build(args)?;
    let stdout = std::io::stdout();
    let color = match args.color {
        ColorMode::Always => true,
        ColorMode::Never => false,
        ColorMode::Auto => stdout.is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let mut printer = Printer::new(stdout.lock(), args.output, CompactOptions { color, timestamps: args.timestamps });
    if cli.server_address.is_none() && !std::io::stdin().is_terminal() {
        let filter = LocalFilter::new(&request)?;
        let bad = getevents::from_reader(std::io::stdin().lock(), &filter, &mut printer, &mut std::io::stderr())?;
        if bad > 0 {
            anyhow::bail!("{bad} input lines were not valid events");
        }
        return Ok(());
    }
    getevents::from_server(&Target::from_cli(cli)?, request, &mut printer, args.reconnect).await
}

fn print_nodes(r: &proto::vigil::relay::v1::ListNodesResponse) {
    if let Some(b) = &r.backbone {
        println!(
            "backbone: {} stream {} ({}): consumed {} events, {} malformed messages and {} duplicate events skipped, at \
             stream sequence {}",
            b.url, b.stream, b.role, b.consumed, b.malformed, b.duplicates, b.position
        );
    }
    println!(
        "{:<24} {:<10} {:<31} {:>10} {:>8} {:>8} {:>8} {:>8}  CREDENTIAL",
        "NODE", "STATE", "LAST SEEN", "EVENTS", "LOST", "DUPS", "LAG MS", "POLICIES"
    );
    for n in &r.nodes {
        let seen = n.last_seen.map(|t| t.to_protojson()).unwrap_or_else(|| "-".into());
        let state = match (n.connected, n.via_backbone) {
            (true, _) => "connected",
            (false, true) => "backbone",
            (false, false) => "gone",
        };
        // An any-node credential could speak for any node: say so.
        let credential = match (n.any_node_credential, n.via_backbone) {
            (true, _) => "ANY NODE",
            (false, true) => "(ingest relay's)",
            (false, false) => "this node",
        };
        // POLICIES: the generation of the relay's policy set the node has
        // applied (see "policy generation" below).
        println!(
            "{:<24} {:<10} {:<31} {:>10} {:>8} {:>8} {:>8} {:>8}  {credential}",
            n.node_name, state, seen, n.events, n.lost, n.duplicates, n.lag_ms, n.policy_generation
        );
        if r.backbone.as_ref().is_some_and(|b| b.role != "query") {
            println!(
                "{:<24} stored by the backbone: {} events, the last batch in {} ms",
                "", n.backbone_events, n.backbone_publish_ms
            );
        }
    }
    println!(
        "clients: {}  events merged: {}  shared-kernel copies merged: {}  sent early (pending full): {}  \
         pending: {} ({} MiB)  client queues: {} MiB  dropped for slow clients: {}  history: {} events, {} MiB  \
         export dropped: {}  policy generation: {}",
        r.clients,
        r.events_merged,
        r.shared_kernel_copies,
        r.sent_early,
        r.pending,
        r.pending_bytes >> 20,
        r.client_queue_bytes >> 20,
        r.client_dropped,
        r.history_events,
        r.history_bytes >> 20,
        r.export_dropped,
        r.policy_generation
    );
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::GetEvents(args) => get_events(&cli, args).await,
        Command::Status => {
            let mut client = FineGuidanceSensorsClient::new(Target::from_cli(&cli)?.channel().await?);
            let health = client.get_health(GetHealthStatusRequest::default()).await.map_err(status_error)?.into_inner();
            let mut ok = !health.health_status.is_empty();
            for h in &health.health_status {
                let status = HealthStatusResult::try_from(h.status).unwrap_or(HealthStatusResult::HealthStatusUndef);
                ok &= status == HealthStatusResult::HealthStatusRunning;
                println!("Health Status: {}", h.details);
            }
            if !ok {
                anyhow::bail!("server is not healthy");
            }
            Ok(())
        }
        Command::Version => {
            println!("CLI version: {}", env!("CARGO_PKG_VERSION"));
            let channel = Target::from_cli(&cli)?.channel().await.context("asking the server for its version")?;
            let v = FineGuidanceSensorsClient::new(channel)
                .get_version(GetVersionRequest {})
                .await
                .map_err(status_error)?;
            println!("Server version: {}", v.into_inner().version);
            Ok(())
        }
        Command::Nodes => {
            let mut client = RelayAdminClient::new(Target::from_cli(&cli)?.channel().await?);
            let r = client.list_nodes(ListNodesRequest {}).await.map_err(status_error)?.into_inner();
            print_nodes(&r);
            Ok(())
        }
        Command::Certs(CertsCommand::Generate { out, relay_dns, sensor_dns, sensor_nodes, any_node_sensor, days }) => {
            let plan = tls::Plan {
                relay_dns: relay_dns.clone(),
                sensor_dns: sensor_dns.clone(),
                sensor_nodes: sensor_nodes.clone(),
                any_node_sensor: *any_node_sensor,
                days: *days,
            };
            if sensor_nodes.is_empty() && !any_node_sensor {
                eprintln!("note: no sensor credential written; add --sensor-node NAME per node (or --any-node-sensor)");
            }
            for f in tls::generate_for(out, &plan)? {
                println!("wrote {}", f.display());
            }
            Ok(())
        }
        Command::Certs(CertsCommand::Sensor { ca_dir, node, sensor_dns, days }) => {
            for f in tls::issue_node(ca_dir, node, sensor_dns, *days)? {
                println!("wrote {}", f.display());
            }
            Ok(())
        }
        Command::TracingPolicy(TracingPolicyCommand::Validate { files }) => validate_policies(files),
        Command::TracingPolicy(command) => {
            let role = if command.changes() { tls::Role::Admin } else { tls::Role::Client };
            vigil_cli::tracingpolicy::run(&Target::from_cli_as(&cli, role)?, command).await
        }
    }
}

/// `vigil tracingpolicy validate`: one line per file, all files checked.
fn validate_policies(files: &[std::path::PathBuf]) -> anyhow::Result<()> {
    let mut refused = 0;
    for file in files {
        let checked = std::fs::read_to_string(file)
            .map_err(|e| e.to_string())
            .and_then(|text| policy::parse(&text).map_err(|e| e.to_string()));
        match checked {
            Ok(p) => println!("{}: ok ({} {:?})", file.display(), p.metadata.name, p.kind),
            Err(e) => {
                refused += 1;
                eprintln!("{}: {e}", file.display());
            }
        }
    }
    if refused > 0 {
        anyhow::bail!("{refused} of {} policies refused", files.len());
    }
    Ok(())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    serving::daemon::run_as("vigil", serving::daemon::Threads::Current, None, || run(cli), is_broken_pipe)
}
