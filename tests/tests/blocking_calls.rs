//! ensync-blocking against the node: every call from plain threads, and from a pool of
//! threads sharing one client.

mod h2_support;

use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use ensync_blocking::{
    ClientOptions, ConnectionState, Engine, EngineOptions, ErrorKind, PublishOptions,
    SubscribeOptions,
};
use h2_support::{NodeThread, WAIT};
use serde_json::json;

fn client(node: &NodeThread, app: usize) -> ensync_blocking::Client {
    let (key, secret) = node.app(app);
    let options = EngineOptions::default()
        .reconnect_interval(Duration::from_millis(100))
        .request_timeout(WAIT);
    Engine::with_options(&node.url(), options)
        .expect("engine")
        .create_client(&key, ClientOptions::default().app_secret_key(secret))
        .expect("client")
}

#[test]
fn every_call_blocking() {
    let node = NodeThread::start(2);
    let publisher = client(&node, 0);
    let receiver = client(&node, 1);
    assert_eq!(receiver.state(), ConnectionState::Connected);
    assert_eq!(receiver.public_key(), node.public_key(1));
    let to = [receiver.public_key().to_owned()];
    let mut sub = receiver
        .subscribe_with(
            "blocking/calls",
            SubscribeOptions::default().auto_ack(false),
        )
        .expect("subscribe");
    assert_eq!(sub.event_name(), "blocking/calls");
    assert_eq!(
        sub.recv_timeout(Duration::from_millis(50)).unwrap_err(),
        RecvTimeoutError::Timeout
    );

    let ids = publisher
        .publish_with_metadata("blocking/calls", &to, &json!({"n": 1}), &json!({"m": 1}))
        .expect("publish");
    let event = sub.recv_timeout(WAIT).expect("event 1");
    assert_eq!(event.idem, ids[0]);
    assert_eq!(event.payload, json!({"n": 1}));
    assert_eq!(event.metadata, json!({"m": 1}));
    assert_eq!(event.sender, publisher.public_key());
    sub.ack(&event.idem, event.block).expect("ack");
    drop(event);

    let both = [
        receiver.public_key().to_owned(),
        publisher.public_key().to_owned(),
    ];
    publisher
        .publish_with(
            "blocking/calls",
            &both,
            &json!({"n": 2}),
            PublishOptions::default().hybrid(true),
        )
        .expect("hybrid publish");
    let event = sub.recv_timeout(WAIT).expect("event 2");
    assert_eq!(event.payload, json!({"n": 2}));
    let idem = event.idem.clone();
    assert!(event.defer(Duration::from_secs(1), "later").expect("defer") > 0);
    let again = sub.recv_timeout(WAIT).expect("redelivery");
    assert_eq!(again.idem, idem);
    assert_eq!(sub.replay(&idem).expect("replay"), json!({"n": 2}));
    again.discard("done").expect("discard");

    sub.pause("hold").expect("pause");
    let ids = publisher
        .publish("blocking/calls", &to, &json!({"n": 3}))
        .expect("publish 3");
    assert!(
        sub.recv_timeout(Duration::from_millis(500)).is_err(),
        "held while paused"
    );
    sub.resume().expect("resume");
    let event = sub.recv_timeout(WAIT).expect("event 3");
    assert_eq!(event.idem, ids[0]);
    event.ack().expect("ack through the event");

    sub.unsubscribe().expect("unsubscribe");
    receiver.close().expect("close");
    assert!(matches!(receiver.state(), ConnectionState::Closed { .. }));
    let error = receiver
        .publish("blocking/calls", &to, &json!({}))
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Closed);
}

#[test]
fn shared_by_a_pool_of_threads() {
    let node = NodeThread::start(1);
    let client = client(&node, 0);
    let me = client.public_key().to_owned();
    let mut sub = client.subscribe("blocking/pool").expect("subscribe");
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let client = client.clone();
            let me = me.clone();
            std::thread::spawn(move || {
                client
                    .publish("blocking/pool", &[me], &json!({"worker": i}))
                    .expect("publish from a pool thread")
            })
        })
        .collect();
    let mut published: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("worker"))
        .collect();
    let mut received: Vec<String> = sub.by_ref().take(4).map(|e| e.idem.clone()).collect();
    published.sort();
    received.sort();
    assert_eq!(received, published);
}

#[test]
fn refused_key_and_bad_url() {
    let node = NodeThread::start(1);
    let error = Engine::new(&node.url())
        .expect("engine")
        .create_client("wrong", ClientOptions::default())
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Auth, "{error}");
    assert_eq!(
        Engine::new("ftp://nowhere").unwrap_err().kind(),
        ErrorKind::Validation
    );
    let engine = Engine::new("grpc://localhost:1234").expect("plaintext engine");
    assert_eq!(engine.authority(), "localhost:1234");
    assert!(!engine.uses_tls());
}
