//! Connections cannot exhaust a real relay: a peer's connections past its
//! cap are closed at once (before any TLS work), a handshake never finished
//! is dropped, a connection with no stream open is closed after the idle
//! timeout, and a peer's streams past its cap fail with RESOURCE_EXHAUSTED;
//! each refusal is logged with its reason, rate-limited, and counted by
//! kind in the metrics. Every place is given back when its connection or
//! stream ends. Needs no root.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

#[path = "support/local.rs"]
mod local;

use std::sync::Arc;
use std::time::{Duration, Instant};

use local::Relay;
use proto::tetragon::GetEventsRequest;
use proto::tetragon::fine_guidance_sensors_client::FineGuidanceSensorsClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

/// Reads until the relay closes the connection (at most 30 s: a bound on
/// a hang, not a measured wait). Returns whether it closed.
async fn closed_by_relay(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> bool {
    let mut sink = Vec::new();
    // EOF or a reset: closed either way.
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut sink)).await.is_ok()
}

/// A connection from 127.0.0.2: a peer of its own, apart from the
/// health checks' 127.0.0.1.
async fn connect_as_other_peer(address: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    socket.connect(address).await.unwrap()
}

fn still_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Waits until `done` holds, checking as the relay's log grows.
async fn log_shows(relay: &Relay, what: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if relay.log().contains(what) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn connections_past_a_peers_cap_are_closed_before_tls() {
    let relay = Relay::start(
        "conn-cap",
        &["--max-connections-per-peer", "3", "--handshake-timeout-seconds", "60", "--metrics-address", "127.0.0.1:0"],
    )
    .await;
    let address = relay.daemon.listening("clients");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_as_other_peer(address).await);
    }
    let mut fourth = connect_as_other_peer(address).await;
    assert!(closed_by_relay(&mut fourth).await, "a connection past the cap was kept");
    assert!(held.iter().all(still_open), "connections within the cap were closed");
    assert!(log_shows(&relay, "the limit is 3 (--max-connections-per-peer)").await, "{}", relay.log());
    let metrics = relay.daemon.listening("metrics").to_string();
    assert_eq!(refused(&metrics, "clients", "peer_connection_limit"), 1);
    // Their places are given back when they go.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut one = connect_as_other_peer(address).await;
        let mut byte = [0u8; 1];
        // Refused connections are closed at once; a kept one waits for
        // its ClientHello.
        match tokio::time::timeout(Duration::from_millis(500), one.read(&mut byte)).await {
            Err(_) => break,
            Ok(_) => assert!(Instant::now() < deadline, "places were never given back"),
        }
    }
}

#[tokio::test]
async fn a_handshake_never_finished_and_a_connection_never_used_are_closed() {
    let relay = Relay::start("conn-idle", &["--handshake-timeout-seconds", "1", "--idle-timeout-seconds", "1"]).await;
    let address = relay.daemon.listening("clients");
    // No ClientHello at all.
    let mut silent = TcpStream::connect(address).await.unwrap();
    assert!(closed_by_relay(&mut silent).await, "a connection that never started TLS was kept");
    assert!(log_shows(&relay, "not finished within 1s").await, "{}", relay.log());

    // TLS done, HTTP/2 started, no stream ever opened.
    let started = Instant::now();
    let tcp = TcpStream::connect(address).await.unwrap();
    let mut tls = tls_client(&relay).connect("localhost".try_into().unwrap(), tcp).await.unwrap();
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    assert!(closed_by_relay(&mut tls).await, "an idle connection was kept");
    assert!(started.elapsed() >= Duration::from_secs(1), "closed before the idle timeout");

    // A connection with a stream open is not idle.
    let channel = relay.client().await;
    let mut events =
        FineGuidanceSensorsClient::new(channel).get_events(GetEventsRequest::default()).await.unwrap().into_inner();
    let waited = tokio::time::timeout(Duration::from_secs(3), events.message()).await;
    assert!(waited.is_err(), "the stream ended while open: {waited:?}");
}

#[tokio::test]
async fn streams_past_a_peers_cap_fail_with_resource_exhausted() {
    let relay = Relay::start("stream-cap", &["--max-streams-per-peer", "2"]).await;
    let mut client = FineGuidanceSensorsClient::new(relay.client().await);
    let first = client.get_events(GetEventsRequest::default()).await.unwrap().into_inner();
    let _second = client.get_events(GetEventsRequest::default()).await.unwrap().into_inner();
    let refused = client.get_events(GetEventsRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(refused.message(), "peer holds 2 streams; the limit is 2 (--max-streams-per-peer)");
    assert!(log_shows(&relay, "stream refused").await, "{}", relay.log());
    // The place comes back when a stream ends.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = client.get_events(GetEventsRequest::default()).await {
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(Instant::now() < deadline, "the ended stream's place never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TLS client with the relay's client credential, speaking h2.
fn tls_client(relay: &Relay) -> tokio_rustls::TlsConnector {
    tls_client_as(relay, Some(&relay.dir))
}

/// `vigil_relay_connections_refused_total` for a listener and reason.
fn refused(metrics: &str, listener: &str, reason: &str) -> u64 {
    let (_, text) = test_support::scrape::http(metrics, "GET", "/metrics");
    test_support::scrape::sample(
        &text,
        "vigil_relay_connections_refused_total",
        &[("listener", listener), ("reason", reason)],
    )
}

/// Waits until the count of `reason` is `n`.
async fn refused_reaches(relay: &Relay, metrics: &str, reason: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while refused(metrics, "clients", reason) != n {
        assert!(Instant::now() < deadline, "{reason}: {}; log:\n{}", refused(metrics, "clients", reason), relay.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TLS client with the given credential (none: no client certificate).
fn tls_client_as(relay: &Relay, cert_dir: Option<&std::path::Path>) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(relay.dir.join("ca.pem")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match cert_dir {
        Some(dir) => {
            let chain: Vec<_> =
                CertificateDer::pem_file_iter(dir.join("client.pem")).unwrap().map(Result::unwrap).collect();
            builder
                .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(dir.join("client-key.pem")).unwrap())
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Handshakes as `connector` and sends the HTTP/2 preface; true if the
/// relay then closed the connection (a TLS 1.3 server checks the client's
/// certificate after the client's side of the handshake is done).
async fn refused_after_handshake(relay: &Relay, connector: tokio_rustls::TlsConnector) -> bool {
    let tcp = TcpStream::connect(relay.daemon.listening("clients")).await.unwrap();
    let Ok(mut tls) = connector.connect("localhost".try_into().unwrap(), tcp).await else { return true };
    let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    closed_by_relay(&mut tls).await
}

#[tokio::test]
async fn refused_connections_are_counted_by_kind() {
    let relay =
        Relay::start("conn-refusals", &["--handshake-timeout-seconds", "3", "--metrics-address", "127.0.0.1:0"]).await;
    let metrics = relay.daemon.listening("metrics").to_string();
    let address = relay.daemon.listening("clients");
    for reason in ["not_tls", "handshake_timeout", "no_client_certificate", "bad_certificate"] {
        assert_eq!(refused(&metrics, "clients", reason), 0, "{reason} before");
    }
    // Not TLS at all.
    let mut http = TcpStream::connect(address).await.unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n").await.unwrap();
    assert!(closed_by_relay(&mut http).await);
    refused_reaches(&relay, &metrics, "not_tls", 1).await;
    // No ClientHello within the handshake timeout (3 s: the others'
    // handshakes must finish within it on a loaded machine).
    let mut silent = TcpStream::connect(address).await.unwrap();
    assert!(closed_by_relay(&mut silent).await);
    refused_reaches(&relay, &metrics, "handshake_timeout", 1).await;
    // No client certificate; one from another CA.
    assert!(refused_after_handshake(&relay, tls_client_as(&relay, None)).await);
    refused_reaches(&relay, &metrics, "no_client_certificate", 1).await;
    let foreign = local::cert_dir("conn-refusals-foreign");
    assert!(refused_after_handshake(&relay, tls_client_as(&relay, Some(&foreign))).await);
    refused_reaches(&relay, &metrics, "bad_certificate", 1).await;
    // Each counted once, under its own kind; the ingest listener saw none.
    for reason in ["not_tls", "handshake_timeout", "no_client_certificate", "bad_certificate"] {
        assert_eq!(refused(&metrics, "clients", reason), 1, "{reason}");
        assert_eq!(refused(&metrics, "ingest", reason), 0, "{reason} on ingest");
    }
    assert_eq!(refused(&metrics, "clients", "other"), 0);
    let _ = std::fs::remove_dir_all(&foreign);
}
