//! `EnSyncWebSocketEngine` against our node: the whole client API over WebSocket,
//! events crossing between our WebSocket and gRPC clients through one node, PING/PONG,
//! and reconnect with resubscribe.

use std::time::Duration;

use ensync_node::dev::DevSetup;
use ensync_node::{Node, NodeConfig, RunningNode};
use ensync_tokio::{
    Client, ClientOptions, ConnectionState, EnSyncEngine, EnSyncWebSocketEngine, EngineOptions,
    SubscribeOptions,
};
use futures::StreamExt as _;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(15);

struct Setup {
    dev: DevSetup,
    node: RunningNode,
}

async fn start(tweak: impl FnOnce(&mut NodeConfig)) -> Setup {
    let mut dev = DevSetup::generate(2).expect("dev setup");
    tweak(&mut dev.config);
    let node = Node::start(dev.config.clone()).await.expect("node starts");
    Setup { dev, node }
}

fn options() -> EngineOptions {
    EngineOptions::default()
        .reconnect_interval(Duration::from_millis(200))
        .request_timeout(Duration::from_secs(10))
}

impl Setup {
    fn ws_url(&self) -> String {
        format!("ws://{}", self.node.ws_addr().expect("ws endpoint"))
    }
    async fn ws_client(&self, app: usize) -> Client {
        self.ws_client_with(app, options()).await
    }
    async fn ws_client_with(&self, app: usize, options: EngineOptions) -> Client {
        let engine = EnSyncWebSocketEngine::with_options(&self.ws_url(), options).unwrap();
        let a = &self.dev.apps[app];
        engine
            .create_client(
                &a.access_key,
                ClientOptions::default().app_secret_key(a.secret_key()),
            )
            .await
            .expect("WebSocket client")
    }
    async fn grpc_client(&self, app: usize) -> Client {
        let engine =
            EnSyncEngine::with_options(&format!("grpc://{}", self.node.grpc_addr()), options())
                .unwrap();
        let a = &self.dev.apps[app];
        engine
            .create_client(
                &a.access_key,
                ClientOptions::default().app_secret_key(a.secret_key()),
            )
            .await
            .expect("gRPC client")
    }
}

async fn next(s: &mut ensync_tokio::Subscription) -> ensync_tokio::Event {
    tokio::time::timeout(WAIT, s.next())
        .await
        .expect("timed out waiting for an event")
        .expect("subscription ended")
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_client_api_over_websocket() {
    let t = start(|_| {}).await;
    let alice = t.ws_client(0).await;
    let bob = t.ws_client(1).await;
    assert_eq!(alice.public_key(), t.dev.apps[0].public_key);
    assert_eq!(bob.state(), ConnectionState::Connected);

    // Auto-ack subscription: decrypted payload, metadata, sender, loggedAt.
    let mut sub = bob.subscribe("orders/status").await.unwrap();
    let before = ensync_node::service::now_ms() as i64;
    let ids = alice
        .publish_with_metadata(
            "orders/status",
            &[bob.public_key()],
            &json!({"order_id": "o-1", "status": "done"}),
            &json!({"source": "ws; test"}),
        )
        .await
        .unwrap();
    assert_eq!(ids.len(), 1);
    let ev = next(&mut sub).await;
    assert_eq!(ev.idem, ids[0]);
    assert_eq!(ev.payload, json!({"order_id": "o-1", "status": "done"}));
    assert_eq!(ev.metadata, json!({"source": "ws; test"}));
    assert_eq!(ev.sender, alice.public_key());
    let ts = ev.timestamp.expect("WebSocket events carry loggedAt");
    assert!(ts >= before - 1000, "{ts} < {before}");
    drop(ev); // handled: acknowledged automatically
    eventually("auto-ack reaches the node", || {
        t.node.stats().in_flight == 0
    })
    .await;

    // Manual ack subscription: defer, replay, discard, ack, pause/resume.
    let mut manual = bob
        .subscribe_with("jobs", SubscribeOptions::default().auto_ack(false))
        .await
        .unwrap();
    let id = alice
        .publish("jobs", &[bob.public_key()], &json!({"n": 1}))
        .await
        .unwrap()
        .remove(0);
    let ev = next(&mut manual).await;
    assert_eq!(ev.idem, id);
    let due = ev.defer(Duration::from_secs(1), "later").await.unwrap();
    assert!(due >= ensync_node::service::now_ms() as i64 + 500, "{due}");
    let again = next(&mut manual).await;
    assert_eq!(
        (again.idem.as_str(), &again.payload),
        (id.as_str(), &json!({"n": 1}))
    );
    assert_eq!(manual.replay(&id).await.unwrap(), json!({"n": 1}));
    again.discard("done with it").await.unwrap();
    assert_eq!(manual.replay(&id).await.unwrap(), json!({"n": 1}));

    manual.pause("maintenance").await.unwrap();
    let id2 = alice
        .publish("jobs", &[bob.public_key()], &json!({"n": 2}))
        .await
        .unwrap()
        .remove(0);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), manual.next())
            .await
            .is_err(),
        "delivered while paused"
    );
    manual.resume().await.unwrap();
    let ev = next(&mut manual).await;
    assert_eq!(ev.idem, id2);
    manual.ack(&ev.idem, ev.block).await.unwrap();
    drop(ev);
    // A second ack of the same event is refused by the node.
    let err = manual.ack(&id2, 1).await.unwrap_err();
    assert_eq!(err.kind(), ensync_tokio::ErrorKind::Ack);

    // Errors come back as typed errors, and the connection goes on.
    let err = alice
        .publish("jobs", &["not-a-key"], &json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ensync_tokio::ErrorKind::Validation, "{err}");
    let err = manual.replay("no-such-event").await.unwrap_err();
    assert_eq!(err.kind(), ensync_tokio::ErrorKind::Replay, "{err}");

    manual.unsubscribe().await.unwrap();
    sub.unsubscribe().await.unwrap();
    eventually("subscriptions end", || t.node.stats().subscriptions == 0).await;
    alice.close().await.unwrap();
    bob.close().await.unwrap();
    eventually("sessions end", || t.node.stats().sessions == 0).await;
    assert!(matches!(
        bob.state(),
        ConnectionState::Closed { reason: None }
    ));
}

#[tokio::test]
async fn websocket_and_grpc_clients_talk_through_one_node() {
    let t = start(|_| {}).await;
    let ws = t.ws_client(0).await;
    let grpc = t.grpc_client(1).await;
    let mut ws_sub = ws.subscribe("chat").await.unwrap();
    let mut grpc_sub = grpc.subscribe("chat").await.unwrap();

    // gRPC -> WebSocket.
    let id = grpc
        .publish("chat", &[ws.public_key()], &json!({"text": "hi over gRPC"}))
        .await
        .unwrap()
        .remove(0);
    let ev = next(&mut ws_sub).await;
    assert_eq!(
        (ev.idem.as_str(), ev.sender.as_str()),
        (id.as_str(), grpc.public_key())
    );
    assert_eq!(ev.payload, json!({"text": "hi over gRPC"}));

    // WebSocket -> gRPC, replying to the sender.
    let reply_to = ev.sender.clone();
    drop(ev);
    let id = ws
        .publish(
            "chat",
            &[&reply_to],
            &json!({"text": "hi back over WebSocket"}),
        )
        .await
        .unwrap()
        .remove(0);
    let ev = next(&mut grpc_sub).await;
    assert_eq!(
        (ev.idem.as_str(), ev.sender.as_str()),
        (id.as_str(), ws.public_key())
    );
    assert_eq!(ev.payload, json!({"text": "hi back over WebSocket"}));
    assert_eq!(ev.timestamp, None, "gRPC carries no log time");
    drop(ev);

    // One publish to both transports' apps at once (hybrid envelope included).
    for hybrid in [false, true] {
        let ids = ws
            .publish_with(
                "chat",
                &[ws.public_key(), grpc.public_key()],
                &json!({"to": "both", "hybrid": hybrid}),
                ensync_tokio::PublishOptions::default().hybrid(hybrid),
            )
            .await
            .unwrap();
        assert_eq!(ids.len(), 2);
        let a = next(&mut ws_sub).await;
        let b = next(&mut grpc_sub).await;
        assert_eq!(a.payload, json!({"to": "both", "hybrid": hybrid}));
        assert_eq!(b.payload, a.payload);
        assert_eq!(
            (a.idem.as_str(), b.idem.as_str()),
            (ids[0].as_str(), ids[1].as_str())
        );
    }
}

#[tokio::test]
async fn answers_pings_and_stays_connected() {
    // The node pings every 100 ms of silence and drops a connection after 2 misses;
    // the client's own WebSocket pings are rare, so only its PONGs keep it alive.
    let t = start(|c| {
        c.ws_ping_interval_ms = 100;
        c.heartbeat_misses = 2;
        c.heartbeat_interval_ms = 100;
    })
    .await;
    let quiet = options().heartbeat_interval(Duration::from_secs(60));
    let client = t.ws_client_with(0, quiet).await;
    let session = client.client_id().to_owned();
    let mut sub = client.subscribe("tick").await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(client.state(), ConnectionState::Connected);
    // Still the first session: the connection was never dropped.
    assert!(
        t.node.service().heartbeat(&session).is_ok(),
        "the session was dropped"
    );
    client
        .publish("tick", &[client.public_key()], &json!({"alive": true}))
        .await
        .unwrap();
    assert_eq!(next(&mut sub).await.payload, json!({"alive": true}));
}

#[tokio::test]
async fn reconnects_and_resubscribes_after_the_node_restarts() {
    let t = start(|_| {}).await;
    let grpc_addr = t.node.grpc_addr();
    let ws_addr = t.node.ws_addr().unwrap();
    let client = t.ws_client(0).await;
    let mut changes = client.state_changes();
    let mut sub = client.subscribe("restart").await.unwrap();
    let Setup { mut dev, node } = t;
    node.shutdown().await;

    // The client notices and tries again with backoff.
    let reconnecting = tokio::time::timeout(WAIT, async {
        while let Some(s) = changes.next().await {
            if matches!(s, ConnectionState::Reconnecting { .. }) {
                return s;
            }
        }
        panic!("state changes ended");
    })
    .await
    .expect("no reconnect attempt");
    assert!(matches!(
        reconnecting,
        ConnectionState::Reconnecting { attempt: 1, .. }
    ));

    // Same data, same ports.
    dev.config.grpc_listen = grpc_addr;
    dev.config.ws_listen = Some(ws_addr);
    let node = Node::start(dev.config.clone())
        .await
        .expect("node restarts");
    let t = Setup { dev, node };
    eventually("reconnected", || {
        client.state() == ConnectionState::Connected
    })
    .await;

    // The subscription was restored: an event published now arrives on it.
    let other = t.grpc_client(1).await;
    let id = other
        .publish(
            "restart",
            &[client.public_key()],
            &json!({"after": "restart"}),
        )
        .await
        .unwrap()
        .remove(0);
    let ev = next(&mut sub).await;
    assert_eq!(ev.idem, id);
    assert_eq!(ev.payload, json!({"after": "restart"}));
}

#[tokio::test]
async fn a_session_ended_by_the_node_is_restored() {
    let t = start(|_| {}).await;
    let client = t.ws_client(0).await;
    let mut sub = client.subscribe("again").await.unwrap();
    let first_id = client.client_id().to_owned();
    t.node.service().end_session(&first_id);
    eventually("a new session", || {
        t.node.stats().sessions == 1 && t.node.stats().subscriptions == 1
    })
    .await;
    let id = client
        .publish("again", &[client.public_key()], &json!({"n": 1}))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(next(&mut sub).await.idem, id);
}

#[tokio::test]
async fn refused_keys_and_unreachable_nodes_fail_promptly() {
    let t = start(|_| {}).await;
    let engine = EnSyncWebSocketEngine::with_options(&t.ws_url(), options()).unwrap();
    let err = engine
        .create_client("wrong-key", ClientOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ensync_tokio::ErrorKind::Auth, "{err}");
    assert!(err.to_string().contains("invalid access key"), "{err}");

    let addr = t.node.ws_addr().unwrap();
    t.node.shutdown().await;
    let engine = EnSyncWebSocketEngine::with_options(&format!("ws://{addr}"), options()).unwrap();
    let err = engine
        .create_client("any", ClientOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ensync_tokio::ErrorKind::Connection, "{err}");

    assert!(EnSyncWebSocketEngine::new("ftp://x").is_err());
    let e = EnSyncWebSocketEngine::new("wss://node.ensync.cloud").unwrap();
    assert!(e.uses_tls());
    assert_eq!(e.url(), "wss://node.ensync.cloud:443/message");
    assert_eq!(
        EnSyncWebSocketEngine::new("localhost").unwrap().url(),
        "ws://localhost:8082/message"
    );
}

/// A node that is shutting down closes a WebSocket `CONN` instead of refusing it: our
/// client sees a lost connection (retryable, it tried again) and never an invalid access
/// key.
#[tokio::test]
async fn a_node_shutting_down_is_a_lost_connection_not_a_refused_key() {
    let t = start(|_| {}).await;
    t.node.service().close_now();
    let engine = EnSyncWebSocketEngine::with_options(
        &t.ws_url(),
        options()
            .reconnect_interval(Duration::from_millis(50))
            .max_reconnect_attempts(2),
    )
    .unwrap();
    let a = &t.dev.apps[0];
    let err = tokio::time::timeout(
        WAIT,
        engine.create_client(&a.access_key, ClientOptions::default()),
    )
    .await
    .expect("gives up in time")
    .unwrap_err();
    assert_eq!(err.kind(), ensync_tokio::ErrorKind::Connection, "{err}");
    assert!(err.is_retryable(), "{err}");
    assert!(!err.to_string().contains("invalid access key"), "{err}");
}

#[tokio::test]
async fn wss_with_a_custom_ca_and_websocket_level_keepalive() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let t = start(|c| {
        c.tls_cert = Some(dir.path().join("cert.pem"));
        c.tls_key = Some(dir.path().join("key.pem"));
    })
    .await;
    let port = t.node.ws_addr().unwrap().port();
    let url = format!("wss://localhost:{port}");

    // Without trusting the certificate, the handshake fails.
    let err = EnSyncWebSocketEngine::with_options(&url, options())
        .unwrap()
        .create_client(&t.dev.apps[0].access_key, ClientOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ensync_tokio::ErrorKind::Connection, "{err}");

    // Trusting it, and pinging every 100 ms: the node's pongs keep the client connected.
    let options = options()
        .ca_certificate_pem(cert.cert.pem())
        .heartbeat_interval(Duration::from_millis(100));
    let engine = EnSyncWebSocketEngine::with_options(&url, options).unwrap();
    assert!(engine.uses_tls());
    let a = &t.dev.apps[0];
    let client = engine
        .create_client(
            &a.access_key,
            ClientOptions::default().app_secret_key(a.secret_key()),
        )
        .await
        .expect("wss client");
    let session = client.client_id().to_owned();
    let mut sub = client.subscribe("secure").await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(t.node.service().heartbeat(&session).is_ok(), "reconnected");
    client
        .publish("secure", &[client.public_key()], &json!({"tls": true}))
        .await
        .unwrap();
    assert_eq!(next(&mut sub).await.payload, json!({"tls": true}));
}
