//! The JetStream backend through the node's service: nodes with `store = "jetstream"`
//! over a 3-server NATS cluster on loopback (`common::nats`). Most tests share one
//! cluster per process, each node on a stream of its own; the test that kills a server
//! has a cluster of its own.
//!
//! Needs `nats-server` (ENSYNC_NATS_SERVER or .venv/bin/nats-server); without it the
//! tests print a note and pass, except under CI, where they fail.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::nats::{self, NatsCluster};
use ensync_node::config::{JetStreamConfig, StoreKind};
use ensync_node::dev::DevSetup;
use ensync_node::service::{DeliveredEvent, EventStream, PublishRequest, ServiceError};
use ensync_node::{Node, NodeService, RunningNode};
use futures::StreamExt as _;

/// Event names that need the subject escaping (`.`, `*`, `>`, `%`).
const NAMES: [&str; 4] = ["orders/new", "a.b.c", "x*>y", "p%2Eq/é"];

struct Nodes {
    dev: DevSetup,
}

impl Nodes {
    /// Apps and keys for nodes on `js` (a stream of their own on the shared cluster).
    fn new(n_apps: usize, js: JetStreamConfig) -> Self {
        let mut dev = DevSetup::generate(n_apps).expect("dev setup");
        dev.config.store = StoreKind::Jetstream;
        dev.config.jetstream = Some(js);
        Self { dev }
    }

    async fn start(&self) -> RunningNode {
        Node::start(self.dev.config.clone())
            .await
            .expect("node starts on JetStream")
    }

    fn key(&self, i: usize) -> String {
        self.dev.apps[i].public_key.clone()
    }

    fn session(&self, node: &RunningNode, app: usize) -> String {
        node.service()
            .connect(&self.dev.apps[app].access_key)
            .unwrap()
            .client_id
    }
}

/// A node setup on the shared cluster; `None` when there is no nats-server (outside CI).
async fn shared_nodes(
    test: &str,
    n_apps: usize,
    tweak: impl FnOnce(&mut JetStreamConfig),
) -> Option<Nodes> {
    let cluster = nats::shared(test).await?;
    let mut js = cluster.jetstream_config(&nats::unique_stream());
    tweak(&mut js);
    Some(Nodes::new(n_apps, js))
}

fn payload(i: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{{\"n\":{i}}}"))
}

async fn publish(svc: &NodeService, cid: &str, name: &str, to: &str, i: usize) -> String {
    svc.publish(PublishRequest {
        client_id: cid.to_owned(),
        event_name: name.to_owned(),
        payload: payload(i),
        delivery_to: to.to_owned(),
        metadata: format!("{{\"i\":{i}}}"),
        payload_metadata: Some("{\"byte_size\":7}".to_owned()),
    })
    .await
    .expect("publish")
}

async fn next(s: &mut EventStream) -> DeliveredEvent {
    tokio::time::timeout(Duration::from_secs(20), s.next())
        .await
        .expect("timed out waiting for an event")
        .expect("stream ended")
        .expect("stream failed")
}

async fn nothing_for(s: &mut EventStream, ms: u64) {
    if let Ok(r) = tokio::time::timeout(Duration::from_millis(ms), s.next()).await {
        panic!("expected nothing, got {r:?}");
    }
}

fn is_own_id_shape(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// Publish, ordered delivery, ack; acked events never come back; ids are 32 hex digits
/// and blocks increase per queue; event names with `.`, `*`, `>` keep their queues apart.
#[tokio::test]
async fn publish_deliver_ack() {
    let Some(t) = shared_nodes("publish_deliver_ack", 2, |_| {}).await else {
        return;
    };
    let node = t.start().await;
    let svc = node.service();
    let pid = t.session(&node, 0);
    let sid = t.session(&node, 1);
    let mut ids = Vec::new();
    for (i, name) in NAMES.iter().cycle().take(12).enumerate() {
        ids.push((*name, publish(svc, &pid, name, &t.key(1), i).await));
    }
    assert!(ids.iter().all(|(_, id)| is_own_id_shape(id)), "{ids:?}");
    assert_eq!(
        ids.iter().map(|(_, id)| id).collect::<HashSet<_>>().len(),
        12
    );
    for name in NAMES {
        let mut s = svc.subscribe(&sid, name).unwrap();
        let want: Vec<&String> = ids
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, id)| id)
            .collect();
        let mut last_block = 0;
        for id in want {
            let ev = next(&mut s).await;
            assert_eq!(&ev.idem, id, "{name}: in publish order");
            assert_eq!(ev.name, name);
            assert_eq!(ev.sender, t.key(0));
            assert!(ev.block > last_block, "blocks increase");
            last_block = ev.block;
            let i: usize = serde_json::from_str::<serde_json::Value>(&ev.metadata).unwrap()["i"]
                .as_u64()
                .unwrap() as usize;
            assert_eq!(ev.payload, payload(i));
            svc.ack(&sid, &ev.idem).await.expect("ack");
        }
        nothing_for(&mut s, 300).await;
        // A second ack is refused by the node.
        let again = svc.ack(&sid, &ids[0].1).await;
        assert!(
            matches!(again, Err(ServiceError::NotInFlight(_))),
            "{again:?}"
        );
    }
    // Acked events never come back, also to a new session after a restart of the node.
    node.shutdown().await;
    let node = t.start().await;
    let sid = t.session(&node, 1);
    let mut s = node.service().subscribe(&sid, NAMES[0]).unwrap();
    nothing_for(&mut s, 1500).await;
    node.shutdown().await;
}

/// What a session held and did not settle is delivered again when it ends (NAK), to
/// the next session; an ack then settles it.
#[tokio::test]
async fn ended_session_redelivers() {
    let Some(t) = shared_nodes("ended_session_redelivers", 2, |_| {}).await else {
        return;
    };
    let node = t.start().await;
    let svc = node.service();
    let pid = t.session(&node, 0);
    let a = publish(svc, &pid, "r", &t.key(1), 0).await;
    let b = publish(svc, &pid, "r", &t.key(1), 1).await;
    let s1 = t.session(&node, 1);
    let mut s = svc.subscribe(&s1, "r").unwrap();
    assert_eq!(next(&mut s).await.idem, a);
    assert_eq!(next(&mut s).await.idem, b);
    let started = Instant::now();
    svc.end_session(&s1);
    let s2 = t.session(&node, 1);
    let mut s = svc.subscribe(&s2, "r").unwrap();
    let mut again = vec![next(&mut s).await.idem, next(&mut s).await.idem];
    // NAK, not ack_wait (30 s here): back at once.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    again.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(again, want);
    svc.ack(&s2, &a).await.unwrap();
    svc.ack(&s2, &b).await.unwrap();
    nothing_for(&mut s, 500).await;
    node.shutdown().await;
}

/// Defer: the event comes back after its delay, not before; discard: never again, yet
/// replayable.
#[tokio::test]
async fn defer_and_discard() {
    let Some(t) = shared_nodes("defer_and_discard", 2, |_| {}).await else {
        return;
    };
    let node = t.start().await;
    let svc = node.service();
    let pid = t.session(&node, 0);
    let sid = t.session(&node, 1);
    let d = publish(svc, &pid, "dd", &t.key(1), 0).await;
    let x = publish(svc, &pid, "dd", &t.key(1), 1).await;
    let mut s = svc.subscribe(&sid, "dd").unwrap();
    assert_eq!(next(&mut s).await.idem, d);
    assert_eq!(next(&mut s).await.idem, x);
    let deferred_at = Instant::now();
    svc.defer(&sid, &d, 2000, "later").await.expect("defer");
    svc.discard(&sid, &x, "bad").await.expect("discard");
    nothing_for(&mut s, 1500).await;
    let ev = next(&mut s).await;
    assert_eq!(ev.idem, d);
    assert!(
        deferred_at.elapsed() >= Duration::from_millis(1900),
        "deferred by 2000 ms, back after {:?}",
        deferred_at.elapsed()
    );
    svc.ack(&sid, &d).await.unwrap();
    // The discarded one does not come back, also not to a new session.
    svc.end_session(&sid);
    let sid = t.session(&node, 1);
    let mut s = svc.subscribe(&sid, "dd").unwrap();
    nothing_for(&mut s, 1000).await;
    let replayed = svc
        .replay(&sid, &x, "dd")
        .await
        .expect("replay a discarded event");
    assert_eq!(replayed.payload, payload(1));
    node.shutdown().await;
}

/// Pause holds delivery on this session; continue delivers what was held, in order.
#[tokio::test]
async fn pause_and_continue() {
    let Some(t) = shared_nodes("pause_and_continue", 2, |_| {}).await else {
        return;
    };
    let node = t.start().await;
    let svc = node.service();
    let pid = t.session(&node, 0);
    let sid = t.session(&node, 1);
    let mut s = svc.subscribe(&sid, "p").unwrap();
    svc.pause(&sid, "p", "busy").unwrap();
    let ids = [
        publish(svc, &pid, "p", &t.key(1), 0).await,
        publish(svc, &pid, "p", &t.key(1), 1).await,
    ];
    nothing_for(&mut s, 1500).await;
    svc.resume(&sid, "p").unwrap();
    for id in &ids {
        let ev = next(&mut s).await;
        assert_eq!(&ev.idem, id);
        svc.ack(&sid, id).await.unwrap();
    }
    node.shutdown().await;
}

/// Replay finds an event by id (before and after ack), from any node; refused for
/// another app, for a wrong name, and for ids the stream does not have.
#[tokio::test]
async fn replay_by_id() {
    let Some(t) = shared_nodes("replay_by_id", 3, |_| {}).await else {
        return;
    };
    let node = t.start().await;
    let other = t.start().await;
    let svc = node.service();
    let pid = t.session(&node, 0);
    let sid = t.session(&node, 1);
    let id = publish(svc, &pid, "a.b", &t.key(1), 7).await;
    let ev = svc
        .replay(&sid, &id, "a.b")
        .await
        .expect("replay before delivery");
    assert_eq!(
        (ev.idem.as_str(), ev.payload.as_str()),
        (id.as_str(), payload(7).as_str())
    );
    assert_eq!(ev.sender, t.key(0));
    let mut s = svc.subscribe(&sid, "a.b").unwrap();
    let got = next(&mut s).await;
    svc.ack(&sid, &got.idem).await.unwrap();
    // From another node of the deployment, after the ack.
    let sid2 = t.session(&other, 1);
    let ev = other
        .service()
        .replay(&sid2, &id, "")
        .await
        .expect("replay on another node");
    assert_eq!(ev.block, got.block);
    assert_eq!(ev.metadata, "{\"i\":7}");
    // Refused for an app that is not the recipient.
    let third = t.session(&node, 2);
    assert!(matches!(
        svc.replay(&third, &id, "").await,
        Err(ServiceError::NotFound(_))
    ));
    // A wrong name, the right sequence with a wrong tag, a sequence past the end, junk.
    assert!(svc.replay(&sid, &id, "other").await.is_err());
    let wrong_tag = format!(
        "{}{}",
        &id[..16],
        if &id[16..] == "0000000000000000" {
            "1111111111111111"
        } else {
            "0000000000000000"
        }
    );
    let past_end = format!("{:016x}{}", 1u64 << 40, &id[16..]);
    for bad in [
        wrong_tag.as_str(),
        past_end.as_str(),
        "not-an-id",
        "00000000000000000000000000000000",
    ] {
        let r = svc.replay(&sid, bad, "").await;
        assert!(matches!(r, Err(ServiceError::NotFound(_))), "{bad}: {r:?}");
    }
    other.shutdown().await;
    node.shutdown().await;
}

/// Two nodes on one stream: the sessions of one app on both compete for its queue;
/// every event goes to exactly one of them.
#[tokio::test]
async fn competing_consumers_across_two_nodes() {
    let Some(mut t) = shared_nodes("competing_consumers_across_two_nodes", 2, |_| {}).await else {
        return;
    };
    t.dev.config.max_in_flight = 2;
    let a = t.start().await;
    let b = t.start().await;
    let (sa, sb) = (t.session(&a, 1), t.session(&b, 1));
    let mut streams = [
        (
            a.service().clone(),
            sa.clone(),
            a.service().subscribe(&sa, "w").unwrap(),
        ),
        (
            b.service().clone(),
            sb.clone(),
            b.service().subscribe(&sb, "w").unwrap(),
        ),
    ];
    let pid = t.session(&a, 0);
    const N: usize = 40;
    let mut published = HashSet::new();
    for i in 0..N {
        published.insert(publish(a.service(), &pid, "w", &t.key(1), i).await);
    }
    let mut seen = HashSet::new();
    let mut per_node = [0usize; 2];
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < N {
        assert!(Instant::now() < deadline, "got {} of {N}", seen.len());
        for (k, (svc, cid, s)) in streams.iter_mut().enumerate() {
            if let Ok(Some(Ok(ev))) =
                tokio::time::timeout(Duration::from_millis(50), s.next()).await
            {
                assert!(seen.insert(ev.idem.clone()), "{} delivered twice", ev.idem);
                per_node[k] += 1;
                svc.ack(cid, &ev.idem).await.unwrap();
            }
        }
    }
    assert_eq!(seen, published);
    assert!(
        per_node.iter().all(|n| *n > 0),
        "both nodes took part: {per_node:?}"
    );
    for (_, _, s) in streams.iter_mut() {
        nothing_for(s, 300).await;
    }
    b.shutdown().await;
    a.shutdown().await;
}

/// A node that dies holding events: while it lives they stay with it (progress reports
/// past `ack_wait`); once it is gone, JetStream hands them to the other node after
/// `ack_wait`.
#[tokio::test]
async fn events_of_a_dead_node_come_back_after_ack_wait() {
    const ACK_WAIT_MS: u64 = 2000;
    let Some(t) = shared_nodes("events_of_a_dead_node_come_back_after_ack_wait", 2, |js| {
        js.ack_wait_ms = ACK_WAIT_MS;
    })
    .await
    else {
        return;
    };
    let survivor = t.start().await;
    let pid = t.session(&survivor, 0);

    // The node that dies runs on a runtime of its own, dropped without any shutdown.
    let config = t.dev.config.clone();
    let access = t.dev.apps[1].access_key.clone();
    let (held_tx, held_rx) = tokio::sync::oneshot::channel::<Vec<String>>();
    let (die_tx, die_rx) = std::sync::mpsc::channel::<()>();
    let doomed = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let node = Node::start(config).await.expect("doomed node starts");
            let cid = node.service().connect(&access).unwrap().client_id;
            let mut s = node.service().subscribe(&cid, "job").unwrap();
            let mut held = Vec::new();
            for _ in 0..3 {
                held.push(next(&mut s).await.idem);
            }
            held_tx.send(held).unwrap();
            // Die: no shutdown, no drop (which would give the events back).
            std::mem::forget(s);
            std::mem::forget(node);
        });
        die_rx.recv().unwrap();
        rt.shutdown_background();
    });
    // Published once the doomed node is subscribed (it takes all three).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(publish(survivor.service(), &pid, "job", &t.key(1), i).await);
    }
    let held = tokio::time::timeout(Duration::from_secs(20), held_rx)
        .await
        .expect("the doomed node got the events")
        .unwrap();
    assert_eq!(held, ids);

    // While it lives, the events stay with it, well past ack_wait.
    let sid = t.session(&survivor, 1);
    let mut s = survivor.service().subscribe(&sid, "job").unwrap();
    nothing_for(&mut s, 3 * ACK_WAIT_MS).await;

    die_tx.send(()).unwrap();
    doomed.join().unwrap();
    let died = Instant::now();
    let mut back = Vec::new();
    for _ in 0..3 {
        let ev = next(&mut s).await;
        back.push(ev.idem.clone());
        survivor.service().ack(&sid, &ev.idem).await.unwrap();
    }
    back.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(back, want);
    // By ack_wait, not by a give-back (which the dead node never sent).
    assert!(
        died.elapsed() >= Duration::from_millis(ACK_WAIT_MS / 2),
        "came back after {:?}",
        died.elapsed()
    );
    nothing_for(&mut s, 500).await;
    survivor.shutdown().await;
}

/// One server of three killed: publishes and deliveries go on (a majority is left), and
/// it rejoins after a restart.
#[tokio::test]
async fn a_cluster_with_one_server_killed_goes_on() {
    let Some(binary) = nats::require_binary("a_cluster_with_one_server_killed_goes_on") else {
        return;
    };
    let mut cluster = NatsCluster::start(&binary, 3).await;
    let t = Nodes::new(2, cluster.jetstream_config("KILL"));
    let node = t.start().await;
    let svc = node.service().clone();
    let pid = t.session(&node, 0);
    let sid = t.session(&node, 1);
    let mut s = svc.subscribe(&sid, "k").unwrap();
    let first = publish(&svc, &pid, "k", &t.key(1), 0).await;
    assert_eq!(next(&mut s).await.idem, first);
    svc.ack(&sid, &first).await.unwrap();

    cluster.kill(0);
    let mut ids = Vec::new();
    for i in 1..6 {
        ids.push(publish(&svc, &pid, "k", &t.key(1), i).await);
    }
    let mut got = Vec::new();
    while got.len() < ids.len() {
        let ev = next(&mut s).await;
        if !got.contains(&ev.idem) {
            got.push(ev.idem.clone());
        }
        svc.ack(&sid, &ev.idem).await.unwrap();
    }
    got.sort();
    ids.sort();
    assert_eq!(got, ids);

    cluster.restart(0).await;
    let last = publish(&svc, &pid, "k", &t.key(1), 9).await;
    assert_eq!(next(&mut s).await.idem, last);
    svc.ack(&sid, &last).await.unwrap();
    node.shutdown().await;
}

/// Waits (at most 10 s) until the node's counts satisfy `ok`.
async fn counts_until(
    node: &RunningNode,
    what: &str,
    ok: impl Fn(&ensync_node::NodeStats) -> bool,
) {
    let t0 = Instant::now();
    loop {
        let st = node.stats();
        if ok(&st) {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{what}: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ready and deferred counts (and so `/metrics`) on JetStream, read from the queues'
/// consumers: events waiting, and events deferred, while one is held.
#[tokio::test]
async fn ready_and_deferred_counts() {
    let Some(mut t) = shared_nodes("ready_and_deferred_counts", 2, |_| {}).await else {
        return;
    };
    t.dev.config.max_in_flight = 1;
    let node = t.start().await;
    let svc = node.service();
    let pid = t.session(&node, 0);
    let sid = t.session(&node, 1);
    let mut s = svc.subscribe(&sid, "c").unwrap();
    for i in 0..4 {
        publish(svc, &pid, "c", &t.key(1), i).await;
    }
    // One in flight (the window is 1), three waiting.
    let first = next(&mut s).await;
    counts_until(&node, "three ready, none deferred", |st| {
        st.ready == 3 && st.deferred == 0 && st.in_flight == 1
    })
    .await;
    // Deferred for a minute: the next one comes; two wait, one is deferred.
    svc.defer(&sid, &first.idem, 60_000, "later").await.unwrap();
    let second = next(&mut s).await;
    assert_ne!(second.idem, first.idem);
    counts_until(&node, "two ready, one deferred", |st| {
        st.ready == 2 && st.deferred == 1
    })
    .await;
    let text = svc.metrics_text();
    assert!(text.contains("ensync_ready_events 2"), "{text}");
    assert!(text.contains("ensync_deferred_events 1"), "{text}");
    // The same per queue (recipient app2, event "c"): held here is this node's one.
    let row = |gauge: &str| format!("{gauge}{{app=\"app2\",event=\"c\"}} ");
    assert!(
        text.contains(&(row("ensync_queue_ready_events") + "2")),
        "{text}"
    );
    assert!(
        text.contains(&(row("ensync_queue_deferred_events") + "1")),
        "{text}"
    );
    assert!(
        text.contains(&(row("ensync_queue_held_events") + "1")),
        "{text}"
    );
    // Acked: gone from every count.
    svc.ack(&sid, &second.idem).await.unwrap();
    let third = next(&mut s).await;
    svc.ack(&sid, &third.idem).await.unwrap();
    counts_until(&node, "the last one in flight, the first deferred", |st| {
        st.ready == 0 && st.deferred == 1 && st.in_flight == 1
    })
    .await;
    node.shutdown().await;
}
