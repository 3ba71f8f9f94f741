//! The node driven through the raw generated tonic client: every RPC of both
//! generations, permissions, error paths and delivery semantics.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use ensync_node::AppConfig;
use ensync_proto::wire;
use tonic::Code;

#[tokio::test]
async fn connect_and_heartbeat() {
    let t = start(2).await;
    let mut c = t.client().await;
    let bad = c
        .connect(wire::ConnectRequest {
            access_key: "wrong".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!bad.success);
    assert!(
        bad.error_message.contains("access key"),
        "{}",
        bad.error_message
    );
    assert!(bad.client_id.is_empty());

    let ok = c
        .connect(wire::ConnectRequest {
            access_key: t.dev.apps[1].access_key.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ok.success);
    assert_eq!(ok.client_hash, t.key(1));
    assert_eq!(ok.client_id.len(), 32);
    assert!(ok.client_id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(
        ok.server_config
            .get("heartbeat_interval_ms")
            .map(String::as_str),
        Some("30000")
    );
    // Two sessions of one app get different ids.
    let other = connect(&mut c, &t.dev.apps[1].access_key).await;
    assert_ne!(other, ok.client_id);

    let hb = c
        .heartbeat(wire::HeartbeatRequest {
            client_id: ok.client_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(hb.success);
    let hb = c
        .heartbeat(wire::HeartbeatRequest {
            client_id: "0".repeat(32),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!hb.success);
    assert_eq!(t.node.stats().sessions, 2);
    t.node.shutdown().await;
}

/// Every call with a `client_id` that is not a live session is refused.
#[tokio::test]
async fn unknown_session_is_not_authenticated() {
    let t = start(2).await;
    let mut c = t.client().await;
    let cid = "deadbeef".to_owned();
    let na = |m: &str| assert_eq!(m, "not authenticated");

    let p = publish_req(&cid, "a", &t.key(1), 0);
    na(&c
        .publish_event(p.clone())
        .await
        .unwrap()
        .into_inner()
        .error_message);
    na(&c
        .publish_message(p)
        .await
        .unwrap()
        .into_inner()
        .error_message);
    let ack = wire::AcknowledgeRequest {
        client_id: cid.clone(),
        event_idem: "x".into(),
        event_name: "a".into(),
        partition_block: 1,
    };
    na(&c
        .acknowledge_event(ack.clone())
        .await
        .unwrap()
        .into_inner()
        .message);
    na(&c
        .acknowledge_message(ack)
        .await
        .unwrap()
        .into_inner()
        .message);
    let defer = wire::DeferRequest {
        client_id: cid.clone(),
        event_idem: "x".into(),
        event_name: "a".into(),
        delay_ms: 1000,
        priority: 0,
        reason: String::new(),
    };
    na(&c
        .defer_event(defer.clone())
        .await
        .unwrap()
        .into_inner()
        .message);
    na(&c.defer_message(defer).await.unwrap().into_inner().message);
    let discard = wire::DiscardRequest {
        client_id: cid.clone(),
        event_idem: "x".into(),
        event_name: "a".into(),
        reason: String::new(),
    };
    na(&c
        .discard_event(discard.clone())
        .await
        .unwrap()
        .into_inner()
        .message);
    na(&c
        .discard_message(discard)
        .await
        .unwrap()
        .into_inner()
        .message);
    let replay = wire::ReplayRequest {
        client_id: cid.clone(),
        event_idem: "x".into(),
        event_name: "a".into(),
    };
    na(&c
        .replay_event(replay.clone())
        .await
        .unwrap()
        .into_inner()
        .message);
    na(&c.replay_message(replay).await.unwrap().into_inner().message);
    let pause = wire::PauseRequest {
        client_id: cid.clone(),
        event_name: "a".into(),
        reason: String::new(),
    };
    na(&c
        .pause_events(pause.clone())
        .await
        .unwrap()
        .into_inner()
        .message);
    na(&c.pause_messages(pause).await.unwrap().into_inner().message);
    let cont = wire::ContinueRequest {
        client_id: cid.clone(),
        event_name: "a".into(),
    };
    na(&c
        .continue_events(cont.clone())
        .await
        .unwrap()
        .into_inner()
        .message);
    na(&c
        .continue_messages(cont)
        .await
        .unwrap()
        .into_inner()
        .message);
    let unsub = wire::UnsubscribeRequest {
        client_id: cid.clone(),
        event_name: "a".into(),
    };
    na(&c.unsubscribe(unsub).await.unwrap().into_inner().message);
    let err = c
        .subscribe(wire::SubscribeRequest {
            client_id: cid.clone(),
            event_name: "a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    t.node.shutdown().await;
}

/// Generation 1 end to end: publish, ordered delivery from block 1, ack, replay.
#[tokio::test]
async fn generation_1_flow() {
    let t = start(2).await;
    let (mut pc, pid) = t.session(0).await;
    let (mut sc, sid) = t.session(1).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(publish(&mut pc, &pid, "orders/new", &t.key(1), i).await);
    }
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 5);
    let mut s = subscribe(&mut sc, &sid, "orders/new").await;
    for (i, id) in ids.iter().enumerate() {
        let ev = next(&mut s).await;
        assert_eq!(&ev.event_idem, id);
        assert_eq!(ev.event_name, "orders/new");
        assert_eq!(ev.partition_block, i as i64 + 1);
        assert_eq!(ev.payload, payload(i));
        assert_eq!(ev.metadata, format!("{{\"i\":{i}}}"));
        assert_eq!(ev.sender, t.key(0));
        let a = ack(&mut sc, &sid, &ev).await;
        assert!(a.success, "{}", a.message);
    }
    // A second ack of the same event fails clearly.
    let again = sc
        .acknowledge_event(wire::AcknowledgeRequest {
            client_id: sid.clone(),
            event_idem: ids[0].clone(),
            event_name: "orders/new".into(),
            partition_block: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.success);
    assert!(again.message.contains("not in flight"), "{}", again.message);

    // Replay after ack.
    let r = sc
        .replay_event(wire::ReplayRequest {
            client_id: sid.clone(),
            event_idem: ids[2].clone(),
            event_name: "orders/new".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.success, "{}", r.message);
    // tonic's user-agent is not grpc-python: the stream-message JSON form.
    let replayed = ensync_proto::clients::decode_replay(&r.event_data).unwrap();
    assert_eq!(replayed.payload, payload(2));
    assert_eq!(replayed.idem.as_ref(), Some(&ids[2]));
    nothing_for(&mut s, 200).await;
    t.node.shutdown().await;
}

/// Generation 2 end to end, with pause/continue, defer, discard and unsubscribe.
#[tokio::test]
async fn generation_2_flow() {
    let t = start(2).await;
    let (mut pc, pid) = t.session(0).await;
    let (mut sc, sid) = t.session(1).await;
    let mut s = subscribe(&mut sc, &sid, "m").await;
    let p = sc
        .pause_messages(wire::PauseRequest {
            client_id: sid.clone(),
            event_name: "m".into(),
            reason: "busy".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(p.success, "{}", p.message);
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = pc
            .publish_message(publish_req(&pid, "m", &t.key(1), i))
            .await
            .unwrap()
            .into_inner();
        assert!(r.success, "{}", r.error_message);
        ids.push(r.event_idem);
    }
    nothing_for(&mut s, 300).await;
    let c = sc
        .continue_messages(wire::ContinueRequest {
            client_id: sid.clone(),
            event_name: "m".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(c.success, "{}", c.message);
    let evs = [next(&mut s).await, next(&mut s).await, next(&mut s).await];
    let got: Vec<_> = evs.iter().map(|e| e.event_idem.clone()).collect();
    assert_eq!(got, ids, "held events arrive in order after continue");

    // ack the first, defer the second, discard the third.
    let a = sc
        .acknowledge_message(wire::AcknowledgeRequest {
            client_id: sid.clone(),
            event_idem: ids[0].clone(),
            event_name: "m".into(),
            partition_block: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(a.success, "{}", a.message);
    let before = ensync_node::service::now_ms() as i64;
    let d = sc
        .defer_message(wire::DeferRequest {
            client_id: sid.clone(),
            event_idem: ids[1].clone(),
            event_name: "m".into(),
            delay_ms: 1000,
            priority: 0,
            reason: "later".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(d.success, "{}", d.message);
    assert!(d.delivery_time >= before + 1000 && d.delivery_time < before + 10_000);
    let x = sc
        .discard_message(wire::DiscardRequest {
            client_id: sid.clone(),
            event_idem: ids[2].clone(),
            event_name: "m".into(),
            reason: "bad".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(x.success, "{}", x.message);
    // The deferred event comes back (same id and block); the discarded one never does.
    let back = next(&mut s).await;
    assert_eq!(back.event_idem, ids[1]);
    assert_eq!(back.partition_block, 2);
    assert!(ensync_node::service::now_ms() as i64 >= d.delivery_time - 50);
    let r = sc
        .replay_message(wire::ReplayRequest {
            client_id: sid.clone(),
            event_idem: ids[2].clone(),
            event_name: "m".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.success, "discarded events stay replayable: {}", r.message);
    // tonic's user-agent is not grpc-python: the stream-message JSON form.
    let replayed = ensync_proto::clients::decode_replay(&r.event_data).unwrap();
    assert_eq!(replayed.payload, payload(2));
    assert_eq!(replayed.idem.as_ref(), Some(&ids[2]));
    assert!(ack(&mut sc, &sid, &back).await.success);

    let u = sc
        .unsubscribe(wire::UnsubscribeRequest {
            client_id: sid.clone(),
            event_name: "m".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(u.success, "{}", u.message);
    let end = tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .unwrap();
    assert!(matches!(end, Ok(None)), "stream ends normally: {end:?}");
    let u = sc
        .unsubscribe(wire::UnsubscribeRequest {
            client_id: sid.clone(),
            event_name: "m".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!u.success);
    assert!(u.message.contains("not subscribed"), "{}", u.message);
    t.node.shutdown().await;
}

/// send/receive patterns: exact, `*`, trailing `/*`.
#[tokio::test]
async fn permissions() {
    let t = start_with(3, |c| {
        c.apps[0].send = vec!["orders/*".into(), "ping".into()];
        c.apps[0].receive = vec!["orders/new".into()];
        c.apps[1].send = vec![];
        c.apps[1].receive = vec!["*".into()];
        c.apps[2].send = vec!["*".into()];
        c.apps[2].receive = vec!["billing/*".into()];
    })
    .await;
    let (mut c0, id0) = t.session(0).await;
    let (mut c1, id1) = t.session(1).await;
    let (mut c2, id2) = t.session(2).await;
    let to = t.key(1);
    for (name, allowed) in [
        ("orders/new", true),
        ("orders/new/eu", true),
        ("ping", true),
        ("orders", false),
        ("ordersx/new", false),
        ("ping/x", false),
        ("pong", false),
    ] {
        let r = c0
            .publish_event(publish_req(&id0, name, &to, 0))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.success, allowed, "{name}: {}", r.error_message);
        if !allowed {
            assert!(
                r.error_message.contains("may not publish"),
                "{}",
                r.error_message
            );
        }
    }
    let r = c1
        .publish_event(publish_req(&id1, "anything", &t.key(0), 0))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.success, "app with no send patterns may not publish");

    for (who, name, allowed) in [
        (0, "orders/new", true),
        (0, "orders/old", false),
        (1, "whatever/x", true),
        (2, "billing/eu/due", true),
        (2, "billing", false),
    ] {
        let (c, id) = match who {
            0 => (&mut c0, &id0),
            1 => (&mut c1, &id1),
            _ => (&mut c2, &id2),
        };
        let r = c
            .subscribe(wire::SubscribeRequest {
                client_id: id.clone(),
                event_name: name.into(),
            })
            .await;
        match (r, allowed) {
            (Ok(_), true) => {}
            (Err(s), false) => assert_eq!(s.code(), Code::PermissionDenied, "{name}"),
            (r, _) => panic!("{name}: unexpected {:?}", r.map(|_| ())),
        }
    }
    // pause needs receive too.
    let p = c2
        .pause_events(wire::PauseRequest {
            client_id: id2.clone(),
            event_name: "orders/new".into(),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!p.success);
    assert!(p.message.contains("may not receive"), "{}", p.message);
    t.node.shutdown().await;
}

/// Bad input is refused with a reason, nothing is stored, and the session keeps working.
#[tokio::test]
async fn bad_input_is_refused() {
    let t = start_with(2, |c| {
        c.max_payload_bytes = 1024;
        c.max_metadata_bytes = 256;
    })
    .await;
    let (mut pc, pid) = t.session(0).await;
    let to = t.key(1);
    let base = publish_req(&pid, "ok/name", &to, 0);
    let cases: Vec<(&str, wire::PublishEventRequest, &str)> = vec![
        (
            "empty name",
            wire::PublishEventRequest {
                event_name: "".into(),
                ..base.clone()
            },
            "empty",
        ),
        (
            "space in name",
            wire::PublishEventRequest {
                event_name: "a b".into(),
                ..base.clone()
            },
            "not allowed",
        ),
        (
            "empty segment",
            wire::PublishEventRequest {
                event_name: "a//b".into(),
                ..base.clone()
            },
            "empty segment",
        ),
        (
            "metadata not JSON",
            wire::PublishEventRequest {
                metadata: "{nope".into(),
                ..base.clone()
            },
            "JSON object",
        ),
        (
            "metadata array",
            wire::PublishEventRequest {
                metadata: "[1]".into(),
                ..base.clone()
            },
            "JSON object",
        ),
        (
            "payload not base64",
            wire::PublishEventRequest {
                payload: "***".into(),
                ..base.clone()
            },
            "base64",
        ),
        (
            "payload empty",
            wire::PublishEventRequest {
                payload: "".into(),
                ..base.clone()
            },
            "empty",
        ),
        (
            "payload too big",
            wire::PublishEventRequest {
                payload: "QUFB".repeat(300),
                ..base.clone()
            },
            "limit",
        ),
        (
            "metadata too big",
            wire::PublishEventRequest {
                metadata: format!("{{\"a\":\"{}\"}}", "x".repeat(300)),
                ..base.clone()
            },
            "limit",
        ),
        (
            "payload_metadata not JSON",
            wire::PublishEventRequest {
                payload_metadata: Some("{".into()),
                ..base.clone()
            },
            "JSON",
        ),
        (
            "unknown recipient",
            wire::PublishEventRequest {
                delivery_to: ensync_node::keys::generate().public_key,
                ..base.clone()
            },
            "unknown recipient",
        ),
        (
            "recipient not a key",
            wire::PublishEventRequest {
                delivery_to: "bob".into(),
                ..base.clone()
            },
            "unknown recipient",
        ),
        (
            "recipient 32 bytes, not a configured key",
            wire::PublishEventRequest {
                delivery_to: base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    [7u8; 32],
                ),
                ..base.clone()
            },
            "unknown recipient",
        ),
    ];
    for (what, req, needle) in cases {
        let r = pc.publish_event(req).await.unwrap().into_inner();
        assert!(!r.success, "{what} accepted");
        assert!(r.event_idem.is_empty());
        assert!(
            r.error_message.contains(needle),
            "{what}: {}",
            r.error_message
        );
    }
    let stats = t.node.stats();
    assert_eq!(
        stats.ready + stats.in_flight + stats.deferred,
        0,
        "nothing stored"
    );
    // Empty metadata means {} and is accepted; the session is unharmed.
    let r = pc
        .publish_event(wire::PublishEventRequest {
            metadata: String::new(),
            ..base.clone()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.success, "{}", r.error_message);
    let (mut sc, sid) = t.session(1).await;
    let mut s = subscribe(&mut sc, &sid, "ok/name").await;
    let ev = next(&mut s).await;
    assert_eq!(ev.event_idem, r.event_idem);
    assert_eq!(ev.metadata, "{}");

    // Subscribe to a malformed name; defer with a bad delay; ack of unknown ids.
    let err = sc
        .subscribe(wire::SubscribeRequest {
            client_id: sid.clone(),
            event_name: "a b".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    for delay in [999, 86_400_001, -1] {
        let d = sc
            .defer_event(wire::DeferRequest {
                client_id: sid.clone(),
                event_idem: ev.event_idem.clone(),
                event_name: "ok/name".into(),
                delay_ms: delay,
                priority: 0,
                reason: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            !d.success && d.message.contains("delay"),
            "{delay}: {}",
            d.message
        );
    }
    let d = sc
        .discard_event(wire::DiscardRequest {
            client_id: sid.clone(),
            event_idem: "nope".into(),
            event_name: "ok/name".into(),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !d.success && d.message.contains("not in flight"),
        "{}",
        d.message
    );
    // The event is still in flight and can be acked.
    assert!(ack(&mut sc, &sid, &ev).await.success);
    t.node.shutdown().await;
}

/// Ack, defer and discard of an event in flight to someone else fail clearly.
#[tokio::test]
async fn not_yours() {
    let t = start(2).await;
    let (mut pc, pid) = t.session(0).await;
    let (mut a, aid) = t.session(1).await;
    let (mut b, bid) = t.session(1).await;
    publish(&mut pc, &pid, "x", &t.key(1), 0).await;
    let mut s = subscribe(&mut a, &aid, "x").await;
    let ev = next(&mut s).await;
    let r = ack(&mut b, &bid, &ev).await;
    assert!(!r.success);
    assert!(r.message.contains("another session"), "{}", r.message);
    // The publisher's app is not the recipient: it does not even learn the event is in flight.
    let r = ack(&mut pc, &pid, &ev).await;
    assert!(!r.success);
    assert!(
        r.message.contains("not in flight to this session"),
        "{}",
        r.message
    );
    let d = b
        .defer_event(wire::DeferRequest {
            client_id: bid.clone(),
            event_idem: ev.event_idem.clone(),
            event_name: "x".into(),
            delay_ms: 1000,
            priority: 0,
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!d.success);
    let x = b
        .discard_event(wire::DiscardRequest {
            client_id: bid.clone(),
            event_idem: ev.event_idem.clone(),
            event_name: "x".into(),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!x.success);
    // Replay is by app: the publisher cannot replay the recipient's event.
    let r = pc
        .replay_event(wire::ReplayRequest {
            client_id: pid.clone(),
            event_idem: ev.event_idem.clone(),
            event_name: "x".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.success);
    let r = b
        .replay_event(wire::ReplayRequest {
            client_id: bid.clone(),
            event_idem: ev.event_idem.clone(),
            event_name: "y".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.success && r.message.contains("named"), "{}", r.message);
    let r = b
        .replay_event(wire::ReplayRequest {
            client_id: bid.clone(),
            event_idem: "unknown".into(),
            event_name: "x".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.success);
    // The owner still can.
    assert!(ack(&mut a, &aid, &ev).await.success);
    t.node.shutdown().await;
}

#[tokio::test]
async fn replay_respects_retention() {
    let t = start_with(2, |c| c.retention_secs = 1).await;
    let (mut pc, pid) = t.session(0).await;
    let (mut sc, sid) = t.session(1).await;
    let id = publish(&mut pc, &pid, "r", &t.key(1), 0).await;
    let mut s = subscribe(&mut sc, &sid, "r").await;
    let ev = next(&mut s).await;
    assert!(ack(&mut sc, &sid, &ev).await.success);
    let req = wire::ReplayRequest {
        client_id: sid.clone(),
        event_idem: id.clone(),
        event_name: String::new(),
    };
    assert!(
        sc.replay_event(req.clone())
            .await
            .unwrap()
            .into_inner()
            .success
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = sc.replay_event(req).await.unwrap().into_inner();
    assert!(!r.success, "replay after the retention window");
    t.node.shutdown().await;
}

/// Several sessions of one app on one name share the queue: each event to one of them.
#[tokio::test]
async fn competing_consumers() {
    let t = start_with(2, |c| c.max_in_flight = 1).await;
    let (mut pc, pid) = t.session(0).await;
    let mut tasks = Vec::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for consumer in 0..2 {
        let (mut c, cid) = t.session(1).await;
        let mut s = subscribe(&mut c, &cid, "work").await;
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(ev)) = s.message().await {
                tokio::time::sleep(Duration::from_millis(5)).await;
                assert!(ack(&mut c, &cid, &ev).await.success);
                let _ = tx.send((consumer, ev.event_idem));
            }
        }));
    }
    let mut ids = HashSet::new();
    for i in 0..30 {
        ids.insert(publish(&mut pc, &pid, "work", &t.key(1), i).await);
    }
    let mut got = HashSet::new();
    let mut per = [0usize; 2];
    while got.len() < 30 {
        let (consumer, id) = tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(got.insert(id), "an event was delivered twice");
        per[consumer] += 1;
    }
    assert_eq!(got, ids);
    assert!(
        per[0] > 0 && per[1] > 0,
        "both consumers got events: {per:?}"
    );
    t.node.shutdown().await;
    for task in tasks {
        let _ = task.await;
    }
}

/// A session that misses its heartbeats ends: its streams end with UNAVAILABLE and its
/// in-flight events go to another session of the app.
#[tokio::test]
async fn session_expiry_returns_in_flight() {
    let t = start_with(2, |c| {
        c.heartbeat_interval_ms = 150;
        c.heartbeat_misses = 3;
    })
    .await;
    let (mut pc, pid) = t.session(0).await;
    let (mut a, aid) = t.session(1).await;
    let mut sa = subscribe(&mut a, &aid, "job").await;
    let id = publish(&mut pc, &pid, "job", &t.key(1), 0).await;
    let ev = next(&mut sa).await;
    assert_eq!(ev.event_idem, id);

    // B keeps its session alive; A goes silent.
    let (mut b, bid) = t.session(1).await;
    let mut sb = subscribe(&mut b, &bid, "job").await;
    let hb = {
        let mut b = b.clone();
        let bid = bid.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if b.heartbeat(wire::HeartbeatRequest {
                    client_id: bid.clone(),
                })
                .await
                .is_err()
                {
                    return;
                }
            }
        })
    };
    let again = next(&mut sb).await;
    assert_eq!(
        again.event_idem, id,
        "the expired session's event is delivered again"
    );
    assert_eq!(again.partition_block, ev.partition_block);
    let end = tokio::time::timeout(Duration::from_secs(5), sa.message())
        .await
        .unwrap();
    assert_eq!(end.unwrap_err().code(), Code::Unavailable);
    let r = ack(&mut a, &aid, &ev).await;
    assert_eq!(r.message, "not authenticated");
    assert!(ack(&mut b, &bid, &again).await.success);
    hb.abort();
    t.node.shutdown().await;
}

/// Events in flight on a stream that the client drops go back to the queue.
#[tokio::test]
async fn dropped_stream_returns_in_flight() {
    let t = start(2).await;
    let (mut pc, pid) = t.session(0).await;
    let (mut sc, sid) = t.session(1).await;
    let id = publish(&mut pc, &pid, "d", &t.key(1), 0).await;
    let mut s = subscribe(&mut sc, &sid, "d").await;
    assert_eq!(next(&mut s).await.event_idem, id);
    drop(s);
    eventually("the event returns to the queue", || {
        t.node.stats().in_flight == 0
    })
    .await;
    let mut s = subscribe(&mut sc, &sid, "d").await;
    let ev = next(&mut s).await;
    assert_eq!(ev.event_idem, id);
    assert!(ack(&mut sc, &sid, &ev).await.success);
    t.node.shutdown().await;
}

/// Per-stream delivery by default; with `multiplex`, everything on the first open stream.
#[tokio::test]
async fn per_stream_and_multiplex_delivery() {
    for multiplex in [false, true] {
        let t = start_with(2, |c| c.multiplex = Some(multiplex)).await;
        let (mut pc, pid) = t.session(0).await;
        let (mut sc, sid) = t.session(1).await;
        let mut first = subscribe(&mut sc, &sid, "one").await;
        let mut second = subscribe(&mut sc, &sid, "two").await;
        let id = publish(&mut pc, &pid, "two", &t.key(1), 0).await;
        let ev = if multiplex {
            let ev = next(&mut first).await;
            nothing_for(&mut second, 200).await;
            ev
        } else {
            let ev = next(&mut second).await;
            nothing_for(&mut first, 200).await;
            ev
        };
        assert_eq!(ev.event_idem, id);
        assert_eq!(ev.event_name, "two");
        assert!(ack(&mut sc, &sid, &ev).await.success);
        if multiplex {
            // When the first stream goes, the next open one takes over.
            drop(first);
            eventually("stream closed", || t.node.stats().subscriptions == 1).await;
            let id = publish(&mut pc, &pid, "two", &t.key(1), 1).await;
            assert_eq!(next(&mut second).await.event_idem, id);
        }
        t.node.shutdown().await;
    }
}

/// A subscriber that never reads: the node hands it at most `max_in_flight` events; the
/// rest stays in the queue (on disk), and everything arrives once it reads.
#[tokio::test]
async fn slow_subscriber_is_bounded() {
    let t = start_with(2, |c| c.max_in_flight = 8).await;
    let (mut pc, pid) = t.session(0).await;
    let (mut sc, sid) = t.session(1).await;
    let mut s = subscribe(&mut sc, &sid, "bulk").await;
    let big = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, vec![7u8; 768]);
    let total = 300;
    for i in 0..total {
        let r = pc
            .publish_event(wire::PublishEventRequest {
                payload: big.clone(),
                ..publish_req(&pid, "bulk", &t.key(1), i)
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.success);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let st = t.node.stats();
    assert!(st.in_flight <= 8, "in flight {}", st.in_flight);
    if !common::on_jetstream() {
        // The JetStream backend does not count ready events (they are in the stream).
        assert_eq!(st.in_flight + st.ready, total);
    }
    let mut blocks = Vec::new();
    for _ in 0..total {
        let ev = next(&mut s).await;
        blocks.push(ev.partition_block);
        assert!(ack(&mut sc, &sid, &ev).await.success);
        assert!(t.node.stats().in_flight <= 8);
    }
    assert_eq!(blocks, (1..=total as i64).collect::<Vec<_>>());
    t.node.shutdown().await;
}

/// Events, blocks and acks survive a restart on the same data directory.
#[tokio::test]
async fn restart_keeps_queues() {
    if common::embedded_only("restart_keeps_queues") {
        return;
    }
    let mut dev = ensync_node::dev::DevSetup::generate(2).unwrap();
    dev.config.apps.push(AppConfig::new(
        "extra",
        "extra-key",
        ensync_node::keys::generate().public_key,
    ));
    let node = ensync_node::Node::start(dev.config.clone()).await.unwrap();
    let mut c = client(node.grpc_addr()).await;
    let pid = connect(&mut c, &dev.apps[0].access_key).await;
    let to = dev.apps[1].public_key.clone();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(publish(&mut c, &pid, "keep", &to, i).await);
    }
    node.shutdown().await;

    let node = ensync_node::Node::start(dev.config.clone()).await.unwrap();
    let mut c = client(node.grpc_addr()).await;
    let sid = connect(&mut c, &dev.apps[1].access_key).await;
    let mut s = subscribe(&mut c, &sid, "keep").await;
    for (i, id) in ids.iter().enumerate().take(2) {
        let ev = next(&mut s).await;
        assert_eq!(&ev.event_idem, id);
        assert_eq!(ev.partition_block, i as i64 + 1);
        assert!(ack(&mut c, &sid, &ev).await.success);
    }
    node.shutdown().await;

    let node = ensync_node::Node::start(dev.config.clone()).await.unwrap();
    let mut c = client(node.grpc_addr()).await;
    let sid = connect(&mut c, &dev.apps[1].access_key).await;
    let pid = connect(&mut c, &dev.apps[0].access_key).await;
    let mut s = subscribe(&mut c, &sid, "keep").await;
    for id in &ids[2..] {
        assert_eq!(&next(&mut s).await.event_idem, id);
    }
    publish(&mut c, &pid, "keep", &to, 9).await;
    assert_eq!(
        next(&mut s).await.partition_block,
        6,
        "blocks continue after a restart"
    );
    node.shutdown().await;
}

/// `group_commit = false`: every write is its own durable commit, and what was published
/// concurrently is delivered after a restart, in block order, exactly as with group commit.
#[tokio::test]
async fn one_commit_per_event_is_durable() {
    if common::embedded_only("one_commit_per_event_is_durable") {
        return;
    }
    let mut dev = ensync_node::dev::DevSetup::generate(2).unwrap();
    dev.config.group_commit = false;
    let node = ensync_node::Node::start(dev.config.clone()).await.unwrap();
    let mut c = client(node.grpc_addr()).await;
    let pid = connect(&mut c, &dev.apps[0].access_key).await;
    let to = dev.apps[1].public_key.clone();
    // Concurrent publishes: with group commit they could share a transaction.
    let publishes = (0..20).map(|i| {
        let (mut c, pid, to) = (c.clone(), pid.clone(), to.clone());
        async move { publish(&mut c, &pid, "solo", &to, i).await }
    });
    let ids: Vec<String> = futures::future::join_all(publishes).await;
    let stats = node.stats();
    assert_eq!(stats.committed_ops, 20);
    assert_eq!(stats.commits, 20, "one transaction per publish");
    assert_eq!(stats.ready, 20);
    node.shutdown().await;

    let node = ensync_node::Node::start(dev.config.clone()).await.unwrap();
    assert_eq!(node.stats().ready, 20, "the queue is reloaded from disk");
    let mut c = client(node.grpc_addr()).await;
    let sid = connect(&mut c, &dev.apps[1].access_key).await;
    let mut s = subscribe(&mut c, &sid, "solo").await;
    let mut got = Vec::new();
    for i in 0..20 {
        let ev = next(&mut s).await;
        assert_eq!(ev.partition_block, i + 1);
        assert!(ack(&mut c, &sid, &ev).await.success);
        got.push(ev.event_idem);
    }
    let mut want = ids.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want, "every published event is delivered once");
    assert_eq!(node.stats().commits, 20, "one transaction per ack");
    node.shutdown().await;
}

/// A node that is shutting down answers `Connect` with UNAVAILABLE (clients retry it),
/// not with `success = false` (which every client reads as a refused access key and
/// stops).
#[tokio::test]
async fn connect_while_shutting_down_is_unavailable_not_a_refused_key() {
    let t = start(1).await;
    let mut c = t.client().await;
    t.node.service().close_now();
    let err = c
        .connect(wire::ConnectRequest {
            access_key: t.dev.apps[0].access_key.clone(),
        })
        .await
        .expect_err("no session while shutting down");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let refused = c
        .connect(wire::ConnectRequest {
            access_key: "wrong".into(),
        })
        .await;
    assert_eq!(
        refused
            .map(|r| r.into_inner().success)
            .map_err(|e| e.code()),
        Err(tonic::Code::Unavailable),
        "while shutting down no key is judged"
    );
}
