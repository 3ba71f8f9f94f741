//! End-to-end tests of the tokio SDK's API against a real node in this process:
//! publish / subscribe / metadata / typed payloads / replies, handlers, and every bad
//! input with its error kind.

use std::time::Duration;

use ensync_tests::node::{TestNode, WAIT, fast_options, within};
use ensync_tokio::{
    ClientOptions, ConnectionState, ErrorKind, Event, PublishOptions, SubscribeOptions,
    Subscription,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    order_id: String,
    status: String,
    items: Vec<u32>,
}

async fn next(sub: &mut Subscription) -> Event {
    within("an event", sub.next())
        .await
        .expect("the subscription ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_two_recipients_metadata_typed_payload_and_reply() {
    let node = TestNode::start(3).await;
    let alice = node.client(0, fast_options()).await;
    let bob = node.client(1, fast_options()).await;
    let carol = node.client(2, fast_options()).await;
    assert_eq!(alice.public_key(), node.app(0).public_key);
    assert_eq!(bob.public_key(), node.app(1).public_key);
    assert!(!alice.client_id().is_empty());
    assert_eq!(alice.state(), ConnectionState::Connected);
    assert_eq!(
        within("state", alice.state_changes().next()).await,
        Some(ConnectionState::Connected)
    );

    let mut bob_sub = bob.subscribe("orders/status/updated").await.unwrap();
    assert_eq!(bob_sub.event_name(), "orders/status/updated");
    let mut carol_sub = carol.subscribe("orders/status/updated").await.unwrap();
    let mut alice_replies = alice.subscribe("orders/status/reply").await.unwrap();

    let order = Order {
        order_id: "order-123".into(),
        status: "completed".into(),
        items: vec![1, 2, 3],
    };
    let metadata = json!({"source": "checkout", "priority": 2});
    let ids = alice
        .publish_with_metadata(
            "orders/status/updated",
            &[bob.public_key(), carol.public_key()],
            &order,
            &metadata,
        )
        .await
        .unwrap();
    assert_eq!(ids.len(), 2, "one id per recipient: {ids:?}");
    assert_ne!(ids[0], ids[1]);

    let at_bob = next(&mut bob_sub).await;
    let at_carol = next(&mut carol_sub).await;
    assert_eq!(at_bob.idem, ids[0]);
    assert_eq!(at_carol.idem, ids[1]);
    for event in [&at_bob, &at_carol] {
        assert_eq!(event.event_name, "orders/status/updated");
        assert_eq!(event.payload_as::<Order>().unwrap(), order);
        assert_eq!(event.metadata, metadata);
        assert_eq!(event.sender, alice.public_key());
        assert!(
            event.block > 0,
            "blocks are numbered from 1: {}",
            event.block
        );
    }
    #[derive(Deserialize)]
    struct Meta {
        source: String,
    }
    assert_eq!(at_bob.metadata_as::<Meta>().unwrap().source, "checkout");

    // Reply to the sender.
    let reply_ids = bob
        .publish(
            "orders/status/reply",
            &[at_bob.sender.as_str()],
            &json!({"ok": true, "re": at_bob.idem}),
        )
        .await
        .unwrap();
    assert_eq!(reply_ids.len(), 1);
    let reply = next(&mut alice_replies).await;
    assert_eq!(reply.sender, bob.public_key());
    assert_eq!(reply.payload, json!({"ok": true, "re": ids[0]}));
    // No metadata given: an empty object arrives.
    assert_eq!(reply.metadata, json!({}));
    drop((at_bob, at_carol, reply));

    bob_sub.unsubscribe().await.unwrap();
    carol_sub.unsubscribe().await.unwrap();
    alice_replies.unsubscribe().await.unwrap();
    for c in [&alice, &bob, &carol] {
        c.close().await.unwrap();
        assert_eq!(c.state(), ConnectionState::Closed { reason: None });
    }
    // Calls after close fail with `Closed`.
    let err = alice
        .publish("orders/x", &[bob.public_key()], &json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_publish_and_handler() {
    let node = TestNode::start(3).await;
    let alice = node.client(0, fast_options()).await;
    let bob = node.client(1, fast_options()).await;
    let carol = node.client(2, fast_options()).await;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut subs = Vec::new();
    for (who, client) in [("bob", &bob), ("carol", &carol)] {
        let mut sub = client.subscribe("hybrid/evt").await.unwrap();
        let tx = tx.clone();
        sub.on(move |event: Event| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((
                    who,
                    event.idem.clone(),
                    event.payload.clone(),
                    event.metadata.clone(),
                ));
            }
        });
        subs.push(sub);
    }
    let ids = alice
        .publish_with(
            "hybrid/evt",
            &[bob.public_key(), carol.public_key()],
            &json!({"secret": "for both", "n": 7}),
            PublishOptions::default()
                .hybrid(true)
                .metadata(json!({"k": "v"})),
        )
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(within("handler", rx.recv()).await.unwrap());
    }
    got.sort_by_key(|g| g.0);
    assert_eq!(got[0].0, "bob");
    assert_eq!(got[0].1, ids[0]);
    assert_eq!(got[1].0, "carol");
    assert_eq!(got[1].1, ids[1]);
    for g in &got {
        assert_eq!(g.2, json!({"secret": "for both", "n": 7}));
        assert_eq!(g.3, json!({"k": "v"}));
    }
    // The handlers returned: auto-ack empties the queues.
    ensync_tests::node::eventually("queues empty", || {
        let s = node.stats();
        s.in_flight == 0 && s.ready == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_give_their_error_kind() {
    let node = TestNode::start(2).await;
    let alice = node.client(0, fast_options()).await;
    let bob_key = node.app(1).public_key.clone();

    let no_one: [&str; 0] = [];
    let err = alice.publish("a/b", &no_one, &json!({})).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation, "{err}");
    assert!(!err.is_retryable());

    for bad in ["not base64!", "AAAA", ""] {
        let err = alice.publish("a/b", &[bad], &json!({})).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation, "{bad:?}: {err}");
    }
    // A valid recipient followed by a bad one: nothing is sent.
    let err = alice
        .publish("a/b", &[bob_key.as_str(), "nope"], &json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation, "{err}");
    assert!(err.published_ids().is_empty());

    for payload in [json!([1, 2]), json!("text"), json!(3), json!(null)] {
        let err = alice
            .publish("a/b", &[bob_key.as_str()], &payload)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation, "{payload}: {err}");
    }
    let err = alice
        .publish_with_metadata("a/b", &[bob_key.as_str()], &json!({}), &json!([1]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation, "{err}");

    for name in ["", "a b", "a//b", "/a", "a/", "semi;colon"] {
        let err = alice
            .publish(name, &[bob_key.as_str()], &json!({}))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation, "publish {name:?}: {err}");
        let err = alice.subscribe(name).await.unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::Validation,
            "subscribe {name:?}: {err}"
        );
    }

    // Subscribing twice to one name is refused by the client.
    let sub = alice.subscribe("a/b").await.unwrap();
    let err = alice.subscribe("a/b").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Subscription, "{err}");

    // Defer delays outside 1 s ..= 24 h are refused before sending.
    for delay in [Duration::from_millis(999), Duration::from_secs(86_401)] {
        let err = sub.defer("some-id", delay, "r").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation, "{delay:?}: {err}");
    }
    // An empty event id.
    let err = sub.ack("", 1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation, "{err}");
    // Unknown ids are the node's refusal, with the operation's kind.
    let err = sub.ack("no-such-event", 1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Ack, "{err}");
    let err = sub.discard("no-such-event", "r").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Discard, "{err}");
    let err = sub.replay("no-such-event").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Replay, "{err}");
    let err = sub
        .defer("no-such-event", Duration::from_secs(1), "r")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Defer, "{err}");

    // A malformed secret key.
    let err = node
        .engine(fast_options())
        .create_client(
            &node.app(0).access_key,
            ClientOptions::default().app_secret_key("not a key"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation, "{err}");
    let err = alice
        .subscribe_with(
            "c/d",
            SubscribeOptions::default().app_secret_key("also not a key"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation, "{err}");

    // A bad URL.
    let err = ensync_tokio::EnSyncEngine::new("ftp://x:1").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation, "{err}");

    // The client still works after all that.
    let ids = alice
        .publish("a/b", &[bob_key.as_str()], &json!({"still": "fine"}))
        .await
        .unwrap();
    assert_eq!(ids.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_access_key_is_an_auth_error_with_the_nodes_reason() {
    let node = TestNode::start(1).await;
    let err = within(
        "create_client",
        node.engine(fast_options())
            .create_client("not-the-key", ClientOptions::default()),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(!err.is_retryable());
    assert!(
        err.to_string().contains("invalid access key"),
        "the node's reason is kept: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_node_is_a_connection_error() {
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let engine = ensync_tokio::EnSyncEngine::with_options(
        &format!("grpc://127.0.0.1:{port}"),
        fast_options(),
    )
    .unwrap();
    let err = tokio::time::timeout(WAIT, engine.create_client("k", ClientOptions::default()))
        .await
        .expect("create_client must fail, not hang")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.is_retryable());
}

/// Decision: an event the client cannot decrypt (sealed for another key) is never handed
/// to the application as if it were readable, and it is not acknowledged: it stays on the
/// node for a client with the right key. A replay of it fails with `Decryption`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_key_events_are_not_handed_over_and_not_lost() {
    let node = TestNode::start(2).await;
    let alice = node.client(0, fast_options()).await;
    // Bob's access key, but Alice's secret key.
    let bob_wrong = within(
        "create_client",
        node.engine(fast_options()).create_client(
            &node.app(1).access_key,
            ClientOptions::default().app_secret_key(node.app(0).secret_key()),
        ),
    )
    .await
    .unwrap();
    let mut sub = bob_wrong.subscribe("sealed/evt").await.unwrap();
    let ids = alice
        .publish(
            "sealed/evt",
            &[node.app(1).public_key.as_str()],
            &json!({"n": 1}),
        )
        .await
        .unwrap();
    // The node handed it over ...
    ensync_tests::node::eventually("delivered to the wrong-key client", || {
        node.stats().in_flight == 1
    })
    .await;
    // ... the client could not read it: nothing reaches the application.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        futures::FutureExt::now_or_never(sub.next()).is_none(),
        "an unreadable event was handed over"
    );
    let err = sub.replay(&ids[0]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decryption, "{err}");
    drop(sub);
    bob_wrong.close().await.unwrap();

    // Bob with the right key gets it.
    let bob = node.client(1, fast_options()).await;
    let mut sub = bob.subscribe("sealed/evt").await.unwrap();
    let event = next(&mut sub).await;
    assert_eq!(event.idem, ids[0]);
    assert_eq!(event.payload, json!({"n": 1}));
}

/// `EngineOptions::max_in_flight` reaches the session core: with room for 4096 calls,
/// 2 000 publishes issued at once all succeed. They are issued while the node is down, so
/// all 2 000 are pending in the core together (the core's own default limit is 1 024,
/// which used to answer the rest with an overload error reported as a connection error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_concurrent_publishes_within_max_in_flight_all_succeed() {
    let mut node = TestNode::start(2).await;
    let alice = node
        .client(
            0,
            fast_options()
                .max_in_flight(4096)
                .request_timeout(Duration::from_secs(30)),
        )
        .await;
    let bob = node.app(1).public_key.clone();
    // An open subscribe stream tells the client at once that the node went away.
    let _sub = alice.subscribe("load/idle").await.unwrap();
    node.stop().await;
    // Publishes sent on a connection the client still believes up would fail as "may
    // have been applied"; wait until it knows the node is gone, so all of them queue.
    ensync_tests::node::eventually("the client sees the node gone", || {
        alice.state() != ConnectionState::Connected
    })
    .await;
    let publishes: Vec<_> = (0..2000)
        .map(|i| {
            let alice = alice.clone();
            let bob = bob.clone();
            tokio::spawn(async move {
                alice
                    .publish("load/burst", &[bob.as_str()], &json!({ "i": i }))
                    .await
            })
        })
        .collect();
    // Let every publish reach the core while it cannot send anything.
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.restart().await;
    let results = within("2 000 publishes", futures::future::join_all(publishes)).await;
    let results: Vec<_> = results.into_iter().map(|r| r.expect("task")).collect();
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of 2000 publishes failed, first: {:?}",
        failed.len(),
        failed.first().map(|e| (e.kind(), e.to_string()))
    );
    let ids: std::collections::HashSet<_> = results.into_iter().flat_map(|r| r.unwrap()).collect();
    assert_eq!(ids.len(), 2000, "one distinct event id per publish");
    alice.close().await.unwrap();
}
