//! Run-time administration on the JetStream backend (issues 15/16): two nodes on one
//! stream, each with its admin endpoint; what the admin API of one changes holds on the
//! other at once (a created key connects over gRPC and WebSocket, changed permissions
//! refuse the next publish of a live session, a new key pair is the identity, a deleted
//! key's sessions end and it no longer connects), a restarted node reads the keys back,
//! and `/readyz` follows the NATS cluster (503 while it is down, 200 once it is back, the
//! watch of the records resumed).
//!
//! Needs `nats-server` (ENSYNC_NATS_SERVER or .venv/bin/nats-server); without it the
//! tests print a note and pass, except under CI, where they fail.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::nats::{self, NatsCluster};
use ensync_node::config::{JetStreamConfig, SecretString, StoreKind};
use ensync_node::dev::DevSetup;
use ensync_node::{Node, RunningNode};
use ensync_proto::wire;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const ADMIN_KEY: &str = "an-admin-key-for-the-jetstream-tests-0123";
/// How long a change made on one node may take to hold on the other.
const PROPAGATION: Duration = Duration::from_secs(5);

fn config(js: JetStreamConfig) -> DevSetup {
    let mut dev = DevSetup::generate(1).expect("dev setup");
    let c = &mut dev.config;
    c.store = StoreKind::Jetstream;
    c.jetstream = Some(js);
    c.admin_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    c.admin_key = Some(SecretString::new(ADMIN_KEY));
    c.ws_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    dev
}

async fn start(dev: &DevSetup) -> RunningNode {
    Node::start(dev.config.clone())
        .await
        .expect("node starts on JetStream")
}

/// One HTTP call to an admin endpoint: (status, body as JSON, or as a JSON string when
/// it is not JSON).
async fn http(
    addr: SocketAddr,
    method: &'static str,
    path: String,
    body: Option<Value>,
) -> (u16, Value) {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(15)))
            .build()
            .into();
        let req = ureq::http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("X-Access-Key", ADMIN_KEY);
        let resp = match body {
            Some(b) => agent.run(
                req.header("Content-Type", "application/json")
                    .body(b.to_string())
                    .unwrap(),
            ),
            None => agent.run(req.body(()).unwrap()),
        };
        let mut resp = resp.expect("the admin endpoint answers");
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    })
    .await
    .unwrap()
}

async fn api(
    node: &RunningNode,
    method: &'static str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let addr = node.admin_addr().expect("admin endpoint");
    http(addr, method, format!("/api/v1/ensync{path}"), body).await
}

async fn readyz(node: &RunningNode) -> (u16, Value) {
    http(node.admin_addr().unwrap(), "GET", "/readyz".into(), None).await
}

fn enc(s: &str) -> String {
    s.replace('/', "%2F")
        .replace('+', "%2B")
        .replace('=', "%3D")
}

/// `Connect` over gRPC: the session id and client hash, or the refusal's text.
async fn grpc_connect(node: &RunningNode, access: &str) -> Result<(String, String), String> {
    let mut c = common::client(node.grpc_addr()).await;
    let r = c
        .connect(wire::ConnectRequest {
            access_key: access.to_owned(),
        })
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    if r.success {
        Ok((r.client_id, r.client_hash))
    } else {
        Err(r.error_message)
    }
}

/// Polls `f` until it answers `Some` (at most [`PROPAGATION`]); answers it and how long
/// it took.
async fn within<T, F, Fut>(what: &str, mut f: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let t0 = Instant::now();
    loop {
        if let Some(v) = f().await {
            return (v, t0.elapsed());
        }
        assert!(
            t0.elapsed() < PROPAGATION,
            "not within {PROPAGATION:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A created key, as the admin API answered it.
struct Made {
    id: String,
    access: String,
    public: String,
}

async fn create_key(node: &RunningNode, name: &str, send: &[&str], receive: &[&str]) -> Made {
    let (status, made) = api(
        node,
        "POST",
        "/access-key",
        Some(json!({"type": "SERVICE", "name": name,
            "permissions": {"send": send, "receive": receive}})),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    Made {
        id: made["id"].as_str().unwrap().to_owned(),
        access: made["accessKey"].as_str().unwrap().to_owned(),
        public: made["service_key_pair"]["public_key"]
            .as_str()
            .unwrap()
            .to_owned(),
    }
}

/// A raw WebSocket client of `/message`.
struct Ws {
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
}

impl Ws {
    async fn open(node: &RunningNode) -> Self {
        let addr = node.ws_addr().expect("ws endpoint");
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/message"), tcp)
            .await
            .expect("ws connect");
        Self { ws }
    }

    /// Sends `text`; the next answer that is not a PING or a record (`None`: closed).
    async fn call(&mut self, text: &str) -> Option<String> {
        self.ws.send(Message::text(text.to_owned())).await.ok()?;
        self.answer().await
    }

    async fn answer(&mut self) -> Option<String> {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(15), self.ws.next())
                .await
                .expect("timed out waiting for a frame");
            match m {
                Some(Ok(Message::Text(t))) => {
                    let t = t.as_str();
                    if t == "PING" {
                        let _ = self.ws.send(Message::text("PONG")).await;
                    } else if !t.starts_with("+RECORD:") {
                        return Some(t.to_owned());
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    }
}

/// Two nodes on one stream: every admin change made through A holds on B, live; a
/// restarted B reads the keys back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_on_one_node_hold_on_the_other() {
    let Some(cluster) = nats::shared("admin_changes_on_one_node_hold_on_the_other").await else {
        return;
    };
    let dev = config(cluster.jetstream_config(&nats::unique_stream()));
    let a = start(&dev).await;
    let b = start(&dev).await;
    assert_eq!(readyz(&a).await.0, 200);
    assert_eq!(readyz(&b).await.0, 200);
    let nb = &b;

    // Created on A: connects on B over gRPC and WebSocket, with A's identity for it.
    let k = create_key(&a, "billing", &["orders/*"], &["orders/*"]).await;
    let kept = create_key(&a, "kept", &["*"], &["*"]).await;
    let access = k.access.as_str();
    let ((sid, hash), took) = within("the key made on A connects on B", || async move {
        grpc_connect(nb, access).await.ok()
    })
    .await;
    eprintln!("created on A, connected on B after {took:?}");
    assert_eq!(hash, k.public);
    let (status, view) = api(&b, "GET", &format!("/access-key/{}", k.id), None).await;
    assert_eq!((status, view["name"].as_str()), (200, Some("billing")));
    let mut ws = Ws::open(&b).await;
    let conn = ws
        .call(&format!("CONN;ACCESS_KEY=:{}", k.access))
        .await
        .expect("answer");
    assert!(conn.starts_with("+PASS:"), "{conn}");
    let (ws_id, ws_hash) = ensync_proto::ws::parse_conn_pass(&conn).expect("CONN answer");
    assert_eq!(ws_hash, k.public);

    // Held to its permissions on B.
    let mut c = common::client(b.grpc_addr()).await;
    let publish = |c: &mut common::Client, name: &'static str, to: String| {
        let req = common::publish_req(&sid, name, &to, 1);
        let mut c = c.clone();
        async move { c.publish_event(req).await.unwrap().into_inner() }
    };
    let mut sub = common::subscribe(&mut c, &sid, "orders/created").await;
    assert!(
        publish(&mut c, "orders/created", k.public.clone())
            .await
            .success
    );
    assert_eq!(common::next(&mut sub).await.event_name, "orders/created");
    assert!(!publish(&mut c, "billing/x", k.public.clone()).await.success);

    // Permissions changed on A: B's live sessions' next publish is refused, and the
    // WebSocket session may publish what is now allowed.
    let (status, _) = api(
        &a,
        "POST",
        &format!("/access-key/{}/permissions", enc(&k.access)),
        Some(json!({"send": ["billing/*"], "receive": ["orders/*"]})),
    )
    .await;
    assert_eq!(status, 200);
    let ((), took) = within("the new permissions show on B", || async move {
        let (_, v) = api(
            nb,
            "GET",
            &format!("/access-key/{}/permissions", enc(access)),
            None,
        )
        .await;
        (v["permissions"]["send"] == json!(["billing/*"])).then_some(())
    })
    .await;
    eprintln!("permissions changed on A, applied on B after {took:?}");
    let refused = publish(&mut c, "orders/created", k.public.clone()).await;
    assert!(!refused.success, "the next publish on B is refused");
    assert!(
        refused.error_message.contains("may not publish"),
        "{}",
        refused.error_message
    );
    let ok = ws
        .call(&format!(
            "PUB;CLIENT_ID=:{ws_id};EVENT_NAME=:billing/x;PAYLOAD=:{};DELIVERY_TO=:{};METADATA=:{{}}",
            common::payload(2),
            k.public
        ))
        .await
        .expect("answer");
    assert!(
        ok.starts_with("+PASS:"),
        "now allowed on B's WebSocket session: {ok}"
    );

    // A's own changes came back to it through the watch and left it as it was.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, v) = api(
        &a,
        "GET",
        &format!("/access-key/{}/permissions", enc(&k.access)),
        None,
    )
    .await;
    assert_eq!(
        v["permissions"],
        json!({"send": ["billing/*"], "receive": ["orders/*"]})
    );
    assert_eq!(
        api(&a, "GET", "/access-key", None).await.1["resultsLength"],
        3
    );

    // A new key pair made on A is the identity on B; B's sessions of the old one end.
    let (status, pair) = api(
        &a,
        "PUT",
        "/access/service-key-pair",
        Some(json!({"access_key": k.access})),
    )
    .await;
    assert_eq!(status, 200);
    let new_public = pair["public_key"].as_str().unwrap().to_owned();
    let want = new_public.as_str();
    let ((sid2, _), took) = within("the new identity on B", || async move {
        match grpc_connect(nb, access).await {
            Ok((s, h)) if h == want => Some((s, h)),
            _ => None,
        }
    })
    .await;
    eprintln!("rotated on A, new identity on B after {took:?}");
    let ended = tokio::time::timeout(Duration::from_secs(5), sub.message())
        .await
        .expect("the old identity's stream ends");
    assert!(!matches!(ended, Ok(Some(_))), "{ended:?}");
    let after = ws
        .call(&format!(
            "PUB;CLIENT_ID=:{ws_id};EVENT_NAME=:billing/x;PAYLOAD=:{};DELIVERY_TO=:{};METADATA=:{{}}",
            common::payload(3),
            new_public
        ))
        .await
        .expect("answer");
    assert_eq!(
        after, "-FAIL:not authenticated",
        "the old identity's WebSocket session ended"
    );

    // Deleted on A: B's live session ends, and the key no longer connects on B.
    let mut sub2 = common::subscribe(&mut c, &sid2, "orders/created").await;
    let (status, _) = api(&a, "DELETE", &format!("/access-key/{}", k.id), None).await;
    assert_eq!(status, 204);
    let ended = tokio::time::timeout(PROPAGATION, sub2.message())
        .await
        .expect("the deleted key's stream on B ends");
    assert!(!matches!(ended, Ok(Some(_))), "{ended:?}");
    let (refusal, took) = within("the deleted key is refused on B", || async move {
        grpc_connect(nb, access).await.err()
    })
    .await;
    eprintln!("deleted on A, refused on B after {took:?}");
    assert!(refusal.contains("invalid access key"), "{refusal}");
    let mut c2 = c.clone();
    let after = c2
        .publish_event(common::publish_req(&sid2, "billing/x", &new_public, 3))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !after.success,
        "the deleted key's session can do nothing more"
    );

    // Event definitions too.
    let (status, _) = api(
        &a,
        "POST",
        "/event",
        Some(json!({"name": "orders/created", "payload": {"id": "string"}})),
    )
    .await;
    assert_eq!(status, 201);
    within("the event definition on B", || async move {
        let (_, v) = api(
            nb,
            "GET",
            &format!("/event/{}", enc("orders/created")),
            None,
        )
        .await;
        (v["payload"] == json!({"id": "string"})).then_some(())
    })
    .await;

    // A restarted node reads the keys back from the bucket (no watch needed).
    b.shutdown().await;
    let b = start(&dev).await;
    let (_, hash) = grpc_connect(&b, &kept.access)
        .await
        .expect("a kept key connects on a restarted node at once");
    assert_eq!(hash, kept.public);
    assert!(
        grpc_connect(&b, &k.access).await.is_err(),
        "deleted for good"
    );
    let (_, list) = api(&b, "GET", "/access-key", None).await;
    assert_eq!(
        list["resultsLength"], 2,
        "the bootstrap app and the kept key: {list}"
    );
    assert_eq!(api(&b, "GET", "/event", None).await.1["resultsLength"], 1);
    b.shutdown().await;
    a.shutdown().await;
}

/// `/readyz` while the whole NATS cluster is down (503, with the reason; admin writes
/// refused with 503) and once it is back (200); the records watch resumes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_cluster_and_the_watch_resumes() {
    let Some(binary) = nats::require_binary("readyz_follows_the_cluster_and_the_watch_resumes")
    else {
        return;
    };
    let mut cluster = NatsCluster::start(&binary, 3).await;
    let dev = config(cluster.jetstream_config("READY"));
    let a = start(&dev).await;
    let b = start(&dev).await;
    assert_eq!(readyz(&a).await.0, 200);

    cluster.kill_all();
    let t0 = Instant::now();
    let na = &a;
    let ((status, why), took) = within("readyz 503 with every server down", || async move {
        let r = readyz(na).await;
        (r.0 != 200).then_some(r)
    })
    .await;
    eprintln!("cluster down: readyz {status} after {took:?}: {why}");
    assert_eq!(status, 503);
    assert!(why.to_string().contains("NATS"), "a reason: {why}");
    let (status, _) = api(&a, "POST", "/access-key", Some(json!({"name": "down"}))).await;
    assert_eq!(status, 503, "nothing can be stored");
    assert_eq!(readyz(&b).await.0, 503);

    cluster.restart_all().await;
    let restarted = Instant::now();
    for node in [&a, &b] {
        let t = Instant::now();
        loop {
            let (status, why) = readyz(node).await;
            if status == 200 {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "readyz 200 again: {status} {why}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!(
        "cluster back: readyz 200 after {:?} (down {:?})",
        restarted.elapsed(),
        t0.elapsed()
    );

    // The watch of B resumed: a key made on A now connects on B.
    let t = Instant::now();
    let k = loop {
        let (status, made) = api(&a, "POST", "/access-key", Some(json!({"name": "after"}))).await;
        if status == 201 {
            break made;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{status} {made}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let access = k["accessKey"].as_str().unwrap().to_owned();
    let (nb, access) = (&b, access.as_str());
    let (_, took) = within("B sees the key made after the outage", || async move {
        grpc_connect(nb, access).await.ok()
    })
    .await;
    eprintln!("made on A after the outage, connected on B after {took:?}");
    b.shutdown().await;
    a.shutdown().await;
}
