//! The Prometheus scrape endpoint (`--metrics-address`, as Tetragon's
//! `--metrics-server`): plain HTTP/1.1, `GET /metrics` answers the
//! registry in Prometheus' text format, every other path 404. The registry
//! is the daemon's; its collectors read the daemon's own counters at each
//! scrape, so a metric and `vigil status` come from one source.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::address::ServerAddress;
use crate::listen::{ListenError, stopped};

/// Scrapes served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16;
/// A connection that has not sent its request headers by then is closed.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// No connection is held longer (a scraper reconnects), so silent ones
/// cannot keep the slots.
const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

/// Encodes one unlabelled counter (a collector's building block).
pub fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    ConstCounter::new(v).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
}

/// Encodes one series' value as `kind` says: a gauge (saturating at
/// `i64::MAX`) or else a counter.
pub fn encode_value(
    metric: prometheus_client::encoding::MetricEncoder<'_>,
    kind: MetricType,
    v: u64,
) -> Result<(), std::fmt::Error> {
    match kind {
        MetricType::Gauge => ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(metric),
        _ => ConstCounter::new(v).encode(metric),
    }
}

/// Encodes one unlabelled gauge.
pub fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Result<(), std::fmt::Error> {
    ConstGauge::new(v).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// Connections each listener refused before any request, by kind:
/// `NAME_total{listener, reason}`.
#[derive(Debug)]
pub struct RefusalCollector {
    pub name: &'static str,
    pub listeners: Vec<(&'static str, Arc<crate::listen::Refusals>)>,
}

impl prometheus_client::collector::Collector for RefusalCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            self.name,
            "Connections refused before any request (over a peer's connection cap, or a TLS handshake that failed), by kind",
            None,
            MetricType::Counter,
        )?;
        for (listener, refusals) in &self.listeners {
            for (reason, n) in refusals.counts() {
                ConstCounter::new(n).encode(family.encode_family(&[("listener", *listener), ("reason", reason)])?)?;
            }
        }
        Ok(())
    }
}

/// Clients' queues shown at most (the fullest), so a scrape stays small
/// however many clients connect.
pub const MAX_CLIENT_SERIES: usize = 256;

/// Each `GetEvents` client's queue: `PREFIX_getevents_client_queued_events`,
/// `_queued_bytes` and `_dropped_total`, labelled with the client's address
/// and the stream's number (a client may hold several streams).
pub struct ClientQueueCollector {
    pub prefix: &'static str,
    pub bus: events::bus::EventBus,
}

impl std::fmt::Debug for ClientQueueCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientQueueCollector").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl prometheus_client::collector::Collector for ClientQueueCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let queues = self.bus.client_queues(MAX_CLIENT_SERIES);
        type Read = fn(&events::bus::ClientQueue) -> u64;
        let families: [(&str, &str, MetricType, Read); 3] = [
            ("getevents_client_queued_events", "Events queued for this client", MetricType::Gauge, |q| {
                q.queued_events as u64
            }),
            ("getevents_client_queued_bytes", "Bytes queued for this client", MetricType::Gauge, |q| {
                q.queued_bytes as u64
            }),
            ("getevents_client_dropped", "Events dropped because this client fell behind", MetricType::Counter, |q| {
                q.dropped
            }),
        ];
        for (name, help, kind, read) in families {
            let name = format!("{}_{name}", self.prefix);
            let mut family = encoder.encode_descriptor(&name, help, None, kind)?;
            for q in &queues {
                let stream = q.stream.to_string();
                let labels = [("client", q.client.as_str()), ("stream", stream.as_str())];
                encode_value(family.encode_family(&labels)?, kind, read(q))?;
            }
        }
        Ok(())
    }
}

/// The bound scrape listener.
pub struct MetricsListener {
    listener: TcpListener,
}

impl MetricsListener {
    /// Binds `address` (from [`ServerAddress::parse_port`]) and logs
    /// `listening` with the bound address, as every Vigil listener does
    /// (under the listeners' log target, which tools read ports from).
    pub async fn bind(address: &ServerAddress) -> Result<MetricsListener, ListenError> {
        let shown = address.to_string();
        let listener = TcpListener::bind(shown.as_str())
            .await
            .map_err(|error| ListenError::Bind { address: shown.clone(), error })?;
        match listener.local_addr() {
            Ok(bound) => {
                tracing::info!(target: "serving::listen", listener = %"metrics", address = %bound, tls = false, "listening")
            }
            Err(_) => tracing::info!(target: "serving::listen", listener = %"metrics", address = %shown, "listening"),
        }
        Ok(MetricsListener { listener })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Answers scrapes of `registry` until `shutdown`.
    pub async fn serve(self, registry: Arc<Registry>, shutdown: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let stop = stopped(shutdown);
        tokio::pin!(stop);
        loop {
            let permit = tokio::select! {
                () = &mut stop => return,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let (stream, _) = tokio::select! {
                () = &mut stop => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!(error = %e, "metrics: accept failed");
                        continue;
                    }
                },
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                // A peer that sends nothing is dropped (hyper's header
                // timeout runs only once a request has begun).
                let mut first = [0u8; 1];
                match tokio::time::timeout(HEADER_TIMEOUT, stream.peek(&mut first)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return,
                }
                let service = hyper::service::service_fn(move |request| {
                    let registry = registry.clone();
                    // Off the runtime's workers: a collector may wait for a
                    // lock that slow work holds (the sensor's policy host
                    // while a policy loads), and the sensor has one worker.
                    async move {
                        let response = tokio::task::spawn_blocking(move || respond(&request, &registry))
                            .await
                            .unwrap_or_else(|_| failed());
                        Ok::<_, Infallible>(response)
                    }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
                drop(permit);
            });
        }
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

/// The answer when encoding the metrics failed (or its task did).
fn failed() -> Response<Full<Bytes>> {
    reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "encoding the metrics failed\n".into())
}

/// `GET /metrics`: the registry; anything else: 404 (405 for another
/// method on /metrics).
fn respond<B>(request: &Request<B>, registry: &Registry) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "text/plain", "not found: metrics are at /metrics\n".into());
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET /metrics\n".into());
    }
    let mut text = String::new();
    match prometheus_client::encoding::prometheus_text::encode(&mut text, registry) {
        Ok(()) => reply(StatusCode::OK, prometheus_client::encoding::prometheus_text::CONTENT_TYPE, text),
        Err(_) => failed(),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn started() -> (SocketAddr, watch::Sender<bool>) {
        let listener = MetricsListener::bind(&ServerAddress::Tcp("127.0.0.1:0".into())).await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, shutdown) = watch::channel(false);
        tokio::spawn(listener.serve(Arc::new(Registry::default()), shutdown));
        (address, stop)
    }

    #[tokio::test]
    async fn only_metrics_is_served() {
        let (address, _stop) = started().await;
        for (request, status) in
            [("GET /metrics", "200"), ("GET /", "404"), ("GET /metricsx", "404"), ("DELETE /metrics", "405")]
        {
            let mut c = tokio::net::TcpStream::connect(address).await.unwrap();
            c.write_all(format!("{request} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut reply = String::new();
            c.read_to_string(&mut reply).await.unwrap();
            assert_eq!(reply.split_whitespace().nth(1), Some(status), "{request}: {reply}");
        }
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_closed() {
        let (address, _stop) = started().await;
        let mut silent = tokio::net::TcpStream::connect(address).await.unwrap();
        let mut buf = [0u8; 256];
        // Closed once the header timeout passes.
        let closed = tokio::time::timeout(HEADER_TIMEOUT * 3, async {
            loop {
                match silent.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a silent connection stayed open");
    }
}
