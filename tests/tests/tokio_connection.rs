//! End-to-end tests of the tokio SDK's connection handling against a real node: both RPC
//! generations (pinned and auto, against nodes that serve one or both), TLS, reconnect
//! after a node restart, giving up after `max_reconnect_attempts`, and closing the
//! connection when the client is dropped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ensync_tests::node::{Refuse, TestNode, eventually, fast_options, within};
use ensync_tokio::{
    ClientOptions, ConnectionState, EnSyncEngine, EnSyncError, EngineOptions, ErrorKind, Event,
    RpcGeneration, SubscribeOptions, Subscription,
};
use futures::{FutureExt, StreamExt};
use serde_json::json;

async fn next(sub: &mut Subscription) -> Event {
    within("an event", sub.next())
        .await
        .expect("the subscription ended")
}

fn n_of(event: &Event) -> i64 {
    event.payload["n"].as_i64().expect("payload has n")
}

/// Every generation-specific call once: publish, manual ack, replay, discard, pause,
/// resume (connect, subscribe and unsubscribe are common to both generations).
async fn exercise(node: &TestNode, options: EngineOptions) -> Result<(), EnSyncError> {
    let alice = node.client(0, options.clone()).await;
    let bob = node.client(1, options).await;
    let to = node.app(1).public_key.clone();
    let mut sub = bob
        .subscribe_with("gen/evt", SubscribeOptions::default().auto_ack(false))
        .await?;
    let ids = alice.publish("gen/evt", &[&to], &json!({"n": 1})).await?;
    let event = next(&mut sub).await;
    assert_eq!(event.idem, ids[0]);
    event.ack().await?;
    assert_eq!(sub.replay(&ids[0]).await?, json!({"n": 1}));
    sub.pause("p").await?;
    sub.resume().await?;
    let ids = alice.publish("gen/evt", &[&to], &json!({"n": 2})).await?;
    let event = next(&mut sub).await;
    assert_eq!(event.idem, ids[0]);
    event.discard("d").await?;
    sub.unsubscribe().await?;
    alice.close().await?;
    bob.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_rpc_generations_pinned_and_auto() {
    use RpcGeneration::{Auto, Event as Gen1, Message as Gen2};
    for refuse in [Refuse::Nothing, Refuse::MessageNames, Refuse::EventNames] {
        let node = TestNode::start_with(2, refuse, |_| {}).await;
        for generation in [Auto, Gen1, Gen2] {
            let result = exercise(&node, fast_options().generation(generation)).await;
            let refused = matches!(
                (refuse, generation),
                (Refuse::MessageNames, Gen2) | (Refuse::EventNames, Gen1)
            );
            if refused {
                let err = result.expect_err("a pinned generation the node lacks must fail");
                assert_eq!(
                    err.kind(),
                    ErrorKind::Unimplemented,
                    "{refuse:?} {generation:?}: {err}"
                );
                assert!(!err.is_retryable());
            } else {
                result.unwrap_or_else(|e| panic!("{refuse:?} {generation:?}: {e}"));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_generated_certificate() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert_pem = certified.cert.pem();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, &cert_pem).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
    let node = TestNode::start_with(2, Refuse::Nothing, |c| {
        c.tls_cert = Some(cert_path.clone());
        c.tls_key = Some(key_path.clone());
    })
    .await;
    let port = node.addr().port();

    for (url, name) in [
        (format!("grpcs://127.0.0.1:{port}"), "tls/ip"),
        (format!("grpcs://localhost:{port}"), "tls/name"),
    ] {
        let engine = EnSyncEngine::with_options(
            &url,
            fast_options().ca_certificate_pem(cert_pem.as_bytes()),
        )
        .unwrap();
        assert!(engine.uses_tls());
        let connect = |i: usize| {
            let app = node.app(i);
            engine.create_client(
                &app.access_key,
                ClientOptions::default().app_secret_key(app.secret_key()),
            )
        };
        let alice = within("tls client", connect(0)).await.unwrap();
        let bob = within("tls client", connect(1)).await.unwrap();
        let mut sub = bob.subscribe(name).await.unwrap();
        let ids = alice
            .publish(name, &[bob.public_key()], &json!({"over": "tls"}))
            .await
            .unwrap();
        let event = next(&mut sub).await;
        assert_eq!(event.idem, ids[0]);
        assert_eq!(event.payload, json!({"over": "tls"}));
    }

    // Without the CA the certificate is not trusted; plaintext does not speak to TLS.
    let app = node.app(0);
    for (url, options) in [
        (format!("grpcs://127.0.0.1:{port}"), fast_options()),
        (format!("grpc://127.0.0.1:{port}"), fast_options()),
        (
            format!("grpcs://127.0.0.1:{port}"),
            fast_options()
                .ca_certificate_pem(cert_pem.as_bytes())
                .tls_domain("other.example"),
        ),
    ] {
        let engine = EnSyncEngine::with_options(&url, options).unwrap();
        let err = within(
            "a refused TLS connection",
            engine.create_client(&app.access_key, ClientOptions::default()),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Connection, "{url}: {err}");
    }
}

/// Records every state a client goes through.
fn record_states(client: &ensync_tokio::Client) -> Arc<Mutex<Vec<ConnectionState>>> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_after_node_restart_restores_subscriptions_loses_nothing_and_duplicates_nothing()
{
    let mut node = TestNode::start(4).await;
    // alice publishes and has a subscription of her own (so she notices the restart);
    // carol publishes while the node is down without having noticed; dave stays idle
    // through the restart; bob receives.
    let alice = node.client(0, fast_options()).await;
    let bob = node.client(1, fast_options()).await;
    let carol = node.client(2, fast_options()).await;
    let dave = node.client(3, fast_options()).await;
    let to = node.app(1).public_key.clone();
    let states = record_states(&bob);
    let dave_states = record_states(&dave);
    let _alice_sub = alice.subscribe("restart/other").await.unwrap();
    let mut sub = bob.subscribe("restart/evt").await.unwrap();
    let mut handed: BTreeMap<i64, u32> = BTreeMap::new();

    for n in 0..10 {
        alice
            .publish("restart/evt", &[&to], &json!({"n": n}))
            .await
            .unwrap();
    }
    // 0..9 handled (auto-acked as they are dropped; some acks may not reach the node
    // before it stops); 9 is still being handled across the restart.
    let mut held = None;
    for want in 0..10 {
        let event = next(&mut sub).await;
        assert_eq!(n_of(&event), want);
        *handed.entry(want).or_default() += 1;
        if want == 9 {
            held = Some(event);
        }
    }

    node.stop().await;
    eventually("bob and alice to notice", || {
        matches!(bob.state(), ConnectionState::Reconnecting { .. })
            && matches!(alice.state(), ConnectionState::Reconnecting { .. })
    })
    .await;
    // A publish while the client knows it is disconnected waits for the reconnect.
    let publishing = {
        let alice = alice.clone();
        let to = to.clone();
        tokio::spawn(async move {
            alice
                .publish("restart/evt", &[&to], &json!({"n": 10}))
                .await
        })
    };
    // A publish on a connection the client still believes up fails, retryably, and the
    // failure starts the reconnect.
    assert_eq!(carol.state(), ConnectionState::Connected);
    let err = carol
        .publish("restart/evt", &[&to], &json!({"n": -1}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.is_retryable());
    eventually("carol to notice", || {
        matches!(carol.state(), ConnectionState::Reconnecting { .. })
    })
    .await;

    node.restart().await;
    eventually("bob to reconnect", || {
        bob.state() == ConnectionState::Connected
    })
    .await;
    publishing
        .await
        .unwrap()
        .expect("publish queued across the restart");
    drop(held);
    eventually("carol to reconnect", || {
        carol.state() == ConnectionState::Connected
    })
    .await;
    carol
        .publish("restart/evt", &[&to], &json!({"n": 11}))
        .await
        .unwrap();
    // dave's session is unknown to the restarted node: his first call fails (refused by
    // the node, or on the dead connection), that makes him find out and reconnect, and
    // then his calls work again.
    let err = dave
        .publish("restart/evt", &[&to], &json!({"n": -2}))
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Publish | ErrorKind::Connection),
        "{err}"
    );
    eventually("dave to reconnect", || {
        dave.state() == ConnectionState::Connected
            && dave_states
                .lock()
                .unwrap()
                .iter()
                .any(|s| matches!(s, ConnectionState::Reconnecting { .. }))
    })
    .await;
    dave.publish("restart/evt", &[&to], &json!({"n": 12}))
        .await
        .unwrap();
    for n in 13..20 {
        alice
            .publish("restart/evt", &[&to], &json!({"n": n}))
            .await
            .unwrap();
    }

    while handed.len() < 20 {
        let event = next(&mut sub).await;
        *handed.entry(n_of(&event)).or_default() += 1;
    }
    eventually("every event acknowledged", || {
        let s = node.stats();
        s.ready == 0 && s.in_flight == 0 && s.deferred == 0
    })
    .await;
    assert!(
        sub.next().now_or_never().is_none(),
        "an event was handed over again"
    );
    assert_eq!(
        handed,
        (0..20).map(|n| (n, 1)).collect::<BTreeMap<_, _>>(),
        "every event exactly once"
    );
    assert_eq!(
        node.stats().subscriptions,
        2,
        "the subscriptions were restored"
    );

    let states = states.lock().unwrap().clone();
    let lost = states
        .iter()
        .position(|s| matches!(s, ConnectionState::Reconnecting { attempt, .. } if *attempt >= 1))
        .unwrap_or_else(|| panic!("no Reconnecting state in {states:?}"));
    assert_eq!(states.first(), Some(&ConnectionState::Connected));
    assert!(
        states[lost..].contains(&ConnectionState::Connected),
        "no Connected after Reconnecting: {states:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giving_up_after_max_reconnect_attempts_closes_with_a_reason() {
    let mut node = TestNode::start(1).await;
    let options = fast_options()
        .reconnect_interval(Duration::from_millis(50))
        .max_reconnect_attempts(2);
    let client = node.client(0, options).await;
    let key = node.app(0).public_key.clone();
    let states = record_states(&client);
    let mut sub = client.subscribe("gone/evt").await.unwrap();

    node.stop().await;
    eventually("the client to notice", || {
        client.state() != ConnectionState::Connected
    })
    .await;
    let pending = {
        let client = client.clone();
        let key = key.clone();
        tokio::spawn(async move { client.publish("gone/evt", &[&key], &json!({})).await })
    };
    let err = within("the pending publish to fail", pending)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");

    eventually("the client to close", || {
        matches!(client.state(), ConnectionState::Closed { .. })
    })
    .await;
    let ConnectionState::Closed { reason } = client.state() else {
        unreachable!()
    };
    let reason = reason.expect("a reason");
    assert!(reason.contains("2 reconnect attempts"), "{reason}");
    assert!(
        states
            .lock()
            .unwrap()
            .iter()
            .any(|s| matches!(s, ConnectionState::Reconnecting { .. })),
    );
    // The subscription ends, later calls fail with `Closed`.
    assert!(
        within("the subscription to end", sub.next())
            .await
            .is_none()
    );
    let err = client
        .publish("gone/evt", &[&key], &json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    assert!(client.close().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_client_closes_the_connection() {
    // A short session timeout, so the node notices a client that stopped heartbeating.
    let node = TestNode::start_with(2, Refuse::Nothing, |c| {
        c.heartbeat_interval_ms = 500;
        c.heartbeat_misses = 3;
    })
    .await;
    let options = fast_options().heartbeat_interval(Duration::from_millis(100));
    let alice = node.client(0, options.clone()).await;
    let bob = node.client(1, options).await;
    let mut sub = bob
        .subscribe_with("drop/evt", SubscribeOptions::default().auto_ack(false))
        .await
        .unwrap();
    let held = {
        let to = node.app(1).public_key.clone();
        alice
            .publish("drop/evt", &[&to], &json!({"n": 1}))
            .await
            .unwrap();
        next(&mut sub).await
    };
    // Heartbeats keep the sessions alive well past the session timeout.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let s = node.stats();
    assert_eq!((s.sessions, s.subscriptions, s.in_flight), (2, 1, 1));

    // Dropping every handle of bob's client (the client, its subscription, its event)
    // closes its stream and stops its heartbeats: the node ends the session and puts the
    // unacknowledged event back.
    drop(sub);
    drop(held);
    drop(bob);
    eventually("the stream to close", || node.stats().subscriptions == 0).await;
    eventually("bob's session to end", || node.stats().sessions == 1).await;
    eventually("the event to go back", || {
        let s = node.stats();
        s.in_flight == 0 && s.ready == 1
    })
    .await;
    alice.close().await.unwrap();
}
