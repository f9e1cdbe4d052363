//! Listeners: a unix socket, plain TCP, or TCP with mTLS. With mTLS, this
//! layer does the handshake itself (rustls), so that replaced certificate
//! files take effect for the next handshake while the listener stays open
//! (no rebind, no window in which connections are refused), a handshake
//! that never finishes is dropped after the handshake timeout, and refused
//! handshakes are logged here, rate-limited, with their reason. TCP
//! connections (with or without TLS) are bounded per peer and closed when
//! idle (see [`crate::connections`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tower::layer::util::{Identity, Stack};

use crate::address::ServerAddress;
use crate::connections::{Bounded, ConnectionLimits, Peers, StreamLimitLayer};
use crate::log_limit::{LogLimit, LogLimits};

/// A Vigil server's routes, with streams counted per peer.
pub type Router = tonic::transport::server::Router<Stack<StreamLimitLayer, Identity>>;

/// HTTP/2 keepalive pings on every connection, so dead peers are noticed.
pub const KEEPALIVE: Duration = Duration::from_secs(30);
/// After shutdown, open streams get this long to end (event streams never
/// end by themselves).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// TLS handshakes in progress at once; further connections wait in the
/// kernel's backlog.
const MAX_HANDSHAKES: usize = 1024;
/// Interval of the rate-limited log lines.
const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    // Not a `source`: the cause would print twice in a chain.
    #[error("cannot listen on {address}: {error}")]
    Bind { address: String, error: std::io::Error },
    #[error(transparent)]
    Certificates(#[from] tls::TlsError),
    #[error("serving on {address}: {reason}")]
    Serve { address: String, reason: String },
}

/// A gRPC server builder with the settings every Vigil listener uses.
pub fn server() -> tonic::transport::Server<Stack<StreamLimitLayer, Identity>> {
    tonic::transport::Server::builder().http2_keepalive_interval(Some(KEEPALIVE)).layer(StreamLimitLayer)
}

enum Kind {
    Unix(UnixListener),
    Tcp(TcpListener),
    Tls(TcpListener, watch::Receiver<Arc<ServerConfig>>),
}

/// A server's certificates, loaded and from then on watched: listeners
/// given a clone use the newest for every handshake.
#[derive(Clone)]
pub struct Certificates(watch::Receiver<Arc<ServerConfig>>);

impl Certificates {
    /// Loads `files` (waiting out a half-written rotation, see
    /// [`tls::reload::ServerFiles`]) and watches them from then on.
    pub async fn load(files: tls::reload::ServerFiles) -> Result<Self, tls::TlsError> {
        let config = files.load_at_start(tls::reload::START_WAIT).await?;
        let (tx, rx) = watch::channel(config);
        tokio::spawn(files.watch(tls::reload::POLL, tx));
        Ok(Certificates(rx))
    }
}

/// Why connections were refused before any request, counted by kind
/// (the logged reasons are free text; these are few and fixed, so they
/// can label a metric).
#[derive(Debug, Default)]
pub struct Refusals {
    counts: [std::sync::atomic::AtomicU64; Refusals::REASONS.len()],
}

impl Refusals {
    pub const REASONS: [&'static str; 6] =
        ["peer_connection_limit", "handshake_timeout", "not_tls", "no_client_certificate", "bad_certificate", "other"];

    /// Each reason with its count.
    pub fn counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Self::REASONS.iter().zip(&self.counts).map(|(r, n)| (*r, n.load(std::sync::atomic::Ordering::Relaxed)))
    }

    fn count(&self, reason: &str) {
        let i = Self::REASONS.iter().position(|r| *r == reason).unwrap_or(Self::REASONS.len() - 1);
        self.counts[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The kind of a refused handshake, from rustls' error and its causes.
    fn handshake(reason: &str) -> &'static str {
        if reason.starts_with("not finished within") {
            "handshake_timeout"
        } else if reason.contains("peer sent no certificates") || reason.contains("NoCertificatesPresented") {
            "no_client_certificate"
        } else if reason.contains("invalid peer certificate") {
            "bad_certificate"
        } else if reason.contains("corrupt message") || reason.contains("InvalidContentType") {
            "not_tls"
        } else {
            "other"
        }
    }
}

/// A bound listener, not yet serving.
pub struct Listener {
    address: String,
    kind: Kind,
    limits: ConnectionLimits,
    refusals: Arc<Refusals>,
}

impl Listener {
    /// Binds `address`, with mTLS when `tls` is given (TCP only: a unix
    /// socket is local and its file permissions guard it). A stale unix
    /// socket file is replaced.
    ///
    /// Logs `listening` at info with `label` and the bound address, so a
    /// caller that asked for port 0 learns the port.
    pub async fn bind(
        label: &'static str,
        address: &ServerAddress,
        tls: Option<Certificates>,
    ) -> Result<Self, ListenError> {
        let shown = address.to_string();
        let bind_err = |error| ListenError::Bind { address: shown.clone(), error };
        let kind = match (address, tls) {
            (ServerAddress::Unix(path), _) => {
                if path.exists() {
                    std::fs::remove_file(path).map_err(bind_err)?;
                }
                Kind::Unix(UnixListener::bind(path).map_err(bind_err)?)
            }
            (ServerAddress::Tcp(a), None) => Kind::Tcp(TcpListener::bind(a).await.map_err(bind_err)?),
            (ServerAddress::Tcp(a), Some(Certificates(rx))) => {
                Kind::Tls(TcpListener::bind(a).await.map_err(bind_err)?, rx)
            }
        };
        let listener = Listener { address: shown, kind, limits: ConnectionLimits::default(), refusals: Arc::default() };
        match listener.local_addr() {
            Some(bound) => tracing::info!(listener = %label, address = %bound, tls = listener.is_tls(), "listening"),
            None => tracing::info!(listener = %label, address = %listener.address, "listening"),
        }
        Ok(listener)
    }

    /// Bounds TCP connections with `limits` instead of the defaults.
    pub fn with_limits(mut self, limits: ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The bound TCP address (the port chosen for `:0`).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.kind {
            Kind::Tcp(l) | Kind::Tls(l, _) => l.local_addr().ok(),
            Kind::Unix(_) => None,
        }
    }

    /// Its refused connections, counted by kind (for the metrics).
    pub fn refusals(&self) -> Arc<Refusals> {
        self.refusals.clone()
    }

    /// Whether peers are authenticated by certificate.
    pub fn is_tls(&self) -> bool {
        matches!(self.kind, Kind::Tls(..))
    }

    /// Serves `router` until `shutdown` turns true; open streams then get
    /// [`SHUTDOWN_GRACE`] to end.
    pub async fn serve(self, router: Router, shutdown: watch::Receiver<bool>) -> Result<(), ListenError> {
        let address = self.address;
        let stop = stopped(shutdown.clone());
        let served: std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
            match self.kind {
                Kind::Unix(l) => Box::pin(router.serve_with_incoming_shutdown(UnixListenerStream::new(l), stop)),
                Kind::Tcp(l) => {
                    Box::pin(router.serve_with_incoming_shutdown(tcp_incoming(l, self.limits, self.refusals), stop))
                }
                Kind::Tls(l, config) => Box::pin(
                    router.serve_with_incoming_shutdown(tls_incoming(l, config, self.limits, self.refusals), stop),
                ),
            };
        let grace = async {
            stopped(shutdown).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            r = served => r.map_err(|e| ListenError::Serve { address, reason: with_causes(&e) }),
            () = grace => Ok(()),
        }
    }
}

/// Resolves once `rx` holds true (or its sender is gone).
pub async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// An error and its causes, `a: b: c` (tonic's own says "transport error").
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Accepts TCP connections within the peers' bounds, and hands each (with
/// its place in its peer's count) to `admitted`. Ends when the server stops
/// taking connections (`to_server` closes) or `admitted` says it has.
async fn accept_bounded<T, F, Fut>(
    listener: TcpListener,
    limits: ConnectionLimits,
    counted: Arc<Refusals>,
    to_server: mpsc::Sender<Result<T, std::io::Error>>,
    mut admitted: F,
) where
    F: FnMut(TcpStream, crate::connections::ConnectionGuard, mpsc::Sender<Result<T, std::io::Error>>) -> Fut,
    Fut: Future<Output = bool>,
{
    let peers = Peers::new(limits);
    let accept_failed = LogLimit::new(LOG_EVERY);
    let refused = LogLimits::new(LOG_EVERY);
    let local = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = to_server.closed() => return,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // E.g. EMFILE: retrying at once would spin and flood
                // the log; connections wait in the backlog meanwhile.
                if let Some(n) = accept_failed.hit() {
                    tracing::warn!(error = %e, times = n, "cannot accept connections");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(local) = local else { continue };
        let guard = match peers.admit(local, remote) {
            Ok(g) => g,
            Err(reason) => {
                // Closed at once: no TLS work for a peer over its cap.
                counted.count("peer_connection_limit");
                let reason = reason.to_string();
                if let Some(n) = refused.hit(&reason) {
                    tracing::warn!(peer = %remote.ip(), %reason, times = n, "connection refused");
                }
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        if !admitted(tcp, guard, to_server.clone()).await {
            return;
        }
    }
}

/// Accepted plaintext connections (`--insecure`), bounded per peer.
fn tcp_incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
    counted: Arc<Refusals>,
) -> ReceiverStream<Result<Bounded<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_bounded(listener, limits, counted, tx, |tcp, guard, tx| async move {
        tx.send(Ok(Bounded::new(tcp, guard))).await.is_ok()
    }));
    ReceiverStream::new(rx)
}

/// Accepted connections, bounded per peer and handshaken with the settings
/// current at accept time. Ends when the server stops taking connections.
fn tls_incoming(
    listener: TcpListener,
    config: watch::Receiver<Arc<ServerConfig>>,
    limits: ConnectionLimits,
    counted: Arc<Refusals>,
) -> ReceiverStream<Result<Bounded<TlsStream<TcpStream>>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let refused = Arc::new(LogLimits::new(LOG_EVERY));
    let timeout = limits.handshake_timeout;
    tokio::spawn(accept_bounded(listener, limits, counted.clone(), tx, move |tcp, guard, tx| {
        let (refused, slots, counted) = (refused.clone(), slots.clone(), counted.clone());
        let acceptor = TlsAcceptor::from(config.borrow().clone());
        async move {
            let Ok(slot) = slots.acquire_owned().await else { return false };
            tokio::spawn(async move {
                let reason = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        drop(slot);
                        let _ = tx.send(Ok(Bounded::new(stream, guard))).await;
                        return;
                    }
                    Ok(Err(e)) => with_causes(&e),
                    Err(_) => format!("not finished within {timeout:?}"),
                };
                // Refusals are security events: counted, and logged at
                // info once per interval and reason.
                counted.count(Refusals::handshake(&reason));
                if let Some(n) = refused.hit(&reason) {
                    tracing::info!(%reason, times = n, "TLS handshake refused");
                }
            });
            true
        }
    }));
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_handshakes_are_counted_by_kind() {
        for (reason, kind) in [
            ("not finished within 10s", "handshake_timeout"),
            ("peer sent no certificates", "no_client_certificate"),
            ("invalid peer certificate: UnknownIssuer", "bad_certificate"),
            ("received corrupt message of type InvalidContentType", "not_tls"),
            ("connection reset by peer", "other"),
        ] {
            assert_eq!(Refusals::handshake(reason), kind, "{reason}");
        }
    }

    #[tokio::test]
    async fn a_bind_error_names_its_cause_once() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address: ServerAddress = taken.local_addr().unwrap().to_string().parse().unwrap();
        let Err(e) = Listener::bind("test", &address, None).await else { panic!("bound a taken port") };
        assert!(std::error::Error::source(&e).is_none(), "a chain would print the cause again");
        let text = e.to_string();
        assert!(text.starts_with(&format!("cannot listen on {address}: ")), "{text}");
        assert_eq!(text.matches("in use").count(), 1, "{text}");
    }
}
