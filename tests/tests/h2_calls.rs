//! ensync-h2 on async-std against the node: every call, with no tokio runtime in the
//! client's thread (the node runs on a thread of its own).

mod h2_support;

use std::time::Duration;

use ensync_h2::{
    ClientOptions, ConnectionState, EnSyncEngine, ErrorKind, PublishOptions, RpcGeneration,
    SubscribeOptions,
};
use futures::StreamExt;
use h2_support::{NodeThread, async_std_runtime, bounded, h2_options};
use serde_json::json;

async fn client(node: &NodeThread, app: usize) -> ensync_h2::Client {
    let (key, secret) = node.app(app);
    EnSyncEngine::with_options(&node.url(), h2_options(), async_std_runtime())
        .expect("engine")
        .create_client(&key, ClientOptions::default().app_secret_key(secret))
        .await
        .expect("client")
}

#[test]
fn quick_start_on_async_std_without_a_tokio_runtime() {
    let node = NodeThread::start(1);
    async_std::task::block_on(async {
        assert!(
            tokio::runtime::Handle::try_current().is_err(),
            "the client thread must have no tokio runtime"
        );
        let client = client(&node, 0).await;
        assert_eq!(client.state(), ConnectionState::Connected);
        assert_eq!(client.public_key(), node.public_key(0));
        let me = client.public_key().to_owned();
        let payload = json!({"order_id": "order-123", "status": "completed"});
        let ids = client
            .publish("orders/status/updated", &[&me], &payload)
            .await
            .expect("publish");
        assert_eq!(ids.len(), 1);
        let mut subscription = client
            .subscribe("orders/status/updated")
            .await
            .expect("subscribe");
        let event = bounded("the event", subscription.next())
            .await
            .expect("an event");
        assert_eq!(event.idem, ids[0]);
        assert_eq!(event.payload, payload);
        assert_eq!(event.sender, me);
        assert!(tokio::runtime::Handle::try_current().is_err());
        drop(event);
        subscription.unsubscribe().await.expect("unsubscribe");
        client.close().await.expect("close");
        assert!(matches!(
            client.state(),
            ConnectionState::Closed { reason: None }
        ));
        let error = client
            .publish("orders/status/updated", &[&me], &payload)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Closed);
    });
}

#[test]
fn every_call_on_async_std() {
    let node = NodeThread::start(2);
    async_std::task::block_on(async {
        let publisher = client(&node, 0).await;
        let receiver = client(&node, 1).await;
        let to = [receiver.public_key().to_owned()];
        let mut sub = receiver
            .subscribe_with("h2/calls", SubscribeOptions::default().auto_ack(false))
            .await
            .expect("subscribe");

        // publish with metadata; manual ack through the subscription
        let ids = publisher
            .publish_with_metadata("h2/calls", &to, &json!({"n": 1}), &json!({"trace": "t1"}))
            .await
            .expect("publish");
        let event = bounded("event 1", sub.next()).await.expect("event 1");
        assert_eq!(
            (event.idem.as_str(), &event.payload),
            (ids[0].as_str(), &json!({"n": 1}))
        );
        assert_eq!(event.metadata, json!({"trace": "t1"}));
        assert_eq!(event.sender, publisher.public_key());
        sub.ack(&event.idem, event.block).await.expect("ack");
        drop(event);

        // hybrid envelope to two recipients, one of them the receiver
        let both = [
            receiver.public_key().to_owned(),
            publisher.public_key().to_owned(),
        ];
        let ids = publisher
            .publish_with(
                "h2/calls",
                &both,
                &json!({"n": 2}),
                PublishOptions::default().hybrid(true),
            )
            .await
            .expect("hybrid publish");
        assert_eq!(ids.len(), 2);
        let event = bounded("event 2", sub.next()).await.expect("event 2");
        assert_eq!(event.payload, json!({"n": 2}));

        // defer: delivered again, same id
        let idem = event.idem.clone();
        let at = event
            .defer(Duration::from_secs(1), "later")
            .await
            .expect("defer");
        assert!(at > 0);
        let again = bounded("the deferred event", sub.next())
            .await
            .expect("redelivery");
        assert_eq!(again.idem, idem);
        assert_eq!(again.payload, json!({"n": 2}));

        // replay the stored event, then discard it
        let replayed = sub.replay(&idem).await.expect("replay");
        assert_eq!(replayed, json!({"n": 2}));
        again.discard("done").await.expect("discard");

        // pause holds delivery; resume releases it
        sub.pause("maintenance").await.expect("pause");
        let ids = publisher
            .publish("h2/calls", &to, &json!({"n": 3}))
            .await
            .expect("publish 3");
        let held = async_std::future::timeout(Duration::from_millis(500), sub.next()).await;
        assert!(held.is_err(), "no event while paused");
        sub.resume().await.expect("resume");
        let event = bounded("event 3", sub.next()).await.expect("event 3");
        assert_eq!(event.idem, ids[0]);
        event.ack().await.expect("ack through the event");

        sub.unsubscribe().await.expect("unsubscribe");
        publisher.close().await.expect("close");
        receiver.close().await.expect("close");
    });
}

#[test]
fn handler_and_generation_one() {
    let node = NodeThread::start(1);
    async_std::task::block_on(async {
        let (key, secret) = node.app(0);
        let options = h2_options().generation(RpcGeneration::Event);
        let client = EnSyncEngine::with_options(&node.url(), options, async_std_runtime())
            .expect("engine")
            .create_client(&key, ClientOptions::default().app_secret_key(secret))
            .await
            .expect("client");
        let me = [client.public_key().to_owned()];
        let mut sub = client.subscribe("h2/gen1").await.expect("subscribe");
        let (tx, mut rx) = futures::channel::mpsc::unbounded();
        sub.on(move |event| {
            let tx = tx.clone();
            async move {
                let _ = tx.unbounded_send(event.payload.clone());
            }
        });
        client
            .publish("h2/gen1", &me, &json!({"g": 1}))
            .await
            .expect("publish");
        let got = bounded("the handler", rx.next()).await.expect("handled");
        assert_eq!(got, json!({"g": 1}));
        client.close().await.expect("close");
    });
}

#[test]
fn refused_key_and_unreachable_node() {
    let node = NodeThread::start(1);
    async_std::task::block_on(async {
        let engine = EnSyncEngine::with_options(&node.url(), h2_options(), async_std_runtime())
            .expect("engine");
        let error = engine
            .create_client("not-a-key", ClientOptions::default())
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Auth, "{error}");

        // A port nobody listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = closed.local_addr().expect("addr");
        drop(closed);
        let engine = EnSyncEngine::with_options(
            &format!("grpc://{addr}"),
            h2_options(),
            async_std_runtime(),
        )
        .expect("engine");
        let (key, _) = node.app(0);
        let error = engine
            .create_client(&key, ClientOptions::default())
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Connection, "{error}");
    });
}
