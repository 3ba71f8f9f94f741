//! Fuzz entry point: the session state machine.
//!
//! The data is read as a little program, one instruction per byte (plus operand bytes):
//! application commands, transport inputs (replies of the right or the wrong type to
//! calls the session made or never made, stream events, disconnects), and time jumps.
//! The session must never panic, and never complete one operation twice.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rand_core::{CryptoRng, RngCore};

use crate::envelope;
use crate::keys::SecretKey;
use crate::session::{
    CLOSE_GRACE, Call, CallId, ConnectionId, DeliveryToken, GenerationChoice, HandlerOutcome,
    Input, OpId, Output, PublishOptions, Reply, Request, RpcCode, RpcError, Session, SessionConfig,
    SessionEvent, SubscribeOptions,
};
use crate::wire;

const NAMES: [&str; 4] = ["a", "b", "c/d", "bad name"];
const IDEMS: [&str; 4] = ["e1", "e2", "e3", ""];

/// A deterministic generator for fuzzing only (not secure).
struct FuzzRng(u64);

impl RngCore for FuzzRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for FuzzRng {}

struct Fixtures {
    key: Arc<SecretKey>,
    recipient: String,
    /// Payloads: a valid envelope of a JSON object, one of non-JSON, one for another key.
    payloads: [String; 4],
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let key = Arc::new(SecretKey::from_seed(&[7u8; 32]));
        let other = SecretKey::from_seed(&[9u8; 32]);
        let mut rng = FuzzRng(1);
        let payloads = [
            envelope::encrypt_single(br#"{"n":1}"#, key.public_key(), &mut rng),
            envelope::encrypt_single(b"not json", key.public_key(), &mut rng),
            envelope::encrypt_single(br#"{"n":2}"#, other.public_key(), &mut rng),
            "garbage".to_owned(),
        ];
        Fixtures {
            recipient: key.public_key().to_base64(),
            key,
            payloads,
        }
    })
}

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn next(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn byte(&mut self) -> u8 {
        self.next().unwrap_or(0)
    }
}

/// A reply of the type `request` expects.
fn matching_reply(request: &Request, success: bool, n: u8) -> Reply {
    let message = String::from("m");
    match request {
        Request::Connect(_) => Reply::Connect(wire::ConnectResponse {
            success,
            client_id: format!("client-{n}"),
            client_hash: "hash".into(),
            error_message: message,
            ..Default::default()
        }),
        Request::Heartbeat(_) => Reply::Heartbeat(wire::HeartbeatResponse { success }),
        Request::Publish(_) => Reply::Publish(wire::PublishEventResponse {
            success,
            event_idem: format!("e{n}"),
            error_message: message,
        }),
        Request::Unsubscribe(_) | Request::Subscribe(_) => {
            Reply::Unsubscribe(wire::UnsubscribeResponse { success, message })
        }
        Request::Ack(_) => Reply::Ack(wire::AcknowledgeResponse { success, message }),
        Request::Defer(_) => Reply::Defer(wire::DeferResponse {
            success,
            message,
            delivery_time: i64::from(n),
        }),
        Request::Discard(_) => Reply::Discard(wire::DiscardResponse { success, message }),
        Request::Replay(_) => Reply::Replay(wire::ReplayResponse {
            success,
            message,
            event_data: fixtures().payloads[usize::from(n % 4)].clone(),
        }),
        Request::Pause(_) => Reply::Pause(wire::PauseResponse { success, message }),
        Request::Continue(_) => Reply::Continue(wire::ContinueResponse { success, message }),
    }
}

fn code(b: u8) -> RpcCode {
    match b % 8 {
        0 => RpcCode::Unimplemented,
        1 => RpcCode::Unavailable,
        2 => RpcCode::Internal,
        3 => RpcCode::Unauthenticated,
        4 => RpcCode::DeadlineExceeded,
        5 => RpcCode::Cancelled,
        n => RpcCode::Other(i32::from(n)),
    }
}

struct Driver {
    session: Session,
    now: Instant,
    /// The attempt of the last `Output::Connect`.
    conn: ConnectionId,
    calls: Vec<Call>,
    tokens: Vec<DeliveryToken>,
    issued: BTreeSet<OpId>,
    completed: BTreeSet<OpId>,
}

impl Driver {
    fn drain(&mut self) {
        while let Some(out) = self.session.poll_output() {
            match out {
                Output::Call(call) => {
                    if self.calls.len() >= 64 {
                        self.calls.remove(0);
                    }
                    self.calls.push(call);
                }
                Output::Event(SessionEvent::Delivery(d)) => {
                    if self.tokens.len() >= 64 {
                        self.tokens.remove(0);
                    }
                    self.tokens.push(d.token);
                }
                Output::Event(SessionEvent::Completed { op, .. }) => {
                    assert!(self.completed.insert(op), "op {op:?} completed twice");
                }
                Output::Connect { conn, endpoint } => {
                    assert!(
                        endpoint < self.session.config().get_endpoints(),
                        "endpoint {endpoint} out of range"
                    );
                    self.conn = conn;
                }
                Output::Disconnect => self.calls.clear(),
                _ => {}
            }
        }
    }

    fn track(&mut self, r: Result<OpId, crate::session::SessionError>) {
        if let Ok(op) = r {
            assert!(self.issued.insert(op), "op id reused");
        }
    }

    fn pick_call(&self, b: u8) -> Option<Call> {
        if self.calls.is_empty() {
            None
        } else {
            Some(self.calls[usize::from(b) % self.calls.len()].clone())
        }
    }

    fn step(&mut self, op: u8, data: &mut Bytes<'_>) {
        let now = self.now;
        let f = fixtures();
        match op % 18 {
            0 => {
                let op = self.session.open(now);
                self.track(Ok(op));
            }
            1 => {
                let b = data.byte();
                let mut opts = SubscribeOptions::default().auto_ack(b & 0x10 == 0);
                if b & 0x20 != 0 {
                    opts = opts.secret_key(f.key.clone());
                }
                let r = self.session.subscribe(NAMES[usize::from(b % 4)], opts, now);
                self.track(r);
            }
            2 => {
                let b = data.byte();
                let r = self.session.unsubscribe(NAMES[usize::from(b % 4)], now);
                self.track(r);
            }
            3 => {
                let b = data.byte();
                let recipients: Vec<&str> = match b % 4 {
                    0 => vec![f.recipient.as_str()],
                    1 => vec![f.recipient.as_str(), f.recipient.as_str()],
                    2 => vec![f.recipient.as_str(), "bad"],
                    _ => vec![],
                };
                let payload = if b & 0x40 == 0 {
                    serde_json::json!({"k": b})
                } else {
                    serde_json::json!([b])
                };
                let opts = PublishOptions::default().hybrid(b & 0x80 != 0);
                let r = self.session.publish(
                    NAMES[usize::from((b >> 2) % 4)],
                    &recipients,
                    &payload,
                    None,
                    opts,
                    now,
                );
                self.track(r);
            }
            4 => {
                let b = data.byte();
                let name = NAMES[usize::from(b % 4)];
                let idem = IDEMS[usize::from((b >> 2) % 4)];
                let c = data.byte();
                let r = match c % 6 {
                    0 => self.session.ack(name, idem, i64::from(c >> 3), now),
                    1 => self.session.defer(
                        name,
                        idem,
                        Duration::from_millis(u64::from(c) * 100),
                        "r",
                        now,
                    ),
                    2 => self.session.discard(name, idem, "r", now),
                    3 => self.session.replay(name, idem, now),
                    4 => self.session.pause(name, "r", now),
                    _ => self.session.resume(name, now),
                };
                self.track(r);
            }
            5 => {
                let b = data.byte();
                if !self.tokens.is_empty() {
                    let t = self.tokens[usize::from(b) % self.tokens.len()];
                    let outcome = if b & 0x80 == 0 {
                        HandlerOutcome::Ok
                    } else {
                        HandlerOutcome::Failed
                    };
                    self.session.handler_finished(t, outcome, now);
                }
            }
            6 => {
                let op = self.session.close(now);
                self.track(Ok(op));
            }
            7 => self
                .session
                .handle_input(Input::Connected { conn: self.conn }, now),
            8 => self.session.handle_input(
                Input::Disconnected {
                    conn: self.conn,
                    reason: "x".into(),
                },
                now,
            ),
            9..=11 => {
                // Reply to a call the session made.
                let b = data.byte();
                let c = data.byte();
                if let Some(call) = self.pick_call(b) {
                    let input = if call.is_streaming() {
                        if c & 1 == 0 {
                            Input::StreamOpened { call: call.id }
                        } else {
                            Input::StreamEnded {
                                call: call.id,
                                error: (c & 2 != 0).then(|| RpcError::new(code(c >> 2), "e")),
                            }
                        }
                    } else {
                        let result = match c % 8 {
                            0..=4 => Ok(matching_reply(&call.request, c % 5 != 4, c)),
                            5 => Ok(Reply::Heartbeat(wire::HeartbeatResponse { success: true })),
                            _ => Err(RpcError::new(code(c >> 3), "e")),
                        };
                        Input::Reply {
                            call: call.id,
                            result,
                        }
                    };
                    self.session.handle_input(input, now);
                }
            }
            12 | 13 => {
                let b = data.byte();
                let c = data.byte();
                let event = wire::EventStreamResponse {
                    event_idem: IDEMS[usize::from(b % 4)].to_owned(),
                    event_name: NAMES[usize::from((b >> 2) % 4)].to_owned(),
                    payload: f.payloads[usize::from((b >> 4) % 4)].clone(),
                    partition_block: i64::from(c % 4),
                    metadata: match c >> 6 {
                        0 => String::new(),
                        1 => "{\"a\":1}".to_owned(),
                        2 => "[1]".to_owned(),
                        _ => "not json".to_owned(),
                    },
                    sender: "s".to_owned(),
                };
                // On a subscribe stream the session opened (or, rarely, on a call that
                // is not one: such items must be ignored).
                let streams: Vec<CallId> = self
                    .calls
                    .iter()
                    .filter(|c| c.is_streaming())
                    .map(|c| c.id)
                    .collect();
                let call = if streams.is_empty() || b == 0xff {
                    CallId::from_raw(u64::MAX)
                } else {
                    streams[usize::from(c) % streams.len()]
                };
                let logged_at = (c & 0x10 != 0).then_some(1_700_000_000_000);
                self.session.handle_input(
                    Input::StreamItem {
                        call,
                        event,
                        logged_at,
                    },
                    now,
                );
            }
            14 => {
                let b = data.byte();
                self.now += Duration::from_millis(u64::from(b) * 250);
                self.session.handle_timeout(self.now);
            }
            15 => {
                if let Some(t) = self.session.poll_timeout() {
                    if t > self.now {
                        self.now = t;
                    }
                }
                self.session.handle_timeout(self.now);
            }
            16 => {
                // Inputs about calls that never existed.
                let b = data.byte();
                let call = CallId::from_raw(u64::from(b));
                let conn = ConnectionId::from_raw(u64::from(b));
                let input = match b % 5 {
                    0 => Input::StreamOpened { call },
                    1 => Input::StreamEnded { call, error: None },
                    // Facts about a transport attempt that is not the current one.
                    2 if conn != self.conn => Input::Connected { conn },
                    3 if conn != self.conn => Input::Disconnected {
                        conn,
                        reason: "stale".into(),
                    },
                    _ => Input::Reply {
                        call,
                        result: Ok(Reply::Ack(wire::AcknowledgeResponse::default())),
                    },
                };
                self.session.handle_input(input, now);
            }
            _ => {
                // Time never goes backwards for the session, but handle_timeout may be
                // called early.
                self.session.handle_timeout(self.now);
            }
        }
        self.drain();
    }
}

/// Feeds arbitrary bytes to the session as a program of commands, inputs and time
/// jumps; must never panic.
pub fn run(data: &[u8]) {
    let mut bytes = Bytes(data);
    let flags = bytes.byte();
    let generation = match flags % 3 {
        0 => GenerationChoice::default(),
        1 => GenerationChoice::Pinned(crate::session::Generation::Event),
        _ => GenerationChoice::Auto(crate::session::Generation::Event),
    };
    let config = SessionConfig::new("key")
        .secret_key(fixtures().key.clone())
        .rng(Box::new(FuzzRng(u64::from(flags))))
        .generation(generation)
        .heartbeat_interval((flags & 4 == 0).then_some(Duration::from_secs(3)))
        .reconnect_interval(Duration::from_millis(500))
        .max_reconnect_attempts(u32::from(flags >> 5))
        .endpoints(if flags & 8 == 0 { 1 } else { 3 })
        .request_timeout(Duration::from_secs(2))
        .dedup_capacity(usize::from(flags >> 4 & 3) * 2)
        .max_in_flight(8);
    let now = Instant::now();
    let mut driver = Driver {
        session: Session::new(config, now),
        now,
        conn: ConnectionId::from_raw(0),
        calls: Vec::new(),
        tokens: Vec::new(),
        issued: BTreeSet::new(),
        completed: BTreeSet::new(),
    };
    let mut steps = 0;
    while let Some(op) = bytes.next() {
        driver.step(op, &mut bytes);
        steps += 1;
        if steps > 4096 {
            break;
        }
    }
    for op in &driver.completed {
        assert!(driver.issued.contains(op), "completed an op never issued");
    }
    // Closing completes everything that was pending. A close first waits (at most
    // CLOSE_GRACE) for automatic acks under way and for running auto-ack handlers: step
    // time through that grace, as the transport's timer would.
    let close = driver.session.close(driver.now);
    driver.track(Ok(close));
    driver.drain();
    let limit = driver.now + CLOSE_GRACE;
    while !driver.session.is_closed() {
        match driver.session.poll_timeout() {
            Some(t) if t <= limit => {
                driver.now = driver.now.max(t);
                driver.session.handle_timeout(driver.now);
                driver.drain();
            }
            _ => break,
        }
    }
    assert!(
        driver.session.is_closed(),
        "a close ends within CLOSE_GRACE"
    );
    assert_eq!(
        driver.issued, driver.completed,
        "every op completes exactly once"
    );
}
