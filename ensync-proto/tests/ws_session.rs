//! The session over the WebSocket client connection, with no socket: the session's
//! calls go through a [`WsClient`] to frames, a test plays the node by answering those
//! frames, and the client's inputs go back to the session. These are the WebSocket
//! paths of the gRPC scenarios: connect, subscribe and deliveries with automatic acks,
//! the probe after a refused call, and liveness.

mod session_support;

use std::time::{Duration, Instant};

use ensync_proto::envelope;
use ensync_proto::session::{
    ConnectionId, ConnectionState, HandlerOutcome, Input, Output, PublishOptions, Session,
    SessionEvent, SubscribeOptions,
};
use ensync_proto::ws_client::{WsClient, WsTransmit};
use serde_json::json;
use session_support::{app_secret, config};

const S: Duration = Duration::from_secs(1);

/// A session, its WebSocket client connection, and the frames the node has received.
struct WsPair {
    session: Session,
    ws: Option<WsClient>,
    conn: Option<ConnectionId>,
    now: Instant,
    /// Text frames written to the node, in order.
    sent: Vec<String>,
    events: Vec<SessionEvent>,
    connects: usize,
}

impl WsPair {
    fn new() -> Self {
        let now = Instant::now();
        // Heartbeats off, as the WebSocket adapters run the session.
        let session = Session::new(config().heartbeat_interval(None), now);
        WsPair {
            session,
            ws: None,
            conn: None,
            now,
            sent: Vec::new(),
            events: Vec::new(),
            connects: 0,
        }
    }

    /// Moves everything between the session and the client until nothing moves.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(output) = self.session.poll_output() {
                moved = true;
                match output {
                    Output::Connect { conn, .. } => {
                        // The socket opens at once.
                        self.connects += 1;
                        self.conn = Some(conn);
                        self.ws = Some(WsClient::new(10 * S, self.now));
                        self.session
                            .handle_input(Input::Connected { conn }, self.now);
                    }
                    Output::Disconnect => {
                        self.ws = None;
                        self.conn = None;
                    }
                    Output::Call(call) => self.ws.as_mut().expect("a socket").call(call),
                    Output::CancelStream(call) => {
                        if let Some(ws) = self.ws.as_mut() {
                            ws.cancel_stream(call);
                        }
                    }
                    Output::Event(SessionEvent::Delivery(d)) => {
                        let token = d.token;
                        self.events.push(SessionEvent::Delivery(d));
                        self.session
                            .handler_finished(token, HandlerOutcome::Ok, self.now);
                    }
                    Output::Event(e) => self.events.push(e),
                }
            }
            if let Some(ws) = self.ws.as_mut() {
                while let Some(t) = ws.poll_transmit() {
                    moved = true;
                    if let WsTransmit::Text(text) = t {
                        self.sent.push(text);
                    }
                }
                let mut inputs = Vec::new();
                while let Some(i) = ws.poll_input() {
                    inputs.push(i);
                }
                let lost = ws.lost().map(str::to_owned);
                for i in inputs {
                    moved = true;
                    self.session.handle_input(i, self.now);
                }
                if let (Some(reason), Some(conn)) = (lost, self.conn) {
                    moved = true;
                    self.ws = None;
                    self.conn = None;
                    self.session
                        .handle_input(Input::Disconnected { conn, reason }, self.now);
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// The node answers with `frame`.
    fn node_says(&mut self, frame: &str) {
        self.ws
            .as_mut()
            .expect("a socket")
            .handle_text(frame, self.now, 1_700_000_000_000);
        self.pump();
    }

    /// Moves time to `t`, firing the session's and the client's timers on the way.
    fn advance_to(&mut self, t: Instant) {
        loop {
            let next = [
                self.session.poll_timeout(),
                self.ws.as_ref().and_then(|w| w.poll_timeout()),
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(n) if n <= t => {
                    self.now = self.now.max(n);
                    self.session.handle_timeout(self.now);
                    if let Some(ws) = self.ws.as_mut() {
                        ws.handle_timeout(self.now);
                    }
                    self.pump();
                }
                _ => break,
            }
        }
        self.now = t;
        self.pump();
    }

    fn last_sent(&self) -> &str {
        self.sent.last().map(String::as_str).unwrap_or("")
    }

    /// Opens the session: `CONN`, answered.
    fn connected() -> Self {
        let mut pair = WsPair::new();
        let _ = pair.session.open(pair.now);
        pair.pump();
        assert_eq!(pair.last_sent(), "CONN;ACCESS_KEY=:test-access-key");
        pair.node_says("+PASS:{clientId=c1,clientHash=KEY}");
        assert!(pair.session.is_connected());
        pair
    }
}

#[test]
fn subscribe_deliver_and_auto_ack_over_websocket() {
    let mut pair = WsPair::connected();
    let sub = pair
        .session
        .subscribe("orders", SubscribeOptions::default(), pair.now)
        .unwrap();
    pair.pump();
    assert_eq!(pair.last_sent(), "SUB;CLIENT_ID=:c1;EVENT_NAME=:orders");
    pair.node_says("+PASS:subscribed");
    assert!(pair.events.iter().any(|e| matches!(
        e,
        SessionEvent::Completed { op, result: Ok(_) } if *op == sub
    )));
    let payload = envelope::encrypt_single(
        json!({"n": 1}).to_string().as_bytes(),
        app_secret().public_key(),
        &mut rand_core::OsRng,
    );
    let record = json!({"name": "orders", "idem": "e1", "block": 4, "loggedAt": 1_700_000_000_001i64,
        "payload": payload, "metadata": {}, "sender": "S"});
    pair.node_says(&format!("+RECORD:{record}"));
    let delivered: Vec<_> = pair
        .events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::Delivery(d) => Some((d.idem.clone(), d.timestamp, d.payload.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        delivered,
        vec![("e1".to_owned(), Some(1_700_000_000_001), json!({"n": 1}))]
    );
    // The handler finished OK: the automatic ack goes out with the event's block.
    assert_eq!(
        pair.last_sent(),
        "ACK;CLIENT_ID=:c1;EVENT_IDEM=:e1;BLOCK=:4;EVENT_NAME=:orders"
    );
    pair.node_says("+PASS:acked");
    assert!(
        !pair
            .events
            .iter()
            .any(|e| matches!(e, SessionEvent::AutoAckFailed { .. }))
    );
}

/// A node that restarted no longer knows the session and refuses its calls. Over gRPC
/// the refused call makes the session probe with a heartbeat, which is refused too, and
/// the session reconnects. Over WebSocket there is no heartbeat request: the client
/// answers the probe from the node's refusal, so the session reconnects the same way.
#[test]
fn a_refused_call_over_websocket_probes_and_reconnects() {
    let mut pair = WsPair::connected();
    let recipient = app_secret().public_key().to_base64();
    let publish = pair
        .session
        .publish(
            "orders",
            &[recipient.as_str()],
            &json!({"n": 1}),
            None,
            PublishOptions::default(),
            pair.now,
        )
        .unwrap();
    pair.pump();
    assert!(
        pair.last_sent()
            .starts_with("PUB;CLIENT_ID=:c1;EVENT_NAME=:orders;")
    );
    assert_eq!(pair.connects, 1);
    pair.node_says("-FAIL:not authenticated");
    // The publish fails with the node's reason...
    assert!(pair.events.iter().any(|e| matches!(
        e,
        SessionEvent::Completed { op, result: Err(err) } if *op == publish && err.to_string().contains("not authenticated")
    )));
    // ... and the probe found the session gone: reconnecting.
    assert!(
        pair.events
            .iter()
            .any(|e| matches!(e, SessionEvent::State(ConnectionState::Reconnecting { .. }))),
        "{:?}",
        pair.events
    );
    pair.advance_to(pair.now + 10 * S);
    assert_eq!(pair.connects, 2, "a new connection was opened");
    assert_eq!(pair.last_sent(), "CONN;ACCESS_KEY=:test-access-key");
    pair.node_says("+PASS:{clientId=c2,clientHash=KEY}");
    assert!(pair.session.is_connected());
    assert_eq!(pair.session.client_id(), Some("c2"));
}

/// A node that goes silent (no frame, no pong) is lost after two ping intervals and
/// the session reconnects and resubscribes.
#[test]
fn a_silent_node_is_lost_and_the_session_resubscribes() {
    let mut pair = WsPair::connected();
    pair.session
        .subscribe("orders", SubscribeOptions::default(), pair.now)
        .unwrap();
    pair.pump();
    pair.node_says("+PASS:subscribed");
    let start = pair.now;
    // Pings at 10 s and 20 s go unanswered; at 30 s the node has been silent for 30 s.
    pair.advance_to(start + 25 * S);
    assert_eq!(pair.connects, 1, "still the first connection at 25 s");
    pair.advance_to(start + 31 * S);
    assert!(
        pair.events
            .iter()
            .any(|e| matches!(e, SessionEvent::State(ConnectionState::Reconnecting { .. }))),
        "{:?}",
        pair.events
    );
    pair.advance_to(pair.now + 10 * S);
    assert_eq!(pair.connects, 2);
    pair.node_says("+PASS:{clientId=c2,clientHash=KEY}");
    assert_eq!(pair.last_sent(), "SUB;CLIENT_ID=:c2;EVENT_NAME=:orders");
}
