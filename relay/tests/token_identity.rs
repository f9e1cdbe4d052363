//! Node identity on Kubernetes: with `--sensor-identity kubernetes` the
//! relay takes a sensor's node from its pod's service-account token, checked
//! with TokenReview against an API server (a test double speaking the real
//! protocol). A shared sensor certificate then speaks for no node by itself:
//! each sensor speaks only for the node its token names.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

mod cluster;
#[path = "support/local.rs"]
mod local;
#[path = "support/token_api.rs"]
mod token_api;

use std::time::{Duration, Instant};

use local::Relay;
use proto::tetragon::GetEventsRequest;
use proto::tetragon::fine_guidance_sensors_client::FineGuidanceSensorsClient;
use proto::vigil::relay::v1::relay_admin_client::RelayAdminClient;
use proto::vigil::relay::v1::{ListNodesRequest, ingest_reply};
use token_api::{SENSOR_ACCOUNT, TokenApi};
use tokio::sync::mpsc;
use tonic::Code;
use tonic::transport::Channel;

/// Opens an ingest stream for `node` with `token`; the sender keeps it open.
async fn open(
    channel: Channel,
    node: &str,
    token: Option<&str>,
) -> Result<(mpsc::Sender<prost::bytes::Bytes>, tonic::Streaming<proto::vigil::relay::v1::IngestReply>), tonic::Status>
{
    let (tx, rx) = mpsc::channel(2);
    let hello = local::hello(node);
    tx.send(proto::ingest::hello(hello)).await.unwrap();
    let mut replies =
        proto::ingest::stream(channel, tokio_stream::wrappers::ReceiverStream::new(rx), usize::MAX, token).await?;
    let first = replies.message().await?.and_then(|r| r.msg);
    assert!(matches!(first, Some(ingest_reply::Msg::Welcome(_))), "{first:?}");
    Ok((tx, replies))
}

fn refused(result: Result<impl Sized, tonic::Status>, code: Code, text: &str) {
    let Err(status) = result else { panic!("accepted; expected {text:?}") };
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(text), "expected {text:?} in {:?}", status.message());
}

async fn start(api: &TokenApi, test: &str) -> Relay {
    let dir = std::env::temp_dir().join(format!("vigil-token-{test}-{}", test_support::nonce()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = api.kubeconfig(&dir).display().to_string();
    Relay::start(test, &["--sensor-identity", "kubernetes", "--kubeconfig", &kubeconfig]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensor_speaks_only_for_the_node_its_token_names() {
    let api = TokenApi::start().await;
    api.issue("tok-a", SENSOR_ACCOUNT, "node-a");
    api.issue("tok-other-account", "system:serviceaccount:default:builder", "node-a");
    let relay = start(&api, "token-id").await;

    // The shared (any-node) sensor certificate with node-a's token.
    let (_keep, _replies) = open(relay.sensor().await, "node-a", Some("tok-a")).await.unwrap();
    let nodes = RelayAdminClient::new(relay.client().await).list_nodes(ListNodesRequest {}).await.unwrap().into_inner();
    let a = nodes.nodes.iter().find(|n| n.node_name == "node-a").unwrap();
    assert!(a.connected && !a.any_node_credential, "the token binds it to its node: {a:?}");
    let (audiences, caller) = api.reviews.lock().unwrap()[0].clone();
    assert_eq!(audiences, serde_json::json!(["vigil-relay"]), "reviewed for the relay's audience");
    assert_eq!(caller, token_api::RELAY_CREDENTIAL, "with the relay's own credential");

    // The same token claiming another node, no token, a token the API
    // server does not know, another account's token: all refused, saying why.
    refused(
        open(relay.sensor().await, "node-b", Some("tok-a")).await,
        Code::PermissionDenied,
        "the token is for node \"node-a\"; the hello claims node \"node-b\"",
    );
    refused(open(relay.sensor().await, "node-b", None).await, Code::PermissionDenied, "--relay-token-file");
    refused(
        open(relay.sensor().await, "node-b", Some("forged")).await,
        Code::PermissionDenied,
        "the API server did not authenticate the token: [invalid bearer token",
    );
    refused(
        open(relay.sensor().await, "node-a2", Some("tok-other-account")).await,
        Code::PermissionDenied,
        "not the sensors' service account \"system:serviceaccount:vigil:vigil-sensor\"",
    );
    // A certificate bound to a node still must match it.
    api.issue("tok-c", SENSOR_ACCOUNT, "node-c");
    refused(
        open(relay.sensor_of("node-d").await, "node-c", Some("tok-c")).await,
        Code::PermissionDenied,
        "bound to node \"node-d\"",
    );
    let (_keep_c, _replies_c) = open(relay.sensor_of("node-c").await, "node-c", Some("tok-c")).await.unwrap();
    let log = relay.log();
    assert!(log.contains("sensor stream refused"), "refusals are logged:\n{log}");
    assert!(!log.contains("tok-a") && !log.contains("forged"), "tokens never reach the log:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_sensor_names_its_node_with_its_token_file() {
    test_support::skip_if!(cluster::skip_reason());
    let api = TokenApi::start().await;
    let relay = start(&api, "token-sensor").await;
    let dir = std::env::temp_dir().join(format!("vigil-token-sensor-{}", test_support::nonce()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("relay-token");
    std::fs::write(&token_file, "projected-token-x\n").unwrap();
    api.issue("projected-token-x", SENSOR_ACCOUNT, "tok-node");
    let port = relay.daemon.listening("ingest").port();
    let sensor = |node: &str, log: &str| {
        cluster::Daemon::start_here(
            &cluster::bin("vigil-sensor"),
            &[
                "--node-name".into(),
                node.into(),
                "--server-address".into(),
                format!("unix://{}", dir.join(format!("{node}.sock")).display()),
                "--relay-address".into(),
                format!("localhost:{port}"),
                "--tls-dir".into(),
                relay.dir.display().to_string(),
                "--relay-token-file".into(),
                token_file.display().to_string(),
            ],
            dir.join(log),
        )
    };
    let good = sensor("tok-node", "good.log");
    let mut events = FineGuidanceSensorsClient::new(relay.client().await)
        .get_events(GetEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let deadline = Instant::now() + Duration::from_secs(60);
    let marker = format!("token-marker-{}", test_support::nonce());
    // Runs the marker until its exec arrives from the sensor's node (the
    // sensor may still be starting).
    'found: loop {
        assert!(Instant::now() < deadline, "no event from tok-node; sensor log:\n{}", good.log_text());
        std::process::Command::new("/bin/true").arg(&marker).status().unwrap();
        while let Ok(Ok(Some(e))) = tokio::time::timeout(Duration::from_millis(500), events.message()).await {
            if events::subject::process(&e).is_some_and(|p| p.arguments == marker) {
                assert_eq!(e.node_name, "tok-node");
                break 'found;
            }
        }
    }
    // The same token file on a sensor claiming another node: refused, and
    // the sensor says why.
    let bad = sensor("not-tok-node", "bad.log");
    let why = "the token is for node \"tok-node\"; the hello claims node \"not-tok-node\"";
    let deadline = Instant::now() + Duration::from_secs(60);
    while !bad.log_text().contains(why) {
        assert!(Instant::now() < deadline, "the refused sensor never said why:\n{}", bad.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((good, bad));
    let _ = std::fs::remove_dir_all(&dir);
}
