//! Where the CLI connects: an address and, when any TLS flag is given, the
//! mTLS identity (tetra's `--tls-*` flags or a `vigil certs` directory).

use std::time::Duration;

use anyhow::Context;
use serving::address::ServerAddress;
use tonic::transport::{Channel, ClientTlsConfig};

use crate::args::{Cli, DEFAULT_SERVER};

pub struct Target {
    pub address: ServerAddress,
    pub tls: Option<ClientTlsConfig>,
    pub timeout: Duration,
}

impl Target {
    pub fn from_cli(cli: &Cli) -> anyhow::Result<Target> {
        Self::from_cli_as(cli, tls::Role::Client)
    }

    /// With `role` admin (changing policies), a `--tls-dir` holding an
    /// admin certificate (admin.pem, admin-key.pem) gives that one;
    /// otherwise, and for every other call, the client certificate.
    pub fn from_cli_as(cli: &Cli, role: tls::Role) -> anyhow::Result<Target> {
        let address: ServerAddress = cli.server_address.as_deref().unwrap_or(DEFAULT_SERVER).parse()?;
        let dir = cli.tls_dir.as_deref();
        let any_tls = dir.is_some()
            || !cli.tls_ca_cert_files.is_empty()
            || cli.tls_cert_file.is_some()
            || cli.tls_key_file.is_some();
        let tls = if any_tls {
            let from_dir = |name: &str| dir.map(|d| d.join(name));
            let role = match dir {
                Some(d) if role == tls::Role::Admin && d.join(tls::CertFiles::cert(role)).exists() => role,
                _ => tls::Role::Client,
            };
            let ca = cli.tls_ca_cert_files.first().cloned().or_else(|| from_dir(tls::CertFiles::CA));
            let cert = cli.tls_cert_file.clone().or_else(|| from_dir(&tls::CertFiles::cert(role)));
            let key = cli.tls_key_file.clone().or_else(|| from_dir(&tls::CertFiles::key(role)));
            let (Some(ca), Some(cert), Some(key)) = (ca, cert, key) else {
                anyhow::bail!(
                    "mTLS needs a CA, a certificate and a key: --tls-ca-cert-files, --tls-cert-file and --tls-key-file, or --tls-dir"
                );
            };
            let name = cli.tls_server_name.clone().or_else(|| address.host().map(str::to_owned)).unwrap_or_default();
            Some(tls::client_config(&ca, &cert, &key, &name)?)
        } else {
            None
        };
        Ok(Target { address, tls, timeout: Duration::from_secs(cli.timeout) })
    }

    pub async fn channel(&self) -> anyhow::Result<Channel> {
        let connect = async {
            match &self.tls {
                Some(tls) => self.address.connect_tls(tls.clone()).await,
                None => self.address.connect().await,
            }
        };
        tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| anyhow::anyhow!("timed out after {:?} connecting to {}", self.timeout, self.address))?
            .with_context(|| format!("connecting to {}", self.address))
    }
}
