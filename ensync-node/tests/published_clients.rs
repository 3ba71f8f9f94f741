//! The node against what the published Go and Node.js gRPC SDKs and the Go WebSocket
//! client send, byte for byte, without their code (PROTOCOL.md sections 1, 3, 4; issue
//! 12): their exact `user-agent` headers (sent over raw HTTP/2, since tonic appends its
//! own token), the replay answer a `protojson`-strict reader accepts, the Node.js SDK's
//! "only the first stream is read", the Go SDK's empty `message_name` on defer and
//! discard, its default metadata and re-subscribe storms, the Node.js SDK's
//! `field_count`, and the Go WebSocket `PUB` with a trailing `PAYLOAD_METADATA`.

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::*;
use ensync_proto::clients::{ReplayedEvent, decode_replay};
use ensync_proto::framing::{FrameDecoder, decode_message, encode_frame};
use ensync_proto::wire;
use ensync_proto::ws::{WsServerFrame, parse_conn_pass};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// `grpc-go` v1.67.1 (the Go SDK's go.mod) sends exactly this.
const GO_UA: &str = "grpc-go/1.67.1";
/// `@grpc/grpc-js` 1.14.1 (the Node.js gRPC SDK 0.2.2's lockfile) sends exactly this.
const NODE_UA: &str = "grpc-node-js/1.14.1";
/// grpcio 1.85 (ensync-sdk's stack).
const PYTHON_UA: &str = "grpc-python/1.85.3 grpc-c/50.0.0 (linux; chttp2)";

const WAIT: Duration = Duration::from_secs(15);

/// A gRPC client on raw HTTP/2 that sends the headers of another gRPC stack.
struct Raw {
    send: h2::client::SendRequest<Bytes>,
    base: String,
    user_agent: &'static str,
}

/// A server stream of events, read from the raw HTTP/2 body.
struct RawStream {
    body: h2::RecvStream,
    frames: FrameDecoder,
}

impl Raw {
    async fn new(addr: std::net::SocketAddr, user_agent: &'static str) -> Self {
        let tcp = TcpStream::connect(addr).await.expect("tcp connect");
        let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Self {
            send,
            base: format!("http://{addr}"),
            user_agent,
        }
    }

    /// Sends one request message; the response status must be 200.
    async fn start(
        &self,
        rpc: &str,
        message: &impl prost::Message,
    ) -> Result<h2::RecvStream, h2::Error> {
        let mut send = self.send.clone().ready().await?;
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("{}/ensync.EnSyncService/{rpc}", self.base))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("user-agent", self.user_agent)
            .body(())
            .expect("request");
        let mut body = BytesMut::new();
        encode_frame(message, &mut body).expect("frame");
        let (response, mut stream) = send.send_request(request, false)?;
        stream.send_data(body.freeze(), true)?;
        let response = response.await?;
        assert_eq!(response.status(), 200, "{rpc}");
        Ok(response.into_body())
    }

    /// A unary call; panics unless it answers one message.
    async fn unary<R: prost::Message + Default>(&self, rpc: &str, m: &impl prost::Message) -> R {
        let body = self.start(rpc, m).await.expect("call");
        let mut s = RawStream {
            body,
            frames: FrameDecoder::new(),
        };
        s.next_message()
            .await
            .unwrap_or_else(|| panic!("{rpc}: no answer"))
    }

    async fn subscribe(&self, cid: &str, name: &str) -> RawStream {
        let body = self
            .start(
                "Subscribe",
                &wire::SubscribeRequest {
                    client_id: cid.into(),
                    event_name: name.into(),
                },
            )
            .await
            .expect("subscribe");
        RawStream {
            body,
            frames: FrameDecoder::new(),
        }
    }

    /// `Connect` as app `i` of `t`; returns the session id and the server config.
    async fn connect(&self, t: &TestNode, i: usize) -> (String, wire::ConnectResponse) {
        let r: wire::ConnectResponse = self
            .unary(
                "Connect",
                &wire::ConnectRequest {
                    access_key: t.dev.apps[i].access_key.clone(),
                },
            )
            .await;
        assert!(r.success, "{}", r.error_message);
        (r.client_id.clone(), r)
    }
}

impl RawStream {
    /// The next message; `None` when the body ended (or the connection broke).
    async fn next_message<M: prost::Message + Default>(&mut self) -> Option<M> {
        loop {
            if let Some(frame) = self.frames.next_frame().expect("framing") {
                return Some(decode_message(frame).expect("message"));
            }
            let chunk = tokio::time::timeout(WAIT, self.body.data())
                .await
                .expect("timed out waiting for data");
            match chunk {
                Some(Ok(bytes)) => {
                    let _ = self.body.flow_control().release_capacity(bytes.len());
                    self.frames.push(&bytes);
                }
                _ => return None,
            }
        }
    }

    async fn event(&mut self) -> wire::EventStreamResponse {
        self.next_message().await.expect("stream ended")
    }

    /// Asserts that no event arrives for `ms`.
    async fn nothing_for(&mut self, ms: u64) {
        let got = tokio::time::timeout(
            Duration::from_millis(ms),
            self.next_message::<wire::EventStreamResponse>(),
        )
        .await;
        if let Ok(Some(ev)) = got {
            panic!("expected nothing, got {ev:?}");
        }
    }
}

/// Checks `text` the way Go's `protojson.Unmarshal` into `MessageStreamResponse` does
/// (only its fields, by proto or JSON name, each of its type; int64 as a number or a
/// numeric string) and returns the object.
fn protojson_strict(text: &str) -> serde_json::Map<String, Value> {
    let value: Value = serde_json::from_str(text).expect("replay answer is JSON");
    let Value::Object(object) = value else {
        panic!("replay answer is not an object: {text}")
    };
    for (key, value) in &object {
        match key.as_str() {
            "message_idem" | "messageIdem" | "message_name" | "messageName" | "payload"
            | "metadata" | "sender" => assert!(value.is_string(), "{key} is not a string"),
            "partition_block" | "partitionBlock" => assert!(
                value.as_i64().is_some()
                    || value.as_str().is_some_and(|s| s.parse::<i64>().is_ok()),
                "{key} is not an int64"
            ),
            other => panic!("unknown key {other:?}: protojson refuses {text}"),
        }
    }
    object
}

/// The same stored event replayed with each client's user-agent: the bare envelope for
/// `grpc-python`, the stream-message JSON (exactly the six keys) for `grpc-go`,
/// `grpc-node-js` and tonic (our Rust client), on both RPC generations.
#[tokio::test]
async fn replay_answers_each_client_in_the_form_it_reads() {
    let t = start(2).await;
    let (mut pc, pid) = t.session(0).await;
    let mut req = publish_req(&pid, "orders/created", &t.key(1), 3);
    req.metadata = r#"{"persist":true,"headers":{}}"#.into();
    let id = pc.publish_message(req.clone()).await.unwrap().into_inner();
    assert!(id.success, "{}", id.error_message);
    let id = id.event_idem;

    // The event as streamed, for comparison.
    let (mut sc, sid) = t.session(1).await;
    let mut s = subscribe(&mut sc, &sid, "orders/created").await;
    let streamed = next(&mut s).await;
    assert_eq!(streamed.event_idem, id);
    assert!(ack(&mut sc, &sid, &streamed).await.success);

    let addr = t.node.grpc_addr();
    for rpc in ["ReplayMessage", "ReplayEvent"] {
        for ua in [PYTHON_UA, GO_UA, NODE_UA] {
            let raw = Raw::new(addr, ua).await;
            let (cid, _) = raw.connect(&t, 1).await;
            let r: wire::ReplayResponse = raw
                .unary(
                    rpc,
                    &wire::ReplayRequest {
                        client_id: cid,
                        event_idem: id.clone(),
                        event_name: "orders/created".into(),
                    },
                )
                .await;
            assert!(r.success, "{ua} {rpc}: {}", r.message);
            if ua == PYTHON_UA {
                assert_eq!(r.event_data, req.payload, "{rpc}: the bare envelope");
                continue;
            }
            let object = protojson_strict(&r.event_data);
            let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(
                keys,
                [
                    "message_idem",
                    "message_name",
                    "metadata",
                    "partition_block",
                    "payload",
                    "sender"
                ],
                "{ua} {rpc}"
            );
            assert_eq!(object["message_idem"], json!(id));
            assert_eq!(object["message_name"], json!("orders/created"));
            assert_eq!(object["payload"], json!(req.payload));
            assert_eq!(object["partition_block"], json!(streamed.partition_block));
            assert_eq!(object["sender"], json!(t.key(0)));
            // Node's `JSON.parse(messageData.metadata)` and Go's metadata handling.
            let metadata: Value =
                serde_json::from_str(object["metadata"].as_str().unwrap()).unwrap();
            assert_eq!(metadata, json!({"persist": true, "headers": {}}));
        }
    }

    // tonic (our Rust client's stack) gets the JSON form; our reader takes it apart.
    let r = sc
        .replay_message(wire::ReplayRequest {
            client_id: sid.clone(),
            event_idem: id.clone(),
            event_name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.success, "{}", r.message);
    protojson_strict(&r.event_data);
    let ReplayedEvent {
        payload,
        idem,
        block,
        ..
    } = decode_replay(&r.event_data).unwrap();
    assert_eq!(
        (payload, idem, block),
        (req.payload, Some(id), Some(streamed.partition_block))
    );
    t.node.shutdown().await;
}

/// Opens streams "one" and "two" on one session of `ua` (waiting for each to be
/// registered, as the Node.js SDK's racing subscribe does not), publishes on "two", and
/// says which stream carried it.
async fn stream_that_carries(t: &TestNode, ua: &'static str) -> (&'static str, String) {
    let (mut pc, pid) = t.session(0).await;
    let raw = Raw::new(t.node.grpc_addr(), ua).await;
    let (cid, connected) = raw.connect(t, 1).await;
    let before = t.node.stats().subscriptions;
    let mut one = raw.subscribe(&cid, "one").await;
    eventually("first stream", || {
        t.node.stats().subscriptions == before + 1
    })
    .await;
    let mut two = raw.subscribe(&cid, "two").await;
    eventually("second stream", || {
        t.node.stats().subscriptions == before + 2
    })
    .await;
    let id = publish(&mut pc, &pid, "two", &t.key(1), 0).await;
    let multiplex = connected.server_config["multiplex"].clone();
    let (carrier, ev) = tokio::select! {
        ev = one.event() => { two.nothing_for(200).await; ("first", ev) }
        ev = two.event() => { one.nothing_for(200).await; ("second", ev) }
    };
    assert_eq!(
        (ev.event_idem.as_str(), ev.event_name.as_str()),
        (id.as_str(), "two")
    );
    // Acked, so the next session of this app starts with an empty queue.
    let a: wire::AcknowledgeResponse = raw
        .unary(
            "AcknowledgeMessage",
            &wire::AcknowledgeRequest {
                client_id: cid,
                event_idem: ev.event_idem,
                event_name: ev.event_name,
                partition_block: ev.partition_block,
            },
        )
        .await;
    assert!(a.success, "{}", a.message);
    (carrier, multiplex)
}

/// The Node.js gRPC SDK reads only its first stream: its second subscription's events
/// come on the first. The Python and Go SDKs get each event on the stream of its name.
/// An explicit `multiplex` overrides the client rule either way.
#[tokio::test]
async fn delivery_follows_the_client_unless_multiplex_is_configured() {
    let t = start(2).await;
    assert_eq!(
        stream_that_carries(&t, NODE_UA).await,
        ("first", "true".into())
    );
    assert_eq!(
        stream_that_carries(&t, PYTHON_UA).await,
        ("second", "false".into())
    );
    assert_eq!(
        stream_that_carries(&t, GO_UA).await,
        ("second", "false".into())
    );
    t.node.shutdown().await;

    let t = start_with(2, |c| c.multiplex = Some(false)).await;
    assert_eq!(
        stream_that_carries(&t, NODE_UA).await,
        ("second", "false".into())
    );
    t.node.shutdown().await;
    let t = start_with(2, |c| c.multiplex = Some(true)).await;
    assert_eq!(
        stream_that_carries(&t, PYTHON_UA).await,
        ("first", "true".into())
    );
    t.node.shutdown().await;
}

/// The Go SDK: default metadata `{"persist":true,"headers":{}}`, defer and discard with
/// an empty `message_name`; the Node.js SDK's `field_count` in `payload_metadata`.
#[tokio::test]
async fn go_defer_discard_without_name_and_node_payload_metadata() {
    let t = start(2).await;
    let addr = t.node.grpc_addr();
    let node_pub = Raw::new(addr, NODE_UA).await;
    let (nid, _) = node_pub.connect(&t, 0).await;
    let go = Raw::new(addr, GO_UA).await;
    let (gid, _) = go.connect(&t, 1).await;
    let mut s = go.subscribe(&gid, "jobs").await;
    eventually("stream", || t.node.stats().subscriptions == 1).await;

    let mut ids = Vec::new();
    for i in 0..2 {
        let r: wire::PublishEventResponse = node_pub
            .unary(
                "PublishMessage",
                &wire::PublishEventRequest {
                    client_id: nid.clone(),
                    event_name: "jobs".into(),
                    payload: payload(i),
                    delivery_to: t.key(1),
                    metadata: r#"{"persist":true,"headers":{}}"#.into(),
                    payload_metadata: Some(
                        r#"{"byte_size":7,"skeleton":{"n":"integer"},"field_count":1}"#.into(),
                    ),
                },
            )
            .await;
        assert!(r.success, "{}", r.error_message);
        ids.push(r.event_idem);
    }
    let first = s.event().await;
    let second = s.event().await;
    assert_eq!([&first.event_idem, &second.event_idem], [&ids[0], &ids[1]]);
    let metadata: Value = serde_json::from_str(&first.metadata).unwrap();
    assert_eq!(metadata, json!({"persist": true, "headers": {}}));

    let d: wire::DeferResponse = go
        .unary(
            "DeferMessage",
            &wire::DeferRequest {
                client_id: gid.clone(),
                event_idem: first.event_idem.clone(),
                event_name: String::new(),
                delay_ms: 1000,
                priority: 0,
                reason: String::new(),
            },
        )
        .await;
    assert!(d.success, "{}", d.message);
    let x: wire::DiscardResponse = go
        .unary(
            "DiscardMessage",
            &wire::DiscardRequest {
                client_id: gid.clone(),
                event_idem: second.event_idem.clone(),
                event_name: String::new(),
                reason: "spam".into(),
            },
        )
        .await;
    assert!(x.success, "{}", x.message);
    // The deferred one comes back (after its delay); the discarded one never does.
    let again = s.event().await;
    assert_eq!(again.event_idem, first.event_idem);
    let a: wire::AcknowledgeResponse = go
        .unary(
            "AcknowledgeMessage",
            &wire::AcknowledgeRequest {
                client_id: gid.clone(),
                event_idem: again.event_idem.clone(),
                event_name: again.event_name.clone(),
                partition_block: again.partition_block,
            },
        )
        .await;
    assert!(a.success, "{}", a.message);
    s.nothing_for(300).await;
    assert_eq!(t.node.stats().in_flight, 0);
    t.node.shutdown().await;
}

/// The Go SDK re-subscribes at once after a stream error, without backoff: hundreds of
/// subscribes of one name on one session in a burst leave one subscription that still
/// delivers; a burst while the node shuts down does not hold the shutdown up.
#[tokio::test]
async fn go_resubscribe_storms_break_nothing() {
    const BURST: usize = 300;
    let t = start(2).await;
    let (mut pc, pid) = t.session(0).await;
    let go = Raw::new(t.node.grpc_addr(), GO_UA).await;
    let (gid, _) = go.connect(&t, 1).await;
    let mut last = None;
    for _ in 0..BURST {
        last = Some(go.subscribe(&gid, "storm").await);
    }
    let mut s = last.unwrap();
    eventually("one subscription", || t.node.stats().subscriptions == 1).await;
    let id = publish(&mut pc, &pid, "storm", &t.key(1), 0).await;
    assert_eq!(s.event().await.event_idem, id);

    // A storm racing the shutdown: every attempt ends (refused, or stream closed).
    let storm = tokio::spawn(async move {
        let mut attempts = 0usize;
        while attempts < BURST {
            attempts += 1;
            match go
                .start(
                    "Subscribe",
                    &wire::SubscribeRequest {
                        client_id: gid.clone(),
                        event_name: "storm".into(),
                    },
                )
                .await
            {
                Ok(_) => {}
                Err(_) => break,
            }
        }
        attempts
    });
    tokio::time::sleep(Duration::from_millis(5)).await;
    tokio::time::timeout(WAIT, t.node.shutdown())
        .await
        .expect("shutdown completes during a re-subscribe storm");
    let attempts = tokio::time::timeout(WAIT, storm)
        .await
        .expect("the storm ends")
        .unwrap();
    assert!(attempts >= 1);
}

/// A raw WebSocket text client.
struct RawWs {
    ws: tokio_tungstenite::WebSocketStream<TcpStream>,
}

impl RawWs {
    /// Dials the URL exactly as the Go SDK does (the `/message` path given by the user).
    async fn open(t: &TestNode) -> Self {
        let addr = t.node.ws_addr().expect("ws endpoint");
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/message"), tcp)
            .await
            .unwrap();
        Self { ws }
    }

    async fn frame(&mut self) -> String {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("frame")
            {
                Some(Ok(Message::Text(t))) if t.as_str() == "PING" => {
                    self.ws.send(Message::text("PONG")).await.unwrap();
                }
                Some(Ok(Message::Text(t))) => return t.as_str().to_owned(),
                Some(Ok(_)) => {}
                other => panic!("connection ended: {other:?}"),
            }
        }
    }

    async fn call(&mut self, text: &str) -> String {
        self.ws.send(Message::text(text.to_owned())).await.unwrap();
        self.frame().await
    }

    async fn conn(&mut self, t: &TestNode, i: usize) -> String {
        let r = self
            .call(&format!("CONN;ACCESS_KEY=:{}", t.dev.apps[i].access_key))
            .await;
        parse_conn_pass(&r).expect("CONN answer").0
    }
}

/// The Go WebSocket client's `PUB` ends with `;PAYLOAD_METADATA=:{…}` and its METADATA
/// may hold `;` and even `PAYLOAD_METADATA=:` inside strings: `+PASS`, and the record
/// carries the metadata intact, with the id under both `idem` and `id` (the npm client
/// reads only `id`), in `+RECORD` and `+REPLAY` alike.
#[tokio::test]
async fn go_websocket_pub_with_trailing_payload_metadata_passes() {
    let t = start(2).await;
    let mut sub = RawWs::open(&t).await;
    let scid = sub.conn(&t, 1).await;
    assert!(
        sub.call(&format!("SUB;CLIENT_ID=:{scid};EVENT_NAME=:go/ws"))
            .await
            .starts_with("+PASS:")
    );
    let mut publisher = RawWs::open(&t).await;
    let pcid = publisher.conn(&t, 0).await;
    let metadata = r#"{"persist":true,"headers":{"note":"a;b;PAYLOAD_METADATA=:{}"}}"#;
    let frame = format!(
        "PUB;CLIENT_ID=:{pcid};EVENT_NAME=:go/ws;PAYLOAD=:{};DELIVERY_TO=:{};METADATA=:{metadata};PAYLOAD_METADATA=:{}",
        payload(1),
        t.key(1),
        r#"{"byte_size":7,"skeleton":{"n":"integer"}}"#
    );
    let answer = publisher.call(&frame).await;
    let Some(id) = answer.strip_prefix("+PASS:") else {
        panic!("{answer}")
    };
    let id = id.to_owned();

    let text = sub.frame().await;
    let body = text.strip_prefix("+RECORD:").expect("a record");
    let record: Value = serde_json::from_str(body).unwrap();
    assert_eq!(record["idem"], json!(id));
    assert_eq!(record["id"], json!(id));
    assert_eq!(
        record["metadata"],
        serde_json::from_str::<Value>(metadata).unwrap()
    );
    let WsServerFrame::Record(r) = WsServerFrame::parse(&text).unwrap() else {
        panic!()
    };
    assert_eq!(r.payload, payload(1));

    let replay = sub
        .call(&format!(
            "REPLAY;CLIENT_ID=:{scid};EVENT_IDEM=:{id};EVENT_NAME=:go/ws"
        ))
        .await;
    let body = replay.strip_prefix("+REPLAY:").expect("a replay");
    let record: Value = serde_json::from_str(body).unwrap();
    assert_eq!((&record["idem"], &record["id"]), (&json!(id), &json!(id)));
    t.node.shutdown().await;
}
