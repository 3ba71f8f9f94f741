//! The client side of the WebSocket protocol (PROTOCOL.md section 3), sans-IO.
//!
//! A [`WsClient`] sits between the [`session`](crate::session) and one WebSocket
//! connection. It turns the session's calls into text requests, keeps the queue of
//! requests sent and not yet answered (the node answers in request order, with no
//! correlation id: each `+PASS`, `+REPLAY` or `-FAIL` completes the oldest one), turns
//! the node's frames into the session's [`Input`]s, answers `PING` with `PONG`, and owns
//! liveness: it asks for a WebSocket ping every interval and declares the connection
//! lost when nothing at all arrived for two intervals. It does no IO and reads no
//! clock; an adapter moves its [`WsTransmit`]s to the socket and the socket's frames
//! into [`WsClient::handle_text`].
//!
//! Protocol decisions made here, once for every adapter:
//!
//! - `+RECORD` pushes go to the stream of the `SUB` call of their own name (after the
//!   node's `+PASS` to that `SUB`); records of names nobody subscribes to are dropped
//!   (the node delivers them again elsewhere);
//! - a `-FAIL:not authenticated` answer means the node no longer knows the session: to a
//!   `SUB` it ends the stream with `UNAUTHENTICATED` (the session reconnects, as for a
//!   gRPC node's status); to any other call it is the call's refusal (`success =
//!   false`), which makes the session probe with a heartbeat;
//! - the protocol has no heartbeat request, so a [`Request::Heartbeat`] is answered
//!   from what the node said last: refused if its latest answer was `not
//!   authenticated`, accepted otherwise (liveness itself is the ping timer). So the
//!   session's probe after a refused call finds a forgotten session over WebSocket as
//!   it does over gRPC, and reconnects;
//! - a `DEFER` answer without a delivery time gets the wall-clock time the adapter
//!   passes in (`unix_ms`) plus the delay.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use ensync_proto::session::{Call, CallId, Generation, Input, Reply, Request};
//! use ensync_proto::wire;
//! use ensync_proto::ws_client::{WsClient, WsTransmit};
//!
//! let now = Instant::now();
//! let mut ws = WsClient::new(Duration::from_secs(30), now);
//! // The session asked for `Connect`: it becomes a `CONN` frame.
//! ws.call(Call {
//!     id: CallId::from_raw(1),
//!     generation: Generation::Message,
//!     request: Request::Connect(wire::ConnectRequest { access_key: "key".into() }),
//! });
//! assert_eq!(ws.poll_transmit(), Some(WsTransmit::Text("CONN;ACCESS_KEY=:key".into())));
//! // The node's answer becomes the session's input for that call.
//! ws.handle_text("+PASS:{clientId=c1,clientHash=KEY}", now, 0);
//! match ws.poll_input() {
//!     Some(Input::Reply { call, result: Ok(Reply::Connect(r)) }) => {
//!         assert_eq!(call, CallId::from_raw(1));
//!         assert_eq!(r.client_id, "c1");
//!     }
//!     other => panic!("{other:?}"),
//! }
//! ```

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::session::{Call, CallId, Input, Reply, Request, RpcCode, RpcError};
use crate::wire;
use crate::ws::{WsRecord, WsRequest, WsServerFrame, parse_conn_pass};

/// What the adapter must write to the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsTransmit {
    /// A text frame.
    Text(String),
    /// A WebSocket ping control frame (liveness).
    Ping,
}

/// A request sent and not yet answered.
#[derive(Debug)]
struct Pending {
    call: CallId,
    request: WsRequest,
}

/// The node's refusal text that means "this session is unknown".
const NOT_AUTHENTICATED: &str = "not authenticated";

/// The client side of one WebSocket connection. See the [module docs](self).
#[derive(Debug)]
pub struct WsClient {
    ping_interval: Duration,
    pending: VecDeque<Pending>,
    /// Event name -> the `SUB` call whose stream carries it (after the node's `+PASS`).
    streams: HashMap<String, CallId>,
    transmits: VecDeque<WsTransmit>,
    inputs: VecDeque<Input>,
    last_heard: Instant,
    next_ping: Instant,
    lost: Option<String>,
    /// The node's latest answer refused the session as unknown.
    unauthenticated: bool,
    /// Frames that were neither readable nor expected.
    ignored: u64,
}

impl WsClient {
    /// A client for a connection that just opened at `now`, pinging every
    /// `ping_interval` (at least 10 ms) and lost after two silent intervals.
    pub fn new(ping_interval: Duration, now: Instant) -> Self {
        let ping_interval = ping_interval.max(Duration::from_millis(10));
        WsClient {
            ping_interval,
            pending: VecDeque::new(),
            streams: HashMap::new(),
            transmits: VecDeque::new(),
            inputs: VecDeque::new(),
            last_heard: now,
            next_ping: now + ping_interval,
            lost: None,
            unauthenticated: false,
            ignored: 0,
        }
    }

    /// Sends a call of the session. Its result comes back through
    /// [`WsClient::poll_input`]: a `Reply` for a unary call; `StreamOpened` (or
    /// `StreamEnded` with an error) for a subscribe, then its items.
    pub fn call(&mut self, call: Call) {
        if self.lost.is_some() {
            self.fail_call(call.id, call.request.is_streaming(), self.lost_error());
            return;
        }
        if let Request::Heartbeat(_) = call.request {
            self.inputs.push_back(Input::Reply {
                call: call.id,
                result: Ok(Reply::Heartbeat(wire::HeartbeatResponse {
                    success: !self.unauthenticated,
                })),
            });
            return;
        }
        let streaming = call.request.is_streaming();
        let request = match to_ws(call.request) {
            Ok(request) => request,
            Err(e) => return self.fail_call(call.id, streaming, e),
        };
        // Never send a frame the node would read differently (3: INVALID_ARGUMENT).
        match request.try_encode() {
            Ok(frame) => {
                self.transmits.push_back(WsTransmit::Text(frame));
                self.pending.push_back(Pending {
                    call: call.id,
                    request,
                });
            }
            Err(e) => self.fail_call(
                call.id,
                streaming,
                RpcError::new(RpcCode::Other(3), e.to_string()),
            ),
        }
    }

    /// The session cancelled a subscribe stream: its records are no longer routed.
    pub fn cancel_stream(&mut self, call: CallId) {
        self.streams.retain(|_, c| *c != call);
    }

    /// A text frame arrived at `now`; `unix_ms` is the wall-clock time (epoch ms), used
    /// only for a `DEFER` answer that carries no delivery time.
    pub fn handle_text(&mut self, text: &str, now: Instant, unix_ms: i64) {
        if self.lost.is_some() {
            return;
        }
        self.last_heard = now;
        let frame = match WsServerFrame::parse(text) {
            Ok(frame) => frame,
            // An unreadable frame is not an answer: the FIFO is left as it is.
            Err(_) => {
                self.ignored += 1;
                return;
            }
        };
        match frame {
            WsServerFrame::Ping => self
                .transmits
                .push_back(WsTransmit::Text(WsRequest::Pong.encode())),
            WsServerFrame::Record(record) => self.route(record),
            answer => self.answer(answer, unix_ms),
        }
    }

    /// Any other frame (a pong, a ping, binary) arrived: the node is alive.
    pub fn handle_other_frame(&mut self, now: Instant) {
        self.last_heard = now;
    }

    /// Liveness: at each ping time, declares the connection lost if nothing arrived for
    /// two intervals, or asks for a ping.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.lost.is_some() || now < self.next_ping {
            return;
        }
        let silent = now.saturating_duration_since(self.last_heard);
        if silent > self.ping_interval * 2 {
            self.connection_lost(format!("nothing heard from the node for {silent:?}"));
            return;
        }
        self.transmits.push_back(WsTransmit::Ping);
        self.next_ping = now + self.ping_interval;
    }

    /// The socket ended (or failed): every call still waiting fails and every stream
    /// ends with `UNAVAILABLE`, so the session reconnects and resubscribes.
    pub fn connection_lost(&mut self, reason: impl Into<String>) {
        if self.lost.is_some() {
            return;
        }
        self.lost = Some(reason.into());
        let error = self.lost_error();
        for pending in std::mem::take(&mut self.pending) {
            let streaming = matches!(pending.request, WsRequest::Sub { .. });
            self.fail_call(pending.call, streaming, error.clone());
        }
        let mut open: Vec<CallId> = self.streams.drain().map(|(_, c)| c).collect();
        open.sort();
        open.dedup();
        for call in open {
            self.inputs.push_back(Input::StreamEnded {
                call,
                error: Some(error.clone()),
            });
        }
    }

    /// Why the connection is lost, once it is: the adapter closes the socket.
    pub fn lost(&self) -> Option<&str> {
        self.lost.as_deref()
    }

    /// When [`WsClient::handle_timeout`] must be called next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.lost.is_none().then_some(self.next_ping)
    }

    /// The next frame to write.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<WsTransmit> {
        self.transmits.pop_front()
    }

    /// The next fact for the session.
    #[must_use]
    pub fn poll_input(&mut self) -> Option<Input> {
        self.inputs.pop_front()
    }

    /// How many frames were ignored: unreadable, or an answer with no request waiting.
    pub fn ignored_frames(&self) -> u64 {
        self.ignored
    }

    /// How many requests wait for their answer.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn lost_error(&self) -> RpcError {
        RpcError::new(
            RpcCode::Unavailable,
            self.lost
                .clone()
                .unwrap_or_else(|| "the WebSocket connection was lost".to_owned()),
        )
    }

    fn fail_call(&mut self, call: CallId, streaming: bool, error: RpcError) {
        self.inputs.push_back(if streaming {
            Input::StreamEnded {
                call,
                error: Some(error),
            }
        } else {
            Input::Reply {
                call,
                result: Err(error),
            }
        });
    }

    fn route(&mut self, record: WsRecord) {
        let Some(&call) = self.streams.get(&record.name) else {
            return;
        };
        let logged_at = record.logged_at;
        self.inputs.push_back(Input::StreamItem {
            call,
            event: record.into_stream_event(),
            logged_at,
        });
    }

    fn answer(&mut self, answer: WsServerFrame, unix_ms: i64) {
        let Some(Pending { call, request }) = self.pending.pop_front() else {
            // An answer to nothing (lenient: some node's greeting, a duplicate): ignored.
            self.ignored += 1;
            return;
        };
        self.unauthenticated =
            matches!(&answer, WsServerFrame::Fail(reason) if reason.trim() == NOT_AUTHENTICATED);
        if let WsRequest::Sub { event_name, .. } = &request {
            match answer {
                WsServerFrame::Pass(_) => {
                    self.inputs.push_back(Input::StreamOpened { call });
                    // One stream per name: a newer `SUB` of the name takes its records,
                    // and the older stream ends.
                    if let Some(older) = self.streams.insert(event_name.clone(), call) {
                        if older != call {
                            self.inputs.push_back(Input::StreamEnded {
                                call: older,
                                error: None,
                            });
                        }
                    }
                }
                WsServerFrame::Fail(reason) => {
                    let code = if self.unauthenticated {
                        RpcCode::Unauthenticated
                    } else {
                        RpcCode::Other(9) // FAILED_PRECONDITION
                    };
                    self.fail_call(call, true, RpcError::new(code, reason));
                }
                other => self.fail_call(
                    call,
                    true,
                    RpcError::new(
                        RpcCode::Internal,
                        format!("unexpected answer to SUB: {other:?}"),
                    ),
                ),
            }
            return;
        }
        let result = to_reply(&request, answer, unix_ms);
        self.inputs.push_back(Input::Reply { call, result });
    }
}

/// The text request for a session call.
fn to_ws(request: Request) -> Result<WsRequest, RpcError> {
    Ok(match request {
        Request::Connect(r) => WsRequest::Conn {
            access_key: r.access_key,
        },
        Request::Publish(r) => WsRequest::Pub {
            client_id: r.client_id,
            event_name: r.event_name,
            payload: r.payload,
            delivery_to: r.delivery_to,
            metadata: if r.metadata.is_empty() {
                "{}".to_owned()
            } else {
                r.metadata
            },
            // Not sent: the published WebSocket clients (Python, npm) never send it, so
            // every node reads a frame without it.
            payload_metadata: None,
        },
        Request::Subscribe(r) => WsRequest::Sub {
            client_id: r.client_id,
            event_name: r.event_name,
        },
        Request::Unsubscribe(r) => WsRequest::Unsub {
            client_id: r.client_id,
            event_name: r.event_name,
        },
        Request::Ack(r) => WsRequest::Ack {
            client_id: r.client_id,
            event_idem: r.event_idem,
            block: r.partition_block,
            event_name: r.event_name,
        },
        Request::Defer(r) => WsRequest::Defer {
            client_id: r.client_id,
            event_idem: r.event_idem,
            event_name: r.event_name,
            delay_ms: r.delay_ms,
            reason: r.reason,
        },
        Request::Discard(r) => WsRequest::Discard {
            client_id: r.client_id,
            event_idem: r.event_idem,
            event_name: r.event_name,
            reason: r.reason,
        },
        Request::Replay(r) => WsRequest::Replay {
            client_id: r.client_id,
            event_idem: r.event_idem,
            event_name: r.event_name,
        },
        Request::Pause(r) => WsRequest::Pause {
            client_id: r.client_id,
            event_name: r.event_name,
            reason: r.reason,
        },
        Request::Continue(r) => WsRequest::Continue {
            client_id: r.client_id,
            event_name: r.event_name,
        },
        Request::Heartbeat(_) => {
            return Err(RpcError::new(
                RpcCode::Unimplemented,
                "Heartbeat has no WebSocket request",
            ));
        }
    })
}

/// Reads `deliveryTime` from a `DEFER` answer (`{deliveryTime=<ms>}`, JSON, or a bare
/// number).
fn delivery_time(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(n) = text.parse() {
        return Some(n);
    }
    let at = text.find("deliveryTime")? + "deliveryTime".len();
    let rest = text[at..].trim_start_matches(['"', '=', ':', ' ']);
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The typed reply for an answer frame.
fn to_reply(request: &WsRequest, frame: WsServerFrame, unix_ms: i64) -> Result<Reply, RpcError> {
    let (ok, text) = match frame {
        WsServerFrame::Pass(text) => (true, text),
        WsServerFrame::Fail(reason) => (false, reason),
        WsServerFrame::Replay(value) => {
            return match request {
                WsRequest::Replay { .. } => Ok(Reply::Replay(match WsRecord::from_value(&value) {
                    Ok(record) => wire::ReplayResponse {
                        success: true,
                        message: String::new(),
                        event_data: record.payload,
                    },
                    Err(e) => wire::ReplayResponse {
                        success: false,
                        message: format!("unreadable +REPLAY answer: {e}"),
                        event_data: String::new(),
                    },
                })),
                other => Err(RpcError::new(
                    RpcCode::Internal,
                    format!("+REPLAY answer to {}", other.verb()),
                )),
            };
        }
        other => {
            return Err(RpcError::new(
                RpcCode::Internal,
                format!("unexpected answer {other:?}"),
            ));
        }
    };
    let message = |ok: bool, text: String| if ok { String::new() } else { text };
    Ok(match request {
        WsRequest::Conn { .. } => {
            let parsed = if ok {
                parse_conn_pass(&text).map_err(|e| format!("unreadable CONN answer: {e}"))
            } else {
                Err(text)
            };
            match parsed {
                Ok((client_id, client_hash)) => Reply::Connect(wire::ConnectResponse {
                    success: true,
                    client_id,
                    client_hash,
                    ..Default::default()
                }),
                Err(error_message) => Reply::Connect(wire::ConnectResponse {
                    success: false,
                    error_message,
                    ..Default::default()
                }),
            }
        }
        WsRequest::Pub { .. } => Reply::Publish(wire::PublishEventResponse {
            success: ok,
            event_idem: if ok {
                text.trim().to_owned()
            } else {
                String::new()
            },
            error_message: message(ok, text),
        }),
        WsRequest::Unsub { .. } => Reply::Unsubscribe(wire::UnsubscribeResponse {
            success: ok,
            message: message(ok, text),
        }),
        WsRequest::Ack { .. } | WsRequest::Rollback { .. } => {
            Reply::Ack(wire::AcknowledgeResponse {
                success: ok,
                message: message(ok, text),
            })
        }
        WsRequest::Defer { delay_ms, .. } => Reply::Defer(wire::DeferResponse {
            success: ok,
            delivery_time: if ok {
                delivery_time(&text).unwrap_or_else(|| unix_ms.saturating_add(*delay_ms))
            } else {
                0
            },
            message: message(ok, text),
        }),
        WsRequest::Discard { .. } => Reply::Discard(wire::DiscardResponse {
            success: ok,
            message: message(ok, text),
        }),
        WsRequest::Replay { .. } => {
            // Some nodes may answer a replay with `+PASS:<record json>`.
            match WsRecord::from_json(&text) {
                Ok(record) if ok => Reply::Replay(wire::ReplayResponse {
                    success: true,
                    message: String::new(),
                    event_data: record.payload,
                }),
                _ => Reply::Replay(wire::ReplayResponse {
                    success: false,
                    message: if ok {
                        "unreadable replay answer".to_owned()
                    } else {
                        text
                    },
                    event_data: String::new(),
                }),
            }
        }
        WsRequest::Pause { .. } => Reply::Pause(wire::PauseResponse {
            success: ok,
            message: message(ok, text),
        }),
        WsRequest::Continue { .. } => Reply::Continue(wire::ContinueResponse {
            success: ok,
            message: message(ok, text),
        }),
        other => {
            return Err(RpcError::new(
                RpcCode::Internal,
                format!("no reply type for {}", other.verb()),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Generation;

    const S: Duration = Duration::from_secs(1);

    fn call(id: u64, request: Request) -> Call {
        Call {
            id: CallId::from_raw(id),
            generation: Generation::Message,
            request,
        }
    }

    fn sub(id: u64, name: &str) -> Call {
        call(
            id,
            Request::Subscribe(wire::SubscribeRequest {
                client_id: "c".into(),
                event_name: name.into(),
            }),
        )
    }

    fn ack(id: u64) -> Call {
        call(
            id,
            Request::Ack(wire::AcknowledgeRequest {
                client_id: "c".into(),
                event_idem: "e".into(),
                event_name: "n".into(),
                partition_block: 1,
            }),
        )
    }

    fn texts(ws: &mut WsClient) -> Vec<String> {
        std::iter::from_fn(|| ws.poll_transmit())
            .map(|t| match t {
                WsTransmit::Text(t) => t,
                WsTransmit::Ping => "<ping>".to_owned(),
            })
            .collect()
    }

    fn inputs(ws: &mut WsClient) -> Vec<Input> {
        std::iter::from_fn(|| ws.poll_input()).collect()
    }

    #[test]
    fn answers_complete_requests_first_in_first_out() {
        let now = Instant::now();
        let mut ws = WsClient::new(30 * S, now);
        ws.call(ack(1));
        ws.call(ack(2));
        assert_eq!(texts(&mut ws).len(), 2);
        assert_eq!(ws.pending(), 2);
        ws.handle_text("-FAIL:unknown event", now, 0);
        ws.handle_text("+PASS:ok", now, 0);
        let got = inputs(&mut ws);
        let expect = |id: u64, ok: bool| Input::Reply {
            call: CallId::from_raw(id),
            result: Ok(Reply::Ack(wire::AcknowledgeResponse {
                success: ok,
                message: if ok {
                    String::new()
                } else {
                    "unknown event".into()
                },
            })),
        };
        assert_eq!(got, vec![expect(1, false), expect(2, true)]);
        assert_eq!(ws.pending(), 0);
        // An answer with nothing waiting is ignored, not a crash or a mismatch later.
        ws.handle_text("+PASS:stray", now, 0);
        assert!(inputs(&mut ws).is_empty());
        assert_eq!(ws.ignored_frames(), 1);
    }

    #[test]
    fn records_go_to_the_stream_of_their_name_after_the_sub_pass() {
        let now = Instant::now();
        let mut ws = WsClient::new(30 * S, now);
        ws.call(sub(7, "orders"));
        assert_eq!(texts(&mut ws), vec!["SUB;CLIENT_ID=:c;EVENT_NAME=:orders"]);
        let record = r#"+RECORD:{"name":"orders","idem":"e1","id":"e1","block":2,"loggedAt":1700000000000,"payload":"UA==","metadata":{},"sender":"s"}"#;
        // Before the node accepted the SUB, a record has no stream.
        ws.handle_text(record, now, 0);
        assert!(inputs(&mut ws).is_empty());
        ws.handle_text("+PASS:subscribed", now, 0);
        assert_eq!(
            inputs(&mut ws),
            vec![Input::StreamOpened {
                call: CallId::from_raw(7)
            }]
        );
        ws.handle_text(record, now, 0);
        match inputs(&mut ws).as_slice() {
            [
                Input::StreamItem {
                    call,
                    event,
                    logged_at,
                },
            ] => {
                assert_eq!(*call, CallId::from_raw(7));
                assert_eq!(event.event_idem, "e1");
                assert_eq!(event.partition_block, 2);
                assert_eq!(*logged_at, Some(1_700_000_000_000));
            }
            other => panic!("{other:?}"),
        }
        // Another name, or a cancelled stream: dropped.
        ws.handle_text(&record.replace("orders", "other"), now, 0);
        ws.cancel_stream(CallId::from_raw(7));
        ws.handle_text(record, now, 0);
        assert!(inputs(&mut ws).is_empty());
    }

    /// A second accepted `SUB` of a name takes its records; the older stream ends
    /// (found by the fuzz program: the older one was left open forever).
    #[test]
    fn a_newer_sub_of_a_name_ends_the_older_stream() {
        let now = Instant::now();
        let mut ws = WsClient::new(30 * S, now);
        ws.call(sub(1, "a"));
        ws.handle_text("+PASS:", now, 0);
        ws.call(sub(2, "a"));
        ws.handle_text("+PASS:", now, 0);
        let (one, two) = (CallId::from_raw(1), CallId::from_raw(2));
        assert_eq!(
            inputs(&mut ws),
            vec![
                Input::StreamOpened { call: one },
                Input::StreamOpened { call: two },
                Input::StreamEnded {
                    call: one,
                    error: None
                },
            ]
        );
        ws.handle_text(
            r#"+RECORD:{"name":"a","idem":"e","block":1,"payload":"UA=="}"#,
            now,
            0,
        );
        assert!(matches!(
            inputs(&mut ws).as_slice(),
            [Input::StreamItem { call, .. }] if *call == two
        ));
    }

    #[test]
    fn ping_is_answered_and_liveness_is_two_silent_intervals() {
        let start = Instant::now();
        let mut ws = WsClient::new(10 * S, start);
        ws.handle_text("PING", start, 0);
        assert_eq!(texts(&mut ws), vec!["PONG"]);
        assert_eq!(ws.poll_timeout(), Some(start + 10 * S));
        ws.handle_timeout(start + 10 * S);
        assert_eq!(ws.poll_transmit(), Some(WsTransmit::Ping));
        // Heard at 15 s (a pong): alive at 20 s and 30 s, lost at 40 s (25 s silent).
        ws.handle_other_frame(start + 15 * S);
        ws.handle_timeout(start + 20 * S);
        ws.handle_timeout(start + 30 * S);
        assert!(ws.lost().is_none());
        ws.call(ack(1));
        ws.handle_timeout(start + 40 * S);
        let reason = ws.lost().expect("lost").to_owned();
        assert!(reason.contains("nothing heard"), "{reason}");
        assert_eq!(ws.poll_timeout(), None);
        // The waiting call fails as a lost connection.
        let got = inputs(&mut ws);
        assert!(
            matches!(got.as_slice(), [Input::Reply { result: Err(e), .. }] if e.code == RpcCode::Unavailable),
            "{got:?}"
        );
    }

    #[test]
    fn a_lost_connection_fails_pending_calls_and_ends_open_streams() {
        let now = Instant::now();
        let mut ws = WsClient::new(30 * S, now);
        ws.call(sub(1, "a"));
        ws.handle_text("+PASS:", now, 0);
        ws.call(sub(2, "b"));
        let _ = inputs(&mut ws);
        ws.connection_lost("socket reset");
        let got = inputs(&mut ws);
        assert_eq!(got.len(), 2, "{got:?}");
        for input in &got {
            match input {
                Input::StreamEnded { error: Some(e), .. } => {
                    assert_eq!(e.code, RpcCode::Unavailable)
                }
                other => panic!("{other:?}"),
            }
        }
        // Calls after the loss fail at once.
        ws.call(ack(3));
        assert!(matches!(
            inputs(&mut ws).as_slice(),
            [Input::Reply { result: Err(_), .. }]
        ));
    }

    #[test]
    fn the_heartbeat_probe_reports_a_forgotten_session() {
        let now = Instant::now();
        let mut ws = WsClient::new(30 * S, now);
        let heartbeat = |id| {
            call(
                id,
                Request::Heartbeat(wire::HeartbeatRequest {
                    client_id: "c".into(),
                }),
            )
        };
        // No heartbeat frame exists: answered from the node's last word.
        ws.call(heartbeat(1));
        assert!(texts(&mut ws).is_empty());
        assert_eq!(
            inputs(&mut ws),
            vec![Input::Reply {
                call: CallId::from_raw(1),
                result: Ok(Reply::Heartbeat(wire::HeartbeatResponse { success: true })),
            }]
        );
        // The node forgot the session (it restarted): the call is refused...
        ws.call(ack(2));
        ws.handle_text("-FAIL:not authenticated", now, 0);
        assert!(matches!(
            inputs(&mut ws).as_slice(),
            [Input::Reply { result: Ok(Reply::Ack(r)), .. }] if !r.success && r.message == "not authenticated"
        ));
        // ... and the session's probe is refused, so it reconnects.
        ws.call(heartbeat(3));
        assert_eq!(
            inputs(&mut ws),
            vec![Input::Reply {
                call: CallId::from_raw(3),
                result: Ok(Reply::Heartbeat(wire::HeartbeatResponse { success: false })),
            }]
        );
        // A SUB refused that way ends its stream with UNAUTHENTICATED.
        ws.call(sub(4, "a"));
        ws.handle_text("-FAIL: not authenticated ", now, 0);
        match inputs(&mut ws).as_slice() {
            [Input::StreamEnded { error: Some(e), .. }] => {
                assert_eq!(e.code, RpcCode::Unauthenticated)
            }
            other => panic!("{other:?}"),
        }
        // Any other refusal is an ordinary `success = false`, and the probe passes again.
        ws.call(ack(5));
        ws.handle_text("-FAIL:no such event", now, 0);
        assert!(matches!(
            inputs(&mut ws).as_slice(),
            [Input::Reply { result: Ok(Reply::Ack(r)), .. }] if !r.success
        ));
        ws.call(heartbeat(6));
        assert!(matches!(
            inputs(&mut ws).as_slice(),
            [Input::Reply { result: Ok(Reply::Heartbeat(h)), .. }] if h.success
        ));
    }

    #[test]
    fn defer_times_come_from_the_answer_or_the_given_wall_clock() {
        assert_eq!(
            delivery_time("{deliveryTime=1700000000123}"),
            Some(1_700_000_000_123)
        );
        assert_eq!(delivery_time("{\"deliveryTime\": 42}"), Some(42));
        assert_eq!(delivery_time(" 77 "), Some(77));
        assert_eq!(delivery_time("deferred"), None);
        let now = Instant::now();
        let mut ws = WsClient::new(30 * S, now);
        let defer = |id| {
            call(
                id,
                Request::Defer(wire::DeferRequest {
                    client_id: "c".into(),
                    event_idem: "e".into(),
                    event_name: "n".into(),
                    delay_ms: 5_000,
                    priority: 0,
                    reason: String::new(),
                }),
            )
        };
        ws.call(defer(1));
        ws.call(defer(2));
        ws.handle_text("+PASS:{deliveryTime=1700000009999}", now, 1_000);
        ws.handle_text("+PASS:deferred", now, 1_000);
        let times: Vec<i64> = inputs(&mut ws)
            .into_iter()
            .map(|i| match i {
                Input::Reply {
                    result: Ok(Reply::Defer(d)),
                    ..
                } => d.delivery_time,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(times, vec![1_700_000_009_999, 6_000]);
    }

    #[test]
    fn answers_map_to_replies() {
        let conn = WsRequest::Conn {
            access_key: "k".into(),
        };
        let r = to_reply(
            &conn,
            WsServerFrame::Pass("{clientId=abc,clientHash=KEY=}".into()),
            0,
        )
        .unwrap();
        let Reply::Connect(c) = r else { panic!() };
        assert!(c.success);
        assert_eq!(
            (c.client_id.as_str(), c.client_hash.as_str()),
            ("abc", "KEY=")
        );
        let Reply::Connect(c) =
            to_reply(&conn, WsServerFrame::Fail("invalid access key".into()), 0).unwrap()
        else {
            panic!()
        };
        assert!(!c.success);
        assert_eq!(c.error_message, "invalid access key");

        let publish = to_ws(Request::Publish(wire::PublishEventRequest::default())).unwrap();
        let Reply::Publish(p) = to_reply(&publish, WsServerFrame::Pass("id-1".into()), 0).unwrap()
        else {
            panic!()
        };
        assert!(p.success);
        assert_eq!(p.event_idem, "id-1");

        let replay = WsRequest::Replay {
            client_id: "c".into(),
            event_idem: "e".into(),
            event_name: "n".into(),
        };
        let value = serde_json::json!({"name": "n", "idem": "e", "block": 3, "payload": "UA=="});
        let Reply::Replay(r) = to_reply(&replay, WsServerFrame::Replay(value), 0).unwrap() else {
            panic!()
        };
        assert!(r.success);
        assert_eq!(r.event_data, "UA==");
        // A +REPLAY for anything else is a protocol error.
        assert!(to_reply(&publish, WsServerFrame::Replay(serde_json::json!({})), 0).is_err());
    }

    #[test]
    fn refuses_to_send_ambiguous_frames() {
        let now = Instant::now();
        let mut ws = WsClient::new(30 * S, now);
        ws.call(call(
            1,
            Request::Publish(wire::PublishEventRequest {
                client_id: "c".into(),
                event_name: "x;PAYLOAD=:y".into(),
                ..Default::default()
            }),
        ));
        assert!(texts(&mut ws).is_empty(), "nothing sent");
        match inputs(&mut ws).as_slice() {
            [Input::Reply { result: Err(e), .. }] => assert_eq!(e.code, RpcCode::Other(3)),
            other => panic!("{other:?}"),
        }
        assert_eq!(ws.pending(), 0);
    }
}
