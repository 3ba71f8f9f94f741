//! One event stream, three adapters: the blocking client publishes; an ensync-h2 client
//! on async-std and an ensync-tokio client receive and decrypt it.

mod h2_support;

use std::sync::mpsc;
use std::time::Duration;

use futures::StreamExt;
use h2_support::{NodeThread, WAIT, async_std_runtime, bounded, h2_options};
use serde_json::json;

const NAME: &str = "cross/adapter";

#[test]
fn blocking_publishes_h2_and_tokio_receive() {
    let node = NodeThread::start(3);
    let url = node.url();
    let (ready_tx, ready_rx) = mpsc::channel::<&'static str>();
    let (got_tx, got_rx) = mpsc::channel::<(&'static str, String, serde_json::Value, String)>();

    // app 1: ensync-h2 on async-std, on a thread with no tokio runtime
    let h2_thread = {
        let (key, secret) = node.app(1);
        let (url, ready, got) = (url.clone(), ready_tx.clone(), got_tx.clone());
        std::thread::spawn(move || {
            async_std::task::block_on(async move {
                let client =
                    ensync_h2::EnSyncEngine::with_options(&url, h2_options(), async_std_runtime())
                        .expect("engine")
                        .create_client(
                            &key,
                            ensync_h2::ClientOptions::default().app_secret_key(secret),
                        )
                        .await
                        .expect("h2 client");
                let mut sub = client.subscribe(NAME).await.expect("h2 subscribe");
                ready.send("h2").expect("ready");
                let event = bounded("the h2 delivery", sub.next())
                    .await
                    .expect("h2 event");
                got.send((
                    "h2",
                    event.idem.clone(),
                    event.payload.clone(),
                    event.sender.clone(),
                ))
                .expect("report");
                drop(event);
                client.close().await.expect("close");
            })
        })
    };

    // app 2: ensync-tokio on its own tokio runtime
    let tokio_thread = {
        let (key, secret) = node.app(2);
        let (url, ready, got) = (url.clone(), ready_tx, got_tx);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let options = ensync_tokio::EngineOptions::default()
                    .reconnect_interval(Duration::from_millis(100));
                let client = ensync_tokio::EnSyncEngine::with_options(&url, options)
                    .expect("engine")
                    .create_client(
                        &key,
                        ensync_tokio::ClientOptions::default().app_secret_key(secret),
                    )
                    .await
                    .expect("tokio client");
                let mut sub = client.subscribe(NAME).await.expect("tokio subscribe");
                ready.send("tokio").expect("ready");
                let event = tokio::time::timeout(WAIT, sub.next())
                    .await
                    .expect("tokio delivery in time")
                    .expect("tokio event");
                got.send((
                    "tokio",
                    event.idem.clone(),
                    event.payload.clone(),
                    event.sender.clone(),
                ))
                .expect("report");
                drop(event);
                client.close().await.expect("close");
            })
        })
    };

    for _ in 0..2 {
        ready_rx.recv_timeout(WAIT).expect("both subscribers ready");
    }

    // app 0: the blocking client publishes to both
    let (key, secret) = node.app(0);
    let publisher = ensync_blocking::Engine::new(&url)
        .expect("engine")
        .create_client(
            &key,
            ensync_blocking::ClientOptions::default().app_secret_key(secret),
        )
        .expect("blocking client");
    let payload = json!({"order_id": "x-1", "from": "blocking"});
    let ids = publisher
        .publish(NAME, &[node.public_key(1), node.public_key(2)], &payload)
        .expect("publish");
    assert_eq!(ids.len(), 2);

    let mut seen = Vec::new();
    for _ in 0..2 {
        let (who, idem, got, sender) = got_rx.recv_timeout(WAIT).expect("a delivery");
        let expected_id = if who == "h2" { &ids[0] } else { &ids[1] };
        assert_eq!(&idem, expected_id, "{who}");
        assert_eq!(got, payload, "{who}");
        assert_eq!(sender, publisher.public_key(), "{who}");
        seen.push(who);
    }
    seen.sort();
    assert_eq!(seen, ["h2", "tokio"]);
    h2_thread.join().expect("h2 thread");
    tokio_thread.join().expect("tokio thread");
    publisher.close().expect("close");
}
