//! The WebSocket endpoint (PROTOCOL.md section 3): every request and answer, pushes,
//! PING/PONG, malformed frames, TLS, and events crossing between gRPC and WebSocket.

mod common;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ensync_proto::ws::{WsRecord, WsServerFrame, parse_conn_pass};
use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(15);

/// A raw WebSocket client: frames as text.
struct Ws<S> {
    ws: WebSocketStream<S>,
    records: VecDeque<WsRecord>,
    replies: VecDeque<String>,
    answer_pings: bool,
    pings: usize,
}

async fn ws_connect(
    addr: std::net::SocketAddr,
    path: &str,
) -> Result<WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}{path}"), tcp).await?;
    Ok(ws)
}

async fn open(t: &TestNode) -> Ws<TcpStream> {
    let addr = t.node.ws_addr().expect("ws endpoint");
    Ws::new(ws_connect(addr, "/message").await.expect("ws connect"))
}

impl<S: AsyncRead + AsyncWrite + Unpin> Ws<S> {
    fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            records: VecDeque::new(),
            replies: VecDeque::new(),
            answer_pings: true,
            pings: 0,
        }
    }

    async fn send(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_owned()))
            .await
            .expect("send");
    }

    /// The next text frame (`None` when the connection closed).
    async fn frame(&mut self, within: Duration) -> Option<String> {
        loop {
            let m = tokio::time::timeout(within, self.ws.next())
                .await
                .expect("timed out waiting for a frame");
            match m {
                Some(Ok(Message::Text(t))) => return Some(t.as_str().to_owned()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    /// Reads one frame and files it; `false` when the connection closed.
    async fn pump(&mut self, within: Duration) -> bool {
        let Some(text) = self.frame(within).await else {
            return false;
        };
        match WsServerFrame::parse(&text).expect("a valid server frame") {
            WsServerFrame::Ping => {
                self.pings += 1;
                if self.answer_pings {
                    self.send("PONG").await;
                }
            }
            WsServerFrame::Record(r) => self.records.push_back(r),
            _ => self.replies.push_back(text),
        }
        true
    }

    /// The next answer (`+PASS`, `+REPLAY`, `-FAIL`), filing records and answering PINGs.
    async fn reply(&mut self) -> String {
        loop {
            if let Some(r) = self.replies.pop_front() {
                return r;
            }
            assert!(self.pump(WAIT).await, "connection closed");
        }
    }

    async fn call(&mut self, text: &str) -> String {
        self.send(text).await;
        self.reply().await
    }

    async fn record(&mut self) -> WsRecord {
        loop {
            if let Some(r) = self.records.pop_front() {
                return r;
            }
            assert!(self.pump(WAIT).await, "connection closed");
        }
    }

    /// Asserts no record arrives for `ms`.
    async fn no_record_for(&mut self, ms: u64) {
        let until = tokio::time::Instant::now() + Duration::from_millis(ms);
        while tokio::time::Instant::now() < until {
            assert!(self.records.is_empty(), "unexpected {:?}", self.records);
            let left = until - tokio::time::Instant::now();
            if tokio::time::timeout(left, self.ws.next()).await.is_err() {
                break;
            }
        }
        assert!(self.records.is_empty(), "unexpected {:?}", self.records);
    }

    /// `CONN` as app `i`; returns (client id, client hash).
    async fn conn(&mut self, t: &TestNode, i: usize) -> (String, String) {
        let r = self
            .call(&format!("CONN;ACCESS_KEY=:{}", t.dev.apps[i].access_key))
            .await;
        assert!(r.starts_with("+PASS:"), "{r}");
        parse_conn_pass(&r).expect("CONN answer")
    }
}

fn pass_text(reply: &str) -> &str {
    reply
        .strip_prefix("+PASS:")
        .unwrap_or_else(|| panic!("expected +PASS, got {reply}"))
}

fn pub_frame(cid: &str, name: &str, to: &str, i: usize) -> String {
    format!(
        "PUB;CLIENT_ID=:{cid};EVENT_NAME=:{name};PAYLOAD=:{};DELIVERY_TO=:{to};METADATA=:{{\"i\": {i}, \"note\": \"a;b\"}}",
        payload(i)
    )
}

#[tokio::test]
async fn every_request_against_the_node() {
    let t = start(2).await;
    let mut a = open(&t).await;
    let mut b = open(&t).await;
    let (aid, ahash) = a.conn(&t, 0).await;
    assert_eq!(ahash, t.key(0));
    let (bid, bhash) = b.conn(&t, 1).await;
    assert_eq!(bhash, t.key(1));
    assert_ne!(aid, bid);

    // A refused access key.
    let r = b.call("CONN;ACCESS_KEY=:nope").await;
    assert_eq!(r, "-FAIL:invalid access key");

    // SUB, then PUB from the other app: a +RECORD with every field.
    assert_eq!(
        b.call(&format!("SUB;CLIENT_ID=:{bid};EVENT_NAME=:orders/new"))
            .await,
        "+PASS:subscribed"
    );
    let before = ensync_node::service::now_ms() as i64;
    let id1 = pass_text(&a.call(&pub_frame(&aid, "orders/new", &t.key(1), 1)).await).to_owned();
    assert_eq!(id1.len(), 32, "{id1}");
    let r = b.record().await;
    assert_eq!(r.name, "orders/new");
    assert_eq!(r.idem, id1);
    assert!(r.block >= 1);
    assert_eq!(r.payload, payload(1));
    assert_eq!(r.sender, t.key(0));
    let meta: serde_json::Value = serde_json::from_str(&r.metadata).unwrap();
    assert_eq!(meta, serde_json::json!({"i": 1, "note": "a;b"}));
    let logged = r.logged_at.expect("loggedAt");
    assert!(logged >= before - 1000 && logged <= ensync_node::service::now_ms() as i64);

    // ACK: done for good.
    let r1 = r;
    assert_eq!(
        b.call(&format!(
            "ACK;CLIENT_ID=:{bid};EVENT_IDEM=:{};BLOCK=:{};EVENT_NAME=:orders/new",
            r1.idem, r1.block
        ))
        .await,
        "+PASS:acknowledged"
    );
    // A second ACK of the same event fails.
    let again = b
        .call(&format!(
            "ACK;CLIENT_ID=:{bid};EVENT_IDEM=:{};BLOCK=:{};EVENT_NAME=:orders/new",
            r1.idem, r1.block
        ))
        .await;
    assert!(again.starts_with("-FAIL:"), "{again}");

    // DEFER: answered with the delivery time; delivered again after it.
    let id2 = pass_text(&a.call(&pub_frame(&aid, "orders/new", &t.key(1), 2)).await).to_owned();
    let r2 = b.record().await;
    assert_eq!(r2.idem, id2);
    let d = b
        .call(&format!(
            "DEFER;CLIENT_ID=:{bid};EVENT_IDEM=:{id2};EVENT_NAME=:orders/new;DELAY=:1000;REASON=:later; please"
        ))
        .await;
    let due: i64 = pass_text(&d)
        .strip_prefix("{deliveryTime=")
        .and_then(|s| s.strip_suffix('}'))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad DEFER answer {d}"));
    assert!(due >= ensync_node::service::now_ms() as i64 + 500, "{due}");
    let again = b.record().await;
    assert_eq!(again.idem, id2);
    assert!(ensync_node::service::now_ms() as i64 >= due - 50);

    // DISCARD: never again, but REPLAY still finds it.
    assert_eq!(
        b.call(&format!(
            "DISCARD;CLIENT_ID=:{bid};EVENT_IDEM=:{id2};EVENT_NAME=:orders/new;REASON=:spam"
        ))
        .await,
        "+PASS:discarded"
    );
    let replay = b
        .call(&format!(
            "REPLAY;CLIENT_ID=:{bid};EVENT_IDEM=:{id2};EVENT_NAME=:orders/new"
        ))
        .await;
    let WsServerFrame::Replay(value) = WsServerFrame::parse(&replay).unwrap() else {
        panic!("expected +REPLAY, got {replay}");
    };
    let rec = WsRecord::from_value(&value).unwrap();
    assert_eq!(
        (rec.idem.as_str(), rec.payload.clone()),
        (id2.as_str(), payload(2))
    );
    assert_eq!(rec.sender, t.key(0));
    // A replay of someone else's (or no) event fails.
    let r = a
        .call(&format!(
            "REPLAY;CLIENT_ID=:{aid};EVENT_IDEM=:{id2};EVENT_NAME=:orders/new"
        ))
        .await;
    assert!(r.starts_with("-FAIL:"), "{r}");

    // ROLLBACK: the event comes back.
    let id3 = pass_text(&a.call(&pub_frame(&aid, "orders/new", &t.key(1), 3)).await).to_owned();
    let r3 = b.record().await;
    assert_eq!(r3.idem, id3);
    assert_eq!(
        b.call(&format!(
            "ROLLBACK;CLIENT_ID=:{bid};EVENT_IDEM=:{id3};BLOCK=:{}",
            r3.block
        ))
        .await,
        "+PASS:rolled back"
    );
    let back = b.record().await;
    assert_eq!(back.idem, id3);
    b.call(&format!(
        "ACK;CLIENT_ID=:{bid};EVENT_IDEM=:{id3};BLOCK=:{};EVENT_NAME=:orders/new",
        back.block
    ))
    .await;

    // PAUSE holds delivery; CONTINUE releases it.
    assert_eq!(
        b.call(&format!(
            "PAUSE;CLIENT_ID=:{bid};EVENT_NAME=:orders/new;REASON=:maint"
        ))
        .await,
        "+PASS:paused"
    );
    let id4 = pass_text(&a.call(&pub_frame(&aid, "orders/new", &t.key(1), 4)).await).to_owned();
    b.no_record_for(300).await;
    assert_eq!(
        b.call(&format!("CONTINUE;CLIENT_ID=:{bid};EVENT_NAME=:orders/new"))
            .await,
        "+PASS:continued"
    );
    assert_eq!(b.record().await.idem, id4);

    // UNSUB: no more records; what was in flight goes back to the queue.
    assert_eq!(
        b.call(&format!("UNSUB;CLIENT_ID=:{bid};EVENT_NAME=:orders/new"))
            .await,
        "+PASS:unsubscribed"
    );
    pass_text(&a.call(&pub_frame(&aid, "orders/new", &t.key(1), 5)).await);
    b.no_record_for(300).await;
    // Subscribing again delivers both the unacked and the new event.
    pass_text(
        &b.call(&format!("SUB;CLIENT_ID=:{bid};EVENT_NAME=:orders/new"))
            .await,
    );
    let mut got = vec![b.record().await.payload, b.record().await.payload];
    got.sort();
    let mut want = vec![payload(4), payload(5)];
    want.sort();
    assert_eq!(got, want);
    t.node.shutdown().await;
}

#[tokio::test]
async fn answers_come_in_request_order() {
    let t = start(2).await;
    let mut a = open(&t).await;
    let (aid, _) = a.conn(&t, 0).await;
    // Everything sent at once, answered first in first out.
    let frames = vec![
        pub_frame(&aid, "fifo", &t.key(1), 1),
        "GARBAGE".to_owned(),
        format!("PAUSE;CLIENT_ID=:{aid};EVENT_NAME=:fifo;REASON=:x"),
        pub_frame(&aid, "fifo", "not-a-key", 2),
        format!("CONTINUE;CLIENT_ID=:{aid};EVENT_NAME=:fifo"),
        format!("SUB;CLIENT_ID=:{aid};EVENT_NAME=:fifo"),
        pub_frame(&aid, "fifo", &t.key(1), 3),
    ];
    for f in &frames {
        a.send(f).await;
    }
    let mut answers = Vec::new();
    for _ in &frames {
        answers.push(a.reply().await);
    }
    assert_eq!(pass_text(&answers[0]).len(), 32, "{answers:?}");
    assert!(answers[1].starts_with("-FAIL:"), "{answers:?}");
    assert_eq!(answers[2], "+PASS:paused");
    assert!(
        answers[3].starts_with("-FAIL:unknown recipient"),
        "{answers:?}"
    );
    assert_eq!(answers[4], "+PASS:continued");
    assert_eq!(answers[5], "+PASS:subscribed");
    assert_eq!(pass_text(&answers[6]).len(), 32, "{answers:?}");
    assert_ne!(answers[0], answers[6]);
}

#[tokio::test]
async fn malformed_frames_fail_without_harming_anyone() {
    let t = start(2).await;
    let mut a = open(&t).await;
    let mut b = open(&t).await;
    let (aid, _) = a.conn(&t, 0).await;
    let (bid, _) = b.conn(&t, 1).await;
    pass_text(&b.call(&format!("SUB;CLIENT_ID=:{bid};EVENT_NAME=:x")).await);

    let bad = [
        "".to_owned(),
        "HELLO".to_owned(),
        "PUB".to_owned(),
        format!("PUB;CLIENT_ID=:{aid};EVENT_NAME=:x"),
        format!("ACK;CLIENT_ID=:{aid};EVENT_IDEM=:e;BLOCK=:notanumber;EVENT_NAME=:x"),
        format!("DEFER;CLIENT_ID=:{aid};EVENT_IDEM=:e;EVENT_NAME=:x;DELAY=:5;REASON=:"),
        format!("SUB;CLIENT_ID=:{aid}junk;EVENT_NAME=:x"),
        format!("SUB;CLIENT_ID=:{bid};EVENT_NAME=:x"), // another connection's session
        format!("SUB;CLIENT_ID=:{aid};EVENT_NAME=:bad name with spaces"),
        format!(
            "PUB;CLIENT_ID=:{aid};EVENT_NAME=:x;PAYLOAD=:%%%;DELIVERY_TO=:{};METADATA=:{{}}",
            t.key(1)
        ),
        format!(
            "PUB;CLIENT_ID=:{aid};EVENT_NAME=:x;PAYLOAD=:{};DELIVERY_TO=:{};METADATA=:[1]",
            payload(0),
            t.key(1)
        ),
        "PONG;EXTRA=:1".to_owned(),
        "\u{1F600};;;=:=:".to_owned(),
    ];
    for f in &bad {
        let r = a.call(f).await;
        assert!(r.starts_with("-FAIL:") && r.len() > 6, "{f:?} -> {r}");
    }
    a.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let r = a.reply().await;
    assert!(r.starts_with("-FAIL:"), "{r}");
    // An access key sent in a malformed frame is not echoed back.
    let secret = &t.dev.apps[0].access_key;
    let r = a.call(&format!("{secret};nothing")).await;
    assert!(
        r.starts_with("-FAIL:") && !r.contains(secret.as_str()),
        "{r}"
    );

    // Both connections still work.
    pass_text(&a.call(&pub_frame(&aid, "x", &t.key(1), 7)).await);
    assert_eq!(b.record().await.payload, payload(7));
    assert_eq!(t.node.stats().sessions, 2);
}

#[tokio::test]
async fn ping_pong_keeps_sessions_and_silence_ends_them() {
    let t = start_with(2, |c| {
        c.ws_ping_interval_ms = 150;
        c.heartbeat_misses = 2;
        c.heartbeat_interval_ms = 150;
    })
    .await;
    let mut quiet = open(&t).await;
    quiet.answer_pings = false;
    let mut lively = open(&t).await;
    let (qid, _) = quiet.conn(&t, 1).await;
    let (lid, _) = lively.conn(&t, 0).await;
    pass_text(
        &quiet
            .call(&format!("SUB;CLIENT_ID=:{qid};EVENT_NAME=:p"))
            .await,
    );
    pass_text(&lively.call(&pub_frame(&lid, "p", &t.key(1), 1)).await);
    // The quiet client takes the event and never answers PING: PINGs, then the close.
    // Meanwhile the lively one answers every PING.
    let r = quiet.record().await;
    assert_eq!(r.payload, payload(1));
    let until = tokio::time::Instant::now() + Duration::from_millis(900);
    let drain_quiet = async { while quiet.pump(WAIT).await {} };
    let keep_lively = async {
        while let Ok(alive) = tokio::time::timeout_at(until, lively.pump(WAIT)).await {
            assert!(alive, "the answering client was dropped");
        }
    };
    tokio::join!(drain_quiet, keep_lively);
    assert!(quiet.pings >= 1, "no PING before the close");
    // Well past the timeout, the lively session still works.
    assert!(lively.pings >= 2, "pings: {}", lively.pings);
    pass_text(&lively.call(&pub_frame(&lid, "p", &t.key(1), 2)).await);
    // The quiet session is gone, and its unacked event goes to the next subscriber.
    let mut again = open(&t).await;
    let (gid, _) = again.conn(&t, 1).await;
    pass_text(
        &again
            .call(&format!("SUB;CLIENT_ID=:{gid};EVENT_NAME=:p"))
            .await,
    );
    let mut idems = vec![again.record().await.idem, again.record().await.idem];
    idems.sort();
    assert!(idems.contains(&r.idem), "{idems:?}");
}

#[tokio::test]
async fn closing_the_socket_ends_the_session_and_requeues() {
    let t = start(2).await;
    let mut a = open(&t).await;
    let mut b = open(&t).await;
    let (aid, _) = a.conn(&t, 0).await;
    let (bid, _) = b.conn(&t, 1).await;
    pass_text(&b.call(&format!("SUB;CLIENT_ID=:{bid};EVENT_NAME=:c")).await);
    let id = pass_text(&a.call(&pub_frame(&aid, "c", &t.key(1), 1)).await).to_owned();
    assert_eq!(b.record().await.idem, id);
    assert_eq!(t.node.stats().sessions, 2);
    drop(b);
    eventually("the session ends", || t.node.stats().sessions == 1).await;
    let mut c = open(&t).await;
    let (cid, _) = c.conn(&t, 1).await;
    pass_text(&c.call(&format!("SUB;CLIENT_ID=:{cid};EVENT_NAME=:c")).await);
    assert_eq!(c.record().await.idem, id);
}

#[tokio::test]
async fn events_cross_between_grpc_and_websocket() {
    let t = start(2).await;
    // gRPC publisher -> WebSocket subscriber.
    let (mut g, gid) = t.session(0).await;
    let mut w = open(&t).await;
    let (wid, _) = w.conn(&t, 1).await;
    pass_text(
        &w.call(&format!("SUB;CLIENT_ID=:{wid};EVENT_NAME=:cross"))
            .await,
    );
    let id = publish(&mut g, &gid, "cross", &t.key(1), 1).await;
    let r = w.record().await;
    assert_eq!(
        (r.idem.as_str(), r.sender.as_str()),
        (id.as_str(), t.key(0).as_str())
    );
    assert_eq!(r.payload, payload(1));

    // WebSocket publisher -> gRPC subscriber.
    let mut s = subscribe(&mut g, &gid, "cross").await;
    let id = pass_text(&w.call(&pub_frame(&wid, "cross", &t.key(0), 2)).await).to_owned();
    let ev = next(&mut s).await;
    assert_eq!(ev.event_idem, id);
    assert_eq!(ev.sender, t.key(1));
    assert_eq!(ev.payload, payload(2));
    assert!(ack(&mut g, &gid, &ev).await.success);
}

#[tokio::test]
async fn only_the_message_path_is_served() {
    let t = start(1).await;
    let addr = t.node.ws_addr().unwrap();
    let err = ws_connect(addr, "/other")
        .await
        .expect_err("wrong path refused");
    assert!(err.to_string().contains("404"), "{err}");
    // Without ws_listen there is no endpoint.
    let t = start_with(1, |c| c.ws_listen = None).await;
    assert!(t.node.ws_addr().is_none());
}

#[tokio::test]
async fn serves_wss_with_the_configured_certificate() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let t = start_with(2, |c| {
        c.tls_cert = Some(dir.path().join("cert.pem"));
        c.tls_key = Some(dir.path().join("key.pem"));
    })
    .await;
    let addr = t.node.ws_addr().unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let (ws, _) =
        tokio_tungstenite::client_async(format!("wss://localhost:{}/message", addr.port()), tls)
            .await
            .expect("wss handshake");
    let mut w = Ws::new(ws);
    let (wid, hash) = w.conn(&t, 0).await;
    assert_eq!(hash, t.key(0));
    pass_text(&w.call(&format!("SUB;CLIENT_ID=:{wid};EVENT_NAME=:s")).await);
    pass_text(&w.call(&pub_frame(&wid, "s", &t.key(0), 1)).await);
    assert_eq!(w.record().await.payload, payload(1));

    // Plaintext WebSocket gets nowhere.
    let plain = tokio::time::timeout(Duration::from_secs(5), ws_connect(addr, "/message")).await;
    assert!(!matches!(plain, Ok(Ok(_))), "plaintext accepted");
}

#[tokio::test]
async fn a_client_that_does_not_read_holds_a_bounded_window() {
    let t = start_with(2, |c| c.max_in_flight = 8).await;
    let (mut g, gid) = t.session(0).await;
    let mut w = open(&t).await;
    let (wid, _) = w.conn(&t, 1).await;
    pass_text(
        &w.call(&format!("SUB;CLIENT_ID=:{wid};EVENT_NAME=:slow"))
            .await,
    );
    for i in 0..100 {
        publish(&mut g, &gid, "slow", &t.key(1), i).await;
    }
    // The client reads nothing: the node hands out at most the window, the rest waits.
    eventually("the window fills", || t.node.stats().in_flight == 8).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = t.node.stats();
    assert_eq!(s.in_flight, 8, "{s:?}");
    // The JetStream backend does not count ready events (they are in the stream).
    if !on_jetstream() {
        assert_eq!(s.ready, 92, "{s:?}");
    }
    // Reading and acking drains everything, in order.
    let mut blocks = Vec::new();
    for _ in 0..100 {
        let r = w.record().await;
        blocks.push(r.block);
        w.send(&format!(
            "ACK;CLIENT_ID=:{wid};EVENT_IDEM=:{};BLOCK=:{};EVENT_NAME=:slow",
            r.idem, r.block
        ))
        .await;
    }
    let mut sorted = blocks.clone();
    sorted.sort();
    assert_eq!(blocks, sorted);
    eventually("all acked", || {
        let s = t.node.stats();
        s.in_flight == 0 && (s.ready == 0 || on_jetstream())
    })
    .await;
}

/// A node that is shutting down closes the connection with 1012 (service restart), which
/// clients treat as a lost connection and reconnect after, instead of answering `CONN`
/// with `-FAIL` (which the published clients and ours read as a refused access key, and
/// stop). As on gRPC, no key is judged then: a wrong one is closed the same way.
#[tokio::test]
async fn conn_while_shutting_down_closes_the_socket_instead_of_failing() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let t = start(1).await;
    let mut live = open(&t).await;
    let (cid, _) = live.conn(&t, 0).await;
    let mut right = open(&t).await;
    let mut wrong = open(&t).await;
    t.node.service().close_now();
    for (ws, key) in [
        (&mut right, t.dev.apps[0].access_key.as_str()),
        (&mut wrong, "not-a-key"),
    ] {
        ws.send(&format!("CONN;ACCESS_KEY=:{key}")).await;
        let closed = loop {
            match tokio::time::timeout(WAIT, ws.ws.next())
                .await
                .expect("closed in time")
            {
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(Message::Text(t))) => panic!("answered {t:?} instead of closing"),
                Some(Ok(_)) => {}
                other => panic!("no close frame: {other:?}"),
            }
        };
        let frame = closed.expect("a close frame with a code");
        assert_eq!(frame.code, CloseCode::Restart, "{frame:?}");
        assert!(frame.reason.contains("shutting down"), "{frame:?}");
    }
    // A session opened before: its requests meet the closing node the same way.
    live.send(&format!("SUB;CLIENT_ID=:{cid};EVENT_NAME=:x"))
        .await;
    let mut code = None;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(WAIT, live.ws.next()).await {
        match m {
            Message::Close(frame) => {
                code = frame.map(|f| f.code);
                break;
            }
            Message::Text(t) => assert!(!t.starts_with("-FAIL"), "answered {t:?}"),
            _ => {}
        }
    }
    assert_eq!(code, Some(CloseCode::Restart));
}
