//! End-to-end tests of a tokio client given several node URLs (issue 15, point 5): two
//! in-process nodes with the same apps (each its own store), or a first URL nobody
//! listens on; the client connects to, or moves on to, the node that answers, without
//! code of the application's, and a publish -> subscribe round trip works there.
//! Loopback only, every wait bounded.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ensync_node::{NodeConfig, RunningNode};
use ensync_tests::node::{TestNode, eventually, fast_options, within};
use ensync_tokio::{
    Client, ClientOptions, ConnectionState, EnSyncEngine, EnSyncWebSocketEngine, EngineOptions,
    ErrorKind, Event, Subscription,
};
use futures::StreamExt;
use serde_json::json;

/// A second node serving the apps of `first` (same access and public keys), on its own
/// port and its own data directory (which the returned directory owns).
async fn second_node(first: &TestNode) -> (RunningNode, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = NodeConfig::new(dir.path());
    config.apps = first.setup.config.apps.clone();
    config.grpc_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.ws_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let node = ensync_node::Node::start(config)
        .await
        .expect("start the second node");
    (node, dir)
}

/// A loopback address nobody listens on (a port just bound and released).
fn dead_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr")
}

async fn client_of(engine: &EnSyncEngine, node: &TestNode, i: usize) -> Client {
    let app = node.app(i);
    within(
        "create_client",
        engine.create_client(
            &app.access_key,
            ClientOptions::default().app_secret_key(app.secret_key()),
        ),
    )
    .await
    .expect("create client")
}

async fn next(sub: &mut Subscription) -> Event {
    within("an event", sub.next())
        .await
        .expect("the subscription ended")
}

/// Records every state a client goes through.
fn record_states(client: &Client) -> Arc<Mutex<Vec<ConnectionState>>> {
    let states = Arc::new(Mutex::new(Vec::new()));
    let sink = states.clone();
    let mut changes = client.state_changes();
    tokio::spawn(async move {
        while let Some(state) = changes.next().await {
            sink.lock().unwrap().push(state);
        }
    });
    states
}

/// Publishes from `alice` to `bob`'s subscription and checks the event arrives.
async fn round_trip(alice: &Client, bob: &Client, sub: &mut Subscription, n: i64) {
    let ids = within(
        "publish",
        alice.publish(sub.event_name(), &[bob.public_key()], &json!({"n": n})),
    )
    .await
    .expect("publish");
    let event = next(sub).await;
    assert_eq!(event.idem, ids[0]);
    assert_eq!(event.payload, json!({"n": n}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_url_nobody_listens_on_is_passed_over() {
    let node = TestNode::start(2).await;
    let dead = dead_addr();
    // Both forms: one comma-separated string, and the options' extra URLs.
    let listed =
        EnSyncEngine::with_options(&format!("grpc://{dead}, {}", node.url()), fast_options())
            .unwrap();
    let extra = EnSyncEngine::with_options(
        &format!("grpc://{dead}"),
        fast_options().extra_urls([node.url()]),
    )
    .unwrap();
    let want = [dead.to_string(), node.addr().to_string()];
    assert_eq!(listed.authorities(), want);
    assert_eq!(extra.authorities(), want);

    let alice = client_of(&listed, &node, 0).await;
    let bob = client_of(&extra, &node, 1).await;
    assert_eq!(alice.state(), ConnectionState::Connected);
    let mut sub = bob.subscribe("failover/first").await.unwrap();
    round_trip(&alice, &bob, &mut sub, 1).await;
    assert_eq!(node.stats().subscriptions, 1);
    alice.close().await.unwrap();
    bob.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_passes_over_a_dead_first_url_too() {
    let node = TestNode::start(2).await;
    let ws = node.ws_addr().expect("the node serves WebSocket");
    let engine = EnSyncWebSocketEngine::with_options(
        &format!("ws://{},ws://{ws}", dead_addr()),
        fast_options(),
    )
    .unwrap();
    assert_eq!(engine.urls().len(), 2);
    let connect = |i: usize| {
        let app = node.app(i);
        engine.create_client(
            &app.access_key,
            ClientOptions::default().app_secret_key(app.secret_key()),
        )
    };
    let alice = within("ws client", connect(0)).await.unwrap();
    let bob = within("ws client", connect(1)).await.unwrap();
    let mut sub = bob.subscribe("failover/ws").await.unwrap();
    round_trip(&alice, &bob, &mut sub, 2).await;
    alice.close().await.unwrap();
    bob.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_move_to_the_second_node_when_the_first_shuts_down() {
    let mut first = TestNode::start(2).await;
    let (second, _second_dir) = second_node(&first).await;
    let urls = format!("{},grpc://{}", first.url(), second.grpc_addr());
    let engine = EnSyncEngine::with_options(&urls, fast_options()).unwrap();
    let alice = client_of(&engine, &first, 0).await;
    let bob = client_of(&engine, &first, 1).await;
    let alice_states = record_states(&alice);
    let bob_states = record_states(&bob);
    // Alice has a subscription of her own, so that she notices the loss as bob does.
    let _alice_sub = alice.subscribe("failover/other").await.unwrap();
    let mut sub = bob.subscribe("failover/evt").await.unwrap();
    round_trip(&alice, &bob, &mut sub, 1).await;
    assert_eq!(first.stats().subscriptions, 2, "both on the first node");
    assert_eq!(second.stats().subscriptions, 0);

    first.stop().await;
    eventually("both clients on the second node", || {
        second.stats().subscriptions == 2
            && alice.state() == ConnectionState::Connected
            && bob.state() == ConnectionState::Connected
    })
    .await;
    // The round trip works on the second node, with the subscription the client
    // restored there by itself.
    round_trip(&alice, &bob, &mut sub, 2).await;
    // Moving to the other node did not wait for a backoff: the first attempt after the
    // loss went to the second node at once.
    for states in [&alice_states, &bob_states] {
        let states = states.lock().unwrap().clone();
        let first_reconnect = states
            .iter()
            .find(|s| matches!(s, ConnectionState::Reconnecting { .. }));
        assert_eq!(
            first_reconnect,
            Some(&ConnectionState::Reconnecting {
                attempt: 1,
                delay: Duration::ZERO
            }),
            "{states:?}"
        );
    }
    alice.close().await.unwrap();
    bob.close().await.unwrap();
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_client_fails_when_no_node_answers() {
    let engine = EnSyncEngine::with_options(
        &format!("grpc://{},grpc://{}", dead_addr(), dead_addr()),
        fast_options(),
    )
    .unwrap();
    let err = within(
        "create_client",
        engine.create_client("any-key", ClientOptions::default()),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.to_string().contains("none of the 2 endpoints"), "{err}");
}

#[test]
fn a_mix_of_transports_or_of_tls_is_refused() {
    let err = EnSyncEngine::new("grpc://127.0.0.1:1,ws://127.0.0.1:2").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert!(err.to_string().contains("same transport"), "{err}");
    let err = EnSyncEngine::with_options(
        "grpc://127.0.0.1:1",
        EngineOptions::default().extra_urls(["grpcs://127.0.0.1:2"]),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert!(err.to_string().contains("TLS and plaintext"), "{err}");
    let err = EnSyncWebSocketEngine::new("ws://127.0.0.1:1,grpc://127.0.0.1:2").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert!(err.to_string().contains("same transport"), "{err}");
}
