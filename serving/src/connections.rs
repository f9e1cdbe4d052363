//! Bounds on what one peer can hold open on a TCP listener: connections
//! (refused at accept past the cap, before any TLS work), gRPC streams
//! (refused with `RESOURCE_EXHAUSTED` past the cap), and connections with no
//! open stream, closed after an idle timeout. Unix sockets are local and
//! unbounded here; their file permissions guard them.
//!
//! A connection is found from a request by its (local, remote) addresses,
//! which tonic puts in every request's extensions, so the accepted stream's
//! own connect info (and with it `peer_certs()`) stays tonic's.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

/// The bounds, as flags give them (see the relay's `--max-connections-per-peer` …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A TLS handshake not finished by then is dropped.
    pub handshake_timeout: Duration,
    /// A connection with no open stream for this long is closed.
    pub idle_timeout: Duration,
    /// Connections one peer address may hold on one listener.
    pub max_connections_per_peer: usize,
    /// Streams (calls in progress) one peer address may hold on one listener.
    pub max_streams_per_peer: usize,
}

pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 256;
pub const DEFAULT_MAX_STREAMS_PER_PEER: usize = 1024;

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
            max_streams_per_peer: DEFAULT_MAX_STREAMS_PER_PEER,
        }
    }
}

/// What one peer address holds on one listener.
#[derive(Debug, Default)]
struct PeerUse {
    connections: usize,
    streams: usize,
}

/// The peers of one listener.
#[derive(Debug)]
pub struct Peers {
    pub limits: ConnectionLimits,
    by_ip: Mutex<HashMap<IpAddr, PeerUse>>,
}

/// A TCP connection's (local, remote) addresses.
type ConnectionKey = (SocketAddr, SocketAddr);

/// Every open connection of every bounded listener.
static CONNECTIONS: LazyLock<Mutex<HashMap<ConnectionKey, Arc<Connection>>>> = LazyLock::new(Default::default);

/// Why a peer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("peer holds {held} connections; the limit is {limit} (--max-connections-per-peer)")]
    Connections { held: usize, limit: usize },
    #[error("peer holds {held} streams; the limit is {limit} (--max-streams-per-peer)")]
    Streams { held: usize, limit: usize },
}

impl Peers {
    pub fn new(limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Peers { limits, by_ip: Mutex::default() })
    }

    /// Registers an accepted connection, or refuses it past the peer's cap.
    pub fn admit(self: &Arc<Self>, local: SocketAddr, remote: SocketAddr) -> Result<ConnectionGuard, Refused> {
        let ip = remote.ip();
        {
            let mut by_ip = self.by_ip.lock();
            let used = by_ip.entry(ip).or_default();
            if used.connections >= self.limits.max_connections_per_peer {
                let held = used.connections;
                return Err(Refused::Connections { held, limit: self.limits.max_connections_per_peer });
            }
            used.connections += 1;
        }
        let connection = Arc::new(Connection {
            peers: self.clone(),
            ip,
            open_streams: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            reader: Mutex::new(None),
        });
        CONNECTIONS.lock().insert((local, remote), connection.clone());
        Ok(ConnectionGuard { key: (local, remote), connection })
    }

    /// Connections and streams held by `ip` now (tests, status).
    pub fn held_by(&self, ip: IpAddr) -> (usize, usize) {
        self.by_ip.lock().get(&ip).map_or((0, 0), |u| (u.connections, u.streams))
    }
}

/// One accepted connection.
#[derive(Debug)]
pub struct Connection {
    peers: Arc<Peers>,
    ip: IpAddr,
    open_streams: AtomicUsize,
    /// When the last stream ended (or the connection opened).
    idle_since: Mutex<Instant>,
    /// The task reading the connection, woken when it turns idle so that
    /// it arms the idle timer.
    reader: Mutex<Option<Waker>>,
}

impl Connection {
    /// The connection a request came on (`None` for unix sockets and
    /// listeners without bounds).
    pub fn of(extensions: &http::Extensions) -> Option<Arc<Connection>> {
        let info = extensions
            .get::<TcpConnectInfo>()
            .or_else(|| extensions.get::<TlsConnectInfo<TcpConnectInfo>>().map(TlsConnectInfo::get_ref))?;
        let key = (info.local_addr?, info.remote_addr?);
        CONNECTIONS.lock().get(&key).cloned()
    }

    /// Opens a stream, or refuses it past the peer's cap.
    pub fn open_stream(self: &Arc<Self>) -> Result<StreamGuard, Refused> {
        let limit = self.peers.limits.max_streams_per_peer;
        let mut by_ip = self.peers.by_ip.lock();
        let used = by_ip.entry(self.ip).or_default();
        if used.streams >= limit {
            return Err(Refused::Streams { held: used.streams, limit });
        }
        used.streams += 1;
        self.open_streams.fetch_add(1, Ordering::Relaxed);
        Ok(StreamGuard(self.clone()))
    }

    fn is_idle(&self) -> bool {
        self.open_streams.load(Ordering::Relaxed) == 0
    }
}

/// Holds a connection's place in its peer's count; dropped with the
/// connection.
#[derive(Debug)]
pub struct ConnectionGuard {
    key: ConnectionKey,
    connection: Arc<Connection>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        CONNECTIONS.lock().remove(&self.key);
        let mut by_ip = self.connection.peers.by_ip.lock();
        if let Some(used) = by_ip.get_mut(&self.connection.ip) {
            used.connections = used.connections.saturating_sub(1);
            if used.connections == 0 && used.streams == 0 {
                by_ip.remove(&self.connection.ip);
            }
        }
    }
}

/// Holds a stream's place in its peer's count; dropped when the call's
/// response has been sent (or abandoned).
#[derive(Debug)]
pub struct StreamGuard(Arc<Connection>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let connection = &self.0;
        {
            let mut by_ip = connection.peers.by_ip.lock();
            if let Some(used) = by_ip.get_mut(&connection.ip) {
                used.streams = used.streams.saturating_sub(1);
            }
        }
        if connection.open_streams.fetch_sub(1, Ordering::Relaxed) == 1 {
            *connection.idle_since.lock() = Instant::now();
            if let Some(w) = connection.reader.lock().take() {
                w.wake();
            }
        }
    }
}

/// An accepted connection (TCP, or TLS over TCP) that ends itself after
/// the idle timeout without open streams. Reads and writes pass through.
pub struct Bounded<IO> {
    inner: IO,
    guard: ConnectionGuard,
    idle: Pin<Box<Sleep>>,
    timeout: Duration,
    /// The reader's waker is with the connection (for its last stream's
    /// end to wake): stored once per busy spell, not on every read.
    waker_stored: bool,
}

impl<IO> Bounded<IO> {
    pub fn new(inner: IO, guard: ConnectionGuard) -> Self {
        let timeout = guard.connection.peers.limits.idle_timeout;
        Bounded { inner, guard, idle: Box::pin(tokio::time::sleep(timeout)), timeout, waker_stored: false }
    }

    /// Ready with an error once the connection has been idle too long;
    /// otherwise arms the timer (or the wake-up when the last stream ends).
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let connection = &self.guard.connection;
        if !connection.is_idle() {
            if !self.waker_stored {
                *connection.reader.lock() = Some(cx.waker().clone());
                self.waker_stored = true;
                // The last stream may have ended just before the store.
                if connection.is_idle() {
                    cx.waker().wake_by_ref();
                }
            }
            return Poll::Pending;
        }
        self.waker_stored = false;
        let deadline = *connection.idle_since.lock() + self.timeout;
        if Instant::now() >= deadline {
            return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "no stream opened within the idle timeout"));
        }
        if self.idle.deadline() != deadline {
            self.idle.as_mut().reset(deadline);
        }
        match self.idle.as_mut().poll(cx) {
            // Fired just now: the next poll sees the deadline passed.
            Poll::Ready(()) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Bounded<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => this.poll_idle(cx).map(Err),
            ready => ready,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Bounded<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<IO: Connected> Connected for Bounded<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// The tower layer counting streams per peer: added to every Vigil server
/// (see [`crate::listen::server`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamLimitLayer;

impl<S> tower::Layer<S> for StreamLimitLayer {
    type Service = StreamLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StreamLimit { inner }
    }
}

#[derive(Debug, Clone)]
pub struct StreamLimit<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for StreamLimit<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let guard = match Connection::of(request.extensions()).map(|c| c.open_stream()) {
            None => None,
            Some(Ok(guard)) => Some(guard),
            Some(Err(refused)) => {
                if let Some(n) = STREAMS_REFUSED_LOG.hit() {
                    tracing::warn!(reason = %refused, times = n, "stream refused");
                }
                let response = tonic::Status::resource_exhausted(refused.to_string()).into_http();
                return Box::pin(std::future::ready(Ok(response)));
            }
        };
        // The service polled ready is the one that takes the call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await?;
            Ok(match guard {
                Some(guard) => response.map(|body| tonic::body::Body::new(Guarded { body, _guard: guard })),
                None => response,
            })
        })
    }
}

static STREAMS_REFUSED_LOG: LazyLock<crate::log_limit::LogLimit> =
    LazyLock::new(|| crate::log_limit::LogLimit::new(Duration::from_secs(10)));

/// A response body that holds its stream's place until it is done.
struct Guarded {
    body: tonic::body::Body,
    _guard: StreamGuard,
}

impl http_body::Body for Guarded {
    type Data = prost::bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn connections_and_streams_are_counted_per_peer_and_given_back() {
        let limits = ConnectionLimits { max_connections_per_peer: 2, max_streams_per_peer: 3, ..Default::default() };
        let peers = Peers::new(limits);
        let local = addr("127.0.0.1:1");
        let a = peers.admit(local, addr("10.0.0.1:1000")).unwrap();
        let b = peers.admit(local, addr("10.0.0.1:1001")).unwrap();
        assert_eq!(peers.admit(local, addr("10.0.0.1:1002")).unwrap_err(), Refused::Connections { held: 2, limit: 2 });
        let _other = peers.admit(local, addr("10.0.0.2:1000")).expect("another peer has its own count");
        let s1 = a.connection.open_stream().unwrap();
        let s2 = a.connection.open_stream().unwrap();
        let s3 = b.connection.open_stream().unwrap();
        assert_eq!(b.connection.open_stream().unwrap_err(), Refused::Streams { held: 3, limit: 3 });
        assert!(!a.connection.is_idle());
        drop((s1, s2));
        assert!(a.connection.is_idle());
        assert_eq!(peers.held_by(addr("10.0.0.1:0").ip()), (2, 1));
        drop((s3, a));
        let _c = peers.admit(local, addr("10.0.0.1:1003")).expect("a closed connection frees its place");
        drop(b);
        assert_eq!(peers.held_by(addr("10.0.0.1:0").ip()), (1, 0));
    }

    #[tokio::test]
    async fn an_idle_connection_ends_after_the_timeout_and_one_with_a_stream_does_not() {
        use tokio::io::AsyncReadExt;
        let limits = ConnectionLimits { idle_timeout: Duration::from_millis(200), ..Default::default() };
        let peers = Peers::new(limits);
        let (client, server) = tokio::io::duplex(64);
        let guard = peers.admit(addr("127.0.0.1:2"), addr("127.0.0.1:3")).unwrap();
        let connection = guard.connection.clone();
        let stream = connection.open_stream().unwrap();
        let mut bounded = Bounded::new(server, guard);
        let mut buf = [0u8; 8];
        let started = Instant::now();
        // A stream is open: reading waits past the timeout.
        let waited = tokio::time::timeout(Duration::from_millis(400), bounded.read(&mut buf)).await;
        assert!(waited.is_err(), "ended while a stream was open");
        drop(stream);
        let err = bounded.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(600), "{:?}", started.elapsed());
        drop(client);
    }
}
