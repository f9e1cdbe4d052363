//! Bad input reaching a real relay over mTLS: a malformed ingest message, a
//! second sensor claiming a connected node's name, a stream that does not
//! start with a hello, out-of-order sequence numbers, an entry without an
//! event, garbage bytes, an oversized message and invalid filters. Each gets
//! an error that names the problem, sent to that peer only; a well-behaved
//! sensor and client on the same relay lose nothing and see nothing twice.
//! Needs no root: everything is on loopback.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

#[path = "support/local.rs"]
mod local;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use local::Relay;
use prost::Message;
use prost::bytes::Bytes;
use proto::Timestamp;
use proto::tetragon::fine_guidance_sensors_client::FineGuidanceSensorsClient;
use proto::tetragon::get_events_response::Event;
use proto::tetragon::{Filter, GetEventsRequest, GetEventsResponse, Process, ProcessExec};
use proto::vigil::relay::v1::ingest_client::IngestClient;
use proto::vigil::relay::v1::relay_admin_client::RelayAdminClient;
use proto::vigil::relay::v1::{
    Batch, Hello, IngestMessage, IngestReply, ListNodesRequest, SequencedEvent, ingest_message, ingest_reply,
};
use tokio::sync::mpsc;
use tonic::Code;

fn marker_event(i: u64) -> GetEventsResponse {
    GetEventsResponse {
        event: Some(Event::ProcessExec(ProcessExec {
            process: Some(Process {
                exec_id: base64::engine::general_purpose::STANDARD.encode(format!("good-node:{i}:{i}")),
                pid: Some((i as u32).into()),
                binary: "/bin/good".into(),
                arguments: format!("marker-{i}"),
                ..Default::default()
            }),
            ..Default::default()
        })),
        node_name: "good-node".into(),
        time: Some(Timestamp::now()),
        ..Default::default()
    }
}

fn hello(node: &str, instance: &str) -> IngestMessage {
    IngestMessage {
        msg: Some(ingest_message::Msg::Hello(Hello {
            node_name: node.into(),
            boot_id: format!("boot-{instance}"),
            sensor_version: "test".into(),
            instance_id: instance.into(),
            replay_buffer_size: 10,
        })),
    }
}

fn batch(events: Vec<SequencedEvent>) -> IngestMessage {
    IngestMessage { msg: Some(ingest_message::Msg::Batch(Batch { events, lost: 0, skipped: 0 })) }
}

fn markers(range: std::ops::RangeInclusive<u64>) -> IngestMessage {
    batch(range.map(|seq| SequencedEvent { seq, event: Some(Box::new(marker_event(seq))) }).collect())
}

/// Opens an ingest stream, sends `messages`, and returns the error the
/// relay ends it with.
async fn refused(relay: &Relay, messages: Vec<Bytes>) -> tonic::Status {
    let (tx, rx) = mpsc::channel(messages.len().max(1));
    for m in messages {
        tx.send(m).await.expect("queue message");
    }
    let result = async {
        let rx = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut replies = proto::ingest::stream(relay.sensor().await, rx, usize::MAX, None).await?;
        while replies.message().await?.is_some() {}
        Ok::<_, tonic::Status>(())
    };
    let outcome = tokio::time::timeout(Duration::from_secs(15), result).await.expect("relay answered");
    drop(tx);
    outcome.expect_err("the relay must refuse this stream")
}

fn encoded(m: &IngestMessage) -> Bytes {
    m.encode_to_vec().into()
}

fn assert_refused(status: &tonic::Status, code: Code, text: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(text), "expected {text:?} in {:?}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_harms_no_one_else() {
    let relay = Relay::start("bad-input", &["--reorder-window-ms", "20"]).await;

    // A well-behaved client and sensor.
    let mut client_events = FineGuidanceSensorsClient::new(relay.client().await)
        .get_events(GetEventsRequest::default())
        .await
        .expect("GetEvents")
        .into_inner();
    let collector = tokio::spawn(async move {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut notices = 0;
        while seen.len() < 200 {
            match tokio::time::timeout(Duration::from_secs(20), client_events.message()).await {
                // Streams refused part-way (jumper) or declaring a loss
                // (skipper) reach the client too; only good-node's count here.
                Ok(Ok(Some(e))) if ["jumper", "skipper", "big-node"].contains(&e.node_name.as_str()) => {}
                Ok(Ok(Some(e))) => match &e.event {
                    Some(Event::ProcessExec(x)) => {
                        let p = x.process.as_ref().expect("process");
                        assert_eq!((p.binary.as_str(), e.node_name.as_str()), ("/bin/good", "good-node"));
                        *seen.entry(p.arguments.clone()).or_default() += 1;
                    }
                    Some(Event::RateLimitInfo(_)) => notices += 1,
                    other => panic!("unexpected event {other:?}"),
                },
                other => panic!("good client's stream ended or stalled with {} events: {other:?}", seen.len()),
            }
        }
        (seen, notices)
    });
    let (good_tx, good_rx) = mpsc::channel(8);
    good_tx.send(hello("good-node", "good-1")).await.unwrap();
    let mut good_replies = IngestClient::new(relay.sensor().await)
        .stream(tokio_stream::wrappers::ReceiverStream::new(good_rx))
        .await
        .expect("good sensor stream")
        .into_inner();
    let welcome = good_replies.message().await.expect("welcome").expect("welcome");
    assert!(matches!(welcome.msg, Some(ingest_reply::Msg::Welcome(_))), "{welcome:?}");
    // Then the relay's tracing policies (none here).
    let set = good_replies.message().await.expect("policy set").expect("policy set");
    assert!(matches!(set.msg, Some(ingest_reply::Msg::Policies(ref s)) if s.policies.is_empty()), "{set:?}");
    good_tx.send(markers(1..=100)).await.unwrap();
    assert_eq!(next_ack(&mut good_replies).await, 100);

    // Another sensor claiming the connected node's name.
    // The refusal names neither instance: the connected one's id is what a
    // second stream would need to pass for it.
    let status = refused(&relay, vec![encoded(&hello("good-node", "impostor"))]).await;
    assert_refused(&status, Code::AlreadyExists, "node name \"good-node\" is already connected");
    assert!(!status.message().contains("good-1") && !status.message().contains("impostor"), "{status:?}");

    // A credential bound to another node: refused, naming both.
    let (tx, rx) = mpsc::channel(1);
    tx.send(hello("good-node", "borrowed")).await.unwrap();
    let status = IngestClient::new(relay.sensor_of("node-a").await)
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect_err("a node's credential speaks for that node only");
    assert_refused(
        &status,
        Code::PermissionDenied,
        "this sensor certificate is bound to node \"node-a\"; its hello claims node \"good-node\"",
    );
    // Its own node is fine.
    let (tx_a, rx_a) = mpsc::channel(1);
    tx_a.send(hello("node-a", "a-1")).await.unwrap();
    let mut a_replies = IngestClient::new(relay.sensor_of("node-a").await)
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx_a))
        .await
        .expect("node-a's own stream")
        .into_inner();
    assert!(matches!(a_replies.message().await.unwrap().and_then(|r| r.msg), Some(ingest_reply::Msg::Welcome(_))));
    drop(tx_a);
    // Its stream ends once the relay has released the node.
    while let Ok(Some(_)) = a_replies.message().await {}

    // A jump in sequence numbers past what the batch declares skipped and
    // the announced replay buffer (10) ends the stream before anything is
    // taken: the node's later events are not silenced as replays.
    let jump = batch(vec![SequencedEvent { seq: 1_000_000, event: Some(Box::new(marker_event(1))) }]);
    let status = refused(&relay, vec![encoded(&hello("jumper", "j1")), encoded(&markers(1..=5)), encoded(&jump)]).await;
    assert_refused(
        &status,
        Code::InvalidArgument,
        "sequence jumped over 999994 numbers the batch does not declare skipped, more than the announced replay \
         buffer of 10",
    );
    // A declared skip (events the sensor's buffer lost) is accepted and
    // counted as lost.
    let (tx_s, rx_s) = mpsc::channel(4);
    tx_s.send(hello("skipper", "s1")).await.unwrap();
    let mut s_replies = IngestClient::new(relay.sensor().await)
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx_s))
        .await
        .expect("skipper stream")
        .into_inner();
    assert!(matches!(s_replies.message().await.unwrap().and_then(|r| r.msg), Some(ingest_reply::Msg::Welcome(_))));
    let declared = IngestMessage {
        msg: Some(ingest_message::Msg::Batch(Batch {
            events: vec![SequencedEvent { seq: 101, event: Some(Box::new(marker_event(101))) }],
            lost: 0,
            skipped: 100,
        })),
    };
    tx_s.send(declared).await.unwrap();
    assert_eq!(next_ack(&mut s_replies).await, 101);
    drop(tx_s);
    while let Ok(Some(_)) = s_replies.message().await {}

    // An event larger than the relay takes (1 MiB) is refused, counted and
    // reported as lost; the rest of its batch goes through.
    let (tx_b, rx_b) = mpsc::channel(4);
    tx_b.send(hello("big-node", "big-1")).await.unwrap();
    let mut b_replies = IngestClient::new(relay.sensor().await)
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx_b))
        .await
        .expect("big-node stream")
        .into_inner();
    assert!(matches!(b_replies.message().await.unwrap().and_then(|r| r.msg), Some(ingest_reply::Msg::Welcome(_))));
    let mut huge = marker_event(1);
    if let Some(Event::ProcessExec(x)) = huge.event.as_mut() {
        x.process.as_mut().unwrap().arguments = "a".repeat(2 << 20);
    }
    let big = batch(vec![
        SequencedEvent { seq: 1, event: Some(Box::new(huge)) },
        SequencedEvent { seq: 2, event: Some(Box::new(marker_event(2))) },
    ]);
    tx_b.send(big).await.unwrap();
    assert_eq!(next_ack(&mut b_replies).await, 2);
    drop(tx_b);
    while let Ok(Some(_)) = b_replies.message().await {}

    // Hello fields past their limits, refused by name and limit, never
    // echoed; none reaches the node table.
    let huge = "n".repeat(10 << 20);
    let status = refused(&relay, vec![encoded(&hello(&huge, "h1"))]).await;
    assert_refused(&status, Code::InvalidArgument, "hello node_name is 10485760 bytes; the limit is 253");
    assert!(status.message().len() < 200, "the name is not echoed");
    let status = refused(&relay, vec![encoded(&hello("h2-node", &"i".repeat(65)))]).await;
    assert_refused(&status, Code::InvalidArgument, "hello instance_id is 65 bytes; the limit is 64");
    let status = refused(&relay, vec![encoded(&hello("bad\nname", "h3"))]).await;
    assert_refused(&status, Code::InvalidArgument, "hello node_name holds control characters or white space");

    // A stream that does not start with a hello.
    let status = refused(&relay, vec![encoded(&markers(1..=1))]).await;
    assert_refused(&status, Code::InvalidArgument, "the first message must be a hello");

    // Sequence numbers going backwards, then an entry without an event, then a second hello.
    let backwards = batch(
        vec![3, 2].into_iter().map(|seq| SequencedEvent { seq, event: Some(Box::new(marker_event(seq))) }).collect(),
    );
    let status = refused(&relay, vec![encoded(&hello("bad-seq", "b1")), encoded(&backwards)]).await;
    assert_refused(&status, Code::InvalidArgument, "sequence numbers in a batch must start at 1 or later and increase");
    let empty_entry = batch(vec![SequencedEvent { seq: 1, event: None }]);
    let status = refused(&relay, vec![encoded(&hello("bad-entry", "b2")), encoded(&empty_entry)]).await;
    assert_refused(&status, Code::InvalidArgument, "batch entry 0 (seq 1) has no event");
    let status = refused(&relay, vec![encoded(&hello("twice", "b3")), encoded(&hello("twice", "b3"))]).await;
    assert_refused(&status, Code::InvalidArgument, "a second hello on one stream");

    // Bytes that are not protobuf: field 2 claims 1000 bytes and has 3.
    let garbage = Bytes::from_static(&[0x12, 0xe8, 0x07, 1, 2, 3]);
    let status = refused(&relay, vec![encoded(&hello("garbage", "b4")), garbage]).await;
    assert_refused(&status, Code::Internal, "failed to decode Protobuf message");

    // A message over the ingest limit (16 MiB).
    let oversized = Bytes::from(vec![0u8; 17 << 20]);
    let status = refused(&relay, vec![encoded(&hello("big", "b5")), oversized]).await;
    assert_refused(&status, Code::OutOfRange, "decoded message length too large");

    // Invalid filters on the client side.
    let mut fgs = FineGuidanceSensorsClient::new(relay.client().await);
    let bad_regex = GetEventsRequest {
        allow_list: vec![Filter { binary_regex: vec!["(unclosed".into()], ..Default::default() }],
        ..Default::default()
    };
    let status = fgs.get_events(bad_regex).await.expect_err("invalid regex refused");
    assert_refused(&status, Code::InvalidArgument, "binary_regex[0]");
    assert!(!status.message().contains("(unclosed"), "the pattern is not echoed: {status:?}");
    let cel = GetEventsRequest {
        allow_list: vec![Filter { cel_expression: vec!["true".into()], ..Default::default() }],
        ..Default::default()
    };
    let status = fgs.get_events(cel).await.expect_err("CEL refused");
    assert_refused(&status, Code::InvalidArgument, "cel_expression");

    // The good sensor carries on; its client got everything exactly once.
    good_tx.send(markers(101..=200)).await.unwrap();
    assert_eq!(next_ack(&mut good_replies).await, 200);
    let (seen, notices) = tokio::time::timeout(Duration::from_secs(30), collector).await.expect("collected").unwrap();
    let expected: BTreeMap<String, usize> = (1..=200).map(|i| (format!("marker-{i}"), 1)).collect();
    assert_eq!(seen, expected, "every marker exactly once");
    assert_eq!(notices, 0, "nothing lost");

    // The relay reports the good node as connected with its 200 events, and
    // no refused stream left a node behind holding events.
    let nodes = RelayAdminClient::new(relay.client().await).list_nodes(ListNodesRequest {}).await.unwrap().into_inner();
    let good = nodes.nodes.iter().find(|n| n.node_name == "good-node").expect("good-node listed");
    assert!(good.connected);
    assert_eq!((good.events, good.lost, good.last_seq), (200, 0, 200));
    assert_eq!(nodes.events_merged, 207, "200 good, 5 from jumper before its jump, 1 from skipper, 1 from big-node");
    let node = |name: &str| nodes.nodes.iter().find(|n| n.node_name == name).unwrap_or_else(|| panic!("{name}"));
    let jumper = node("jumper");
    assert_eq!((jumper.last_seq, jumper.events, jumper.lost), (5, 5, 0), "the jump took nothing");
    let big = node("big-node");
    assert_eq!((big.oversized, big.lost, big.last_seq), (1, 0, 2), "refused and counted apart from sensor-side losses");
    let skipper = node("skipper");
    assert_eq!((skipper.last_seq, skipper.events, skipper.lost), (101, 1, 100));
    for n in
        nodes.nodes.iter().filter(|n| !["good-node", "jumper", "skipper", "big-node"].contains(&n.node_name.as_str()))
    {
        assert!(!n.connected && n.events == 0, "{n:?}");
    }
    // The good sensor used the any-node credential: flagged; node-a's is bound.
    assert!(good.any_node_credential);
    assert!(nodes.nodes.iter().any(|n| n.node_name == "node-a" && !n.any_node_credential));
}

/// The next acknowledgement on a sensor stream (policy sets skipped).
async fn next_ack(replies: &mut tonic::Streaming<IngestReply>) -> u64 {
    loop {
        match replies.message().await.expect("ack").and_then(|r| r.msg) {
            Some(ingest_reply::Msg::Ack(a)) => return a.seq,
            Some(ingest_reply::Msg::Policies(_)) => {}
            other => panic!("expected an ack, got {other:?}"),
        }
    }
}
