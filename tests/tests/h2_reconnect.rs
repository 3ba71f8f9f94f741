//! ensync-h2 (async-std) and ensync-blocking reconnect after the node restarts on the
//! same data directory and port, and restore their subscriptions.

mod h2_support;

use std::time::Duration;

use ensync_h2::{ClientOptions, ConnectionState, EnSyncEngine};
use futures::StreamExt;
use h2_support::{NodeThread, WAIT, async_std_runtime, bounded, h2_options};
use serde_json::json;

#[test]
fn h2_client_reconnects_after_node_restart() {
    let mut node = NodeThread::start(1);
    let (key, secret) = node.app(0);
    let url = node.url();
    let (client, mut sub, mut states) = async_std::task::block_on(async {
        let client = EnSyncEngine::with_options(&url, h2_options(), async_std_runtime())
            .expect("engine")
            .create_client(&key, ClientOptions::default().app_secret_key(secret))
            .await
            .expect("client");
        let sub = client.subscribe("h2/restart").await.expect("subscribe");
        let states = client.state_changes();
        (client, sub, Box::pin(states))
    });
    node.stop();
    async_std::task::block_on(async {
        loop {
            match bounded("reconnecting", states.next()).await {
                Some(ConnectionState::Reconnecting { .. }) => break,
                Some(_) => {}
                None => panic!("the state stream ended"),
            }
        }
    });
    node.restart();
    async_std::task::block_on(async {
        loop {
            match bounded("connected again", states.next()).await {
                Some(ConnectionState::Connected) => break,
                Some(ConnectionState::Closed { reason }) => panic!("closed: {reason:?}"),
                Some(_) => {}
                None => panic!("the state stream ended"),
            }
        }
        let me = [client.public_key().to_owned()];
        // Publishing right after the reconnect may race the restored subscribe; the
        // event waits in the node's queue either way.
        let ids = client
            .publish("h2/restart", &me, &json!({"after": "restart"}))
            .await
            .expect("publish");
        let event = bounded("the event after restart", sub.next())
            .await
            .expect("event");
        assert_eq!(event.idem, ids[0]);
        assert_eq!(event.payload, json!({"after": "restart"}));
        client.close().await.expect("close");
    });
}

#[test]
fn blocking_client_reconnects_after_node_restart() {
    let mut node = NodeThread::start(1);
    let (key, secret) = node.app(0);
    let options = ensync_blocking::EngineOptions::default()
        .reconnect_interval(Duration::from_millis(100))
        .max_reconnect_attempts(30);
    let client = ensync_blocking::Engine::with_options(&node.url(), options)
        .expect("engine")
        .create_client(
            &key,
            ensync_blocking::ClientOptions::default().app_secret_key(secret),
        )
        .expect("client");
    let mut sub = client.subscribe("blocking/restart").expect("subscribe");
    let mut states = client.state_changes();
    node.stop();
    assert!(
        states.any(|s| matches!(s, ConnectionState::Reconnecting { .. })),
        "a reconnect attempt"
    );
    node.restart();
    let connected = states.find(|s| {
        matches!(
            s,
            ConnectionState::Connected | ConnectionState::Closed { .. }
        )
    });
    assert_eq!(connected, Some(ConnectionState::Connected));
    let me = [client.public_key().to_owned()];
    let ids = client
        .publish("blocking/restart", &me, &json!({"after": "restart"}))
        .expect("publish");
    let event = sub.recv_timeout(WAIT).expect("event after restart");
    assert_eq!(event.idem, ids[0]);
    assert_eq!(event.payload, json!({"after": "restart"}));
    drop(event);
    client.close().expect("close");
}
