//! A quinn-style `Pair` harness: our `Session` on one side, a scripted in-memory EnSync
//! node on the other, simulated time that jumps to the next wake-up, injected faults.
//!
//! The pair checks invariants as it runs (it panics on a violation):
//! - every op id gets at most one `Completed`, and only ops the test issued;
//! - no event is handed to the application twice unless its handler failed (or the
//!   application's ack of it failed);
//! - the node never sees two acks of one event from one session (client id);
//! - every successful (re)connect re-subscribes every live subscription with the new
//!   client id before anything else goes out after `Connect`;
//! - every `Reconnecting{attempt, delay}` has `delay == backoff_delay(attempt)` (with
//!   `n` endpoints: `backoff_delay(attempt / n)` when `attempt` is a multiple of `n`, a
//!   full round, zero otherwise), attempts count 1, 2, ... and never exceed the maximum
//!   (per endpoint), and the transport is not asked for before the delay has passed;
//! - every `Connect` names an endpoint below the configured count; with several, each
//!   attempt after a failure goes to the next endpoint.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ensync_proto::envelope;
use ensync_proto::keys::SecretKey;
use ensync_proto::session::{
    Call, CallId, ConnectionId, ConnectionState, DeliveryToken, Generation, HandlerOutcome, Input,
    OpId, OpOutcome, Output, Reply, Request, RequestKind, RpcCode, RpcError, Session,
    SessionConfig, SessionError, SessionEvent, backoff_delay,
};
use ensync_proto::wire;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

pub const ACCESS_KEY: &str = "test-access-key";

/// Our app's key pair (deterministic).
pub fn app_secret() -> Arc<SecretKey> {
    Arc::new(SecretKey::from_seed(&[7u8; 32]))
}

/// Another app's key pair.
pub fn other_secret() -> Arc<SecretKey> {
    Arc::new(SecretKey::from_seed(&[9u8; 32]))
}

/// A config with the test access key, our secret key and a seeded RNG.
pub fn config() -> SessionConfig {
    SessionConfig::new(ACCESS_KEY)
        .secret_key(app_secret())
        .rng(Box::new(ChaCha20Rng::seed_from_u64(42)))
}

#[derive(Debug, Clone, PartialEq)]
pub enum EvState {
    Ready,
    InFlight(String),
    Deferred(Instant),
    Acked,
    Discarded,
}

#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub name: String,
    pub idem: String,
    pub block: i64,
    pub payload: String,
    pub metadata: String,
    pub sender: String,
    pub state: EvState,
}

/// The forms of a replay answer's `event_data` a node may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayAnswer {
    /// The bare envelope (what the Python clients read).
    Envelope,
    /// The stream-message JSON with proto field names (what the Go and Node SDKs read).
    ProtoNames,
    /// The stream-message JSON as protobuf's Java printer writes it: lowerCamelCase keys,
    /// `partitionBlock` as a string.
    LowerCamel,
}

/// The scripted node.
pub struct Node {
    /// The only generation it speaks (`None`: both).
    pub speaks: Option<Generation>,
    pub access_key: String,
    /// Our app's public key (base64): publishes to it are queued for delivery.
    pub app_key: String,
    /// Deliver every event on the first open stream and end the other streams cleanly.
    pub multiplex: bool,
    /// How replay answers carry the event (EnSync nodes differ).
    pub replay_answer: ReplayAnswer,
    pub events: Vec<StoredEvent>,
    next_block: HashMap<String, i64>,
    next_idem: u64,
    sessions: u64,
    /// The authenticated session's client id.
    pub client_id: Option<String>,
    pub transport_up: bool,
    /// Open streams: call -> event name.
    pub streams: BTreeMap<CallId, String>,
    pub subscribed: BTreeSet<String>,
    pub paused: BTreeSet<String>,
    /// Acks the node accepted, per (client id, event name, idem).
    pub acks: HashMap<(String, String, String), u32>,
    /// Every call received, in order, with the client id it carried.
    pub log: Vec<(RequestKind, Generation, Request)>,
    // faults
    pub refuse_heartbeat: bool,
    pub reject_recipients: BTreeSet<String>,
    pub reject_subscribe: BTreeSet<String>,
    /// Unary calls of these kinds get no reply at all.
    pub swallow: BTreeSet<RequestKind>,
}

impl Node {
    pub fn new() -> Self {
        Node {
            speaks: None,
            access_key: ACCESS_KEY.to_owned(),
            app_key: app_secret().public_key().to_base64(),
            multiplex: false,
            replay_answer: ReplayAnswer::Envelope,
            events: Vec::new(),
            next_block: HashMap::new(),
            next_idem: 0,
            sessions: 0,
            client_id: None,
            transport_up: false,
            streams: BTreeMap::new(),
            subscribed: BTreeSet::new(),
            paused: BTreeSet::new(),
            acks: HashMap::new(),
            log: Vec::new(),
            refuse_heartbeat: false,
            reject_recipients: BTreeSet::new(),
            reject_subscribe: BTreeSet::new(),
            swallow: BTreeSet::new(),
        }
    }

    /// Stores an event for our app (as if another app published it).
    pub fn inject(&mut self, name: &str, payload: &serde_json::Value) -> String {
        let mut rng = ChaCha20Rng::seed_from_u64(self.next_idem);
        let key = app_secret();
        let envelope =
            envelope::encrypt_single(payload.to_string().as_bytes(), key.public_key(), &mut rng);
        let sender = other_secret().public_key().to_base64();
        self.store(name, envelope, "{\"k\":1}".to_owned(), sender)
    }

    /// Stores a raw event.
    pub fn store(
        &mut self,
        name: &str,
        payload: String,
        metadata: String,
        sender: String,
    ) -> String {
        self.next_idem += 1;
        let idem = format!("evt-{}", self.next_idem);
        let block = self.next_block.entry(name.to_owned()).or_insert(0);
        *block += 1;
        self.events.push(StoredEvent {
            name: name.to_owned(),
            idem: idem.clone(),
            block: *block,
            payload,
            metadata,
            sender,
            state: EvState::Ready,
        });
        idem
    }

    pub fn event(&self, idem: &str) -> Option<&StoredEvent> {
        self.events.iter().find(|e| e.idem == idem)
    }

    /// Ends the session: in-flight events go back to the queue.
    pub fn end_session(&mut self) {
        if let Some(cid) = self.client_id.take() {
            for e in &mut self.events {
                if e.state == EvState::InFlight(cid.clone()) {
                    e.state = EvState::Ready;
                }
            }
        }
        self.transport_up = false;
        self.streams.clear();
        self.subscribed.clear();
        self.paused.clear();
    }

    /// A client dropped its stream for `name`: like the real node, what was in flight on
    /// it goes back to the queue (everything in flight, in multiplex mode).
    pub fn stream_closed(&mut self, name: &str) {
        let Some(cid) = self.client_id.clone() else {
            return;
        };
        for e in &mut self.events {
            if e.state == EvState::InFlight(cid.clone()) && (self.multiplex || e.name == name) {
                e.state = EvState::Ready;
            }
        }
    }

    fn gen_ok(&self, kind: RequestKind, generation: Generation) -> bool {
        !kind.is_generation_specific() || self.speaks.is_none_or(|g| g == generation)
    }

    fn session_ok(&self, client_id: &str) -> bool {
        self.client_id.as_deref() == Some(client_id)
    }

    fn in_flight_mut(&mut self, idem: &str, client_id: &str) -> Option<&mut StoredEvent> {
        self.events
            .iter_mut()
            .find(|e| e.idem == idem && e.state == EvState::InFlight(client_id.to_owned()))
    }

    /// Handles a call; returns the inputs to give back (in order).
    pub fn handle_call(&mut self, call: Call, now: Instant) -> Vec<Input> {
        let kind = call.request.kind();
        self.log.push((kind, call.generation, call.request.clone()));
        let id = call.id;
        if !self.gen_ok(kind, call.generation) {
            let err = RpcError::new(RpcCode::Unimplemented, "unknown method");
            return vec![if kind.is_streaming() {
                Input::StreamEnded {
                    call: id,
                    error: Some(err),
                }
            } else {
                Input::Reply {
                    call: id,
                    result: Err(err),
                }
            }];
        }
        if self.swallow.contains(&kind) {
            return Vec::new();
        }
        let reply = |r: Reply| {
            vec![Input::Reply {
                call: id,
                result: Ok(r),
            }]
        };
        match call.request {
            Request::Connect(r) => {
                if r.access_key != self.access_key {
                    return reply(Reply::Connect(wire::ConnectResponse {
                        success: false,
                        error_message: "invalid access key".into(),
                        ..Default::default()
                    }));
                }
                self.end_session();
                self.transport_up = true;
                self.sessions += 1;
                let cid = format!("client-{}", self.sessions);
                self.client_id = Some(cid.clone());
                reply(Reply::Connect(wire::ConnectResponse {
                    success: true,
                    client_id: cid,
                    client_hash: self.app_key.clone(),
                    ..Default::default()
                }))
            }
            Request::Heartbeat(r) => reply(Reply::Heartbeat(wire::HeartbeatResponse {
                success: !self.refuse_heartbeat && self.session_ok(&r.client_id),
            })),
            Request::Publish(r) => {
                if !self.session_ok(&r.client_id) || self.reject_recipients.contains(&r.delivery_to)
                {
                    return reply(Reply::Publish(wire::PublishEventResponse {
                        success: false,
                        error_message: format!("recipient {} refused", r.delivery_to),
                        ..Default::default()
                    }));
                }
                let idem = if r.delivery_to == self.app_key {
                    self.store(&r.event_name, r.payload, r.metadata, self.app_key.clone())
                } else {
                    self.next_idem += 1;
                    format!("evt-{}", self.next_idem)
                };
                reply(Reply::Publish(wire::PublishEventResponse {
                    success: true,
                    event_idem: idem,
                    error_message: String::new(),
                }))
            }
            Request::Subscribe(r) => {
                if !self.session_ok(&r.client_id) {
                    return vec![Input::StreamEnded {
                        call: id,
                        error: Some(RpcError::new(RpcCode::Other(9), "unknown client")),
                    }];
                }
                if self.reject_subscribe.contains(&r.event_name) {
                    return vec![Input::StreamEnded {
                        call: id,
                        error: Some(RpcError::new(RpcCode::Other(7), "not permitted")),
                    }];
                }
                self.subscribed.insert(r.event_name.clone());
                let mut out = vec![Input::StreamOpened { call: id }];
                if self.multiplex && !self.streams.is_empty() {
                    out.push(Input::StreamEnded {
                        call: id,
                        error: None,
                    });
                } else {
                    self.streams.insert(id, r.event_name);
                }
                out
            }
            Request::Unsubscribe(r) => {
                let ok = self.session_ok(&r.client_id);
                if ok {
                    self.subscribed.remove(&r.event_name);
                    self.streams
                        .retain(|_, n| *n != r.event_name || self.multiplex);
                }
                reply(Reply::Unsubscribe(wire::UnsubscribeResponse {
                    success: ok,
                    message: if ok {
                        "ok".into()
                    } else {
                        "unknown client".into()
                    },
                }))
            }
            Request::Ack(r) => {
                let cid = r.client_id.clone();
                let ok = self.session_ok(&cid)
                    && match self.in_flight_mut(&r.event_idem, &cid) {
                        Some(e) if e.block == r.partition_block => {
                            e.state = EvState::Acked;
                            true
                        }
                        _ => false,
                    };
                // Acks the node accepted (a refused one acknowledged nothing).
                if ok {
                    *self
                        .acks
                        .entry((
                            r.client_id.clone(),
                            r.event_name.clone(),
                            r.event_idem.clone(),
                        ))
                        .or_insert(0) += 1;
                }
                reply(Reply::Ack(wire::AcknowledgeResponse {
                    success: ok,
                    message: if ok {
                        "acked".into()
                    } else {
                        "not in flight".into()
                    },
                }))
            }
            Request::Defer(r) => {
                let cid = r.client_id.clone();
                let until = now + Duration::from_millis(r.delay_ms.max(0) as u64);
                let ok = self.session_ok(&cid)
                    && match self.in_flight_mut(&r.event_idem, &cid) {
                        Some(e) => {
                            e.state = EvState::Deferred(until);
                            true
                        }
                        None => false,
                    };
                reply(Reply::Defer(wire::DeferResponse {
                    success: ok,
                    message: if ok {
                        "deferred".into()
                    } else {
                        "not in flight".into()
                    },
                    delivery_time: 1_700_000_000_000 + r.delay_ms,
                }))
            }
            Request::Discard(r) => {
                let cid = r.client_id.clone();
                let ok = self.session_ok(&cid)
                    && match self.events.iter_mut().find(|e| {
                        e.idem == r.event_idem
                            && (e.state == EvState::Ready
                                || e.state == EvState::InFlight(cid.clone()))
                    }) {
                        Some(e) => {
                            e.state = EvState::Discarded;
                            true
                        }
                        None => false,
                    };
                reply(Reply::Discard(wire::DiscardResponse {
                    success: ok,
                    message: if ok {
                        "discarded".into()
                    } else {
                        "not in flight".into()
                    },
                }))
            }
            Request::Replay(r) => {
                let found = self
                    .events
                    .iter()
                    .find(|e| e.idem == r.event_idem && e.name == r.event_name);
                reply(Reply::Replay(match found {
                    Some(e) if self.session_ok(&r.client_id) => wire::ReplayResponse {
                        success: true,
                        message: String::new(),
                        event_data: match self.replay_answer {
                            ReplayAnswer::Envelope => e.payload.clone(),
                            ReplayAnswer::ProtoNames => ensync_proto::clients::encode_replay(
                                ensync_proto::clients::ReplayForm::StreamMessage,
                                &wire::EventStreamResponse {
                                    event_idem: e.idem.clone(),
                                    event_name: e.name.clone(),
                                    payload: e.payload.clone(),
                                    partition_block: e.block,
                                    metadata: e.metadata.clone(),
                                    sender: e.sender.clone(),
                                },
                            ),
                            ReplayAnswer::LowerCamel => serde_json::json!({
                                "messageIdem": e.idem,
                                "messageName": e.name,
                                "payload": e.payload,
                                "partitionBlock": e.block.to_string(),
                                "metadata": e.metadata,
                                "sender": e.sender,
                            })
                            .to_string(),
                        },
                    },
                    _ => wire::ReplayResponse {
                        success: false,
                        message: "event not found".into(),
                        event_data: String::new(),
                    },
                }))
            }
            Request::Pause(r) => {
                let ok = self.session_ok(&r.client_id);
                if ok {
                    self.paused.insert(r.event_name);
                }
                reply(Reply::Pause(wire::PauseResponse {
                    success: ok,
                    message: String::new(),
                }))
            }
            Request::Continue(r) => {
                let ok = self.session_ok(&r.client_id);
                if ok {
                    self.paused.remove(&r.event_name);
                }
                reply(Reply::Continue(wire::ContinueResponse {
                    success: ok,
                    message: String::new(),
                }))
            }
        }
    }

    /// Deferred events that are due become ready; ready events of subscribed, unpaused
    /// names with an open stream go out (in order), marked in flight.
    pub fn pump(&mut self, now: Instant) -> Vec<Input> {
        for e in &mut self.events {
            if matches!(e.state, EvState::Deferred(t) if t <= now) {
                e.state = EvState::Ready;
            }
        }
        let Some(cid) = self.client_id.clone() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        // The stream each name's events go on: its own, or (multiplex) the first one.
        let first_stream = self.streams.keys().next().copied();
        let stream_of: BTreeMap<String, CallId> =
            self.streams.iter().map(|(c, n)| (n.clone(), *c)).collect();
        for e in &mut self.events {
            if e.state != EvState::Ready
                || !self.subscribed.contains(&e.name)
                || self.paused.contains(&e.name)
            {
                continue;
            }
            let stream = if self.multiplex {
                first_stream
            } else {
                stream_of.get(&e.name).copied()
            };
            let Some(call) = stream else {
                continue;
            };
            e.state = EvState::InFlight(cid.clone());
            out.push(Input::StreamItem {
                call,
                logged_at: None,
                event: wire::EventStreamResponse {
                    event_idem: e.idem.clone(),
                    event_name: e.name.clone(),
                    payload: e.payload.clone(),
                    partition_block: e.block,
                    metadata: e.metadata.clone(),
                    sender: e.sender.clone(),
                },
            });
        }
        out
    }

    pub fn next_wake(&self) -> Option<Instant> {
        self.events
            .iter()
            .filter_map(|e| match e.state {
                EvState::Deferred(t) => Some(t),
                _ => None,
            })
            .min()
    }
}

/// What the simulated application does with deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerMode {
    /// Finish every delivery OK right away (as an adapter running a quick handler).
    AutoOk,
    /// Keep them running until the test finishes them.
    Manual,
}

pub struct Pair {
    pub session: Session,
    pub node: Node,
    pub now: Instant,
    pub start: Instant,
    /// Everything the session told the application, in order.
    pub events: Vec<SessionEvent>,
    /// Every output, in order, with the time it was polled.
    pub outputs: Vec<(Instant, Output)>,
    pub handler_mode: HandlerMode,
    /// Inputs in transit: (due, the transport attempt they travel on, input).
    in_transit: VecDeque<(Instant, Option<ConnectionId>, Input)>,
    /// The transport attempt of the last `Output::Connect`, until it is dropped.
    transport: Option<ConnectionId>,
    /// Latency of every node -> session input.
    pub latency: Duration,
    /// Connect attempts still to fail.
    pub fail_connects: u32,
    /// Whether the node answers a transport open at all.
    pub connect_hangs: bool,
    /// Endpoints nobody listens on: a transport open to one fails at once.
    pub down_endpoints: BTreeSet<usize>,
    /// The endpoint of every `Output::Connect`, in order.
    pub connect_endpoints: Vec<usize>,
    endpoints: usize,
    // bookkeeping for the invariants
    issued: BTreeSet<OpId>,
    pub completed: BTreeMap<OpId, Result<OpOutcome, SessionError>>,
    handed: HashMap<(String, String), u32>,
    failed_handlers: HashMap<(String, String), u32>,
    app_acks: HashMap<(String, String), u32>,
    /// The application's acks not answered yet: op -> (name, idem).
    app_ack_ops: HashMap<OpId, (String, String)>,
    /// Deliveries handed over and not finished: token -> (name, idem, block, auto_ack).
    pub running: BTreeMap<DeliveryToken, (String, String, i64, bool)>,
    /// Events whose handler finished OK on an auto-ack subscription.
    pub finished_ok_auto: BTreeSet<(String, String)>,
    last_attempt: u32,
    reconnect_not_before: Option<Instant>,
    pub reconnects: u32,
    pub connects: u32,
    max_attempts: u32,
    backoff: Vec<Duration>,
}

impl Pair {
    pub fn new(config: SessionConfig) -> Self {
        let start = Instant::now();
        let endpoints = config.get_endpoints();
        let max_attempts = config
            .get_max_reconnect_attempts()
            .saturating_mul(endpoints as u32);
        let backoff = (1..=max_attempts.min(64))
            .map(|a| {
                if a as usize % endpoints == 0 {
                    backoff_delay(&config, (a as usize / endpoints) as u32)
                } else {
                    Duration::ZERO
                }
            })
            .collect();
        Pair {
            session: Session::new(config, start),
            node: Node::new(),
            now: start,
            start,
            events: Vec::new(),
            outputs: Vec::new(),
            handler_mode: HandlerMode::AutoOk,
            in_transit: VecDeque::new(),
            transport: None,
            latency: Duration::ZERO,
            fail_connects: 0,
            connect_hangs: false,
            down_endpoints: BTreeSet::new(),
            connect_endpoints: Vec::new(),
            endpoints,
            issued: BTreeSet::new(),
            completed: BTreeMap::new(),
            handed: HashMap::new(),
            failed_handlers: HashMap::new(),
            app_acks: HashMap::new(),
            app_ack_ops: HashMap::new(),
            running: BTreeMap::new(),
            finished_ok_auto: BTreeSet::new(),
            last_attempt: 0,
            reconnect_not_before: None,
            reconnects: 0,
            connects: 0,
            max_attempts,
            backoff,
        }
    }

    /// A pair whose session has been opened and connected.
    pub fn connected(config: SessionConfig) -> Self {
        let mut pair = Pair::new(config);
        let op = pair.open();
        pair.run_idle();
        assert!(
            matches!(pair.completed.get(&op), Some(Ok(OpOutcome::Opened { .. }))),
            "open failed: {:?}",
            pair.completed.get(&op)
        );
        pair
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Registers an op id the test got from a command.
    pub fn track(&mut self, op: OpId) -> OpId {
        assert!(self.issued.insert(op), "op id {op:?} handed out twice");
        op
    }

    pub fn track_result(&mut self, r: Result<OpId, SessionError>) -> Result<OpId, SessionError> {
        if let Ok(op) = r {
            self.track(op);
        }
        r
    }

    pub fn open(&mut self) -> OpId {
        let op = self.session.open(self.now);
        self.track(op)
    }

    pub fn issued(&self) -> &BTreeSet<OpId> {
        &self.issued
    }

    /// The transport attempt the pair is connected on (the last `Output::Connect`), until
    /// it is dropped.
    pub fn transport(&self) -> Option<ConnectionId> {
        self.transport
    }

    pub fn result(&self, op: OpId) -> Option<&Result<OpOutcome, SessionError>> {
        self.completed.get(&op)
    }

    /// Drains the session's outputs, acting as the transport and the application.
    pub fn drain(&mut self) {
        let mut connected_in_batch = false;
        let mut subscribed_in_batch: BTreeSet<String> = BTreeSet::new();
        let mut saw_connect_call = false;
        let mut first_after_connect: Option<RequestKind> = None;
        while let Some(out) = self.session.poll_output() {
            self.outputs.push((self.now, out.clone()));
            match out {
                Output::Connect { conn, endpoint } => {
                    if let Some(t) = self.reconnect_not_before.take() {
                        assert!(self.now >= t, "reconnect attempt before its backoff delay");
                    }
                    assert!(
                        endpoint < self.endpoints,
                        "endpoint {endpoint} of {}",
                        self.endpoints
                    );
                    if let Some(&last) = self.connect_endpoints.last() {
                        if self.endpoints > 1 && self.last_attempt > 0 {
                            assert_eq!(
                                endpoint,
                                (last + 1) % self.endpoints,
                                "a reconnect attempt goes to the next endpoint"
                            );
                        }
                    }
                    assert_eq!(self.session.endpoint(), endpoint);
                    self.connect_endpoints.push(endpoint);
                    self.transport = Some(conn);
                    if self.connect_hangs {
                        continue;
                    }
                    let input = if self.down_endpoints.contains(&endpoint) {
                        Input::Disconnected {
                            conn,
                            reason: format!("nobody listens on endpoint {endpoint}"),
                        }
                    } else if self.fail_connects > 0 {
                        self.fail_connects -= 1;
                        Input::Disconnected {
                            conn,
                            reason: "connection refused".into(),
                        }
                    } else {
                        Input::Connected { conn }
                    };
                    self.send(input);
                }
                Output::Disconnect => {
                    self.transport = None;
                    self.in_transit.clear();
                    self.node.end_session();
                }
                Output::Call(call) => {
                    let kind = call.request.kind();
                    if kind == RequestKind::Connect {
                        saw_connect_call = true;
                    }
                    if connected_in_batch
                        && first_after_connect.is_none()
                        && kind != RequestKind::Subscribe
                    {
                        first_after_connect = Some(kind);
                    }
                    if let Request::Unsubscribe(r) = &call.request {
                        // A re-subscribe of this name waits for the unsubscribe.
                        subscribed_in_batch.insert(r.event_name.clone());
                    }
                    if let Request::Subscribe(r) = &call.request {
                        subscribed_in_batch.insert(r.event_name.clone());
                        assert_eq!(Some(r.client_id.as_str()), self.session.client_id());
                    }
                    let inputs = self.node.handle_call(call, self.now);
                    for i in inputs {
                        self.send(i);
                    }
                }
                Output::CancelStream(call) => {
                    if let Some(name) = self.node.streams.remove(&call) {
                        self.node.stream_closed(&name);
                    }
                }
                Output::Event(ev) => self.on_event(ev, &mut connected_in_batch),
            }
        }
        let _ = (saw_connect_call, first_after_connect);
        if connected_in_batch && self.session.is_connected() {
            for name in self.session.subscriptions() {
                assert!(
                    subscribed_in_batch.contains(name),
                    "subscription {name} not restored after connect (nor waiting for an unsubscribe)"
                );
            }
        }
    }

    fn on_event(&mut self, ev: SessionEvent, connected_in_batch: &mut bool) {
        match &ev {
            SessionEvent::Completed { op, result } => {
                assert!(self.issued.contains(op), "Completed for unknown op {op:?}");
                assert!(
                    self.completed.insert(*op, result.clone()).is_none(),
                    "op {op:?} completed twice"
                );
                // An ack of the application's that failed leaves the event unhandled:
                // the node's redelivery is handed over again.
                if let Some(key) = self.app_ack_ops.remove(op) {
                    if result.is_err() {
                        *self.failed_handlers.entry(key).or_insert(0) += 1;
                    }
                }
            }
            SessionEvent::State(ConnectionState::Reconnecting { attempt, delay }) => {
                assert!(
                    *attempt >= 1 && *attempt <= self.max_attempts,
                    "attempt {attempt} out of range"
                );
                assert_eq!(
                    *attempt,
                    self.last_attempt + 1,
                    "attempts must count up by one"
                );
                assert_eq!(
                    Some(delay),
                    self.backoff.get(*attempt as usize - 1),
                    "backoff delay"
                );
                self.last_attempt = *attempt;
                self.reconnect_not_before = Some(self.now + *delay);
                self.reconnects += 1;
            }
            SessionEvent::State(ConnectionState::Connected { client_id, .. }) => {
                assert_eq!(Some(client_id.as_str()), self.node.client_id.as_deref());
                self.last_attempt = 0;
                self.connects += 1;
                *connected_in_batch = true;
            }
            SessionEvent::State(ConnectionState::Closed { .. }) => {
                self.running.clear();
            }
            SessionEvent::Delivery(d) => {
                let key = (d.event_name.clone(), d.idem.clone());
                let n = self.handed.entry(key.clone()).or_insert(0);
                *n += 1;
                let allowed = 1 + self.failed_handlers.get(&key).copied().unwrap_or(0);
                assert!(
                    *n <= allowed,
                    "event {key:?} handed over {n} times (allowed {allowed})"
                );
                if self.handler_mode == HandlerMode::AutoOk {
                    if d.auto_ack {
                        self.finished_ok_auto.insert(key);
                    }
                    self.session
                        .handler_finished(d.token, HandlerOutcome::Ok, self.now);
                } else {
                    self.running.insert(
                        d.token,
                        (d.event_name.clone(), d.idem.clone(), d.block, d.auto_ack),
                    );
                }
            }
            _ => {}
        }
        self.events.push(ev);
    }

    /// The application acks an event itself (counted apart from the session's own acks).
    pub fn ack(&mut self, name: &str, idem: &str, block: i64) -> Result<OpId, SessionError> {
        let r = self.session.ack(name, idem, block, self.now);
        if let Ok(op) = r {
            *self
                .app_acks
                .entry((name.to_owned(), idem.to_owned()))
                .or_insert(0) += 1;
            self.app_ack_ops
                .insert(op, (name.to_owned(), idem.to_owned()));
        }
        self.track_result(r)
    }

    /// The application defers an event: it may be handed over once more.
    pub fn defer(
        &mut self,
        name: &str,
        idem: &str,
        delay: Duration,
        reason: &str,
    ) -> Result<OpId, SessionError> {
        let r = self.session.defer(name, idem, delay, reason, self.now);
        if r.is_ok() {
            *self
                .failed_handlers
                .entry((name.to_owned(), idem.to_owned()))
                .or_insert(0) += 1;
        }
        self.track_result(r)
    }

    /// Finishes a running delivery.
    pub fn finish(&mut self, token: DeliveryToken, outcome: HandlerOutcome) {
        if let Some((name, idem, _, auto_ack)) = self.running.remove(&token) {
            let key = (name, idem);
            match outcome {
                HandlerOutcome::Ok if auto_ack => {
                    self.finished_ok_auto.insert(key);
                }
                HandlerOutcome::Failed => *self.failed_handlers.entry(key).or_insert(0) += 1,
                _ => {}
            }
        }
        self.session.handler_finished(token, outcome, self.now);
        self.run_idle();
    }

    /// Puts an input in transit. The transport is in order: an input is never due
    /// before one sent earlier (latency changes do not reorder).
    fn send(&mut self, input: Input) {
        let last = self.in_transit.back().map(|(t, _, _)| *t);
        let due = (self.now + self.latency).max(last.unwrap_or(self.now));
        self.in_transit.push_back((due, self.transport, input));
    }

    /// Delivers every input due now, lets the node push, drains; until nothing moves.
    pub fn run_idle(&mut self) {
        for _ in 0..100_000 {
            self.drain();
            let pushed = self.node.pump(self.now);
            for i in pushed {
                self.send(i);
            }
            let due = self
                .in_transit
                .front()
                .is_some_and(|(t, _, _)| *t <= self.now);
            match due {
                true => {
                    let (_, transport, input) = self.in_transit.pop_front().expect("not empty");
                    // A dropped transport delivers nothing more.
                    if transport.is_some() && transport == self.transport {
                        self.session.handle_input(input, self.now);
                    }
                }
                false => {
                    self.drain();
                    if self.session.poll_timeout().is_some_and(|t| t <= self.now) {
                        self.session.handle_timeout(self.now);
                        continue;
                    }
                    return;
                }
            }
        }
        panic!("pair did not settle");
    }

    /// Jumps to the next wake-up (an input in transit, a session timer, a node timer)
    /// if it is at or before `limit`; returns whether time moved.
    pub fn step(&mut self, limit: Instant) -> bool {
        self.run_idle();
        let next = [
            self.in_transit.iter().map(|(t, _, _)| *t).min(),
            self.session.poll_timeout(),
            self.node.next_wake(),
        ]
        .into_iter()
        .flatten()
        .min();
        match next {
            Some(t) if t <= limit => {
                if t > self.now {
                    self.now = t;
                }
                self.session.handle_timeout(self.now);
                self.run_idle();
                true
            }
            _ => false,
        }
    }

    /// Runs simulated time forward by `d`, jumping from wake-up to wake-up.
    pub fn advance(&mut self, d: Duration) {
        let limit = self.now + d;
        let mut guard = 0;
        while self.step(limit) {
            guard += 1;
            assert!(guard < 100_000, "too many wake-ups");
        }
        self.now = limit;
        self.session.handle_timeout(self.now);
        self.run_idle();
    }

    /// The transport drops (the node side sees it first).
    pub fn drop_connection(&mut self) {
        self.in_transit.clear();
        self.node.end_session();
        if let Some(conn) = self.transport.take() {
            self.session.handle_input(
                Input::Disconnected {
                    conn,
                    reason: "connection reset".into(),
                },
                self.now,
            );
        }
        self.run_idle();
    }

    /// Ends the stream of `name` with a status.
    pub fn end_stream(&mut self, name: &str, error: Option<RpcError>) {
        let calls: Vec<CallId> = self
            .node
            .streams
            .iter()
            .filter(|(_, n)| *n == name)
            .map(|(c, _)| *c)
            .collect();
        for call in calls {
            self.node.streams.remove(&call);
            self.session.handle_input(
                Input::StreamEnded {
                    call,
                    error: error.clone(),
                },
                self.now,
            );
        }
        self.run_idle();
    }

    pub fn deliveries(&self) -> Vec<&ensync_proto::session::Delivery> {
        self.events
            .iter()
            .filter_map(|e| match e {
                SessionEvent::Delivery(d) => Some(d),
                _ => None,
            })
            .collect()
    }

    pub fn states(&self) -> Vec<&ConnectionState> {
        self.events
            .iter()
            .filter_map(|e| match e {
                SessionEvent::State(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    /// Calls of `kind` the node received.
    pub fn node_calls(&self, kind: RequestKind) -> Vec<&Request> {
        self.node
            .log
            .iter()
            .filter(|(k, _, _)| *k == kind)
            .map(|(_, _, r)| r)
            .collect()
    }

    /// Asserts the node never saw two acks of one event from one session, apart from
    /// the acks the application sent itself.
    pub fn check_acks_once(&self) {
        for ((cid, name, idem), n) in &self.node.acks {
            let by_app = self
                .app_acks
                .get(&(name.clone(), idem.clone()))
                .copied()
                .unwrap_or(0);
            assert!(
                n.saturating_sub(by_app) <= 1,
                "event {name}/{idem} acked {n} times in session {cid} ({by_app} by the app)"
            );
        }
    }
}
