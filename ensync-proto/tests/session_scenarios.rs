//! Scenario tests of the session state machine against the scripted node of
//! `session_support` (simulated time, injected faults, real encryption).

mod session_support;

use std::time::{Duration, Instant};

use ensync_proto::envelope;
use ensync_proto::session::{
    CallId, ConnectionId, ConnectionState, DeliveryToken, Generation, GenerationChoice,
    HandlerOutcome, Input, InvalidInput, OpOutcome, Output, PublishOptions, Reply, Request,
    RequestKind, RpcCode, RpcError, Session, SessionConfig, SessionError, SessionEvent,
    SubscribeOptions, backoff_delay,
};
use ensync_proto::validate::ValidationError;
use ensync_proto::wire;
use serde_json::json;
use session_support::*;

const S: Duration = Duration::from_secs(1);

fn subscribe(pair: &mut Pair, name: &str, auto_ack: bool) {
    let r = pair.session.subscribe(
        name,
        SubscribeOptions::default().auto_ack(auto_ack),
        pair.now,
    );
    let op = pair.track_result(r).expect("subscribe accepted");
    pair.run_idle();
    assert_eq!(pair.result(op), Some(&Ok(OpOutcome::Subscribed)));
}

/// The call id of the open subscribe stream of `name` (as the scripted node sees it).
fn stream_of(pair: &Pair, name: &str) -> CallId {
    *pair
        .node
        .streams
        .iter()
        .find(|(_, n)| n.as_str() == name)
        .unwrap_or_else(|| panic!("no open stream for {name}"))
        .0
}

fn node_call_count(pair: &Pair, kind: RequestKind) -> usize {
    pair.node_calls(kind).len()
}

fn client_ids_of(pair: &Pair, kind: RequestKind) -> Vec<String> {
    pair.node_calls(kind)
        .iter()
        .map(|r| match r {
            Request::Subscribe(m) => m.client_id.clone(),
            Request::Publish(m) => m.client_id.clone(),
            Request::Pause(m) => m.client_id.clone(),
            Request::Ack(m) => m.client_id.clone(),
            Request::Heartbeat(m) => m.client_id.clone(),
            _ => String::new(),
        })
        .collect()
}

// ------------------------------------------------------------ connect and auth

#[test]
fn open_connects_then_authenticates() {
    let mut pair = Pair::new(config());
    let op = pair.open();
    // Nothing is sent before the transport is up.
    let first = pair.session.poll_output();
    assert_eq!(
        first,
        Some(Output::Event(SessionEvent::State(
            ConnectionState::Connecting
        )))
    );
    let conn = match pair.session.poll_output() {
        Some(Output::Connect { conn, endpoint: 0 }) => conn,
        other => panic!("expected Connect, got {other:?}"),
    };
    assert_eq!(pair.session.poll_output(), None);
    pair.session
        .handle_input(Input::Connected { conn }, pair.now);
    match pair.session.poll_output() {
        Some(Output::Call(call)) => {
            assert_eq!(call.path(), "/ensync.EnSyncService/Connect");
            assert_eq!(
                call.request,
                Request::Connect(wire::ConnectRequest {
                    access_key: ACCESS_KEY.into()
                })
            );
            pair.session.handle_input(
                Input::Reply {
                    call: call.id,
                    result: Ok(Reply::Connect(wire::ConnectResponse {
                        success: true,
                        client_id: "c-1".into(),
                        client_hash: "hash".into(),
                        ..Default::default()
                    })),
                },
                pair.now,
            );
        }
        other => panic!("expected the Connect call, got {other:?}"),
    }
    let mut saw_state = false;
    while let Some(out) = pair.session.poll_output() {
        match out {
            Output::Event(SessionEvent::State(ConnectionState::Connected {
                client_id,
                client_hash,
            })) => {
                assert_eq!((client_id.as_str(), client_hash.as_str()), ("c-1", "hash"));
                saw_state = true;
            }
            Output::Event(SessionEvent::Completed { op: done, result }) => {
                assert!(saw_state, "state is reported before the open completes");
                assert_eq!(done, op);
                assert_eq!(
                    result,
                    Ok(OpOutcome::Opened {
                        client_id: "c-1".into(),
                        client_hash: "hash".into()
                    })
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(pair.session.client_id(), Some("c-1"));
    assert_eq!(pair.session.client_hash(), Some("hash"));
    assert!(pair.session.is_connected());
}

#[test]
fn refused_access_key_fails_open_with_auth_and_closes() {
    let mut pair = Pair::new(config().access_key("wrong"));
    let op = pair.open();
    pair.run_idle();
    assert_eq!(
        pair.result(op),
        Some(&Err(SessionError::Auth {
            message: "invalid access key".into()
        }))
    );
    assert!(matches!(
        pair.session.state(),
        ConnectionState::Closed {
            error: Some(SessionError::Auth { .. })
        }
    ));
    assert!(
        !pair
            .result(op)
            .unwrap()
            .as_ref()
            .unwrap_err()
            .is_retryable()
    );
}

#[test]
fn first_open_transport_failure_fails_promptly_without_retry() {
    let mut pair = Pair::new(config());
    pair.fail_connects = 5;
    let op = pair.open();
    pair.run_idle();
    let err = pair.result(op).expect("completed").clone().unwrap_err();
    assert!(matches!(err, SessionError::Connection { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(pair.session.is_closed());
    pair.advance(600 * S);
    let connects = pair
        .outputs
        .iter()
        .filter(|(_, o)| matches!(o, Output::Connect { .. }))
        .count();
    assert_eq!(connects, 1, "no retry loop on the first open");
    assert_eq!(
        pair.session
            .subscribe("a", SubscribeOptions::default(), pair.now),
        Err(SessionError::Closed)
    );
}

#[test]
fn first_open_that_never_answers_times_out() {
    let mut pair = Pair::new(config().request_timeout(10 * S));
    pair.connect_hangs = true;
    let op = pair.open();
    pair.advance(9 * S);
    assert!(pair.result(op).is_none());
    pair.advance(2 * S);
    assert!(matches!(
        pair.result(op),
        Some(Err(SessionError::Connection { .. }))
    ));
    assert!(pair.session.is_closed());
}

#[test]
fn open_while_connecting_and_after_connected_both_complete() {
    let mut pair = Pair::new(config());
    let a = pair.open();
    let b = pair.open();
    pair.run_idle();
    let c = pair.open();
    pair.run_idle();
    for op in [a, b, c] {
        assert!(matches!(
            pair.result(op),
            Some(Ok(OpOutcome::Opened { .. }))
        ));
    }
    assert_eq!(node_call_count(&pair, RequestKind::Connect), 1);
}

// --------------------------------------------------------------- heartbeats

#[test]
fn heartbeats_every_interval_while_connected() {
    let mut pair = Pair::connected(config());
    assert_eq!(pair.session.poll_timeout(), Some(pair.now + 30 * S));
    pair.advance(95 * S);
    assert_eq!(node_call_count(&pair, RequestKind::Heartbeat), 3);
    assert!(
        client_ids_of(&pair, RequestKind::Heartbeat)
            .iter()
            .all(|c| c == "client-1")
    );
    assert!(pair.session.is_connected());
}

#[test]
fn no_heartbeats_when_disabled() {
    let mut pair = Pair::connected(config().heartbeat_interval(None));
    assert_eq!(pair.session.poll_timeout(), None);
    pair.advance(300 * S);
    assert_eq!(node_call_count(&pair, RequestKind::Heartbeat), 0);
}

#[test]
fn refused_heartbeat_means_connection_lost_then_reconnect() {
    let mut pair = Pair::connected(config());
    pair.node.refuse_heartbeat = true;
    pair.advance(30 * S);
    assert!(pair.outputs.iter().any(|(_, o)| *o == Output::Disconnect));
    assert_eq!(
        pair.session.state(),
        &ConnectionState::Reconnecting {
            attempt: 1,
            delay: 5 * S
        }
    );
    pair.node.refuse_heartbeat = false;
    pair.advance(5 * S);
    assert_eq!(pair.session.client_id(), Some("client-2"));
    assert!(pair.session.is_connected());
}

#[test]
fn heartbeat_error_and_timeout_mean_connection_lost() {
    // An RpcError reply.
    let mut pair = Pair::connected(config().heartbeat_interval(Some(10 * S)));
    pair.advance(10 * S - Duration::from_millis(1));
    pair.now += Duration::from_millis(1);
    pair.session.handle_timeout(pair.now);
    let call = loop {
        match pair.session.poll_output() {
            Some(Output::Call(c)) if c.request.kind() == RequestKind::Heartbeat => break c,
            Some(_) => {}
            None => panic!("heartbeat not sent"),
        }
    };
    pair.session.handle_input(
        Input::Reply {
            call: call.id,
            result: Err(RpcError::new(RpcCode::Unavailable, "gone")),
        },
        pair.now,
    );
    pair.run_idle();
    assert!(matches!(
        pair.session.state(),
        ConnectionState::Reconnecting { attempt: 1, .. }
    ));

    // No reply at all: lost after request_timeout.
    let mut pair = Pair::connected(config().request_timeout(20 * S));
    pair.node.swallow.insert(RequestKind::Heartbeat);
    pair.advance(49 * S);
    assert!(pair.session.is_connected());
    pair.advance(2 * S);
    assert!(matches!(
        pair.session.state(),
        ConnectionState::Reconnecting { attempt: 1, .. }
    ));
}

// ---------------------------------------------------------------- reconnect

#[test]
fn backoff_delay_follows_the_published_schedule() {
    let config = SessionConfig::default();
    assert_eq!(backoff_delay(&config, 1), Duration::from_millis(5000));
    assert_eq!(backoff_delay(&config, 2), Duration::from_millis(7500));
    assert_eq!(backoff_delay(&config, 3), Duration::from_millis(11250));
    assert_eq!(backoff_delay(&config, 0), Duration::from_millis(5000));
    let custom = SessionConfig::default().reconnect_interval(Duration::from_millis(200));
    assert_eq!(backoff_delay(&custom, 4), Duration::from_micros(675_000));
    // Huge attempt numbers saturate instead of overflowing.
    assert_eq!(
        backoff_delay(&config, u32::MAX),
        Duration::from_secs(24 * 3600)
    );
}

#[test]
fn reconnect_attempts_back_off_then_give_up() {
    let mut pair = Pair::connected(config().max_reconnect_attempts(3));
    pair.fail_connects = 100;
    pair.drop_connection();
    // While reconnecting, a command is queued...
    let r = pair.session.pause("orders", "why", pair.now);
    let pending = pair.track_result(r).unwrap();
    pair.advance(60 * S);
    let attempts: Vec<(u32, Duration)> = pair
        .states()
        .iter()
        .filter_map(|s| match s {
            ConnectionState::Reconnecting { attempt, delay } => Some((*attempt, *delay)),
            _ => None,
        })
        .collect();
    assert_eq!(
        attempts,
        vec![
            (1, Duration::from_millis(5000)),
            (2, Duration::from_millis(7500)),
            (3, Duration::from_millis(11250)),
        ]
    );
    // Connect outputs at 5 s, 12.5 s and 23.75 s after the loss (plus the first open).
    let t0 = pair.start;
    let connect_times: Vec<Duration> = pair
        .outputs
        .iter()
        .filter(|(_, o)| matches!(o, Output::Connect { .. }))
        .map(|(t, _)| *t - t0)
        .collect();
    assert_eq!(
        connect_times,
        vec![
            Duration::ZERO,
            Duration::from_millis(5000),
            Duration::from_millis(12500),
            Duration::from_millis(23750),
        ]
    );
    match pair.session.state() {
        ConnectionState::Closed {
            error: Some(SessionError::Connection { .. }),
        } => {}
        other => panic!("expected closed with a connection error, got {other:?}"),
    }
    // ...and fails with the connection error when the session gives up (or times out
    // first; here request_timeout (30 s) is longer than the 23.75 s of attempts).
    assert!(matches!(
        pair.result(pending),
        Some(Err(SessionError::Connection { .. }))
    ));
}

#[test]
fn successful_reconnect_resets_the_attempt_counter() {
    let mut pair = Pair::connected(config());
    pair.fail_connects = 2;
    pair.drop_connection();
    pair.advance(60 * S);
    assert!(pair.session.is_connected());
    pair.drop_connection();
    assert_eq!(
        pair.session.state(),
        &ConnectionState::Reconnecting {
            attempt: 1,
            delay: 5 * S
        }
    );
}

#[test]
fn reconnect_resubscribes_repauses_then_sends_queue_with_new_client_id() {
    let mut pair = Pair::connected(config());
    subscribe(&mut pair, "a", true);
    subscribe(&mut pair, "b", true);
    let r = pair.session.pause("b", "busy", pair.now);
    let op = pair.track_result(r).unwrap();
    pair.run_idle();
    assert_eq!(pair.result(op), Some(&Ok(OpOutcome::Paused)));
    assert!(pair.session.is_paused("b"));
    pair.drop_connection();
    let me = app_secret().public_key().to_base64();
    let r = pair.session.publish(
        "a",
        &[me.as_str()],
        &json!({"x": 1}),
        None,
        PublishOptions::default(),
        pair.now,
    );
    let publish = pair.track_result(r).unwrap();
    let before = pair.node.log.len();
    pair.advance(5 * S);
    assert!(pair.session.is_connected());
    let after: Vec<(RequestKind, String)> = pair.node.log[before..]
        .iter()
        .map(|(k, _, r)| {
            let name = match r {
                Request::Subscribe(m) => format!("{}:{}", m.client_id, m.event_name),
                Request::Pause(m) => format!("{}:{}", m.client_id, m.event_name),
                Request::Publish(m) => format!("{}:{}", m.client_id, m.event_name),
                _ => String::new(),
            };
            (*k, name)
        })
        .collect();
    assert_eq!(
        after[..5],
        [
            (RequestKind::Connect, String::new()),
            (RequestKind::Subscribe, "client-2:a".into()),
            (RequestKind::Subscribe, "client-2:b".into()),
            (RequestKind::Pause, "client-2:b".into()),
            (RequestKind::Publish, "client-2:a".into()),
        ]
    );
    assert!(matches!(
        pair.result(publish),
        Some(Ok(OpOutcome::Published { .. }))
    ));
    // The paused subscription is paused on the node again: its events wait.
    pair.node.inject("b", &json!({"n": 1}));
    pair.run_idle();
    assert!(pair.deliveries().iter().all(|d| d.event_name != "b"));
    let r = pair.session.resume("b", pair.now);
    let resumed = pair.track_result(r).unwrap();
    pair.run_idle();
    assert_eq!(pair.result(resumed), Some(&Ok(OpOutcome::Resumed)));
    assert!(pair.deliveries().iter().any(|d| d.event_name == "b"));
}

#[test]
fn stream_ending_with_connection_codes_triggers_reconnect() {
    for code in [
        RpcCode::Unavailable,
        RpcCode::Internal,
        RpcCode::Unauthenticated,
    ] {
        let mut pair = Pair::connected(config());
        subscribe(&mut pair, "a", true);
        pair.end_stream("a", Some(RpcError::new(code, "boom")));
        assert!(
            matches!(pair.session.state(), ConnectionState::Reconnecting { .. }),
            "{code:?}"
        );
        pair.advance(5 * S);
        assert!(pair.session.is_connected());
        assert_eq!(node_call_count(&pair, RequestKind::Subscribe), 2);
    }
}

#[test]
fn stream_ending_otherwise_keeps_the_connection_and_the_subscription() {
    let mut pair = Pair::connected(config());
    subscribe(&mut pair, "a", true);
    pair.end_stream("a", Some(RpcError::new(RpcCode::Other(9), "odd")));
    assert!(pair.session.is_connected());
    assert!(pair.session.is_subscribed("a"));
    assert!(pair.events.iter().any(|e| matches!(
        e,
        SessionEvent::StreamEnded { event_name, error: Some(_) } if event_name == "a"
    )));
}

// --------------------------------------------------------- queue and timeouts

#[test]
fn ops_issued_while_disconnected_wait_then_time_out() {
    let mut pair = Pair::connected(config().request_timeout(8 * S));
    pair.fail_connects = 100;
    pair.drop_connection();
    let r = pair.session.ack("a", "evt-1", 1, pair.now);
    let op = pair.track_result(r).unwrap();
    pair.advance(7 * S);
    assert!(pair.result(op).is_none(), "still waiting");
    pair.advance(2 * S);
    assert_eq!(
        pair.result(op),
        Some(&Err(SessionError::Timeout { published: vec![] }))
    );
    assert_eq!(node_call_count(&pair, RequestKind::Ack), 0);
}

#[test]
fn queued_op_is_sent_after_reconnect_within_its_deadline() {
    let mut pair = Pair::connected(config());
    subscribe(&mut pair, "a", false);
    pair.node.inject("a", &json!({}));
    pair.run_idle();
    let d = pair.deliveries()[0].clone();
    pair.drop_connection();
    let r = pair.session.discard("a", &d.idem, "bad", pair.now);
    let op = pair.track_result(r).unwrap();
    pair.advance(5 * S);
    // The node redelivered the event to the new session; the queued discard applies.
    assert_eq!(pair.result(op), Some(&Ok(OpOutcome::Discarded)));
    assert_eq!(
        client_ids_of(&pair, RequestKind::Publish).len(),
        0,
        "no stray publish"
    );
}

#[test]
fn unary_call_without_reply_times_out() {
    let mut pair = Pair::connected(config().request_timeout(10 * S));
    pair.node.swallow.insert(RequestKind::Ack);
    let r = pair.session.ack("a", "evt-9", 3, pair.now);
    let op = pair.track_result(r).unwrap();
    pair.advance(9 * S);
    assert!(pair.result(op).is_none());
    pair.advance(S);
    let err = pair.result(op).unwrap().clone().unwrap_err();
    assert_eq!(err, SessionError::Timeout { published: vec![] });
    assert!(err.is_retryable());
}

#[test]
fn in_flight_publish_and_ack_fail_retryably_on_connection_loss() {
    let mut pair = Pair::connected(config());
    pair.latency = 2 * S;
    let me = app_secret().public_key().to_base64();
    let r = pair.session.publish(
        "a",
        &[me.as_str()],
        &json!({"v": 1}),
        None,
        PublishOptions::default(),
        pair.now,
    );
    let publish = pair.track_result(r).unwrap();
    let r = pair.session.ack("a", "evt-77", 1, pair.now);
    let ack = pair.track_result(r).unwrap();
    pair.run_idle();
    pair.drop_connection();
    for op in [publish, ack] {
        let err = pair.result(op).unwrap().clone().unwrap_err();
        assert!(matches!(err, SessionError::Connection { .. }), "{err:?}");
        assert!(err.is_retryable());
    }
    pair.latency = Duration::ZERO;
    pair.advance(10 * S);
    assert!(pair.session.is_connected());
    assert_eq!(
        node_call_count(&pair, RequestKind::Publish),
        1,
        "never silently re-sent"
    );
    assert_eq!(node_call_count(&pair, RequestKind::Ack), 1);
}

#[test]
fn in_flight_subscribe_pause_resume_unsubscribe_are_resent_after_reconnect() {
    let mut pair = Pair::connected(config());
    subscribe(&mut pair, "u", true);
    pair.latency = 2 * S;
    let r = pair
        .session
        .subscribe("a", SubscribeOptions::default(), pair.now);
    let sub = pair.track_result(r).unwrap();
    let r = pair.session.pause("p", "", pair.now);
    let pause = pair.track_result(r).unwrap();
    let r = pair.session.resume("q", pair.now);
    let resume = pair.track_result(r).unwrap();
    let r = pair.session.unsubscribe("u", pair.now);
    let unsub = pair.track_result(r).unwrap();
    pair.run_idle();
    pair.drop_connection();
    for op in [sub, pause, resume, unsub] {
        assert!(pair.result(op).is_none(), "{op:?} must survive the loss");
    }
    pair.latency = Duration::ZERO;
    pair.advance(5 * S);
    assert_eq!(pair.result(sub), Some(&Ok(OpOutcome::Subscribed)));
    assert_eq!(pair.result(pause), Some(&Ok(OpOutcome::Paused)));
    assert_eq!(pair.result(resume), Some(&Ok(OpOutcome::Resumed)));
    assert_eq!(pair.result(unsub), Some(&Ok(OpOutcome::Unsubscribed)));
    assert!(!pair.session.is_subscribed("u"));
    let subs = pair.node_calls(RequestKind::Subscribe);
    let names: Vec<&str> = subs
        .iter()
        .map(|r| match r {
            Request::Subscribe(m) => m.event_name.as_str(),
            _ => "",
        })
        .collect();
    assert_eq!(names, ["u", "a", "a"], "u is not restored, a is re-sent");
}

// ------------------------------------------------------------------ publish

#[test]
fn publish_sends_one_encrypted_request_per_recipient() {
    let mut pair = Pair::connected(config());
    let me = app_secret().public_key().to_base64();
    let other = other_secret().public_key().to_base64();
    let payload = json!({"order": 42, "name": "x", "ok": true});
    let r = pair.session.publish(
        "orders/created",
        &[me.as_str(), other.as_str()],
        &payload,
        None,
        PublishOptions::default(),
        pair.now,
    );
    let op = pair.track_result(r).unwrap();
    pair.run_idle();
    let reqs: Vec<wire::PublishEventRequest> = pair
        .node_calls(RequestKind::Publish)
        .into_iter()
        .map(|r| match r {
            Request::Publish(m) => m.clone(),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].delivery_to, me);
    assert_eq!(reqs[1].delivery_to, other);
    assert_ne!(reqs[0].payload, reqs[1].payload, "one envelope each");
    let plaintext = serde_json::to_vec(&payload).unwrap();
    for (req, key) in reqs.iter().zip([app_secret(), other_secret()]) {
        assert_eq!(req.client_id, "client-1");
        assert_eq!(req.metadata, "{}");
        let meta: serde_json::Value =
            serde_json::from_str(req.payload_metadata.as_deref().unwrap()).unwrap();
        assert_eq!(meta["byte_size"], json!(plaintext.len()));
        assert_eq!(meta["skeleton"]["order"], json!("integer"));
        assert_eq!(envelope::decrypt(&req.payload, &key).unwrap(), plaintext);
    }
    let ids = match pair.result(op) {
        Some(Ok(OpOutcome::Published { ids })) => ids.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(ids.len(), 2);
    assert_eq!(pair.node.events[0].idem, ids[0], "ids in recipient order");
}

#[test]
fn hybrid_publish_shares_one_envelope() {
    let mut pair = Pair::connected(config());
    let me = app_secret().public_key().to_base64();
    let other = other_secret().public_key().to_base64();
    let r = pair.session.publish(
        "a",
        &[me.as_str(), other.as_str()],
        &json!({"k": "v"}),
        Some(&json!({"trace": "t1"})),
        PublishOptions::default().hybrid(true),
        pair.now,
    );
    let op = pair.track_result(r).unwrap();
    pair.run_idle();
    assert!(matches!(
        pair.result(op),
        Some(Ok(OpOutcome::Published { .. }))
    ));
    let reqs = pair.node_calls(RequestKind::Publish);
    let (a, b) = match (reqs[0], reqs[1]) {
        (Request::Publish(a), Request::Publish(b)) => (a, b),
        _ => unreachable!(),
    };
    assert_eq!(a.payload, b.payload);
    assert_eq!(a.metadata, r#"{"trace":"t1"}"#);
    for key in [app_secret(), other_secret()] {
        assert_eq!(
            envelope::decrypt(&a.payload, &key).unwrap(),
            br#"{"k":"v"}"#
        );
    }
}

#[test]
fn publish_validates_before_sending() {
    let mut pair = Pair::connected(config());
    let me = app_secret().public_key().to_base64();
    let now = pair.now;
    let s = &mut pair.session;
    let none: [&str; 0] = [];
    let obj = json!({});
    let o = PublishOptions::default();
    assert_eq!(
        s.publish("bad name", &[me.as_str()], &obj, None, o, now),
        Err(ValidationError::EventNameChar(' ').into())
    );
    assert_eq!(
        s.publish("a", &none, &obj, None, o, now),
        Err(ValidationError::NoRecipients.into())
    );
    assert_eq!(
        s.publish("a", &[me.as_str()], &json!([1]), None, o, now),
        Err(ValidationError::PayloadNotObject.into())
    );
    assert_eq!(
        s.publish("a", &[me.as_str()], &obj, Some(&json!("m")), o, now),
        Err(ValidationError::MetadataNotObject.into())
    );
    match s.publish("a", &[me.as_str(), "not-a-key"], &obj, None, o, now) {
        Err(SessionError::Validation(InvalidInput::RecipientKey { index: 1, .. })) => {}
        other => panic!("{other:?}"),
    }
    pair.run_idle();
    assert_eq!(node_call_count(&pair, RequestKind::Publish), 0);
}

#[test]
fn partially_refused_publish_reports_the_ids_that_succeeded() {
    let mut pair = Pair::connected(config());
    let me = app_secret().public_key().to_base64();
    let other = other_secret().public_key().to_base64();
    pair.node.reject_recipients.insert(other.clone());
    let r = pair.session.publish(
        "a",
        &[me.as_str(), other.as_str()],
        &json!({}),
        None,
        PublishOptions::default(),
        pair.now,
    );
    let op = pair.track_result(r).unwrap();
    pair.run_idle();
    let err = pair.result(op).unwrap().clone().unwrap_err();
    let first = pair.node.events[0].idem.clone();
    assert_eq!(
        err,
        SessionError::Publish {
            message: format!("recipient {other} refused"),
            published: vec![first.clone()],
        }
    );
    assert_eq!(err.published_ids(), [first]);
    assert!(!err.is_retryable());
}

// --------------------------------------------------------------- generations

#[test]
fn auto_generation_switches_once_on_unimplemented_and_remembers() {
    let mut pair =
        Pair::connected(config().generation(GenerationChoice::Auto(Generation::Message)));
    pair.node.speaks = Some(Generation::Event);
    let me = app_secret().public_key().to_base64();
    let r = pair.session.publish(
        "a",
        &[me.as_str()],
        &json!({}),
        None,
        PublishOptions::default(),
        pair.now,
    );
    let op = pair.track_result(r).unwrap();
    pair.run_idle();
    assert!(matches!(
        pair.result(op),
        Some(Ok(OpOutcome::Published { .. }))
    ));
    assert_eq!(pair.session.generation(), Generation::Event);
    let names: Vec<&str> = pair
        .node
        .log
        .iter()
        .filter(|(k, _, _)| *k == RequestKind::Publish)
        .map(|(k, g, _)| k.rpc_name(*g))
        .collect();
    assert_eq!(names, ["PublishMessage", "PublishEvent"]);
    let r = pair
        .session
        .ack("a", &pair.node.events[0].idem.clone(), 1, pair.now);
    pair.track_result(r).unwrap();
    pair.run_idle();
    let acks: Vec<Generation> = pair
        .node
        .log
        .iter()
        .filter(|(k, _, _)| *k == RequestKind::Ack)
        .map(|(_, g, _)| *g)
        .collect();
    assert_eq!(acks, [Generation::Event], "no second probe");
}

#[test]
fn pinned_generation_fails_with_unimplemented() {
    let mut pair =
        Pair::connected(config().generation(GenerationChoice::Pinned(Generation::Message)));
    pair.node.speaks = Some(Generation::Event);
    let r = pair.session.pause("a", "", pair.now);
    let op = pair.track_result(r).unwrap();
    pair.run_idle();
    assert_eq!(
        pair.result(op),
        Some(&Err(SessionError::Unimplemented {
            rpc: "PauseMessages"
        }))
    );
    assert_eq!(pair.session.generation(), Generation::Message);
}

#[test]
fn a_node_speaking_neither_generation_fails_after_one_switch() {
    let mut pair = Pair::connected(config());
    // Speaks "Event" for the first call only to be told otherwise: simulate a node that
    // answers UNIMPLEMENTED to both names.
    pair.node.speaks = Some(Generation::Event);
    let r = pair.session.resume("a", pair.now);
    let first = pair.track_result(r).unwrap();
    pair.run_idle();
    assert_eq!(pair.result(first), Some(&Ok(OpOutcome::Resumed)));
    pair.node.speaks = Some(Generation::Message);
    let r = pair.session.resume("a", pair.now);
    let second = pair.track_result(r).unwrap();
    pair.run_idle();
    assert_eq!(
        pair.result(second),
        Some(&Err(SessionError::Unimplemented {
            rpc: "ContinueEvents"
        }))
    );
}

// ---------------------------------------------------------------- subscribe

#[test]
fn subscribe_completes_on_stream_open_and_rejects_duplicates() {
    let mut pair = Pair::connected(config());
    subscribe(&mut pair, "orders", true);
    assert_eq!(
        pair.session
            .subscribe("orders", SubscribeOptions::default(), pair.now),
        Err(SessionError::Subscription {
            message: "already subscribed to orders".into()
        })
    );
    assert_eq!(pair.session.subscriptions().collect::<Vec<_>>(), ["orders"]);
}

#[test]
fn refused_subscribe_fails_and_is_forgotten() {
    let mut pair = Pair::connected(config());
    pair.node.reject_subscribe.insert("secret".into());
    let r = pair
        .session
        .subscribe("secret", SubscribeOptions::default(), pair.now);
    let op = pair.track_result(r).unwrap();
    pair.run_idle();
    assert_eq!(
        pair.result(op),
        Some(&Err(SessionError::Subscription {
            message: "not permitted".into()
        }))
    );
    assert!(!pair.session.is_subscribed("secret"));
    pair.drop_connection();
    pair.advance(5 * S);
    assert_eq!(
        node_call_count(&pair, RequestKind::Subscribe),
        1,
        "not restored"
    );
}

#[test]
fn unsubscribe_cancels_the_stream_and_forgets_the_subscription() {
    let mut pair = Pair::connected(config());
    subscribe(&mut pair, "a", true);
    let stream = *pair.node.streams.keys().next().unwrap();
    let r = pair.session.unsubscribe("a", pair.now);
    let op = pair.track_result(r).unwrap();
    pair.run_idle();
    assert_eq!(pair.result(op), Some(&Ok(OpOutcome::Unsubscribed)));
    // The stream is dropped only after the `Unsubscribe` call: dropping it first could end
    // the node's subscription before the call reaches it (the node then refuses it).
    let unsubscribe_call = pair
        .outputs
        .iter()
        .position(
            |(_, o)| matches!(o, Output::Call(c) if matches!(c.request, Request::Unsubscribe(_))),
        )
        .expect("an Unsubscribe call");
    let cancel = pair
        .outputs
        .iter()
        .position(|(_, o)| *o == Output::CancelStream(stream))
        .expect("the stream is cancelled");
    assert!(
        unsubscribe_call < cancel,
        "stream cancelled before the Unsubscribe call"
    );
    // Items for it that still arrive are not handed over (nor acked).
    let payload = envelope::encrypt_single(b"{}", app_secret().public_key(), &mut rand_core::OsRng);
    pair.session.handle_input(
        Input::StreamItem {
            call: stream,
            logged_at: None,
            event: wire::EventStreamResponse {
                event_idem: "late".into(),
                event_name: "a".into(),
                payload,
                partition_block: 1,
                ..Default::default()
            },
        },
        pair.now,
    );
    pair.run_idle();
    assert!(pair.deliveries().is_empty());
    assert_eq!(node_call_count(&pair, RequestKind::Ack), 0);
    assert_eq!(
        pair.session.unsubscribe("a", pair.now),
        Err(SessionError::Subscription {
            message: "not subscribed to a".into()
        })
    );
}

// --------------------------------------------------------------- deliveries

#[test]
fn delivery_is_decrypted_handed_over_and_auto_acked_once() {
    let mut pair = Pair::connected(config());
    subscribe(&mut pair, "orders", true);
    let idem = pair.node.inject("orders", &json!({"id": 7}));
    pair.run_idle();
    let d = pair.deliveries();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].idem, idem);
    assert_eq!(d[0].block, 1);
    assert_eq!(d[0].payload, json!({"id": 7}));
    assert_eq!(d[0].metadata, json!({"k": 1}));
    assert_eq!(d[0].sender, other_secret().public_key().to_base64());
    assert_eq!(d[0].timestamp, None);
    assert!(d[0].auto_ack);
    let acks = pair.node_calls(RequestKind::Ack);
    assert_eq!(acks.len(), 1);
    assert_eq!(
        acks[0],
        &Request::Ack(wire::AcknowledgeRequest {
            client_id: "client-1".into(),
            event_idem: idem.clone(),
            event_name: "orders".into(),
            partition_block: 1,
        })
    );
    assert_eq!(pair.node.event(&idem).unwrap().state, EvState::Acked);
    // Internal acks are not reported as completions.
    assert!(pair.events.iter().all(|e| !matches!(
        e,
        SessionEvent::Completed {
            result: Ok(OpOutcome::Acked),
            ..
        }
    )));
}

#[test]
fn events_without_idem_or_block_are_not_auto_acked() {
    let mut pair = Pair::connected(config());
    subscribe(&mut pair, "a", true);
    let payload = envelope::encrypt_single(b"{}", app_secret().public_key(), &mut rand_core::OsRng);
    let stream = stream_of(&pair, "a");
    for (idem, block) in [("", 5), ("evt-x", 0)] {
        pair.session.handle_input(
            Input::StreamItem {
                call: stream,
                logged_at: None,
                event: wire::EventStreamResponse {
                    event_idem: idem.into(),
                    event_name: "a".into(),
                    payload: payload.clone(),
                    partition_block: block,
                    ..Default::default()
                },
            },
            pair.now,
        );
    }
    pair.run_idle();
    assert_eq!(pair.deliveries().len(), 2);
    assert_eq!(node_call_count(&pair, RequestKind::Ack), 0);
}

#[test]
fn undecryptable_or_non_json_payload_is_reported_not_handed_over() {
    let mut pair = Pair::connected(config());
    subscribe(&mut pair, "a", true);
    // Encrypted for another app.
    let wrong = envelope::encrypt_single(b"{}", other_secret().public_key(), &mut rand_core::OsRng);
    let not_json = envelope::encrypt_single(
        b"not json",
        app_secret().public_key(),
        &mut rand_core::OsRng,
    );
    let e1 = pair.node.store("a", wrong, String::new(), String::new());
    let e2 = pair.node.store("a", not_json, String::new(), String::new());
    pair.run_idle();
    assert!(pair.deliveries().is_empty());
    let failed: Vec<&str> = pair
        .events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::DeliveryFailed {
                idem,
                error: SessionError::Decryption { .. },
                ..
            } => Some(idem.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(failed, [e1.as_str(), e2.as_str()]);
    assert_eq!(node_call_count(&pair, RequestKind::Ack), 0);
}

#[test]
fn metadata_is_parsed_leniently_and_subscription_key_wins() {
    let mut config = config();
    config = config.secret_key(other_secret()); // default key: the wrong one
    let mut pair = Pair::connected(config);
    let r = pair.session.subscribe(
        "a",
        SubscribeOptions::default().secret_key(app_secret()),
        pair.now,
    );
    pair.track_result(r).unwrap();
    pair.run_idle();
    let payload = envelope::encrypt_single(
        b"{\"p\":1}",
        app_secret().public_key(),
        &mut rand_core::OsRng,
    );
    pair.node
        .store("a", payload.clone(), "not json".into(), "s".into());
    pair.node.store("a", payload, String::new(), "s".into());
    pair.run_idle();
    let d = pair.deliveries();
    assert_eq!(d.len(), 2);
    for d in d {
        assert_eq!(d.metadata, json!({}));
        assert_eq!(d.payload, json!({"p": 1}));
    }
}

#[test]
fn redelivery_while_handler_runs_is_dropped_and_acked_once_after() {
    let mut pair = Pair::connected(config());
    pair.handler_mode = HandlerMode::Manual;
    subscribe(&mut pair, "a", true);
    let idem = pair.node.inject("a", &json!({"n": 1}));
    pair.run_idle();
    assert_eq!(pair.running.len(), 1);
    pair.drop_connection();
    pair.advance(5 * S);
    assert!(pair.session.is_connected());
    // Redelivered to the new session, not handed over again.
    assert_eq!(
        pair.node.event(&idem).unwrap().state,
        EvState::InFlight("client-2".into())
    );
    assert_eq!(pair.deliveries().len(), 1);
    let token = *pair.running.keys().next().unwrap();
    pair.finish(token, HandlerOutcome::Ok);
    assert_eq!(pair.node.event(&idem).unwrap().state, EvState::Acked);
    assert_eq!(
        pair.node
            .acks
            .get(&("client-2".into(), "a".into(), idem.clone())),
        Some(&1)
    );
    assert_eq!(node_call_count(&pair, RequestKind::Ack), 1);
}

#[test]
fn event_handled_ok_while_disconnected_is_acked_silently_when_redelivered() {
    let mut pair = Pair::connected(config());
    pair.handler_mode = HandlerMode::Manual;
    subscribe(&mut pair, "a", true);
    let idem = pair.node.inject("a", &json!({}));
    pair.run_idle();
    pair.fail_connects = 1;
    pair.drop_connection();
    let token = *pair.running.keys().next().unwrap();
    pair.finish(token, HandlerOutcome::Ok);
    assert_eq!(
        node_call_count(&pair, RequestKind::Ack),
        0,
        "not sent while down"
    );
    pair.advance(20 * S);
    assert!(pair.session.is_connected());
    assert_eq!(pair.deliveries().len(), 1, "not handed over again");
    assert_eq!(pair.node.event(&idem).unwrap().state, EvState::Acked);
    pair.check_acks_once();
}

/// A manual ack that fails (here: it times out while the connection is down) leaves the
/// event unhandled: the node's redelivery on the next connection is handed over again,
/// and acking that one settles it. (Dropping it would leave it in flight on the node
/// for as long as the session lives, while the application, told that its ack failed,
/// never sees the event again. Found by the multi-node crash test, whose subscribers'
/// acks went to the surviving node, which refused them: it did not hold those events
/// until their `ack_wait` ran out.)
#[test]
fn a_manual_ack_that_failed_lets_the_redelivery_through() {
    let mut pair = Pair::connected(config().request_timeout(2 * S));
    pair.handler_mode = HandlerMode::Manual;
    subscribe(&mut pair, "a", false);
    let idem = pair.node.inject("a", &json!({"n": 1}));
    pair.run_idle();
    let token = *pair.running.keys().next().unwrap();
    pair.fail_connects = 1;
    pair.drop_connection();
    let ack = pair.ack("a", &idem, 1).unwrap();
    pair.finish(token, HandlerOutcome::Ok);
    pair.advance(3 * S);
    assert!(!pair.session.is_connected());
    assert_eq!(
        pair.result(ack),
        Some(&Err(SessionError::Timeout { published: vec![] }))
    );
    pair.advance(30 * S);
    assert!(pair.session.is_connected());
    assert_eq!(pair.deliveries().len(), 2, "handed over again");
    let token = *pair.running.keys().next().unwrap();
    let ack = pair.ack("a", &idem, 1).unwrap();
    pair.finish(token, HandlerOutcome::Ok);
    pair.run_idle();
    assert_eq!(pair.result(ack), Some(&Ok(OpOutcome::Acked)));
    assert_eq!(pair.node.event(&idem).unwrap().state, EvState::Acked);
}

/// A redelivery that arrives while the application's ack of the event awaits its answer
/// waits for it: dropped when the ack succeeds, handed over when it fails (here: the
/// node never answers, so the ack times out).
#[test]
fn a_redelivery_during_a_pending_manual_ack_waits_for_its_answer() {
    for answered in [true, false] {
        let mut pair = Pair::connected(config().request_timeout(10 * S));
        pair.handler_mode = HandlerMode::Manual;
        subscribe(&mut pair, "a", false);
        let idem = pair.node.inject("a", &json!({"n": 1}));
        pair.run_idle();
        let token = *pair.running.keys().next().unwrap();
        if answered {
            pair.latency = S;
        } else {
            pair.node.swallow.insert(RequestKind::Ack);
        }
        let ack = pair.ack("a", &idem, 1).unwrap();
        pair.finish(token, HandlerOutcome::Ok);
        assert!(pair.result(ack).is_none());
        // The node delivers it again meanwhile (as after a give-back racing the ack).
        let item = wire::EventStreamResponse {
            event_idem: idem.clone(),
            event_name: "a".into(),
            payload: envelope::encrypt_single(
                b"{\"n\":1}",
                app_secret().public_key(),
                &mut rand_core::OsRng,
            ),
            partition_block: 1,
            ..Default::default()
        };
        let call = stream_of(&pair, "a");
        pair.session.handle_input(
            Input::StreamItem {
                call,
                logged_at: None,
                event: item,
            },
            pair.now,
        );
        pair.run_idle();
        assert_eq!(
            pair.deliveries().len(),
            1,
            "held back while the ack is open"
        );
        pair.advance(11 * S);
        if answered {
            assert_eq!(pair.result(ack), Some(&Ok(OpOutcome::Acked)));
            assert_eq!(pair.deliveries().len(), 1, "the ack covered the redelivery");
        } else {
            assert_eq!(
                pair.result(ack),
                Some(&Err(SessionError::Timeout { published: vec![] }))
            );
            assert_eq!(pair.deliveries().len(), 2, "handed over after the failure");
            pair.node.swallow.clear();
            let token = *pair.running.keys().next().unwrap();
            let ack = pair.ack("a", &idem, 1).unwrap();
            pair.finish(token, HandlerOutcome::Ok);
            pair.run_idle();
            assert_eq!(pair.result(ack), Some(&Ok(OpOutcome::Acked)));
        }
        assert_eq!(pair.node.event(&idem).unwrap().state, EvState::Acked);
    }
}

#[test]
fn failed_handler_is_not_acked_and_the_event_comes_back_soon() {
    let mut pair = Pair::connected(config());
    pair.handler_mode = HandlerMode::Manual;
    subscribe(&mut pair, "a", true);
    let idem = pair.node.inject("a", &json!({}));
    pair.run_idle();
    let token = *pair.running.keys().next().unwrap();
    pair.finish(token, HandlerOutcome::Failed);
    assert_eq!(node_call_count(&pair, RequestKind::Ack), 0);
    match pair.node_calls(RequestKind::Defer).as_slice() {
        [Request::Defer(d)] => {
            assert_eq!(d.delay_ms, 1000);
            assert_eq!(d.reason, "handler failed");
            assert_eq!(d.event_idem, idem);
        }
        other => panic!("{other:?}"),
    }
    pair.advance(S);
    assert_eq!(
        pair.deliveries().len(),
        2,
        "handed over again after the failure"
    );
    let token = *pair.running.keys().next().unwrap();
    pair.finish(token, HandlerOutcome::Ok);
    assert_eq!(pair.node.event(&idem).unwrap().state, EvState::Acked);
}

#[test]
fn manual_ack_subscription_acks_only_on_request() {
    let mut pair = Pair::connected(config());
    pair.handler_mode = HandlerMode::Manual;
    subscribe(&mut pair, "a", false);
    let idem = pair.node.inject("a", &json!({}));
    pair.run_idle();
    let token = *pair.running.keys().next().unwrap();
    pair.finish(token, HandlerOutcome::Failed);
    assert!(pair.node_calls(RequestKind::Defer).is_empty());
    pair.finish(token, HandlerOutcome::Ok); // unknown token by now: ignored
    assert_eq!(node_call_count(&pair, RequestKind::Ack), 0);
    let r = pair.session.ack("a", &idem, 1, pair.now);
    let op = pair.track_result(r).unwrap();
    pair.run_idle();
    assert_eq!(pair.result(op), Some(&Ok(OpOutcome::Acked)));
    assert_eq!(pair.node.event(&idem).unwrap().state, EvState::Acked);
}

#[test]
fn multiplexing_node_delivers_every_name_on_the_first_stream() {
    let mut pair = Pair::connected(config());
    pair.node.multiplex = true;
    subscribe(&mut pair, "a", true);
    subscribe(&mut pair, "b", true);
    assert_eq!(pair.node.streams.len(), 1);
    pair.node.inject("b", &json!({"to": "b"}));
    pair.node.inject("a", &json!({"to": "a"}));
    pair.run_idle();
    let names: Vec<&str> = pair
        .deliveries()
        .iter()
        .map(|d| d.event_name.as_str())
        .collect();
    assert_eq!(names, ["b", "a"]);
    assert_eq!(node_call_count(&pair, RequestKind::Ack), 2);
}

#[test]
fn dedup_memory_is_bounded() {
    let mut pair = Pair::connected(config().dedup_capacity(2));
    pair.handler_mode = HandlerMode::Manual;
    subscribe(&mut pair, "a", false);
    let payload = envelope::encrypt_single(b"{}", app_secret().public_key(), &mut rand_core::OsRng);
    let stream = stream_of(&pair, "a");
    let item = |idem: &str| Input::StreamItem {
        call: stream,
        logged_at: None,
        event: wire::EventStreamResponse {
            event_idem: idem.into(),
            event_name: "a".into(),
            payload: payload.clone(),
            partition_block: 1,
            ..Default::default()
        },
    };
    for idem in ["e1", "e2", "e3", "e1", "e3"] {
        pair.session.handle_input(item(idem), pair.now);
    }
    let mut handed = Vec::new();
    while let Some(o) = pair.session.poll_output() {
        if let Output::Event(SessionEvent::Delivery(d)) = o {
            handed.push(d.idem);
        }
    }
    // e1 was forgotten (oldest) when e3 arrived, so its duplicate is handed over again;
    // e3 is still remembered.
    assert_eq!(handed, ["e1", "e2", "e3", "e1"]);
}

// ---------------------------------------------------------- replay answer forms

/// Our session reads a replay answer in every form an EnSync node may send.
#[test]
fn replay_reads_every_answer_form() {
    for form in [
        ReplayAnswer::Envelope,
        ReplayAnswer::ProtoNames,
        ReplayAnswer::LowerCamel,
    ] {
        let mut pair = Pair::connected(config());
        pair.node.replay_answer = form;
        pair.handler_mode = HandlerMode::Manual;
        subscribe(&mut pair, "a", false);
        let e1 = pair
            .node
            .inject("a", &json!({"n": 1, "form": format!("{form:?}")}));
        pair.run_idle();
        let r = pair.session.replay("a", &e1, pair.now);
        let replay = pair.track_result(r).unwrap();
        pair.run_idle();
        assert_eq!(
            pair.result(replay),
            Some(&Ok(OpOutcome::Replayed {
                payload: json!({"n": 1, "form": format!("{form:?}")})
            })),
            "{form:?}"
        );
    }
}

// ---------------------------------------------------------- app ack commands

#[test]
fn defer_discard_replay_pause_resume_commands() {
    let mut pair = Pair::connected(config());
    pair.handler_mode = HandlerMode::Manual;
    subscribe(&mut pair, "a", false);
    let e1 = pair.node.inject("a", &json!({"n": 1}));
    let e2 = pair.node.inject("a", &json!({"n": 2}));
    pair.run_idle();
    assert_eq!(
        pair.defer("a", &e1, Duration::from_millis(500), ""),
        Err(ValidationError::DeferDelay(500).into())
    );
    assert_eq!(
        pair.session.ack("a", "", 1, pair.now),
        Err(SessionError::Validation(InvalidInput::EmptyIdem))
    );
    let defer = pair.defer("a", &e1, 5 * S, "later").unwrap();
    let r = pair.session.discard("a", &e2, "spam", pair.now);
    let discard = pair.track_result(r).unwrap();
    let r = pair.session.replay("a", &e2, pair.now);
    let replay = pair.track_result(r).unwrap();
    let r = pair.session.replay("a", "missing", pair.now);
    let replay_missing = pair.track_result(r).unwrap();
    pair.run_idle();
    assert_eq!(
        pair.result(defer),
        Some(&Ok(OpOutcome::Deferred {
            delivery_time_ms: 1_700_000_005_000
        }))
    );
    assert_eq!(pair.result(discard), Some(&Ok(OpOutcome::Discarded)));
    assert_eq!(
        pair.result(replay),
        Some(&Ok(OpOutcome::Replayed {
            payload: json!({"n": 2})
        }))
    );
    assert_eq!(
        pair.result(replay_missing),
        Some(&Err(SessionError::Replay {
            message: "event not found".into()
        }))
    );
    assert_eq!(pair.node.event(&e2).unwrap().state, EvState::Discarded);
    // A second discard is refused by the node: the node's text comes through.
    let r = pair.session.discard("a", &e2, "again", pair.now);
    let again = pair.track_result(r).unwrap();
    let r = pair.session.pause("a", "hold", pair.now);
    let pause = pair.track_result(r).unwrap();
    pair.run_idle();
    assert_eq!(
        pair.result(again),
        Some(&Err(SessionError::Discard {
            message: "not in flight".into()
        }))
    );
    assert_eq!(pair.result(pause), Some(&Ok(OpOutcome::Paused)));
    // The deferred event is due after 5 s, but delivery is paused.
    let before = pair.deliveries().len();
    pair.advance(10 * S);
    assert_eq!(pair.deliveries().len(), before);
    let r = pair.session.resume("a", pair.now);
    let resume = pair.track_result(r).unwrap();
    pair.run_idle();
    assert_eq!(pair.result(resume), Some(&Ok(OpOutcome::Resumed)));
    assert_eq!(
        pair.deliveries().len(),
        before + 1,
        "the deferred event is back"
    );
}

// -------------------------------------------------------------------- close

#[test]
fn close_fails_pending_ops_cancels_streams_and_refuses_commands() {
    let mut pair = Pair::connected(config());
    subscribe(&mut pair, "a", true);
    let stream = *pair.node.streams.keys().next().unwrap();
    pair.node.swallow.insert(RequestKind::Ack);
    let r = pair.session.ack("a", "e", 1, pair.now);
    let ack = pair.track_result(r).unwrap();
    pair.run_idle();
    let before = pair.outputs.len();
    let close = pair.session.close(pair.now);
    pair.track(close);
    pair.run_idle();
    let tail: Vec<&Output> = pair.outputs[before..].iter().map(|(_, o)| o).collect();
    assert_eq!(
        tail,
        [
            &Output::Event(SessionEvent::Completed {
                op: ack,
                result: Err(SessionError::Closed)
            }),
            &Output::CancelStream(stream),
            &Output::Disconnect,
            &Output::Event(SessionEvent::State(ConnectionState::Closed { error: None })),
            &Output::Event(SessionEvent::Completed {
                op: close,
                result: Ok(OpOutcome::Closed)
            }),
        ]
    );
    assert_eq!(
        pair.session.pause("a", "", pair.now),
        Err(SessionError::Closed)
    );
    let again = pair.session.close(pair.now);
    pair.track(again);
    pair.run_idle();
    assert_eq!(pair.result(again), Some(&Err(SessionError::Closed)));
    assert_eq!(pair.session.poll_timeout(), None);
    // Inputs after close are ignored.
    let conn = ConnectionId::from_raw(1);
    pair.session
        .handle_input(Input::Connected { conn }, pair.now);
    pair.session.handle_input(
        Input::Disconnected {
            conn,
            reason: "x".into(),
        },
        pair.now,
    );
    assert_eq!(pair.session.poll_output(), None);
}

/// A connected session with an auto-ack subscription `a` whose handler is running one
/// event (handlers finish by hand): the pair, the event's id and its delivery token.
fn handling_one_event() -> (Pair, String, DeliveryToken) {
    let mut pair = Pair::connected(config());
    pair.handler_mode = HandlerMode::Manual;
    subscribe(&mut pair, "a", true);
    let idem = pair.node.inject("a", &json!({"n": 1}));
    pair.run_idle();
    let token = *pair.running.keys().next().unwrap();
    (pair, idem, token)
}

#[test]
fn close_lets_an_automatic_ack_in_flight_finish() {
    let (mut pair, idem, token) = handling_one_event();
    pair.latency = Duration::from_millis(50);
    pair.finish(token, HandlerOutcome::Ok);
    // The ack is on its way; the app closes right after its handler returned.
    let close = pair.session.close(pair.now);
    pair.track(close);
    pair.run_idle();
    assert!(pair.session.is_closing());
    assert_eq!(pair.result(close), None, "waits for the ack");
    assert_eq!(
        pair.session.publish(
            "a",
            &["k"],
            &json!({}),
            None,
            PublishOptions::default(),
            pair.now
        ),
        Err(SessionError::Closed),
        "no new work while closing"
    );
    pair.advance(Duration::from_millis(200));
    assert_eq!(pair.result(close), Some(&Ok(OpOutcome::Closed)));
    assert!(pair.session.is_closed());
    assert_eq!(pair.node.event(&idem).unwrap().state, EvState::Acked);
    assert!(matches!(
        pair.outputs.last().map(|(_, o)| o),
        Some(Output::Event(SessionEvent::Completed { op, .. })) if *op == close
    ));
    assert!(pair.outputs.iter().any(|(_, o)| *o == Output::Disconnect));
}

#[test]
fn close_waits_for_a_running_auto_ack_handler_then_acks_its_event() {
    let (mut pair, idem, token) = handling_one_event();
    let close = pair.session.close(pair.now);
    pair.track(close);
    pair.run_idle();
    assert_eq!(pair.result(close), None, "the handler is still running");
    pair.advance(Duration::from_millis(500));
    pair.finish(token, HandlerOutcome::Ok);
    pair.run_idle();
    assert_eq!(pair.result(close), Some(&Ok(OpOutcome::Closed)));
    assert_eq!(pair.node.event(&idem).unwrap().state, EvState::Acked);
}

#[test]
fn close_does_not_wait_for_events_of_manual_ack_subscriptions() {
    let mut pair = Pair::connected(config());
    pair.handler_mode = HandlerMode::Manual;
    subscribe(&mut pair, "a", false);
    pair.node.inject("a", &json!({"n": 1}));
    pair.run_idle();
    assert_eq!(pair.running.len(), 1);
    let close = pair.session.close(pair.now);
    pair.track(close);
    pair.run_idle();
    assert_eq!(pair.result(close), Some(&Ok(OpOutcome::Closed)));
}

#[test]
fn close_gives_up_on_an_unanswered_ack_after_the_grace_period() {
    let (mut pair, _, token) = handling_one_event();
    pair.node.swallow.insert(RequestKind::Ack);
    pair.finish(token, HandlerOutcome::Ok);
    let start = pair.now;
    let close = pair.session.close(pair.now);
    pair.track(close);
    pair.run_idle();
    assert_eq!(pair.result(close), None);
    // Events arriving meanwhile are not handed to the app.
    pair.node.inject("a", &json!({"n": 2}));
    pair.run_idle();
    assert_eq!(pair.deliveries().len(), 1);
    let grace = ensync_proto::session::CLOSE_GRACE; // below the 30 s request timeout
    assert_eq!(pair.session.poll_timeout(), Some(start + grace));
    pair.advance(grace);
    assert_eq!(pair.result(close), Some(&Ok(OpOutcome::Closed)));
    assert!(pair.session.is_closed());
}

#[test]
fn connection_lost_while_closing_ends_the_close_without_reconnecting() {
    let (mut pair, _, token) = handling_one_event();
    pair.node.swallow.insert(RequestKind::Ack);
    pair.finish(token, HandlerOutcome::Ok);
    let close = pair.session.close(pair.now);
    pair.track(close);
    pair.run_idle();
    pair.drop_connection();
    pair.run_idle();
    assert_eq!(pair.result(close), Some(&Ok(OpOutcome::Closed)));
    assert!(pair.session.is_closed());
    assert!(
        !pair
            .states()
            .iter()
            .any(|s| matches!(s, ConnectionState::Reconnecting { .. })),
        "{:?}",
        pair.states()
    );
}

// --------------------------------------------------------------- robustness

#[test]
fn odd_inputs_are_ignored_or_fail_only_their_op() {
    let mut pair = Pair::connected(config());
    pair.node.swallow.insert(RequestKind::Pause);
    let r = pair.session.pause("a", "", pair.now);
    let op = pair.track_result(r).unwrap();
    pair.run_idle();
    let call = pair
        .outputs
        .iter()
        .rev()
        .find_map(|(_, o)| match o {
            Output::Call(c) if c.request.kind() == RequestKind::Pause => Some(c.id),
            _ => None,
        })
        .unwrap();
    // Unknown call ids, stream inputs for unary calls: ignored.
    let unknown = ensync_proto::session::CallId::from_raw(987_654);
    pair.session.handle_input(
        Input::Reply {
            call: unknown,
            result: Ok(Reply::Heartbeat(Default::default())),
        },
        pair.now,
    );
    pair.session
        .handle_input(Input::StreamOpened { call }, pair.now);
    pair.session
        .handle_input(Input::StreamEnded { call, error: None }, pair.now);
    let conn = pair.transport().expect("connected");
    pair.session
        .handle_input(Input::Connected { conn }, pair.now);
    pair.run_idle();
    assert!(pair.result(op).is_none());
    assert!(pair.session.is_connected());
    // A reply of the wrong type: a protocol error on that op only.
    pair.session.handle_input(
        Input::Reply {
            call,
            result: Ok(Reply::Ack(Default::default())),
        },
        pair.now,
    );
    // A duplicate reply: ignored.
    pair.session.handle_input(
        Input::Reply {
            call,
            result: Ok(Reply::Pause(wire::PauseResponse {
                success: true,
                message: String::new(),
            })),
        },
        pair.now,
    );
    pair.run_idle();
    assert!(matches!(
        pair.result(op),
        Some(Err(SessionError::Protocol { .. }))
    ));
    assert!(pair.session.is_connected());
}

#[test]
fn max_in_flight_bounds_pending_ops() {
    let mut pair = Pair::connected(config().max_in_flight(2));
    pair.node.swallow.insert(RequestKind::Ack);
    for i in 0..2 {
        let r = pair.session.ack("a", &format!("e{i}"), 1, pair.now);
        pair.track_result(r).unwrap();
    }
    assert_eq!(
        pair.session.ack("a", "e3", 1, pair.now),
        Err(SessionError::Overloaded { limit: 2 })
    );
    assert_eq!(pair.session.in_flight(), 2);
    pair.advance(30 * S);
    assert_eq!(pair.session.in_flight(), 0);
    let r = pair.session.ack("a", "e3", 1, pair.now);
    assert!(r.is_ok());
}

#[test]
fn debug_output_hides_secrets() {
    let config = config().access_key("super-secret-access");
    let text = format!("{config:?}");
    assert!(!text.contains("super-secret-access"), "{text}");
    assert!(!text.contains(&app_secret().to_base64()), "{text}");
    let session = Session::new(config, std::time::Instant::now());
    let text = format!("{session:?}");
    assert!(!text.contains("super-secret-access"), "{text}");
}

#[test]
fn call_paths_and_reply_decoding() {
    use prost::Message;
    let expected = [
        (RequestKind::Publish, "PublishEvent", "PublishMessage"),
        (RequestKind::Ack, "AcknowledgeEvent", "AcknowledgeMessage"),
        (RequestKind::Pause, "PauseEvents", "PauseMessages"),
        (RequestKind::Continue, "ContinueEvents", "ContinueMessages"),
        (RequestKind::Subscribe, "Subscribe", "Subscribe"),
    ];
    for (kind, g1, g2) in expected {
        assert_eq!(kind.rpc_name(Generation::Event), g1);
        assert_eq!(kind.rpc_name(Generation::Message), g2);
        assert_eq!(
            kind.path(Generation::Message),
            format!("/ensync.EnSyncService/{g2}")
        );
    }
    let bytes = wire::DeferResponse {
        success: true,
        message: "m".into(),
        delivery_time: 5,
    }
    .encode_to_vec();
    assert_eq!(
        Reply::decode(RequestKind::Defer, &bytes),
        Ok(Reply::Defer(wire::DeferResponse {
            success: true,
            message: "m".into(),
            delivery_time: 5
        }))
    );
    assert!(Reply::decode(RequestKind::Subscribe, &bytes).is_err());
    assert!(Reply::decode(RequestKind::Connect, &[0xff, 0xff]).is_err());
}

// ------------------------------------------------------- contract with the adapter

/// A late `Connected` for an attempt the session gave up (it timed out) is ignored,
/// even while a newer attempt is opening: no `Connect` call goes out on the abandoned
/// transport, and the newer attempt connects normally.
#[test]
fn a_late_connected_of_an_abandoned_attempt_is_ignored() {
    let mut pair = Pair::connected(config().request_timeout(Duration::from_secs(2)));
    pair.connect_hangs = true;
    pair.drop_connection();
    let attempts = |pair: &Pair| -> Vec<ConnectionId> {
        pair.outputs
            .iter()
            .filter_map(|(_, o)| match o {
                Output::Connect { conn, .. } => Some(*conn),
                _ => None,
            })
            .collect()
    };
    // The first reconnect attempt hangs past its deadline; wait for the next one.
    let limit = pair.now + 120 * S;
    while attempts(&pair).len() < 3 {
        assert!(pair.step(limit), "a second reconnect attempt by {limit:?}");
    }
    let seen = attempts(&pair);
    let (abandoned, opening) = (seen[1], seen[2]);
    assert_eq!(
        pair.transport(),
        Some(opening),
        "the newer attempt is opening"
    );
    pair.session
        .handle_input(Input::Connected { conn: abandoned }, pair.now);
    assert_eq!(
        pair.session.poll_output(),
        None,
        "nothing is sent on an abandoned transport"
    );
    pair.session
        .handle_input(Input::Connected { conn: opening }, pair.now);
    pair.connect_hangs = false;
    pair.run_idle();
    assert!(pair.session.is_connected(), "the newer attempt connects");
}

/// The loss of a connection already replaced does not tear down the current one.
#[test]
fn a_stale_disconnected_does_not_drop_the_current_connection() {
    let mut pair = Pair::connected(config());
    subscribe(&mut pair, "a", true);
    let old = pair.transport().expect("connected");
    pair.drop_connection();
    pair.advance(10 * S);
    assert!(pair.session.is_connected(), "reconnected");
    let current = pair.transport().expect("connected");
    assert_ne!(old, current);
    let connects = |pair: &Pair| {
        pair.outputs
            .iter()
            .filter(|(_, o)| matches!(o, Output::Connect { .. }))
            .count()
    };
    let before = connects(&pair);
    pair.session.handle_input(
        Input::Disconnected {
            conn: old,
            reason: "late report of the old socket".into(),
        },
        pair.now,
    );
    pair.run_idle();
    assert!(pair.session.is_connected());
    assert_eq!(connects(&pair), before, "no reconnect for a stale loss");
    // The live connection still delivers.
    let idem = pair
        .node
        .inject("a", &serde_json::json!({"after": "stale"}));
    pair.run_idle();
    assert!(
        pair.deliveries().iter().any(|d| d.idem == idem),
        "the event published after the stale loss is delivered"
    );
}

/// An item on a call that is not an open subscribe stream (unknown, or a unary call)
/// is ignored; one on the open stream is delivered, with its log time.
#[test]
fn stream_items_need_an_open_stream_and_carry_their_log_time() {
    let mut pair = Pair::connected(config());
    pair.handler_mode = HandlerMode::Manual;
    subscribe(&mut pair, "a", false);
    let payload = envelope::encrypt_single(b"{}", app_secret().public_key(), &mut rand_core::OsRng);
    let item = |call: CallId, idem: &str| Input::StreamItem {
        call,
        logged_at: Some(1_700_000_000_123),
        event: wire::EventStreamResponse {
            event_idem: idem.into(),
            event_name: "a".into(),
            payload: payload.clone(),
            partition_block: 1,
            ..Default::default()
        },
    };
    let deliveries = |pair: &Pair| {
        pair.events
            .iter()
            .filter_map(|e| match e {
                SessionEvent::Delivery(d) => Some((d.idem.clone(), d.timestamp)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    pair.session
        .handle_input(item(CallId::from_raw(987_654), "nowhere"), pair.now);
    pair.run_idle();
    assert!(deliveries(&pair).is_empty(), "{:?}", deliveries(&pair));
    let stream = stream_of(&pair, "a");
    pair.session.handle_input(item(stream, "here"), pair.now);
    pair.run_idle();
    assert_eq!(
        deliveries(&pair),
        vec![("here".to_owned(), Some(1_700_000_000_123))]
    );
}

/// Time only moves forward: an instant earlier than one already seen is taken as the
/// latest (a deadline is never computed from the past).
#[test]
fn an_earlier_now_is_taken_as_the_latest_seen() {
    let start = Instant::now();
    let later = start + 100 * S;
    let mut session = Session::new(config(), later);
    let _open = session.open(start);
    // The connect deadline is counted from `later`, not from the earlier `start`.
    let deadline = session.poll_timeout().expect("a connect deadline");
    assert!(
        deadline >= later,
        "deadline {:?} before the session's clock",
        deadline - start
    );
}

/// An event the app acknowledged itself and whose handler then failed was handled: the
/// session sends no automatic defer for it, and a redelivery is not handed over again
/// (the SDK's driver used to decide this itself; the session now does, once).
#[test]
fn a_settled_event_whose_handler_fails_counts_as_handled() {
    let (mut pair, idem, token) = handling_one_event();
    let ack = pair.ack("a", &idem, 1).unwrap();
    pair.run_idle();
    assert_eq!(pair.result(ack), Some(&Ok(OpOutcome::Acked)));
    pair.finish(token, HandlerOutcome::Failed);
    pair.run_idle();
    assert_eq!(
        node_call_count(&pair, RequestKind::Defer),
        0,
        "no automatic defer after an explicit ack"
    );
    assert_eq!(node_call_count(&pair, RequestKind::Ack), 1, "one ack only");
    // The node delivers it again (e.g. from another queue copy): not handed over.
    let before = pair.deliveries().len();
    let block = pair.node.event(&idem).map(|e| e.block).unwrap_or(1);
    pair.session.handle_input(
        Input::StreamItem {
            call: stream_of(&pair, "a"),
            logged_at: None,
            event: wire::EventStreamResponse {
                event_idem: idem.clone(),
                event_name: "a".into(),
                payload: envelope::encrypt_single(
                    b"{}",
                    app_secret().public_key(),
                    &mut rand_core::OsRng,
                ),
                partition_block: block,
                ..Default::default()
            },
        },
        pair.now,
    );
    pair.run_idle();
    assert_eq!(pair.deliveries().len(), before, "not handed over again");
}
