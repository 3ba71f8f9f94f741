//! Scenario tests of the session with several node endpoints (issue 15, point 5):
//! which endpoint each `Output::Connect` names, when attempts wait, when the session
//! gives up. The `Pair` also checks online that every reconnect attempt goes to the next
//! endpoint and waits exactly the backoff of a full round (see `session_support`).

mod session_support;

use std::time::Duration;

use ensync_proto::session::{
    ConnectionState, OpOutcome, Output, RequestKind, SessionError, SubscribeOptions, backoff_delay,
};
use session_support::*;

const S: Duration = Duration::from_secs(1);

/// Every `Reconnecting` state so far, as (attempt, delay).
fn reconnecting(pair: &Pair) -> Vec<(u32, Duration)> {
    pair.states()
        .iter()
        .filter_map(|s| match s {
            ConnectionState::Reconnecting { attempt, delay } => Some((*attempt, *delay)),
            _ => None,
        })
        .collect()
}

/// The time (since the pair started) of every `Output::Connect`, with its endpoint.
fn connects(pair: &Pair) -> Vec<(Duration, usize)> {
    pair.outputs
        .iter()
        .filter_map(|(t, o)| match o {
            Output::Connect { endpoint, .. } => Some((*t - pair.start, *endpoint)),
            _ => None,
        })
        .collect()
}

#[test]
fn one_endpoint_is_always_endpoint_zero() {
    let mut pair = Pair::connected(config());
    pair.fail_connects = 2;
    pair.drop_connection();
    pair.advance(60 * S);
    assert!(pair.session.is_connected());
    assert_eq!(pair.connect_endpoints, [0, 0, 0, 0]);
    assert_eq!(
        reconnecting(&pair),
        [
            (1, Duration::from_millis(5000)),
            (2, Duration::from_millis(7500)),
            (3, Duration::from_millis(11250)),
        ]
    );
}

#[test]
fn first_open_goes_on_to_the_next_endpoint_when_one_is_down() {
    let mut pair = Pair::new(config().endpoints(3));
    pair.down_endpoints.insert(0);
    let op = pair.open();
    pair.run_idle();
    assert!(
        matches!(pair.result(op), Some(Ok(OpOutcome::Opened { .. }))),
        "{:?}",
        pair.result(op)
    );
    assert_eq!(pair.connect_endpoints, [0, 1]);
    assert_eq!(pair.session.endpoint(), 1);
    assert_eq!(
        pair.elapsed(),
        Duration::ZERO,
        "no waiting on the first open"
    );
    assert!(
        reconnecting(&pair).is_empty(),
        "the first open is not a reconnect"
    );
    assert_eq!(pair.node_calls(RequestKind::Connect).len(), 1);
}

#[test]
fn first_open_fails_once_every_endpoint_failed() {
    let mut pair = Pair::new(config().endpoints(3));
    pair.down_endpoints.extend([0, 1, 2]);
    let op = pair.open();
    pair.run_idle();
    let err = pair.result(op).expect("completed").clone().unwrap_err();
    match &err {
        SessionError::Connection { message, .. } => {
            assert!(
                message.contains("none of the 3 endpoints") && message.contains("endpoint 2"),
                "{message}"
            );
        }
        other => panic!("expected a connection error, got {other:?}"),
    }
    assert!(pair.session.is_closed());
    pair.advance(600 * S);
    assert_eq!(
        pair.connect_endpoints,
        [0, 1, 2],
        "each endpoint once, no retry loop"
    );
}

#[test]
fn first_open_rotates_past_an_endpoint_that_never_answers() {
    let mut pair = Pair::new(config().endpoints(2).request_timeout(10 * S));
    pair.connect_hangs = true;
    let op = pair.open();
    pair.advance(9 * S);
    assert_eq!(pair.connect_endpoints, [0]);
    pair.advance(2 * S);
    assert_eq!(pair.connect_endpoints, [0, 1], "endpoint 0 timed out");
    assert!(pair.result(op).is_none());
    pair.advance(10 * S);
    assert!(matches!(
        pair.result(op),
        Some(Err(SessionError::Connection { .. }))
    ));
    assert!(pair.session.is_closed());
}

#[test]
fn a_lost_connection_goes_to_the_next_endpoint_at_once() {
    let mut pair = Pair::connected(config().endpoints(2));
    let r = pair
        .session
        .subscribe("orders", SubscribeOptions::default(), pair.now);
    pair.track_result(r).expect("subscribe");
    pair.run_idle();
    assert_eq!(pair.session.endpoint(), 0);
    let lost_at = pair.now;
    pair.drop_connection();
    // No time passed: the other endpoint was tried at once, and it answered.
    assert_eq!(pair.now, lost_at);
    assert!(pair.session.is_connected());
    assert_eq!(pair.session.endpoint(), 1);
    assert_eq!(pair.connect_endpoints, [0, 1]);
    assert_eq!(reconnecting(&pair), [(1, Duration::ZERO)]);
    // The subscription was restored on the new connection.
    assert_eq!(pair.node_calls(RequestKind::Subscribe).len(), 2);
    // The next loss goes back to endpoint 0, again at once (the count was reset).
    pair.drop_connection();
    assert!(pair.session.is_connected());
    assert_eq!(pair.connect_endpoints, [0, 1, 0]);
    assert_eq!(
        reconnecting(&pair),
        [(1, Duration::ZERO), (1, Duration::ZERO)]
    );
}

#[test]
fn backoff_applies_once_every_endpoint_failed_in_a_row() {
    let config = config().endpoints(2);
    let first = backoff_delay(&config, 1);
    let second = backoff_delay(&config, 2);
    let mut pair = Pair::connected(config);
    pair.down_endpoints.extend([0, 1]);
    pair.drop_connection();
    // Loss on 0 -> endpoint 1 at once (down) -> full round: wait, endpoint 0 (down) ->
    // endpoint 1 at once (down) -> second full round: wait longer, endpoint 0 ...
    pair.advance(first + second - S);
    assert_eq!(
        reconnecting(&pair),
        [
            (1, Duration::ZERO),
            (2, first),
            (3, Duration::ZERO),
            (4, second),
        ]
    );
    assert_eq!(
        connects(&pair),
        [
            (Duration::ZERO, 0),
            (Duration::ZERO, 1),
            (first, 0),
            (first, 1),
        ]
    );
    // Endpoint 1 comes back: the attempt after the second wait (to 0) fails, the next
    // one (to 1) connects at once.
    pair.down_endpoints.remove(&1);
    pair.advance(2 * S);
    assert!(pair.session.is_connected());
    assert_eq!(pair.session.endpoint(), 1);
    assert_eq!(
        connects(&pair)[4..],
        [(first + second, 0), (first + second, 1)]
    );
    // A successful connection resets the count: the next loss does not wait.
    pair.down_endpoints.clear();
    let before = reconnecting(&pair).len();
    pair.drop_connection();
    assert!(pair.session.is_connected());
    assert_eq!(reconnecting(&pair)[before..], [(1, Duration::ZERO)]);
}

#[test]
fn the_session_gives_up_after_max_rounds() {
    let config = config().endpoints(2).max_reconnect_attempts(2);
    let mut pair = Pair::connected(config);
    pair.down_endpoints.extend([0, 1]);
    pair.drop_connection();
    pair.advance(600 * S);
    assert_eq!(
        reconnecting(&pair)
            .iter()
            .map(|(a, _)| *a)
            .collect::<Vec<_>>(),
        [1, 2, 3, 4],
        "two attempts per endpoint"
    );
    assert_eq!(pair.connect_endpoints, [0, 1, 0, 1, 0]);
    match pair.session.state() {
        ConnectionState::Closed {
            error: Some(SessionError::Connection { message, .. }),
        } => assert!(
            message.contains("2 reconnect attempts to each of the 2 endpoints"),
            "{message}"
        ),
        other => panic!("expected closed with a connection error, got {other:?}"),
    }
}

#[test]
fn a_refused_access_key_closes_whichever_endpoint_refused_it() {
    let mut pair = Pair::new(config().endpoints(2).access_key("wrong"));
    let op = pair.open();
    pair.run_idle();
    assert!(matches!(
        pair.result(op),
        Some(Err(SessionError::Auth { .. }))
    ));
    assert_eq!(pair.connect_endpoints, [0], "no other endpoint is tried");
    assert!(pair.session.is_closed());
}
