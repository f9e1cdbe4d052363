//! Where the API is served: `host:port` (TCP) or `unix:///path`, as
//! Tetragon's `--server-address` takes it; one parser and one connector for
//! every binary.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// A parsed `--server-address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAddress {
    Tcp(String),
    Unix(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("invalid server address {0:?}: expected host:port or unix:///path")]
    Invalid(String),
    // The cause is in the message, with its own causes, and not also a
    // `source`: a printed chain would repeat it.
    #[error("cannot connect to {address}: {reason}")]
    Connect { address: String, reason: String },
}

impl std::fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerAddress::Tcp(a) => f.write_str(a),
            ServerAddress::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

impl std::str::FromStr for ServerAddress {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(AddressError::Invalid(s.to_owned()));
            }
            return Ok(ServerAddress::Unix(PathBuf::from(path)));
        }
        let hostport = s.strip_prefix("http://").unwrap_or(s);
        match hostport.rsplit_once(':') {
            Some((_, port)) if port.parse::<u16>().is_ok() => Ok(ServerAddress::Tcp(hostport.to_owned())),
            _ => Err(AddressError::Invalid(s.to_owned())),
        }
    }
}

impl ServerAddress {
    /// A plain port for probes and scrapes (`--health-server-address`,
    /// `--metrics-address`) as Tetragon takes it: `host:port`, or `:port`
    /// for every interface; no unix socket (Kubernetes probes and
    /// Prometheus scrapes reach a port).
    pub fn parse_port(s: &str) -> Result<ServerAddress, String> {
        let full = if s.starts_with(':') { format!("0.0.0.0{s}") } else { s.to_owned() };
        match full.parse::<ServerAddress>() {
            Ok(a @ ServerAddress::Tcp(_)) => Ok(a),
            Ok(ServerAddress::Unix(_)) => Err("takes host:port or :port, not a unix socket".into()),
            Err(_) => Err("expected host:port or :port".into()),
        }
    }

    /// Whether the address stays on this machine (loopback or a socket).
    pub fn is_local(&self) -> bool {
        match self {
            ServerAddress::Unix(_) => true,
            ServerAddress::Tcp(a) => {
                let host = a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
            }
        }
    }

    /// Opens a gRPC channel (plaintext; for local addresses).
    pub async fn connect(&self) -> Result<Channel, AddressError> {
        self.connect_with(|e| e).await
    }

    /// Opens an mTLS gRPC channel (TCP addresses only).
    pub async fn connect_tls(&self, tls: tonic::transport::ClientTlsConfig) -> Result<Channel, AddressError> {
        let err = |e: tonic::transport::Error| AddressError::Connect {
            address: self.to_string(),
            reason: crate::listen::with_causes(&e),
        };
        match self {
            ServerAddress::Tcp(a) => {
                let endpoint =
                    Endpoint::from_shared(format!("https://{a}")).map_err(err)?.tls_config(tls).map_err(err)?;
                endpoint.connect().await.map_err(err)
            }
            ServerAddress::Unix(_) => Err(AddressError::Invalid(format!("{self} (TLS needs a host:port address)"))),
        }
    }

    /// The host part of a TCP address (for TLS name checks).
    pub fn host(&self) -> Option<&str> {
        match self {
            ServerAddress::Tcp(a) => a.rsplit_once(':').map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']')),
            ServerAddress::Unix(_) => None,
        }
    }

    /// Opens a gRPC channel with endpoint settings (windows, timeouts…).
    pub async fn connect_with(&self, configure: impl FnOnce(Endpoint) -> Endpoint) -> Result<Channel, AddressError> {
        let err = |e: tonic::transport::Error| AddressError::Connect {
            address: self.to_string(),
            reason: crate::listen::with_causes(&e),
        };
        match self {
            ServerAddress::Tcp(a) => {
                let endpoint = Endpoint::from_shared(format!("http://{a}")).map_err(err)?;
                configure(endpoint).connect().await.map_err(err)
            }
            ServerAddress::Unix(path) => {
                let path = path.clone();
                // The URI is required by the API but unused by the connector.
                let endpoint = configure(Endpoint::from_static("http://localhost"));
                endpoint
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
                    }))
                    .await
                    .map_err(err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_as_tetragon_takes_them() {
        assert_eq!(ServerAddress::parse_port(":6789"), Ok(ServerAddress::Tcp("0.0.0.0:6789".into())));
        assert_eq!(ServerAddress::parse_port("127.0.0.1:0"), Ok(ServerAddress::Tcp("127.0.0.1:0".into())));
        assert!(ServerAddress::parse_port("unix:///run/h.sock").unwrap_err().contains("not a unix socket"));
        assert_eq!(ServerAddress::parse_port("6789"), Err("expected host:port or :port".into()));
    }

    #[test]
    fn parses_tetra_forms() {
        assert_eq!("localhost:54321".parse::<ServerAddress>().unwrap(), ServerAddress::Tcp("localhost:54321".into()));
        assert_eq!("[::1]:54321".parse::<ServerAddress>().unwrap(), ServerAddress::Tcp("[::1]:54321".into()));
        assert_eq!(
            "unix:///var/run/t.sock".parse::<ServerAddress>().unwrap(),
            ServerAddress::Unix("/var/run/t.sock".into())
        );
        assert!("localhost".parse::<ServerAddress>().is_err());
        assert!("unix://".parse::<ServerAddress>().is_err());
        assert!("localhost:54321".parse::<ServerAddress>().unwrap().is_local());
        assert!("127.0.0.1:1".parse::<ServerAddress>().unwrap().is_local());
        assert!(!"10.0.0.1:1".parse::<ServerAddress>().unwrap().is_local());
    }
}
