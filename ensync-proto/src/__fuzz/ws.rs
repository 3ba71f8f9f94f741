//! Fuzz entry point: the WebSocket text codec ([`crate::ws`]).
//!
//! The input (as UTF-8, lossily) is parsed as a client request, as a server frame and
//! as a `CONN` answer. Invariants checked:
//! - a parsed request re-encodes (`try_encode` succeeds and equals `encode`) and the
//!   frame parses back to an equal request;
//! - a parsed server frame re-encodes to a frame that parses; `+PASS`, `-FAIL` and
//!   `PING` give back an equal frame, a record the same event.

use crate::ws::{WsRecord, WsRequest, WsServerFrame, parse_conn_pass};

/// Feeds arbitrary bytes to the WebSocket codec; must never panic.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();

    if let Ok(request) = WsRequest::parse(text) {
        let frame = request.try_encode().expect("a parsed request re-encodes");
        assert_eq!(frame, request.encode());
        assert_eq!(
            WsRequest::parse(&frame).as_ref(),
            Ok(&request),
            "frame {frame:?}"
        );
    }

    if let Ok(frame) = WsServerFrame::parse(text) {
        let again = WsServerFrame::parse(&frame.encode()).expect("an encoded frame parses");
        match (&frame, &again) {
            (WsServerFrame::Record(a), WsServerFrame::Record(b)) => {
                // Metadata floats may differ in the last bit after a JSON round trip;
                // everything that identifies the event must not.
                assert_eq!(
                    (
                        &a.name,
                        &a.idem,
                        a.block,
                        a.logged_at,
                        &a.payload,
                        &a.sender
                    ),
                    (
                        &b.name,
                        &b.idem,
                        b.block,
                        b.logged_at,
                        &b.payload,
                        &b.sender
                    )
                );
            }
            (WsServerFrame::Replay(v), WsServerFrame::Replay(_)) => {
                let _ = WsRecord::from_value(v).map(WsRecord::into_stream_event);
            }
            _ => assert_eq!(frame, again),
        }
        if let WsServerFrame::Pass(text) = &frame {
            let _ = parse_conn_pass(text);
        }
    }

    let _ = parse_conn_pass(text);
    let _ = WsRecord::from_json(text);
}
