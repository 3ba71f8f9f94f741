//! Helpers shared by the node's integration tests: an in-process node on an ephemeral
//! port and the raw generated tonic client.
//!
//! With env `ENSYNC_TEST_STORE=jetstream`, [`start_with`] starts every node on the
//! JetStream backend instead of the embedded store: over a 3-server cluster shared by
//! the test process ([`nats::shared`]), a stream of its own per node.
#![allow(dead_code)]

pub mod nats;

use std::time::Duration;

use base64::Engine as _;
use ensync_node::dev::DevSetup;
use ensync_node::rpc::en_sync_service_client::EnSyncServiceClient;
use ensync_node::{Node, NodeConfig, RunningNode};
use ensync_proto::wire;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

pub type Client = EnSyncServiceClient<Channel>;

pub struct TestNode {
    pub dev: DevSetup,
    pub node: RunningNode,
}

impl TestNode {
    pub async fn client(&self) -> Client {
        client(self.node.grpc_addr()).await
    }
    /// A client connected as app `i` (0-based); returns it with its session id.
    pub async fn session(&self, i: usize) -> (Client, String) {
        let mut c = self.client().await;
        let id = connect(&mut c, &self.dev.apps[i].access_key).await;
        (c, id)
    }
    pub fn key(&self, i: usize) -> String {
        self.dev.apps[i].public_key.clone()
    }
}

pub async fn start(n_apps: usize) -> TestNode {
    start_with(n_apps, |_| {}).await
}

/// Whether this run puts the test nodes on JetStream (`ENSYNC_TEST_STORE=jetstream`).
pub fn on_jetstream() -> bool {
    match std::env::var("ENSYNC_TEST_STORE").as_deref() {
        Ok("jetstream") => true,
        Ok("embedded") | Err(_) => false,
        Ok(other) => panic!("ENSYNC_TEST_STORE={other:?}: expected jetstream or embedded"),
    }
}

/// For a test of what only the embedded store does (restart from its file, commit
/// counts): `true` (after a note) when this run is on JetStream, so the test returns.
pub fn embedded_only(test: &str) -> bool {
    let js = on_jetstream();
    if js {
        eprintln!("not run on JetStream: {test} checks the embedded store");
    }
    js
}

pub async fn start_with(n_apps: usize, tweak: impl FnOnce(&mut NodeConfig)) -> TestNode {
    let mut dev = DevSetup::generate(n_apps).expect("dev setup");
    if on_jetstream() {
        let cluster = nats::shared("ENSYNC_TEST_STORE=jetstream")
            .await
            .expect("ENSYNC_TEST_STORE=jetstream needs nats-server");
        dev.config.store = ensync_node::config::StoreKind::Jetstream;
        dev.config.jetstream = Some(cluster.jetstream_config(&nats::unique_stream()));
    }
    tweak(&mut dev.config);
    let node = Node::start(dev.config.clone()).await.expect("node starts");
    TestNode { dev, node }
}

pub async fn client(addr: std::net::SocketAddr) -> Client {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("channel");
    EnSyncServiceClient::new(channel)
}

pub async fn connect(c: &mut Client, access_key: &str) -> String {
    let r = c
        .connect(wire::ConnectRequest {
            access_key: access_key.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.success, "connect failed: {}", r.error_message);
    r.client_id
}

/// A stand-in for an encrypted envelope: the node only checks that it is base64.
pub fn payload(i: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{{\"n\":{i}}}"))
}

pub fn publish_req(cid: &str, name: &str, to: &str, i: usize) -> wire::PublishEventRequest {
    wire::PublishEventRequest {
        client_id: cid.to_owned(),
        event_name: name.to_owned(),
        payload: payload(i),
        delivery_to: to.to_owned(),
        metadata: format!("{{\"i\":{i}}}"),
        payload_metadata: Some("{\"byte_size\":7,\"skeleton\":{\"n\":\"integer\"}}".to_owned()),
    }
}

/// Publishes with the generation-1 RPC and asserts success; returns the event id.
pub async fn publish(c: &mut Client, cid: &str, name: &str, to: &str, i: usize) -> String {
    let r = c
        .publish_event(publish_req(cid, name, to, i))
        .await
        .unwrap()
        .into_inner();
    assert!(r.success, "publish failed: {}", r.error_message);
    assert!(!r.event_idem.is_empty());
    r.event_idem
}

pub async fn subscribe(
    c: &mut Client,
    cid: &str,
    name: &str,
) -> Streaming<wire::EventStreamResponse> {
    c.subscribe(wire::SubscribeRequest {
        client_id: cid.to_owned(),
        event_name: name.to_owned(),
    })
    .await
    .expect("subscribe")
    .into_inner()
}

/// The next event on a stream (generous timeout).
pub async fn next(s: &mut Streaming<wire::EventStreamResponse>) -> wire::EventStreamResponse {
    tokio::time::timeout(Duration::from_secs(15), s.message())
        .await
        .expect("timed out waiting for an event")
        .expect("stream error")
        .expect("stream ended")
}

/// Asserts nothing arrives on the stream for `ms`.
pub async fn nothing_for(s: &mut Streaming<wire::EventStreamResponse>, ms: u64) {
    if let Ok(r) = tokio::time::timeout(Duration::from_millis(ms), s.message()).await {
        panic!("expected nothing, got {r:?}");
    }
}

pub async fn ack(
    c: &mut Client,
    cid: &str,
    ev: &wire::EventStreamResponse,
) -> wire::AcknowledgeResponse {
    c.acknowledge_event(wire::AcknowledgeRequest {
        client_id: cid.to_owned(),
        event_idem: ev.event_idem.clone(),
        event_name: ev.event_name.clone(),
        partition_block: ev.partition_block,
    })
    .await
    .unwrap()
    .into_inner()
}

pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
