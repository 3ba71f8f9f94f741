//! Fuzz entry point: the WebSocket client connection ([`crate::ws_client`]).
//!
//! The data is a little program, one instruction per byte plus operands: calls of every
//! kind, server frames (well-formed answers, records, `PING`, garbage), stream
//! cancellations, time jumps, a lost socket. Invariants checked:
//! - nothing panics;
//! - every call gets exactly one first answer (a `Reply` for a unary call; a
//!   `StreamOpened` or a `StreamEnded` for a subscribe), and nothing is said about a
//!   call that was never made;
//! - stream items and stream ends only for subscribe calls the node accepted;
//! - after a loss, no call stays pending and nothing more is transmitted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::session::{Call, CallId, Generation, Input, Request};
use crate::wire;
use crate::ws_client::WsClient;

const NAMES: [&str; 3] = ["a", "b", "c/d"];

fn request(op: u8, b: u8) -> Request {
    let name = NAMES[usize::from(b % 3)].to_owned();
    let client_id = "c".to_owned();
    match op % 9 {
        0 => Request::Connect(wire::ConnectRequest {
            access_key: "k".into(),
        }),
        1 => Request::Heartbeat(wire::HeartbeatRequest { client_id }),
        2 => Request::Publish(wire::PublishEventRequest {
            client_id,
            event_name: if b & 0x80 == 0 { name } else { "x;Y=:z".into() },
            payload: "UA==".into(),
            delivery_to: "K".into(),
            metadata: String::new(),
            payload_metadata: None,
        }),
        3 => Request::Subscribe(wire::SubscribeRequest {
            client_id,
            event_name: name,
        }),
        4 => Request::Ack(wire::AcknowledgeRequest {
            client_id,
            event_idem: "e".into(),
            event_name: name,
            partition_block: i64::from(b),
        }),
        5 => Request::Defer(wire::DeferRequest {
            client_id,
            event_idem: "e".into(),
            event_name: name,
            delay_ms: i64::from(b) * 1000,
            priority: 0,
            reason: String::new(),
        }),
        6 => Request::Replay(wire::ReplayRequest {
            client_id,
            event_idem: "e".into(),
            event_name: name,
        }),
        7 => Request::Pause(wire::PauseRequest {
            client_id,
            event_name: name,
            reason: String::new(),
        }),
        _ => Request::Unsubscribe(wire::UnsubscribeRequest {
            client_id,
            event_name: name,
        }),
    }
}

fn frame(b: u8, c: u8) -> String {
    let name = NAMES[usize::from(c % 3)];
    match b % 10 {
        0 => "+PASS:ok".to_owned(),
        1 => "-FAIL:nope".to_owned(),
        2 => "-FAIL:not authenticated".to_owned(),
        3 => "+PASS:{clientId=c1,clientHash=KEY}".to_owned(),
        4 => format!(
            r#"+RECORD:{{"name":"{name}","idem":"e{c}","block":{c},"payload":"UA==","metadata":{{}},"sender":"s"}}"#
        ),
        5 => format!(r#"+REPLAY:{{"name":"{name}","idem":"e","block":1,"payload":"UA=="}}"#),
        6 => "PING".to_owned(),
        7 => "+PASS:{deliveryTime=1700000000000}".to_owned(),
        8 => String::from_utf8_lossy(&[c, b, c]).into_owned(),
        _ => "+RECORD:not json".to_owned(),
    }
}

/// Feeds arbitrary bytes to a [`WsClient`] as a program; must never panic.
pub fn run(data: &[u8]) {
    let start = Instant::now();
    let mut now = start;
    let mut ws = WsClient::new(Duration::from_secs(5), now);
    let mut next_call = 1u64;
    // call -> streaming?
    let mut made: BTreeMap<CallId, bool> = BTreeMap::new();
    let mut answered: BTreeSet<CallId> = BTreeSet::new();
    let mut open: BTreeSet<CallId> = BTreeSet::new();
    let mut bytes = data.iter().copied();
    let mut steps = 0;
    while let Some(op) = bytes.next() {
        steps += 1;
        if steps > 2048 {
            break;
        }
        let b = bytes.next().unwrap_or(0);
        let c = bytes.next().unwrap_or(0);
        match op % 6 {
            0 | 1 => {
                let id = CallId::from_raw(next_call);
                next_call += 1;
                let request = request(b, c);
                made.insert(id, request.is_streaming());
                ws.call(Call {
                    id,
                    generation: Generation::Message,
                    request,
                });
            }
            2 | 3 => ws.handle_text(&frame(b, c), now, 1_700_000_000_000),
            4 => match b % 4 {
                0 => ws.handle_other_frame(now),
                1 => {
                    if let Some(&call) = open.iter().nth(usize::from(c) % open.len().max(1)) {
                        ws.cancel_stream(call);
                        open.remove(&call);
                    }
                }
                2 => ws.connection_lost("fuzz"),
                _ => {
                    if let Some(t) = ws.poll_timeout() {
                        now = now.max(t);
                    }
                    ws.handle_timeout(now);
                }
            },
            _ => {
                now += Duration::from_millis(u64::from(b) * 100);
                ws.handle_timeout(now);
            }
        }
        while ws.poll_transmit().is_some() {
            assert!(
                ws.lost().is_none(),
                "transmit after the connection was lost"
            );
        }
        while let Some(input) = ws.poll_input() {
            match input {
                Input::Reply { call, .. } => {
                    assert_eq!(made.get(&call), Some(&false), "reply to {call:?}");
                    assert!(answered.insert(call), "{call:?} answered twice");
                }
                Input::StreamOpened { call } => {
                    assert_eq!(made.get(&call), Some(&true), "stream opened {call:?}");
                    assert!(answered.insert(call), "{call:?} answered twice");
                    open.insert(call);
                }
                Input::StreamEnded { call, .. } => {
                    assert_eq!(made.get(&call), Some(&true), "stream ended {call:?}");
                    if !open.remove(&call) {
                        assert!(answered.insert(call), "{call:?} answered twice");
                    }
                }
                Input::StreamItem { call, .. } => {
                    assert!(open.contains(&call), "item on {call:?}, not an open stream");
                }
                Input::Connected { .. } | Input::Disconnected { .. } => {
                    panic!("the WebSocket client reports no transport attempts")
                }
            }
        }
        if ws.lost().is_some() {
            assert_eq!(ws.pending(), 0, "a call still pending after the loss");
            assert!(
                open.is_empty(),
                "a stream still open after the loss: {open:?}"
            );
        }
    }
}
