//! The contract of `ensync_node::backend::Backend` (its module docs), checked on the
//! embedded backend and on the JetStream backend (over the loopback cluster of
//! `common::nats`). The checks take any backend, so every implementation runs the same
//! ones (`check_contract`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use ensync_node::backend::embedded::EmbeddedBackend;
use ensync_node::backend::{Backend, QueueKey};
use ensync_node::service::now_ms;
use ensync_node::store::{NewEvent, RedbStore};

const R1: &str = "cmVjaXBpZW50LW9uZS1wdWJsaWMta2V5LTMyYnl0ZXM=";
const R2: &str = "cmVjaXBpZW50LXR3by1wdWJsaWMta2V5LTMyYnl0ZXM=";

fn event(n: usize, recipient: &str, name: &str) -> NewEvent {
    NewEvent {
        id: format!("{:032x}", 0x1000 + n),
        recipient: recipient.into(),
        name: name.into(),
        sender: R2.into(),
        payload: format!("cGF5bG9hZC0{n}"),
        metadata: format!("{{\"n\":{n}}}"),
        payload_metadata: None,
        published_ms: now_ms(),
    }
}

/// A claim that must complete soon.
async fn claim(b: &dyn Backend, q: &QueueKey, max: usize) -> Vec<(String, u64)> {
    tokio::time::timeout(Duration::from_secs(10), b.claim(q, max))
        .await
        .expect("a claim with events ready completes")
        .expect("claim")
        .into_iter()
        .map(|s| (s.event.id, s.block))
        .collect()
}

/// A claim that may find nothing within a second (then empty).
async fn try_claim(b: &dyn Backend, q: &QueueKey, max: usize) -> Vec<String> {
    match tokio::time::timeout(Duration::from_secs(1), b.claim(q, max)).await {
        Ok(claimed) => claimed
            .expect("claim")
            .into_iter()
            .map(|s| s.event.id)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Whether a claim finds nothing for `wait`.
async fn nothing_within(b: &dyn Backend, q: &QueueKey, wait: Duration) -> bool {
    tokio::time::timeout(wait, b.claim(q, 16)).await.is_err()
}

/// Every rule of the module docs, on a fresh backend.
async fn check_contract(b: Arc<dyn Backend>) {
    let b = &*b;
    let q = QueueKey::new(R1, "orders/created");
    let other = QueueKey::new(R1, "orders.*>");

    // Publish answers with an id and increasing blocks per queue; a queue holds only its
    // own events.
    let mut ids = Vec::new();
    let mut last_block = 0;
    for n in 0..4 {
        let p = b.publish(event(n, R1, "orders/created")).await.unwrap();
        assert!(
            p.block > last_block,
            "blocks increase: {} then {}",
            last_block,
            p.block
        );
        last_block = p.block;
        ids.push((p.id, p.block));
    }
    let o = b.publish(event(9, R1, "orders.*>")).await.unwrap();
    assert_eq!(claim(b, &other, 16).await, vec![(o.id.clone(), o.block)]);

    // Oldest first, at most `max`, each event to one claimer.
    let first = claim(b, &q, 3).await;
    assert_eq!(first, ids[..3].to_vec());
    let rest = claim(b, &q, 16).await;
    assert_eq!(rest, ids[3..].to_vec());
    assert!(
        nothing_within(b, &q, Duration::from_millis(300)).await,
        "all are held"
    );

    // Release gives an event back: claimable again.
    b.release(&q, &ids[1].0, ids[1].1);
    assert_eq!(claim(b, &q, 16).await, vec![ids[1].clone()]);

    // Ack: settled once; never claimable again; still readable by id.
    assert!(b.ack(&q, &ids[0].0, ids[0].1).await.unwrap());
    assert!(
        !b.ack(&q, &ids[0].0, ids[0].1).await.unwrap(),
        "not held any more"
    );
    let replayed = b.get(&ids[0].0).await.unwrap().expect("kept for replay");
    assert_eq!(replayed.event.metadata, "{\"n\":0}");
    assert_eq!(replayed.block, ids[0].1);
    assert!(
        b.get("ffffffffffffffffffffffffffffffff")
            .await
            .unwrap()
            .is_none()
    );

    // Discard: like ack.
    assert!(b.discard(&q, &ids[1].0, ids[1].1).await.unwrap());
    assert!(b.get(&ids[1].0).await.unwrap().is_some());

    // Defer: not claimable before its time, claimable after.
    let due = now_ms() + 1500;
    assert!(b.defer(&q, &ids[2].0, ids[2].1, due).await.unwrap());
    assert!(
        nothing_within(b, &q, Duration::from_millis(700)).await,
        "deferred"
    );
    assert_eq!(claim(b, &q, 16).await, vec![ids[2].clone()]);
    assert!(now_ms() + 100 >= due, "not before its time");

    // A claim waits for an event published later.
    let waiting = b.claim(&q, 16);
    let publish = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        b.publish(event(4, R1, "orders/created")).await.unwrap()
    };
    let (got, p) = tokio::join!(waiting, publish);
    assert_eq!(got.unwrap()[0].event.id, p.id);

    // Cancel-safety: a claim dropped before it completes loses nothing, also when the
    // event arrives while claims are being dropped (a claim that completes gives its
    // events back).
    let dropping = async {
        for i in 0..40u64 {
            let wait = Duration::from_micros(200 * i);
            if let Ok(Ok(events)) = tokio::time::timeout(wait, b.claim(&q, 16)).await {
                for e in events {
                    b.release(&q, &e.event.id, e.block);
                }
            }
        }
    };
    let publish = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        b.publish(event(5, R1, "orders/created")).await.unwrap()
    };
    let ((), late) = tokio::join!(dropping, publish);
    assert_eq!(claim(b, &q, 16).await, vec![(late.id, late.block)]);

    // Competing claimers get disjoint events.
    for n in 10..30 {
        b.publish(event(n, R1, "orders/created")).await.unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    while total < 20 {
        let (x, y) = tokio::join!(try_claim(b, &q, 3), try_claim(b, &q, 3));
        for id in x.into_iter().chain(y) {
            assert!(seen.insert(id), "an event went to two claimers");
            total += 1;
        }
    }
    assert_eq!(total, 20);
    let stats = b.stats();
    if let Some(ready) = stats.ready {
        assert_eq!(ready, 0, "{stats:?}");
    }
}

/// The records (what the admin API writes): written durably, read back in key order,
/// deleted; readiness while open and after close (checked by the callers).
async fn check_records(b: &dyn Backend) {
    assert_eq!(b.ready().await, Ok(()));
    let keys = ["app/b", "app/a", "event/x.y z"];
    let mut revs = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        revs.push(b.put_record(k, Some(vec![b'v', i as u8])).await.unwrap());
    }
    let rev = b.put_record("app/b", Some(b"new".to_vec())).await.unwrap();
    // A backend with revisions (0: none) orders them.
    if rev > 0 {
        assert!(revs.windows(2).all(|w| w[0] < w[1]), "{revs:?}");
        assert!(rev > revs[2], "a later change has a higher revision");
    }
    b.put_record("app/a", None).await.unwrap();
    assert_eq!(
        b.records().await.unwrap(),
        vec![
            ("app/b".to_owned(), b"new".to_vec()),
            ("event/x.y z".to_owned(), vec![b'v', 2]),
        ],
        "in key order, the deleted one gone"
    );
}

#[tokio::test]
async fn the_embedded_backend_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(dir.path()).unwrap());
    let backend = Arc::new(EmbeddedBackend::open(store, true, 3_600_000).unwrap());
    let tasks = backend.spawn_background();
    check_contract(backend.clone()).await;
    check_records(&*backend).await;
    assert!(backend.watch_records().is_none(), "its records are its own");
    backend.close().await;
    assert!(
        backend.publish(event(99, R1, "x")).await.is_err(),
        "a closed backend refuses writes"
    );
    assert!(
        backend.ready().await.is_err(),
        "a closed store is not ready"
    );
    for t in tasks {
        t.abort();
    }
}

#[tokio::test]
async fn the_jetstream_backend_keeps_the_contract() {
    let Some(cluster) = common::nats::shared("the_jetstream_backend_keeps_the_contract").await
    else {
        return;
    };
    let mut config = ensync_node::NodeConfig::default();
    config.store = ensync_node::config::StoreKind::Jetstream;
    config.jetstream = Some(cluster.jetstream_config(&common::nats::unique_stream()));
    let backend = Arc::new(
        ensync_node::backend::jetstream::JetStreamBackend::connect(&config)
            .await
            .unwrap(),
    );
    let tasks = backend.spawn_background();
    check_contract(backend.clone()).await;
    check_records(&*backend).await;

    // A second backend on the same stream (another node) reads the same records, and
    // its watch reports what the first one changes, with the revisions it answered.
    let other = ensync_node::backend::jetstream::JetStreamBackend::connect(&config)
        .await
        .unwrap();
    let shared = other.records().await.unwrap();
    assert_eq!(shared, backend.records().await.unwrap());
    let mut changes = other.watch_records().expect("a shared backend has a watch");
    assert!(other.watch_records().is_none(), "one watch per backend");
    let put = backend
        .put_record("app/c", Some(b"c".to_vec()))
        .await
        .unwrap();
    let del = backend.put_record("app/b", None).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let c = tokio::time::timeout(
            Duration::from_secs(5),
            futures::StreamExt::next(&mut changes),
        )
        .await
        .expect("a change within 5 s")
        .expect("the watch goes on");
        seen.push((c.key, c.value, c.revision));
    }
    assert_eq!(
        seen,
        vec![
            ("app/c".to_owned(), Some(b"c".to_vec()), put),
            ("app/b".to_owned(), None, del),
        ],
        "only what changed after its records(), in order"
    );
    other.close().await;

    backend.close().await;
    assert!(
        backend.publish(event(99, R1, "x")).await.is_err(),
        "a closed backend refuses writes"
    );
    assert!(
        backend.ready().await.is_err(),
        "a closed backend is not ready"
    );
    for t in tasks {
        t.abort();
    }
}

/// What the embedded backend held when it stopped is ready again after a restart (its
/// held events are not written down), and what it settled is not.
#[tokio::test]
async fn the_embedded_backend_gives_back_what_it_held_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let q = QueueKey::new(R1, "n");
    let (held, acked) = {
        let store = Arc::new(RedbStore::open(dir.path()).unwrap());
        let b = EmbeddedBackend::open(store, true, 3_600_000).unwrap();
        let a = b.publish(event(1, R1, "n")).await.unwrap();
        let h = b.publish(event(2, R1, "n")).await.unwrap();
        assert_eq!(claim(&b, &q, 16).await.len(), 2);
        assert!(b.ack(&q, &a.id, a.block).await.unwrap());
        b.close().await;
        (h, a)
    };
    let store = Arc::new(RedbStore::open(dir.path()).unwrap());
    let b = EmbeddedBackend::open(store, true, 3_600_000).unwrap();
    assert_eq!(claim(&b, &q, 16).await, vec![(held.id, held.block)]);
    assert!(b.get(&acked.id).await.unwrap().is_some());
    b.close().await;
}
