//! The admin API (issue 16) through a real HTTP client against a real node: every call
//! of EnSync's config-manager table with its status codes, and the effects on the gRPC
//! and WebSocket endpoints without a restart: a created key connects and is held to its
//! permissions, changed permissions apply to the next operation of a live session, a
//! rotated key pair is the app's identity, a deleted key can no longer connect and its
//! sessions end; everything persists across a restart; a wrong or missing admin key
//! changes nothing.

use std::net::SocketAddr;
use std::time::Duration;

use ensync_node::config::SecretString;
use ensync_tests::node::{Refuse, TestNode, fast_options, within};
use ensync_tokio::{ClientOptions, EnSyncEngine, EnSyncWebSocketEngine, ErrorKind};
use futures::StreamExt;
use serde_json::{Value, json};

const ADMIN_KEY: &str = "an-admin-key-for-the-tests-0123456789";

/// One HTTP call: (status, JSON body or `null`).
fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let url = format!("http://{addr}/api/v1/ensync{path}");
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(&url)
        .header("Accept", "application/json");
    // Go's net/http sends the header as `X-Access-Key`.
    let req = match key {
        Some(k) => req.header("X-Access-Key", k),
        None => req,
    };
    let resp = match body {
        Some(b) => agent.run(
            req.header("Content-Type", "application/json")
                .body(b.to_owned())
                .unwrap(),
        ),
        None => agent.run(req.body(()).unwrap()),
    };
    let mut resp = resp.expect("the admin endpoint answers");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn api(
    addr: SocketAddr,
    method: &'static str,
    path: String,
    body: Option<Value>,
) -> (u16, Value) {
    tokio::task::spawn_blocking(move || {
        let body = body.map(|b| b.to_string());
        call(addr, method, &path, Some(ADMIN_KEY), body.as_deref())
    })
    .await
    .unwrap()
}

async fn raw(
    addr: SocketAddr,
    method: &'static str,
    path: &'static str,
    key: Option<&'static str>,
    body: Option<&'static str>,
) -> (u16, Value) {
    tokio::task::spawn_blocking(move || call(addr, method, path, key, body))
        .await
        .unwrap()
}

fn enc(s: &str) -> String {
    s.replace('/', "%2F")
        .replace('+', "%2B")
        .replace('=', "%3D")
}

async fn admin_node() -> TestNode {
    TestNode::start_with(1, Refuse::Nothing, |c| {
        c.admin_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.admin_key = Some(SecretString::new(ADMIN_KEY));
        c.ws_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await
}

async fn connect(
    url: &str,
    access_key: &str,
    secret: &str,
) -> Result<ensync_tokio::Client, ErrorKind> {
    let options = ClientOptions::default().app_secret_key(secret);
    let client = if url.starts_with("ws://") {
        let engine = EnSyncWebSocketEngine::with_options(url, fast_options()).expect("engine");
        within("connect", engine.create_client(access_key, options)).await
    } else {
        let engine = EnSyncEngine::with_options(url, fast_options()).expect("engine");
        within("connect", engine.create_client(access_key, options)).await
    };
    client.map_err(|e| e.kind())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_call_with_its_effects_on_live_sessions() {
    let mut node = admin_node().await;
    let admin = node.admin_addr().expect("admin endpoint");
    let grpc = node.url();
    let ws = format!("ws://{}", node.ws_addr().expect("ws endpoint"));

    // Health, and the admin key.
    let health = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let h = agent
            .get(format!("http://{admin}/healthz"))
            .call()
            .unwrap()
            .status();
        let r = agent
            .get(format!("http://{admin}/readyz"))
            .call()
            .unwrap()
            .status();
        (h.as_u16(), r.as_u16())
    })
    .await
    .unwrap();
    assert_eq!(health, (200, 200));
    assert_eq!(
        raw(admin, "GET", "/ping", Some(ADMIN_KEY), None).await.0,
        200
    );
    assert_eq!(raw(admin, "GET", "/ping", None, None).await.0, 401);
    let create = r#"{"type":"SERVICE","name":"billing","permissions":{"send":["orders/*"],"receive":["orders/*"]}}"#;
    assert_eq!(
        raw(admin, "POST", "/access-key", None, Some(create))
            .await
            .0,
        401
    );
    assert_eq!(
        raw(
            admin,
            "POST",
            "/access-key",
            Some("wrong-key-wrong-key"),
            Some(create)
        )
        .await
        .0,
        401
    );
    let (status, list) = api(
        admin,
        "GET",
        "/access-key?limit=20&order=DESC&orderBy=key&pageIndex=0".into(),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["resultsLength"], 1, "only the bootstrap app: {list}");

    // Bad input: 400, nothing made.
    assert_eq!(
        raw(
            admin,
            "POST",
            "/access-key",
            Some(ADMIN_KEY),
            Some("{not json")
        )
        .await
        .0,
        400
    );
    assert_eq!(
        raw(
            admin,
            "POST",
            "/access-key",
            Some(ADMIN_KEY),
            Some(r#"{"name":"x","permissions":{"send":["a/*/b"]}}"#)
        )
        .await
        .0,
        400
    );
    assert_eq!(
        raw(
            admin,
            "POST",
            "/access-key",
            Some(ADMIN_KEY),
            Some(r#"{"type":"ROBOT","name":"x"}"#)
        )
        .await
        .0,
        400
    );
    assert_eq!(
        api(admin, "GET", "/access-key".into(), None).await.1["resultsLength"],
        1
    );

    // Create: 2xx with the key pair, unknown fields ignored.
    let (status, made) = api(
        admin,
        "POST",
        "/access-key".into(),
        Some(json!({"type": "SERVICE", "name": "billing", "extra": 1,
            "permissions": {"send": ["orders/*"], "receive": ["orders/*"]}})),
    )
    .await;
    assert!(status < 300, "{status} {made}");
    let id = made["id"].as_str().unwrap().to_owned();
    let access = made["accessKey"].as_str().unwrap().to_owned();
    let secret = made["service_key_pair"]["private_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let public = made["service_key_pair"]["public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(secret.len(), 88);
    assert_eq!(
        made["permissions"],
        json!({"send": ["orders/*"], "receive": ["orders/*"]})
    );
    assert!(
        made["createdAt"].as_str().unwrap().contains('T'),
        "RFC 3339: {made}"
    );

    // Get, list, filters; never the private key after creation.
    let (status, view) = api(admin, "GET", format!("/access-key/{id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(view["key"], access.as_str());
    assert_eq!(view["service_key_pair"], json!({"public_key": public}));
    assert_eq!(
        api(admin, "GET", "/access-key/no-such-id".into(), None)
            .await
            .0,
        404
    );
    let (_, list) = api(
        admin,
        "GET",
        format!("/access-key?accessKey={access}"),
        None,
    )
    .await;
    assert_eq!(list["resultsLength"], 1);
    let (_, list) = api(
        admin,
        "GET",
        "/access-key?limit=1&pageIndex=1&order=ASC".into(),
        None,
    )
    .await;
    assert_eq!(list["resultsLength"], 2);
    assert_eq!(
        list["results"][0]["id"],
        id.as_str(),
        "page 2 of 1 in creation order"
    );
    assert!(!list.to_string().contains(&secret));

    // The new key connects (gRPC and WebSocket), within its permissions.
    let app = connect(&grpc, &access, &secret)
        .await
        .expect("a created key connects");
    assert_eq!(app.public_key(), public);
    let app_ws = connect(&ws, &access, &secret)
        .await
        .expect("also over WebSocket");
    let mut sub = app.subscribe("orders/created").await.unwrap();
    let sent = app_ws
        .publish("orders/created", &[public.as_str()], &json!({"n": 1}))
        .await
        .unwrap();
    let ev = within("delivery", sub.next()).await.expect("an event");
    assert_eq!(ev.idem, sent[0]);
    assert_eq!(ev.payload, json!({"n": 1}));
    let refused = app
        .publish("billing/x", &[public.as_str()], &json!({}))
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Publish);
    assert!(app.subscribe("billing/x").await.is_err());

    // Permissions: read, replaced (null = empty), applied to the live sessions' next call.
    let (status, perms) = api(
        admin,
        "GET",
        format!("/access-key/{}/permissions", enc(&access)),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(perms["permissions"]["send"], json!(["orders/*"]));
    assert_eq!(
        api(admin, "GET", "/access-key/nope/permissions".into(), None)
            .await
            .0,
        404
    );
    let (status, _) = api(
        admin,
        "POST",
        format!("/access-key/{}/permissions", enc(&access)),
        Some(json!({"send": ["billing/*"], "receive": null})),
    )
    .await;
    assert!(status < 300);
    assert_eq!(
        app.publish("orders/created", &[public.as_str()], &json!({}))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Publish,
        "no longer allowed, on the live session"
    );
    app_ws
        .publish("billing/x", &[public.as_str()], &json!({}))
        .await
        .expect("now allowed, on the live WebSocket session");
    assert_eq!(
        api(
            admin,
            "POST",
            format!("/access-key/{}/permissions", enc(&access)),
            Some(json!({"send": ["a/*/b"]}))
        )
        .await
        .0,
        400
    );
    let (_, perms) = api(
        admin,
        "GET",
        format!("/access-key/{}/permissions", enc(&access)),
        None,
    )
    .await;
    assert_eq!(
        perms["permissions"],
        json!({"send": ["billing/*"], "receive": []}),
        "unchanged by the refused call"
    );

    // Events.
    let (status, _) = api(
        admin,
        "POST",
        "/event".into(),
        Some(
            json!({"name": "orders/created", "payload": {"order_id": "string"},
            "createdAt": "0001-01-01T00:00:00Z", "updatedAt": "0001-01-01T00:00:00Z"}),
        ),
    )
    .await;
    assert!(status < 300);
    assert_eq!(
        api(
            admin,
            "POST",
            "/event".into(),
            Some(json!({"name": "orders/created"}))
        )
        .await
        .0,
        400
    );
    assert_eq!(
        api(
            admin,
            "POST",
            "/event".into(),
            Some(json!({"name": "bad name!"}))
        )
        .await
        .0,
        400
    );
    let (status, ev) = api(
        admin,
        "GET",
        format!("/event/{}", enc("orders/created")),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let event_id = ev["id"].as_str().unwrap().to_owned();
    assert_eq!(ev["payload"], json!({"order_id": "string"}));
    let (status, _) = api(
        admin,
        "PUT",
        format!("/event/{event_id}"),
        Some(json!({"name": "", "payload": {}})),
    )
    .await;
    assert!(status < 300);
    let (_, ev) = api(admin, "GET", format!("/event/{event_id}"), None).await;
    assert_eq!(
        (ev["name"].as_str(), &ev["payload"]),
        (Some("orders/created"), &json!({"order_id": "string"})),
        "empty = unchanged"
    );
    let (status, _) = api(
        admin,
        "PUT",
        format!("/event/{event_id}"),
        Some(json!({"payload": {"order_id": "string", "total": "number"}})),
    )
    .await;
    assert!(status < 300);
    let (_, events) = api(
        admin,
        "GET",
        "/event?limit=20&order=DESC&orderBy=createdAt&pageIndex=0".into(),
        None,
    )
    .await;
    assert_eq!(events["resultsLength"], 1);
    assert_eq!(events["results"][0]["payload"]["total"], "number");
    assert_eq!(api(admin, "GET", "/event/nope".into(), None).await.0, 404);
    assert_eq!(
        api(
            admin,
            "PUT",
            "/event/nope".into(),
            Some(json!({"name": "x"}))
        )
        .await
        .0,
        404
    );
    assert_eq!(api(admin, "GET", "/workspace".into(), None).await.0, 200);

    // Rotate: a new identity; the old secret no longer works, the new one does.
    let (status, pair) = api(
        admin,
        "PUT",
        "/access/service-key-pair".into(),
        Some(json!({"access_key": access})),
    )
    .await;
    assert_eq!(status, 200);
    let new_public = pair["public_key"].as_str().unwrap().to_owned();
    let new_secret = pair["private_key"].as_str().unwrap().to_owned();
    assert_ne!(new_public, public);
    assert_eq!(new_secret.len(), 88);
    assert_eq!(
        api(
            admin,
            "PUT",
            "/access/service-key-pair".into(),
            Some(json!({"access_key": "nope"}))
        )
        .await
        .0,
        404
    );
    assert_eq!(
        api(
            admin,
            "PUT",
            "/access/service-key-pair".into(),
            Some(json!({}))
        )
        .await
        .0,
        400
    );
    let (_, view) = api(admin, "GET", format!("/access-key/{id}"), None).await;
    assert_eq!(view["service_key_pair"]["public_key"], new_public.as_str());
    // Connect carries no proof of the secret key: what changes is the identity the node
    // gives the app, and so what it can read.
    let rotated = connect(&grpc, &access, &new_secret)
        .await
        .expect("the new pair connects");
    assert_eq!(
        rotated.public_key(),
        new_public,
        "the app's identity is the new key"
    );
    let (status, _) = api(
        admin,
        "POST",
        format!("/access-key/{}/permissions", enc(&access)),
        Some(json!({"send": ["billing/*"], "receive": ["billing/*"]})),
    )
    .await;
    assert!(status < 300);
    let mut billing = rotated.subscribe("billing/x").await.unwrap();
    let boot = node.client(0, fast_options()).await;
    boot.publish("billing/x", &[new_public.as_str()], &json!({"to": "new"}))
        .await
        .unwrap();
    let ev = within("delivery to the new identity", billing.next())
        .await
        .expect("an event");
    assert_eq!(
        ev.payload,
        json!({"to": "new"}),
        "read with the new secret key"
    );
    drop((app, app_ws, sub, billing, boot));
    rotated.close().await.expect("close");

    // Config-file apps are listed but not changed at run time.
    let boot_id = format!("config:{}", node.app(0).name);
    assert_eq!(
        api(
            admin,
            "DELETE",
            format!("/access-key/{}", enc(&boot_id)),
            None
        )
        .await
        .0,
        400
    );

    // Everything persists across a restart.
    node.restart().await;
    let admin = node.admin_addr().unwrap();
    let (_, view) = api(admin, "GET", format!("/access-key/{id}"), None).await;
    assert_eq!(view["service_key_pair"]["public_key"], new_public.as_str());
    assert_eq!(
        view["permissions"],
        json!({"send": ["billing/*"], "receive": ["billing/*"]})
    );
    assert_eq!(
        api(admin, "GET", "/event".into(), None).await.1["resultsLength"],
        1
    );
    let live = connect(&node.url(), &access, &new_secret)
        .await
        .expect("after a restart");
    let _open = live.subscribe("billing/x").await.unwrap();
    let mut changes = live.state_changes();

    // Delete: the live session ends and the key no longer connects.
    assert_eq!(
        api(admin, "DELETE", format!("/access-key/{id}"), None)
            .await
            .0,
        204
    );
    assert_eq!(
        api(admin, "DELETE", format!("/access-key/{id}"), None)
            .await
            .0,
        404
    );
    assert_eq!(
        api(admin, "GET", format!("/access-key/{id}"), None).await.0,
        404
    );
    within("the deleted key's session is told", async {
        while let Some(state) = changes.next().await {
            if state != ensync_tokio::ConnectionState::Connected {
                break;
            }
        }
    })
    .await;
    assert_eq!(
        connect(&node.url(), &access, &new_secret).await.err(),
        Some(ErrorKind::Auth)
    );
    assert!(
        live.publish("billing/x", &[new_public.as_str()], &json!({}))
            .await
            .is_err(),
        "the deleted key's client can do nothing more"
    );
    node.restart().await;
    assert_eq!(
        connect(&node.url(), &access, &new_secret).await.err(),
        Some(ErrorKind::Auth),
        "deleted for good"
    );
}

/// The value of the sample `name` (with its labels, as printed) in a `/metrics` text.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(addr: SocketAddr) -> String {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut resp = agent.get(format!("http://{addr}/metrics")).call().unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        resp.body_mut().read_to_string().unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_when_events_flow() {
    let node = admin_node().await;
    let admin = node.admin_addr().unwrap();
    let before = scrape(admin).await;
    assert!(before.ends_with("# EOF\n"), "OpenMetrics text: {before}");

    let client = node.client(0, fast_options()).await;
    let me = client.public_key().to_owned();
    let mut sub = client.subscribe("m/flow").await.unwrap();
    for n in 0..3 {
        client
            .publish("m/flow", &[me.as_str()], &json!({"n": n}))
            .await
            .unwrap();
    }
    for _ in 0..3 {
        // Auto-ack subscriptions acknowledge once the event is handed over.
        within("delivery", sub.next()).await.expect("an event");
    }
    assert!(
        client
            .publish("bad name!", &[me.as_str()], &json!({}))
            .await
            .is_err(),
        "refused before sending"
    );
    // A recipient the node does not know: refused by the node.
    let stranger = ensync_node::keys::generate().public_key;
    let refused = client
        .publish("m/flow", &[stranger.as_str()], &json!({}))
        .await;
    assert!(refused.is_err());
    // The acks are counted once durable, after the node took them out of flight.
    let after = within("the acks are counted", async {
        loop {
            let text = scrape(admin).await;
            if sample(&text, "ensync_acks_total") - sample(&before, "ensync_acks_total") >= 3.0 {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let d = |name: &str| sample(&after, name) - sample(&before, name);
    assert_eq!(d("ensync_publishes_total"), 3.0, "{after}");
    assert_eq!(d("ensync_deliveries_total"), 3.0, "{after}");
    assert_eq!(d("ensync_acks_total"), 3.0, "{after}");
    assert_eq!(d("ensync_connects_total"), 1.0, "{after}");
    assert_eq!(d("ensync_subscribes_total"), 1.0, "{after}");
    assert!(
        d("ensync_refused_requests_total{op=\"publish\",reason=\"unknown_recipient\"}") >= 1.0,
        "{after}"
    );
    assert_eq!(sample(&after, "ensync_sessions"), 1.0, "{after}");
    assert_eq!(sample(&after, "ensync_subscriptions"), 1.0, "{after}");
    assert!(sample(&after, "ensync_store_bytes") > 0.0, "{after}");
    assert!(
        d("ensync_commit_batch_writes_count") >= 2.0,
        "publishes and acks committed: {after}"
    );
    drop(sub);
}

/// Issue 16's round, as the published Go CLI drives it: `ensync_apps` counts the key
/// created through the API and drops when it is deleted; its refused publish (outside its
/// permissions) and the refused connect after the delete are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_a_key_from_creation_to_deletion() {
    let node = admin_node().await;
    let admin = node.admin_addr().unwrap();
    let before = scrape(admin).await;
    assert_eq!(
        sample(&before, "ensync_apps"),
        1.0,
        "the bootstrap app: {before}"
    );

    let (status, key) = api(
        admin,
        "POST",
        "/access-key".into(),
        Some(json!({"type": "SERVICE", "name": "billing",
                    "permissions": {"send": ["orders/*"], "receive": ["billing/*"]}})),
    )
    .await;
    assert_eq!(status, 201, "{key}");
    let id = key["id"].as_str().unwrap().to_owned();
    let access = key["accessKey"].as_str().unwrap().to_owned();
    let secret = key["service_key_pair"]["private_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let created = scrape(admin).await;
    assert_eq!(sample(&created, "ensync_apps"), 2.0, "{created}");

    let bootstrap = node.client(0, fast_options()).await;
    let to = bootstrap.public_key().to_owned();
    let billing = connect(&node.url(), &access, &secret)
        .await
        .expect("connects");
    billing
        .publish(
            "orders/created",
            &[to.as_str()],
            &json!({"order_id": "A-17"}),
        )
        .await
        .expect("within its permissions");
    let refused = billing
        .publish("payments/refunded", &[to.as_str()], &json!({}))
        .await;
    assert!(refused.is_err(), "outside its permissions");

    assert_eq!(
        api(admin, "DELETE", format!("/access-key/{id}"), None)
            .await
            .0,
        204
    );
    assert_eq!(
        connect(&node.url(), &access, &secret).await.err(),
        Some(ErrorKind::Auth)
    );
    let after = scrape(admin).await;
    let d = |name: &str| sample(&after, name) - sample(&before, name);
    assert_eq!(sample(&after, "ensync_apps"), 1.0, "{after}");
    assert_eq!(d("ensync_publishes_total"), 1.0, "{after}");
    assert_eq!(
        d("ensync_connects_total"),
        2.0,
        "billing and bootstrap: {after}"
    );
    assert_eq!(
        d("ensync_refused_requests_total{op=\"publish\",reason=\"forbidden\"}"),
        1.0,
        "{after}"
    );
    assert_eq!(
        d("ensync_refused_requests_total{op=\"connect\",reason=\"invalid_access_key\"}"),
        1.0,
        "{after}"
    );
}

/// Issue 16: the per-queue gauges (ready, held, deferred per recipient app and event
/// name) follow publishes, deliveries, acks and defers; past `metrics_queue_limit` only
/// the queues with the most ready events are shown and `ensync_queues_left_out` counts
/// the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_queue_gauges_follow_the_events_and_hold_their_cap() {
    let node = TestNode::start_with(1, Refuse::Nothing, |c| {
        c.admin_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.admin_key = Some(SecretString::new(ADMIN_KEY));
        c.metrics_queue_limit = 2;
    })
    .await;
    let admin = node.admin_addr().unwrap();
    let app = node.app(0).name.clone();
    let client = node.client(0, fast_options()).await;
    let me = client.public_key().to_owned();
    let publish = |name: &'static str, n: usize| {
        let client = &client;
        let me = me.clone();
        async move {
            for i in 0..n {
                client
                    .publish(name, &[me.as_str()], &json!({"i": i}))
                    .await
                    .unwrap();
            }
        }
    };
    let row = |text: &str, what: &str, event: &str| -> Option<f64> {
        let series = format!("ensync_queue_{what}_events{{app=\"{app}\",event=\"{event}\"}}");
        text.lines().find_map(|l| {
            l.strip_prefix(series.as_str())?
                .strip_prefix(' ')?
                .parse()
                .ok()
        })
    };

    publish("q/a", 3).await;
    publish("q/b", 2).await;
    let text = scrape(admin).await;
    assert_eq!(row(&text, "ready", "q/a"), Some(3.0), "{text}");
    assert_eq!(row(&text, "held", "q/a"), Some(0.0), "{text}");
    assert_eq!(row(&text, "deferred", "q/a"), Some(0.0), "{text}");
    assert_eq!(row(&text, "ready", "q/b"), Some(2.0), "{text}");
    assert_eq!(sample(&text, "ensync_queues_left_out"), 0.0, "{text}");

    // Delivered, not yet settled: held.
    let mut sub = client
        .subscribe_with(
            "q/a",
            ensync_tokio::SubscribeOptions::default().auto_ack(false),
        )
        .await
        .unwrap();
    let mut events = Vec::new();
    for _ in 0..3 {
        events.push(within("delivery", sub.next()).await.expect("an event"));
    }
    let text = scrape(admin).await;
    assert_eq!(row(&text, "ready", "q/a"), Some(0.0), "{text}");
    assert_eq!(row(&text, "held", "q/a"), Some(3.0), "{text}");

    // Two acked, one deferred (for longer than the test lasts).
    let last = events.pop().unwrap();
    for ev in events {
        ev.ack().await.unwrap();
    }
    last.defer(Duration::from_secs(3600), "later")
        .await
        .unwrap();
    let text = scrape(admin).await;
    assert_eq!(row(&text, "held", "q/a"), Some(0.0), "{text}");
    assert_eq!(row(&text, "deferred", "q/a"), Some(1.0), "{text}");
    assert_eq!(row(&text, "ready", "q/b"), Some(2.0), "{text}");

    // A third queue: the cap shows the two with the most ready events.
    publish("q/c", 3).await;
    let text = scrape(admin).await;
    assert_eq!(row(&text, "ready", "q/c"), Some(3.0), "{text}");
    assert_eq!(row(&text, "ready", "q/b"), Some(2.0), "{text}");
    assert_eq!(row(&text, "ready", "q/a"), None, "left out: {text}");
    assert_eq!(row(&text, "deferred", "q/a"), None, "left out: {text}");
    assert_eq!(sample(&text, "ensync_queues_left_out"), 1.0, "{text}");
    let rows = text
        .lines()
        .filter(|l| l.starts_with("ensync_queue_ready_events{"))
        .count();
    assert_eq!(rows, 2, "{text}");
    drop(sub);
}
