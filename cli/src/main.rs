//! `vigil`: query Vigil sensors and relays.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use events::compact::CompactOptions;
use proto::tetragon::fine_guidance_sensors_client::FineGuidanceSensorsClient;
use proto::tetragon::{GetHealthStatusRequest, GetVersionRequest, HealthStatusResult};
use proto::transport::ServerAddress;
use vigil_cli::args::{Cli, ColorMode, Command, DEFAULT_SERVER, GetEventsArgs};
use vigil_cli::getevents::{self, LocalFilter, Printer, status_error};
use vigil_cli::request;

fn address(cli: &Cli) -> anyhow::Result<ServerAddress> {
    Ok(cli.server_address.as_deref().unwrap_or(DEFAULT_SERVER).parse()?)
}

async fn connect(cli: &Cli) -> anyhow::Result<FineGuidanceSensorsClient<tonic::transport::Channel>> {
    let address = address(cli)?;
    let timeout = Duration::from_secs(cli.timeout);
    let channel = tokio::time::timeout(timeout, address.connect())
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {timeout:?} connecting to {address}"))??;
    Ok(FineGuidanceSensorsClient::new(channel))
}

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
    getevents::from_server(&address(cli)?, request, &mut printer, args.reconnect, Duration::from_secs(cli.timeout))
        .await
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::GetEvents(args) => get_events(&cli, args).await,
        Command::Status => {
            let mut client = connect(&cli).await?;
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
            let mut client = connect(&cli).await.context("asking the server for its version")?;
            let v = client.get_version(GetVersionRequest {}).await.map_err(status_error)?.into_inner();
            println!("Server version: {}", v.version);
            Ok(())
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vigil: cannot start: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
