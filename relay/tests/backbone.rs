//! Relays on a real NATS JetStream backbone: ingest relays publish what
//! sensors send, a query relay serves it; what a sensor sends again
//! through another ingest relay is dropped by message id; a backbone that
//! does not answer, or a stream with other settings, stops start-up with
//! an error naming it; tracing policies changed at any relay reach the
//! sensors of every ingest relay.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

#[path = "support/local.rs"]
mod local;
#[path = "support/nats.rs"]
mod nats;

use std::collections::BTreeMap;
use std::time::Duration;

use local::{Relay, cert_dir, hello};
use nats::Nats;
use proto::tetragon::fine_guidance_sensors_client::FineGuidanceSensorsClient;
use proto::tetragon::get_events_response::Event;
use proto::tetragon::{
    AddTracingPolicyRequest, DeleteTracingPolicyRequest, DisableTracingPolicyRequest, GetEventsRequest,
    GetEventsResponse, ListTracingPoliciesRequest,
};
use proto::vigil::relay::v1::ingest_client::IngestClient;
use proto::vigil::relay::v1::relay_admin_client::RelayAdminClient;
use proto::vigil::relay::v1::{
    Batch, IngestMessage, IngestReply, ListNodesRequest, ListNodesResponse, PolicySet, SequencedEvent, ingest_message,
    ingest_reply,
};
use tokio::sync::mpsc;
use tonic::Streaming;

/// A stream of 256 MiB: what the default (10 GiB) asks of JetStream's
/// storage is more than a test machine's disk may have free.
const SMALL: [&str; 2] = ["--backbone-max-mib", "256"];

/// A test sensor on one ingest stream.
struct FakeSensor {
    tx: mpsc::Sender<IngestMessage>,
    replies: Streaming<IngestReply>,
    node: String,
}

impl FakeSensor {
    /// Connects as `node` (its instance and boot id named after it) and
    /// takes the welcome: what the relay says it holds.
    async fn connect(relay: &Relay, node: &str) -> (FakeSensor, u64) {
        Self::try_connect(relay, node).await.unwrap_or_else(|e| panic!("{node}'s stream: {e}"))
    }

    async fn try_connect(relay: &Relay, node: &str) -> Result<(FakeSensor, u64), String> {
        let (tx, rx) = mpsc::channel(8);
        tx.send(IngestMessage { msg: Some(ingest_message::Msg::Hello(hello(node))) }).await.unwrap();
        let mut replies = IngestClient::new(relay.sensor().await)
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|e| e.message().to_owned())?
            .into_inner();
        loop {
            match replies.message().await.map_err(|e| e.message().to_owned())?.and_then(|r| r.msg) {
                Some(ingest_reply::Msg::Welcome(w)) => {
                    return Ok((FakeSensor { tx, replies, node: node.to_owned() }, w.acked));
                }
                Some(_) => continue,
                None => return Err("no welcome".into()),
            }
        }
    }

    /// The next policy set the relay sends.
    async fn next_set(&mut self) -> PolicySet {
        loop {
            let reply = tokio::time::timeout(Duration::from_secs(20), self.replies.message())
                .await
                .unwrap_or_else(|_| panic!("{}: a policy set within 20 s", self.node))
                .unwrap();
            match reply.and_then(|r| r.msg) {
                Some(ingest_reply::Msg::Policies(set)) => return set,
                Some(_) => {}
                None => panic!("{}: the stream ended", self.node),
            }
        }
    }

    /// Sends events `seqs` (marked `m-<node>-<seq>`, a millisecond apart
    /// from `base_ns`) and waits for their acknowledgement.
    async fn send(&mut self, seqs: std::ops::RangeInclusive<u64>, base_ns: i128) {
        let last = *seqs.end();
        if let Err(e) = self.try_send(seqs, base_ns).await {
            panic!("{}: no ack of {last}: {e}", self.node);
        }
    }

    async fn try_send(&mut self, seqs: std::ops::RangeInclusive<u64>, base_ns: i128) -> Result<(), String> {
        self.try_send_pipelined(&[seqs], base_ns).await.map(|_| ())
    }

    /// Sends a batch of each of `batches` without waiting, as a real
    /// sensor does, then takes the acknowledgements up to the last batch's
    /// end: each batch's end, in order, or an error (with the
    /// acknowledgements before it).
    async fn try_send_pipelined(
        &mut self,
        batches: &[std::ops::RangeInclusive<u64>],
        base_ns: i128,
    ) -> Result<Vec<u64>, String> {
        for seqs in batches {
            self.send_only(seqs.clone(), base_ns).await?;
        }
        self.acks_through(batches.last().map_or(0, |b| *b.end())).await
    }

    /// Sends a batch of `seqs`, not waiting for its acknowledgement.
    async fn send_only(&mut self, seqs: std::ops::RangeInclusive<u64>, base_ns: i128) -> Result<(), String> {
        let events = seqs.map(|seq| SequencedEvent { seq, event: Some(Box::new(marked(&self.node, seq, base_ns))) });
        let batch = Batch { events: events.collect(), lost: 0, skipped: 0 };
        self.tx.send(IngestMessage { msg: Some(ingest_message::Msg::Batch(batch)) }).await.map_err(|e| e.to_string())
    }

    /// The acknowledgements that come until one of `last`.
    async fn acks_through(&mut self, last: u64) -> Result<Vec<u64>, String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut acks = Vec::new();
        loop {
            let reply = tokio::time::timeout_at(deadline, self.replies.message()).await.map_err(|_| "timed out")?;
            match reply.map_err(|e| format!("{} (after acknowledgements {acks:?})", e.message()))?.and_then(|r| r.msg) {
                Some(ingest_reply::Msg::Ack(a)) => {
                    acks.push(a.seq);
                    if a.seq >= last {
                        return Ok(acks);
                    }
                }
                Some(_) => continue,
                None => return Err(format!("the stream ended (after acknowledgements {acks:?})")),
            }
        }
    }

    /// As a sensor does: until `node`'s events through `last` are
    /// acknowledged, (re)connects and sends what the relay does not hold.
    /// The errors met on the way.
    async fn deliver(relay: &Relay, node: &str, last: u64, base_ns: i128) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let mut errors = Vec::new();
        loop {
            assert!(tokio::time::Instant::now() < deadline, "{node}: never delivered; errors: {errors:?}");
            let result = match Self::try_connect(relay, node).await {
                Ok((_, acked)) if acked >= last => return errors,
                Ok((mut sensor, acked)) => sensor.try_send(acked + 1..=last, base_ns).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return errors,
                Err(e) => errors.push(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `node`'s event `seq`: an exec marked `m-<node>-<seq>`.
fn marked(node: &str, seq: u64, base_ns: i128) -> GetEventsResponse {
    test_support::events::exec("/bin/marked")
        .arguments(&format!("m-{node}-{seq}"))
        .exec_id_of(node, 1_000 + seq, 100 + seq as u32)
        .node(node)
        .at_nanos(base_ns + i128::from(seq) * 1_000_000)
        .build()
}

fn now_ns() -> i128 {
    proto::Timestamp::now().unix_nanos()
}

/// Relays of `roles` on the backbone at `url` (sharing `test`'s
/// certificates), each with `extra` flags, once every one serves.
async fn relays_on(url: &str, test: &str, roles: &[&str], extra: &[&str]) -> Vec<Relay> {
    let dir = cert_dir(test);
    let relays: Vec<Relay> = roles
        .iter()
        .map(|role| {
            // A role, then any flags of that relay's own.
            let mut own = role.split_whitespace();
            let mut args = vec!["--backbone", url, "--backbone-role", own.next().unwrap_or("both")];
            args.extend(own);
            args.extend_from_slice(&SMALL);
            args.extend_from_slice(extra);
            Relay::spawn(dir.clone(), &args)
        })
        .collect();
    for (r, role) in relays.iter().zip(roles) {
        assert!(r.serving_within(Duration::from_secs(60)).await, "the {role} relay did not start:\n{}", r.log());
    }
    relays
}

/// A `GetEvents` stream from `relay`.
async fn subscribe(relay: &Relay, request: GetEventsRequest) -> Streaming<GetEventsResponse> {
    FineGuidanceSensorsClient::new(relay.client().await).get_events(request).await.unwrap().into_inner()
}

/// What `vigil nodes` shows of `relay`.
async fn list_nodes(relay: &Relay) -> ListNodesResponse {
    let mut admin = RelayAdminClient::new(relay.client().await);
    admin.list_nodes(ListNodesRequest::default()).await.unwrap().into_inner()
}

/// A marker event's marker and time.
fn marker_of(e: &GetEventsResponse) -> Option<(String, i128)> {
    match &e.event {
        Some(Event::ProcessExec(x)) => {
            let p = x.process.as_ref()?;
            p.arguments.starts_with("m-").then(|| (p.arguments.clone(), e.time.map_or(0, |t| t.unix_nanos())))
        }
        _ => None,
    }
}

/// Reads `stream` into `seen` until `done` holds of the markers seen
/// (counted), or 60 s; the counts.
async fn read_until(
    stream: &mut Streaming<GetEventsResponse>,
    seen: &mut Vec<GetEventsResponse>,
    done: impl Fn(&BTreeMap<String, usize>) -> bool,
) -> BTreeMap<String, usize> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for (marker, _) in seen.iter().filter_map(marker_of) {
            *counts.entry(marker).or_default() += 1;
        }
        if done(&counts) {
            return counts;
        }
        let Ok(next) = tokio::time::timeout_at(deadline, stream.message()).await else {
            return counts;
        };
        let Some(e) = next.unwrap() else { return counts };
        seen.push(e);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ingest_relays_and_a_query_relay_give_every_marker_once_in_time_order() {
    test_support::skip_if!(nats::skip_reason());
    let nats = Nats::start("one");
    let url = nats.url();
    let metrics = ["--metrics-address", "127.0.0.1:0"];
    // One ingest relay writes JSON, the other protobuf: the query relay
    // reads both.
    let roles = ["ingest", "ingest --backbone-format json", "query"];
    let relays = relays_on(&url, "backbone", &roles, &metrics).await;
    let [ingest_1, ingest_2, query] = &relays[..] else { unreachable!() };
    let mut events = FineGuidanceSensorsClient::new(query.client().await)
        .get_events(GetEventsRequest::default())
        .await
        .unwrap()
        .into_inner();

    // Four sensors, two on each ingest relay, three batches of 50 each.
    let base = now_ns();
    let nodes = ["node-a", "node-b", "node-c", "node-d"];
    let mut sensors = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let ingest = if i < 2 { &ingest_1 } else { &ingest_2 };
        let (sensor, acked) = FakeSensor::connect(ingest, node).await;
        assert_eq!(acked, 0, "{node}: a new sensor");
        sensors.push(sensor);
    }
    // Three rounds of a batch each, all sensors' batches of a round at
    // once (so that the nodes' events arrive within the reorder window of
    // each other).
    for round in 0..3u64 {
        for s in &mut sensors {
            s.send_only(round * 50 + 1..=round * 50 + 50, base).await.unwrap();
        }
        for s in &mut sensors {
            assert_eq!(s.acks_through(round * 50 + 50).await, Ok(vec![round * 50 + 50]), "{}", s.node);
        }
    }
    // node-a's sensor moves to the other ingest relay, which never saw it:
    // it is told what the backbone holds, and goes on from there.
    drop(sensors.remove(0));
    let (mut moved, acked) = FakeSensor::connect(ingest_2, "node-a").await;
    assert_eq!(acked, 150, "what the first ingest relay stored of node-a");
    moved.send(151..=151, base).await;

    let mut seen = Vec::new();
    let counts = read_until(&mut events, &mut seen, |c| c.contains_key("m-node-a-151") && c.len() >= 601).await;
    for node in nodes {
        for seq in 1..=150u64 {
            let marker = format!("m-{node}-{seq}");
            assert_eq!(counts.get(&marker), Some(&1), "{marker} once; query relay:\n{}", query.log());
        }
    }
    assert_eq!(counts.len(), 601, "no other marker");
    // In time order, up to the reorder window (100 ms) between nodes.
    let seen: Vec<(String, i128)> = seen.iter().filter_map(marker_of).collect();
    let mut latest = seen[0].1;
    for (marker, t) in &seen {
        assert!(*t >= latest - 100_000_000, "{marker} left {} ms after a later event", (latest - t) / 1_000_000);
        latest = latest.max(*t);
    }
    // The query relay took every one from the backbone, and no sensor.
    assert!(!query.log().contains("sensor connected"), "{}", query.log());
    // What `vigil nodes` shows: per node what each ingest relay stored, and
    // where the query relay is in the stream: a message per sensor batch
    // (12, and node-a's last), none skipped.
    let stored = |status: &ListNodesResponse| -> BTreeMap<String, u64> {
        status.nodes.iter().map(|n| (n.node_name.clone(), n.backbone_events)).collect()
    };
    let first = list_nodes(ingest_1).await;
    assert_eq!(stored(&first), BTreeMap::from([("node-a".into(), 150), ("node-b".into(), 150)]));
    let second = list_nodes(ingest_2).await;
    let want = BTreeMap::from([("node-a".into(), 1), ("node-c".into(), 150), ("node-d".into(), 150)]);
    assert_eq!(stored(&second), want);
    // The query relay shows each node as it took it from the stream.
    let status = list_nodes(query).await;
    let here: BTreeMap<String, (u64, u64, bool, bool)> = status
        .nodes
        .iter()
        .map(|n| (n.node_name.clone(), (n.events, n.duplicates, n.connected, n.via_backbone)))
        .collect();
    let want = BTreeMap::from([
        ("node-a".into(), (151, 0, false, true)),
        ("node-b".into(), (150, 0, false, true)),
        ("node-c".into(), (150, 0, false, true)),
        ("node-d".into(), (150, 0, false, true)),
    ]);
    assert_eq!(here, want);
    let b = status.backbone.expect("the query relay's backbone");
    assert_eq!((b.role.as_str(), b.stream.as_str(), b.url.as_str()), ("query", "VIGIL_EVENTS", url.as_str()));
    assert_eq!((b.consumed, b.malformed, b.duplicates, b.position), (601, 0, 0, 13));
    // And the metrics, from the same status.
    let scrape =
        |r: &Relay| test_support::scrape::http(&r.daemon.listening("metrics").to_string(), "GET", "/metrics").1;
    let text = scrape(query);
    for (name, want) in [
        ("vigil_relay_backbone_consumed_total", 601),
        ("vigil_relay_backbone_malformed_total", 0),
        ("vigil_relay_backbone_duplicates_total", 0),
        ("vigil_relay_backbone_position", 13),
    ] {
        assert_eq!(test_support::scrape::sample(&text, name, &[]), want, "{name}");
    }
    let text = scrape(ingest_1);
    let stored = test_support::scrape::sample(&text, "vigil_relay_node_backbone_events_total", &[("node", "node-b")]);
    assert_eq!(stored, 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_only_relay_refuses_sensors_and_an_ingest_relay_publishes_only() {
    test_support::skip_if!(nats::skip_reason());
    let nats = Nats::start("roles");
    let url = nats.url();
    let dir = cert_dir("backbone-roles");
    let query = Relay::spawn(dir.clone(), &["--backbone", &url, "--backbone-role", "query", SMALL[0], SMALL[1]]);
    assert!(query.serving_within(Duration::from_secs(30)).await, "{}", query.log());
    let (tx, rx) = mpsc::channel(1);
    tx.send(IngestMessage { msg: Some(ingest_message::Msg::Hello(hello("node-q"))) }).await.unwrap();
    let refused = IngestClient::new(query.sensor().await)
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect_err("a query-only relay takes no sensor");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        refused.message(),
        "this relay only serves queries (--backbone-role query); point sensors at an ingest relay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backbone_that_does_not_answer_or_a_stream_set_otherwise_stops_start_up() {
    test_support::skip_if!(nats::skip_reason());
    // Nothing listens on port 1.
    let relay = Relay::spawn(cert_dir("backbone-down"), &["--backbone", "nats://127.0.0.1:1"]);
    let (status, log) = relay.exit_within(Duration::from_secs(30)).expect("the relay gives up");
    assert!(!status.success());
    assert!(log.contains("--backbone: the backbone at nats://127.0.0.1:1 does not answer"), "{log}");

    // A stream made with 256 MiB, asked for with 5 MiB: reported, kept.
    let nats = Nats::start("settings");
    let url = nats.url();
    let dir = cert_dir("backbone-settings");
    let first = Relay::spawn(dir.clone(), &["--backbone", &url, SMALL[0], SMALL[1]]);
    assert!(first.serving_within(Duration::from_secs(30)).await, "{}", first.log());
    first.stop();
    let second =
        Relay::spawn(dir.clone(), &["--backbone", &url, "--backbone-max-mib", "5", "--backbone-replicas", "1"]);
    let (status, log) = second.exit_within(Duration::from_secs(30)).expect("the relay gives up");
    assert!(!status.success());
    assert!(
        log.contains(
            "stream VIGIL_EVENTS exists with other settings (max_bytes 268435456, wanted 5242880); it is not changed"
        ),
        "{log}"
    );
    // The first's settings still stand: it starts again.
    let third = Relay::spawn(dir, &["--backbone", &url, SMALL[0], SMALL[1]]);
    assert!(third.serving_within(Duration::from_secs(30)).await, "{}", third.log());
    // A stream larger than the server can store: said, with the flags.
    let huge = ["--backbone", &url, "--backbone-stream", "HUGE", "--backbone-max-mib", "1000000000"];
    let refused = Relay::spawn(cert_dir("backbone-huge"), &huge);
    let (status, log) = refused.exit_within(Duration::from_secs(30)).expect("the relay gives up");
    assert!(!status.success());
    assert!(log.contains("stream HUGE: jetstream error: insufficient storage resources available"), "{log}");
    assert!(log.contains("cannot hold --backbone-max-mib 1000000000 × --backbone-replicas 1"), "{log}");
}

/// The backbone as the library connects to it, on stream `DEDUP`.
async fn library_backbone(nats: &Nats) -> relay::backbone::Backbone {
    use relay::backbone::{Backbone, BackboneSettings, Role};
    Backbone::connect(BackboneSettings {
        url: nats.url(),
        role: Role::Ingest,
        stream: "DEDUP".into(),
        subject_prefix: "vigil.events".into(),
        max_age: Duration::from_secs(3600),
        max_bytes: 64 << 20,
        replicas: 1,
        duplicate_window: Duration::from_secs(600),
        tls_ca: None,
        tls_cert: None,
        credentials: None,
        max_in_flight: 64,
        format: relay::backbone::payload::Format::Protobuf,
        policy_bucket: "DEDUP_POLICIES".into(),
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_bucket_takes_a_change_only_against_the_revision_it_was_made_on() {
    use relay::backbone::policies::{Write, WriteError};
    test_support::skip_if!(nats::skip_reason());
    let nats = Nats::start("bucket");
    let bucket = library_backbone(&nats).await.policy_bucket().await.unwrap();
    let policy = |yaml: &str| proto::vigil::relay::v1::ManagedPolicy {
        name: "wire".into(),
        yaml: yaml.into(),
        enabled: true,
        monitor: false,
    };
    let created = bucket.write(Write::Create(policy("a"))).await.unwrap();
    assert!(matches!(bucket.write(Write::Create(policy("b"))).await, Err(WriteError::Conflict)), "there already");
    let updated = bucket.write(Write::Update(policy("c"), created)).await.unwrap();
    assert!(updated > created);
    // Made on the first revision, after another relay changed it.
    assert!(matches!(bucket.write(Write::Update(policy("d"), created)).await, Err(WriteError::Conflict)));
    assert!(matches!(bucket.write(Write::Delete("wire".into(), created)).await, Err(WriteError::Conflict)));
    let deleted = bucket.write(Write::Delete("wire".into(), updated)).await.unwrap();
    assert_eq!(bucket.last_revision().await.unwrap(), deleted);
    // What a relay following the bucket from now on sees: nothing.
    let policies = std::sync::Arc::new(relay::policies::RelayPolicies::shared(
        bucket.clone(),
        std::sync::Arc::new(relay::nodes::Nodes::default()),
    ));
    let (_stop, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(bucket.follow(policies.clone(), stop));
    assert!(policies.caught_up(deleted, Duration::from_secs(10)).await);
    assert_eq!((policies.list_len(), policies.generation()), (0, deleted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_published_again_is_stored_once_and_says_how_far_its_sensor_is() {
    use relay::backbone::publish::Origin;
    test_support::skip_if!(nats::skip_reason());
    let nats = Nats::start("dedup");
    let backbone = library_backbone(&nats).await;
    let base = now_ns();
    let arrivals: Vec<relay::merge::Arrival> =
        (1..=5).map(|seq| relay::merge::Arrival::new(1, 77, seq, Box::new(marked("node-x", seq, base)))).collect();
    let origin = Origin { node: "node-x", boot_id: "boot-x", source: 77 };
    assert_eq!(backbone.stored_through(&origin).await.unwrap(), 0, "nothing yet");
    assert_eq!(backbone.publish(&origin, &arrivals, 0, 5).await.unwrap(), 0);
    // Sent again as it was, as a sensor does after a reconnect (through
    // any relay): dropped by message id.
    backbone.publish(&origin, &arrivals, 0, 5).await.unwrap();
    let messages = || async { backbone.stream.get_info().await.unwrap().state.messages };
    assert_eq!(messages().await, 1, "the run stored once");
    // Sent again cut otherwise: stored (query relays skip what they took).
    backbone.publish(&origin, &arrivals[2..], 0, 5).await.unwrap();
    assert_eq!(messages().await, 2);
    assert_eq!(backbone.stored_through(&origin).await.unwrap(), 5);
    // Another instance of the node (a restarted sensor) starts from 0.
    let restarted = Origin { source: 78, ..origin };
    assert_eq!(backbone.stored_through(&restarted).await.unwrap(), 0);
    // A loss notice is stored after the events it follows, once.
    backbone.publish(&origin, &[], 3, 5).await.unwrap();
    backbone.publish(&origin, &[], 3, 5).await.unwrap();
    assert_eq!(messages().await, 3);
    assert_eq!(backbone.stored_through(&origin).await.unwrap(), 5);

    // Runs end at a gap in the numbers and at the servers' max_payload
    // (here made two events' worth); an event no message can carry is
    // counted lost, in a loss notice.
    let mut small = backbone.clone();
    small.max_payload = 2 * (arrivals[0].event.encoded().len() + 1);
    let other = Origin { node: "node-y", boot_id: "boot-y", source: 79 };
    let mut huge = marked("node-y", 7, base);
    if let Some(proto::tetragon::get_events_response::Event::ProcessExec(e)) = &mut huge.event {
        e.process.as_mut().unwrap().arguments = "x".repeat(small.max_payload);
    }
    let mut sent: Vec<relay::merge::Arrival> = [1, 2, 3, 5, 6]
        .into_iter()
        .map(|seq| relay::merge::Arrival::new(1, 79, seq, Box::new(marked("node-y", seq, base))))
        .collect();
    sent.push(relay::merge::Arrival::new(1, 79, 7, Box::new(huge)));
    assert_eq!(small.publish(&other, &sent, 0, 7).await.unwrap(), 1, "one event too large");
    let mut runs = Vec::new();
    for seq in 4..=7 {
        let m = backbone.stream.get_raw_message(seq).await.unwrap();
        let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_owned()).unwrap_or_default();
        let events = relay::backbone::payload::decode(relay::backbone::payload::Format::Protobuf, &m.payload, 1 << 20)
            .unwrap()
            .iter()
            .filter_map(|d| marker_of(&d.event).map(|(marker, _)| marker))
            .collect::<Vec<_>>();
        runs.push((header("Vigil-First-Seq"), header("Vigil-Seq"), header("Vigil-Lost"), events));
    }
    let run = |first: &str, last: &str, lost: &str, events: &[&str]| {
        (first.to_owned(), last.to_owned(), lost.to_owned(), events.iter().map(|e| e.to_string()).collect::<Vec<_>>())
    };
    assert_eq!(
        runs,
        [
            run("1", "2", "", &["m-node-y-1", "m-node-y-2"]),
            run("3", "3", "", &["m-node-y-3"]),
            run("5", "6", "", &["m-node-y-5", "m-node-y-6"]),
            run("", "7", "1", &[]),
        ]
    );

    // A query relay reads it all back: every event once, the ones sent
    // again in a run cut otherwise skipped and counted.
    let flags = ["--backbone-role", "query", "--backbone-stream", "DEDUP", "--backbone-max-age-seconds", "3600"];
    let url = nats.url();
    let mut args = vec!["--backbone", url.as_str(), "--backbone-max-mib", "64"];
    args.extend(flags);
    let query = Relay::spawn(cert_dir("backbone-dedup"), &args);
    assert!(query.serving_within(Duration::from_secs(30)).await, "{}", query.log());
    let mut history = subscribe(&query, GetEventsRequest { since_seconds: 3600, ..Default::default() }).await;
    let mut seen = Vec::new();
    let counts = read_until(&mut history, &mut seen, |c| c.len() >= 10).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = list_nodes(&query).await.backbone.expect("the backbone's status");
        if status.position >= 7 || tokio::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let want: BTreeMap<String, usize> = ["x-1", "x-2", "x-3", "x-4", "x-5", "y-1", "y-2", "y-3", "y-5", "y-6"]
        .iter()
        .map(|m| (format!("m-node-{m}"), 1))
        .collect();
    assert_eq!(counts, want, "{}", query.log());
    assert_eq!((status.consumed, status.duplicates, status.malformed, status.position), (10, 3, 0, 7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_exactly_once_on_a_new_query_relay_and_since_reads_the_stream() {
    test_support::skip_if!(nats::skip_reason());
    let nats = Nats::start("resume");
    let url = nats.url();
    let relays = relays_on(&url, "backbone-resume", &["ingest", "query"], &[]).await;
    let [ingest, first] = &relays[..] else { unreachable!() };
    let mut stream = subscribe(first, GetEventsRequest::default()).await;
    let (mut sensor, _) = FakeSensor::connect(ingest, "node-r").await;
    let base = now_ns();
    // Four batches without waiting: stored meanwhile, each acknowledged
    // in order.
    let acks = sensor.try_send_pipelined(&[1..=25, 26..=50, 51..=75, 76..=100], base).await;
    assert_eq!(acks, Ok(vec![25, 50, 75, 100]));
    let mut had = Vec::new();
    let counts = read_until(&mut stream, &mut had, |c| c.len() >= 100).await;
    assert_eq!(counts.len(), 100, "the first query relay's client:\n{}", first.log());
    let mut tracker = events::resume::ResumeTracker::default();
    for e in &had {
        tracker.record(e);
    }
    // The query relay goes; events go on into the backbone; another one
    // starts, and the client resumes there.
    first.stop();
    drop(stream);
    sensor.send(101..=200, base).await;
    let second =
        Relay::spawn(ingest.dir.clone(), &["--backbone", &url, "--backbone-role", "query", SMALL[0], SMALL[1]]);
    assert!(second.serving_within(Duration::from_secs(30)).await, "{}", second.log());
    let resume = GetEventsRequest { resume: Some(tracker.resume_from()), ..Default::default() };
    let mut resumed = subscribe(&second, resume).await;
    sensor.send(201..=201, base).await;
    let mut rest = Vec::new();
    let counts = read_until(&mut resumed, &mut rest, |c| c.contains_key("m-node-r-201")).await;
    let want: BTreeMap<String, usize> = (101..=201).map(|seq| (format!("m-node-r-{seq}"), 1)).collect();
    assert_eq!(counts, want, "exactly what the client had not had; second query relay:\n{}", second.log());
    // A --since client of the new relay reads the stream's history.
    let since = GetEventsRequest { since_seconds: 3600, ..Default::default() };
    let mut history = subscribe(&second, since).await;
    let mut all = Vec::new();
    let counts = read_until(&mut history, &mut all, |c| c.contains_key("m-node-r-201")).await;
    let want: BTreeMap<String, usize> = (1..=201).map(|seq| (format!("m-node-r-{seq}"), 1)).collect();
    assert_eq!(counts, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backbone_down_for_10_s_loses_and_repeats_nothing() {
    test_support::skip_if!(nats::skip_reason());
    let mut nats = Nats::start("outage");
    let url = nats.url();
    let relays = relays_on(&url, "backbone-outage", &["ingest", "query"], &[]).await;
    let [ingest, query] = &relays[..] else { unreachable!() };
    let mut stream = subscribe(query, GetEventsRequest::default()).await;
    let base = now_ns();
    let (mut sensor, _) = FakeSensor::connect(ingest, "node-o").await;
    sensor.send(1..=100, base).await;
    // Down: nothing is acknowledged (the sensor keeps its events).
    nats.stop();
    let down_at = tokio::time::Instant::now();
    // Five batches at once, none stored: none is acknowledged, and the
    // relay forgets it took them (else the sensor's next hello would be
    // told to skip them: the final count would miss them).
    let batches: Vec<_> = (0..5).map(|b| 101 + b * 10..=110 + b * 10).collect();
    let refused = sensor.try_send_pipelined(&batches, base).await.expect_err("acknowledged with the backbone down");
    assert!(refused.contains("the backbone did not store the batch"), "{refused}");
    assert!(refused.ends_with("(after acknowledgements [])"), "{refused}");
    let outage = tokio::spawn({
        let ingest_log = ingest.log();
        async move {
            tokio::time::sleep_until(down_at + Duration::from_secs(10)).await;
            ingest_log
        }
    });
    // The sensor keeps trying meanwhile; the backbone is back after 10 s.
    let delivering = FakeSensor::deliver(ingest, "node-o", 200, base);
    let restart = async {
        let _ = outage.await;
        nats.restart();
    };
    let (_, ()) = tokio::join!(delivering, restart);
    let mut seen = Vec::new();
    let counts = read_until(&mut stream, &mut seen, |c| c.contains_key("m-node-o-200")).await;
    let want: BTreeMap<String, usize> = (1..=200).map(|seq| (format!("m-node-o-{seq}"), 1)).collect();
    assert_eq!(counts, want, "each event once; query relay:\n{}\ningest relay:\n{}", query.log(), ingest.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_relay_killed_mid_workload_hands_its_sensors_to_the_other() {
    test_support::skip_if!(nats::skip_reason());
    let nats = Nats::start("handover");
    let url = nats.url();
    let relays = relays_on(&url, "backbone-handover", &["ingest", "ingest", "query"], &[]).await;
    let [doomed, other, query] = &relays[..] else { unreachable!() };
    let mut stream = subscribe(query, GetEventsRequest::default()).await;
    let base = now_ns();
    let nodes = ["node-k1", "node-k2"];
    let mut sensors = Vec::new();
    for node in nodes {
        sensors.push(FakeSensor::connect(doomed, node).await.0);
    }
    for batch in 0..5u64 {
        for s in &mut sensors {
            s.send(batch * 10 + 1..=batch * 10 + 10, base).await;
        }
    }
    // A batch on its way when the relay dies: stored or not, acknowledged
    // or not, the other relay's welcome says what the backbone holds.
    let mut in_flight = sensors.remove(0);
    let sending = tokio::spawn(async move { in_flight.try_send(51..=60, base).await });
    doomed.stop();
    let _ = sending.await;
    for node in nodes {
        FakeSensor::deliver(other, node, 100, base).await;
    }
    let mut seen = Vec::new();
    let counts =
        read_until(&mut stream, &mut seen, |c| c.contains_key("m-node-k1-100") && c.contains_key("m-node-k2-100"))
            .await;
    let want: BTreeMap<String, usize> =
        nodes.iter().flat_map(|n| (1..=100).map(move |seq| (format!("m-{n}-{seq}"), 1))).collect();
    assert_eq!(counts, want, "each event once; query relay:\n{}", query.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_of_three_killed_mid_workload_loses_and_repeats_nothing() {
    test_support::skip_if!(nats::skip_reason());
    let (servers, url) = nats::cluster("vigil-c", 3);
    let relays = relays_on(&url, "backbone-cluster", &["ingest", "query"], &["--backbone-replicas", "3"]).await;
    let [ingest, query] = &relays[..] else { unreachable!() };
    let mut stream = subscribe(query, GetEventsRequest::default()).await;
    let base = now_ns();
    let (mut sensor, _) = FakeSensor::connect(ingest, "node-c").await;
    for batch in 0..5u64 {
        sensor.send(batch * 10 + 1..=batch * 10 + 10, base).await;
    }
    // The first server (the one each relay dials first) goes; the stream's
    // other two copies carry on.
    servers[0].stop();
    FakeSensor::deliver(ingest, "node-c", 100, base).await;
    let mut seen = Vec::new();
    let counts = read_until(&mut stream, &mut seen, |c| c.contains_key("m-node-c-100")).await;
    let want: BTreeMap<String, usize> = (1..=100).map(|seq| (format!("m-node-c-{seq}"), 1)).collect();
    assert_eq!(counts, want, "each event once; query relay:\n{}\ningest relay:\n{}", query.log(), ingest.log());
}

const POLICY: &str = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: wire\nspec:\n  \
                      tracepoints:\n  - subsystem: syscalls\n    event: sys_enter_unlinkat\n    args:\n    - index: 6\n      \
                      type: string\n";

/// The Tetragon API of `relay` with an admin certificate.
async fn admin(relay: &Relay) -> FineGuidanceSensorsClient<tonic::transport::Channel> {
    FineGuidanceSensorsClient::new(relay.clients().connect_tls(relay.tls("admin")).await.unwrap())
}

/// `(name, enabled)` of each policy in `set`.
fn policies_of(set: &PolicySet) -> Vec<(String, bool)> {
    set.policies.iter().map(|p| (p.name.clone(), p.enabled)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_changed_at_any_relay_reaches_the_sensors_of_every_ingest_relay() {
    test_support::skip_if!(nats::skip_reason());
    let nats = Nats::start("policies");
    let url = nats.url();
    let relays = relays_on(&url, "backbone-policies", &["ingest", "ingest", "query"], &[]).await;
    let [ingest_1, ingest_2, query] = &relays[..] else { unreachable!() };
    let (mut s1, _) = FakeSensor::connect(ingest_1, "node-p1").await;
    let (mut s2, _) = FakeSensor::connect(ingest_2, "node-p2").await;
    for s in [&mut s1, &mut s2] {
        assert_eq!(s.next_set().await, PolicySet::default(), "{}: no policy yet", s.node);
    }

    // Added at the query relay, where no sensor streams: both ingest
    // relays send it, with the same generation (the bucket's revision).
    let add = AddTracingPolicyRequest { yaml: POLICY.into(), domain: String::new() };
    admin(query).await.add_tracing_policy(add.clone()).await.unwrap();
    let (one, two) = (s1.next_set().await, s2.next_set().await);
    assert_eq!(one, two);
    assert_eq!(policies_of(&one), [("wire".to_owned(), true)]);
    assert_eq!(one.policies[0].yaml, POLICY);
    assert!(one.generation > 0);
    // The answer came once the relay's own copy had it.
    let listed = admin(query).await.list_tracing_policies(ListTracingPoliciesRequest::default()).await.unwrap();
    let names: Vec<String> = listed.into_inner().policies.into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["wire"]);
    // Added again at another relay: refused as one relay refuses it.
    let e = admin(ingest_2).await.add_tracing_policy(add).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (tonic::Code::AlreadyExists, "a policy named wire is already managed by the relay")
    );

    // Disabled at an ingest relay: every sensor gets the change.
    let disable = DisableTracingPolicyRequest { name: "wire".into(), ..Default::default() };
    admin(ingest_1).await.disable_tracing_policy(disable).await.unwrap();
    let (one, two) = (s1.next_set().await, s2.next_set().await);
    assert_eq!(one, two);
    assert_eq!(policies_of(&one), [("wire".to_owned(), false)]);

    // A relay that starts now has the set before it takes a sensor: its
    // first set is the bucket's, not an empty one.
    let mut args = vec!["--backbone", url.as_str(), "--backbone-role", "ingest"];
    args.extend_from_slice(&SMALL);
    let late = Relay::spawn(ingest_1.dir.clone(), &args);
    assert!(late.serving_within(Duration::from_secs(30)).await, "{}", late.log());
    let (mut s3, _) = FakeSensor::connect(&late, "node-p3").await;
    assert_eq!(policies_of(&s3.next_set().await), [("wire".to_owned(), false)]);

    // Deleted there: gone everywhere.
    let delete = DeleteTracingPolicyRequest { name: "wire".into(), ..Default::default() };
    admin(&late).await.delete_tracing_policy(delete.clone()).await.unwrap();
    for s in [&mut s1, &mut s2, &mut s3] {
        assert_eq!(policies_of(&s.next_set().await), [], "{}", s.node);
    }
    let e = admin(query).await.delete_tracing_policy(delete).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{}", e.message());
}
