//! The published Node.js EnSync client (npm `ensync-client-sdk@0.0.18`, a WebSocket
//! client) against our node, and against our Rust client through our node, in both
//! directions, driven through its own API by `tests/interop/ensync_driver.js`.
//!
//! The package is installed by `scripts/node-env.sh` (`npm ci` from the committed
//! `tests/interop/package-lock.json`; `scripts/test.sh` runs it). Without `node` or the
//! installed package the test prints a note and passes, except under `CI`, where it
//! fails. Results go to `target/interop/interop_node.{json,md}`, and to the
//! `interop_node` section of `docs/interop.md` with `ENSYNC_WRITE_INTEROP=1`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use ensync_proto::clients::ClientKind;
use ensync_tests::node::{TestNode, fast_options};
use ensync_tests::report::{self, Column, Outcome, Results, Row};
use ensync_tests::{PyDriver, TestApp, driver_config};
use ensync_tokio::{Client, Event, PublishOptions, SubscribeOptions, Subscription};
use futures::StreamExt;
use serde_json::{Value, json};

const SUITE: &str = "interop_node";
const COLUMN: &str = "npm-0.0.18";

fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

/// `node` and the installed package, or why not.
fn find_node() -> Result<(PathBuf, PathBuf), String> {
    let node = std::env::var_os("ENSYNC_NODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("node"));
    let version = Command::new(&node)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", node.display()))?;
    ensure(version.status.success(), || {
        format!("{} --version failed", node.display())
    })?;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop");
    let package = dir.join("node_modules/ensync-client-sdk/package.json");
    ensure(package.exists(), || {
        "ensync-client-sdk is not installed (run scripts/node-env.sh)".to_string()
    })?;
    Ok((node, dir.join("ensync_driver.js")))
}

struct Ctx {
    node: TestNode,
    rt: tokio::runtime::Runtime,
    apps: Vec<TestApp>,
    node_bin: PathBuf,
    script: PathBuf,
}

impl Ctx {
    fn config(&self) -> Value {
        let ws = self.node.ws_addr().expect("ws endpoint");
        let mut config = driver_config(&format!("http://{ws}"), &self.apps);
        // The client appends `/message` to the URL it is given.
        config["url"] = json!(format!("http://{ws}"));
        config
    }

    fn driver(&self) -> Result<PyDriver, String> {
        let mut command = Command::new(&self.node_bin);
        command.arg(&self.script);
        PyDriver::spawn_command(command, &self.config(), "ensync-client-sdk")
    }

    fn pk(&self, i: usize) -> String {
        self.apps[i].public_key.clone()
    }

    /// Our Rust client (gRPC) as app `i`.
    fn rust_client(&self, i: usize) -> Client {
        self.rt.block_on(self.node.client(i, fast_options()))
    }

    fn rust_subscribe(&self, c: &Client, event: &str) -> Subscription {
        self.rt
            .block_on(c.subscribe_with(event, SubscribeOptions::default().auto_ack(false)))
            .expect("subscribe")
    }

    /// The events our Rust subscription receives within `ms` (acked as they come).
    fn rust_events(&self, sub: &mut Subscription, ms: u64) -> Vec<Event> {
        self.rt.block_on(async {
            let mut got = Vec::new();
            let until = tokio::time::Instant::now() + Duration::from_millis(ms);
            while let Ok(Some(ev)) = tokio::time::timeout_at(until, sub.next()).await {
                got.push(ev);
            }
            got
        })
    }
}

fn step(d: &mut PyDriver, s: Value) -> Result<Value, String> {
    d.ok(s)
}

fn events(answer: &Value) -> Vec<Value> {
    answer["events"].as_array().cloned().unwrap_or_default()
}

fn idems(answer: &Value) -> Vec<String> {
    answer["idems"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn connect(d: &mut PyDriver, session: &str, app: &str) -> Result<(), String> {
    step(d, json!({"op": "connect", "session": session, "app": app})).map(|_| ())
}

fn publish(
    d: &mut PyDriver,
    session: &str,
    event: &str,
    to: &str,
    payload: Value,
) -> Result<String, String> {
    let a = step(
        d,
        json!({"op": "publish", "session": session, "event": event, "to": [to], "payload": payload}),
    )?;
    let ids = idems(&a);
    ensure(ids.len() == 1 && !ids[0].is_empty(), || {
        format!("publish returned {a}")
    })?;
    Ok(ids[0].clone())
}

type Check = fn(&Ctx) -> Result<String, String>;

fn check_connect(c: &Ctx) -> Result<String, String> {
    let mut d = c.driver()?;
    connect(&mut d, "a", "a")?;
    let bad =
        d.step(json!({"op": "connect", "session": "x", "app": "a", "access_key": "wrong"}))?;
    ensure(
        bad["ok"] == json!(false) && bad["timeout"] == json!(false),
        || format!("wrong key: expected the client to fail without hanging: {bad}"),
    )?;
    Ok("wrong access key: the client fails (no hang)".into())
}

fn check_publish_receive(c: &Ctx) -> Result<String, String> {
    let ev = "node/pubsub";
    let mut d = c.driver()?;
    connect(&mut d, "a", "a")?;
    connect(&mut d, "b", "b")?;
    step(
        &mut d,
        json!({"op": "subscribe", "session": "b", "event": ev}),
    )?;
    let metadata = json!({"persist": true, "headers": {"note": "a;b;METADATA=:x"}});
    let a = step(
        &mut d,
        json!({"op": "publish", "session": "a", "event": ev, "to": ["@b"],
        "payload": {"hello": "node", "n": 1}, "metadata": metadata}),
    )?;
    let id = idems(&a).pop().unwrap_or_default();
    let got = events(&step(
        &mut d,
        json!({"op": "wait", "session": "b", "event": ev, "count": 1}),
    )?);
    let e = &got[0];
    ensure(e["payload"] == json!({"hello": "node", "n": 1}), || {
        format!("payload {e}")
    })?;
    ensure(e["idem"] == json!(id), || {
        format!("idem {e} (published {id})")
    })?;
    ensure(e["block"].as_i64().unwrap_or(0) >= 1, || {
        format!("block {e}")
    })?;
    ensure(e["metadata"] == metadata, || format!("metadata {e}"))?;
    Ok("decrypted; the record's `id` is the published id; metadata intact".into())
}

fn check_ack(c: &Ctx) -> Result<String, String> {
    let ev = "node/ack";
    let mut d = c.driver()?;
    connect(&mut d, "a", "a")?;
    connect(&mut d, "b", "b")?;
    step(
        &mut d,
        json!({"op": "subscribe", "session": "b", "event": ev}),
    )?;
    let e1 = publish(&mut d, "a", ev, "@b", json!({"n": 1}))?;
    let e2 = publish(&mut d, "a", ev, "@b", json!({"n": 2}))?;
    let got = events(&step(
        &mut d,
        json!({"op": "wait", "session": "b", "event": ev, "count": 2}),
    )?);
    let first = got
        .iter()
        .find(|e| e["idem"] == json!(e1))
        .ok_or("e1 not received")?;
    let r = step(
        &mut d,
        json!({"op": "ack", "session": "b", "event": ev, "idem": e1, "block": first["block"]}),
    )?;
    ensure(
        r["reply"].as_str().is_some_and(|s| s.starts_with("+PASS")),
        || format!("ack {r}"),
    )?;
    step(&mut d, json!({"op": "close", "session": "b"}))?;
    // The next session of app b (our Rust client) gets the unacked event only.
    let rust = c.rust_client(1);
    let mut sub = c.rust_subscribe(&rust, ev);
    let again: Vec<String> = c
        .rust_events(&mut sub, 1500)
        .iter()
        .map(|e| e.idem.clone())
        .collect();
    ensure(again == [e2.clone()], || {
        format!("after ack of {e1}: redelivered {again:?}, expected [{e2}]")
    })?;
    Ok("acked event never comes again; the unacked one does".into())
}

fn check_rollback(c: &Ctx) -> Result<String, String> {
    let ev = "node/rollback";
    let mut d = c.driver()?;
    connect(&mut d, "a", "a")?;
    connect(&mut d, "b", "b")?;
    step(
        &mut d,
        json!({"op": "subscribe", "session": "b", "event": ev}),
    )?;
    let id = publish(&mut d, "a", ev, "@b", json!({"n": 1}))?;
    let got = events(&step(
        &mut d,
        json!({"op": "wait", "session": "b", "event": ev, "count": 1}),
    )?);
    let r = step(
        &mut d,
        json!({"op": "rollback", "session": "b", "event": ev, "idem": id, "block": got[0]["block"]}),
    )?;
    ensure(
        r["reply"].as_str().is_some_and(|s| s.starts_with("+PASS")),
        || format!("rollback {r}"),
    )?;
    let early = events(&step(
        &mut d,
        json!({"op": "quiet", "session": "b", "event": ev, "ms": 500}),
    )?);
    ensure(early.len() == 1, || {
        format!("redelivered before 1 s: {early:?}")
    })?;
    let got = events(&step(
        &mut d,
        json!({"op": "wait", "session": "b", "event": ev, "count": 2}),
    )?);
    ensure(got[1]["idem"] == json!(id), || {
        format!("redelivery {got:?}")
    })?;
    Ok("redelivered after the 1 s rollback delay, not before 0.5 s".into())
}

fn check_unsubscribe(c: &Ctx) -> Result<String, String> {
    let ev = "node/unsub";
    let mut d = c.driver()?;
    connect(&mut d, "a", "a")?;
    connect(&mut d, "b", "b")?;
    step(
        &mut d,
        json!({"op": "subscribe", "session": "b", "event": ev}),
    )?;
    step(
        &mut d,
        json!({"op": "unsubscribe", "session": "b", "event": ev}),
    )?;
    let id = publish(&mut d, "a", ev, "@b", json!({"n": 1}))?;
    // Nothing was handed to the unsubscribed session: the event waits for the app.
    std::thread::sleep(Duration::from_millis(300));
    let rust = c.rust_client(1);
    let mut sub = c.rust_subscribe(&rust, ev);
    let got: Vec<String> = c
        .rust_events(&mut sub, 1500)
        .iter()
        .map(|e| e.idem.clone())
        .collect();
    ensure(got == [id.clone()], || {
        format!("after unsubscribe: {got:?}, expected [{id}] queued")
    })?;
    Ok("the node stops delivering to the session; the event stays queued".into())
}

fn check_concurrent(c: &Ctx) -> Result<String, String> {
    let ev = "node/burst";
    let mut d = c.driver()?;
    connect(&mut d, "a", "a")?;
    connect(&mut d, "b", "b")?;
    step(
        &mut d,
        json!({"op": "subscribe", "session": "b", "event": ev, "auto_ack": true}),
    )?;
    let a = step(
        &mut d,
        json!({"op": "publish_many", "session": "a", "event": ev, "to": ["@b"], "count": 20}),
    )?;
    let mut sent = idems(&a);
    sent.sort();
    sent.dedup();
    ensure(sent.len() == 20, || {
        format!(
            "20 concurrent publishes gave {} distinct ids: {a}",
            sent.len()
        )
    })?;
    let got = events(&step(
        &mut d,
        json!({"op": "wait", "session": "b", "event": ev, "count": 20}),
    )?);
    let mut recv: Vec<String> = got
        .iter()
        .map(|e| e["idem"].as_str().unwrap_or("").to_owned())
        .collect();
    recv.sort();
    ensure(recv == sent, || format!("received {recv:?}, sent {sent:?}"))?;
    // The client's auto-ack (with its `EVENT_NAME=:undefined`) acked all of them.
    std::thread::sleep(Duration::from_millis(300));
    step(&mut d, json!({"op": "close", "session": "b"}))?;
    let rust = c.rust_client(1);
    let mut sub = c.rust_subscribe(&rust, ev);
    let left = c.rust_events(&mut sub, 800);
    ensure(left.is_empty(), || {
        format!("{} auto-acked events came again", left.len())
    })?;
    Ok("20 distinct ids, all received and auto-acked (2 ms apart, see below)".into())
}

fn check_rust_to_node(c: &Ctx) -> Result<String, String> {
    let ev = "node/from-rust";
    let mut d = c.driver()?;
    connect(&mut d, "b", "b")?;
    step(
        &mut d,
        json!({"op": "subscribe", "session": "b", "event": ev}),
    )?;
    let rust = c.rust_client(0);
    let payload = json!({"from": "rust", "list": [1, 2, 3]});
    let ids =
        c.rt.block_on(rust.publish_with(ev, &[c.pk(1)], &payload, PublishOptions::default()))
            .map_err(|e| format!("rust publish: {e}"))?;
    let got = events(&step(
        &mut d,
        json!({"op": "wait", "session": "b", "event": ev, "count": 1}),
    )?);
    ensure(got[0]["payload"] == payload, || format!("payload {got:?}"))?;
    ensure(got[0]["idem"] == json!(ids[0]), || {
        format!("idem {got:?} vs {ids:?}")
    })?;
    Ok(String::new())
}

fn check_node_to_rust(c: &Ctx) -> Result<String, String> {
    let ev = "node/to-rust";
    let rust = c.rust_client(2);
    let mut sub = c.rust_subscribe(&rust, ev);
    let mut d = c.driver()?;
    connect(&mut d, "a", "a")?;
    let id = publish(&mut d, "a", ev, "@c", json!({"from": "node", "x": 1.5}))?;
    let got = c.rust_events(&mut sub, 3000);
    ensure(got.len() == 1, || format!("{} events", got.len()))?;
    let e = &got[0];
    ensure(e.idem == id, || format!("idem {} vs {id}", e.idem))?;
    ensure(e.payload == json!({"from": "node", "x": 1.5}), || {
        format!("payload {}", e.payload)
    })?;
    ensure(e.sender == c.pk(0), || format!("sender {}", e.sender))?;
    Ok("decrypted; `sender` is the publisher's key".into())
}

/// Needs the node restarted: run last.
fn check_reconnect(c: &mut Ctx) -> Result<String, String> {
    let ev = "node/restart";
    let mut d = c.driver()?;
    connect(&mut d, "a", "a")?;
    connect(&mut d, "b", "b")?;
    step(
        &mut d,
        json!({"op": "subscribe", "session": "b", "event": ev}),
    )?;
    c.rt.block_on(c.node.restart());
    let a = step(
        &mut d,
        json!({"op": "publish_until_ok", "session": "a", "event": ev, "to": ["@b"],
        "payload": {"after": "restart"}, "timeout_ms": 15000}),
    )?;
    let id = idems(&a).pop().unwrap_or_default();
    let got = events(&step(
        &mut d,
        json!({"op": "wait", "session": "b", "event": ev, "count": 1, "timeout_ms": 15000}),
    )?);
    ensure(
        got[0]["idem"] == json!(id) && got[0]["payload"] == json!({"after": "restart"}),
        || format!("after restart: {got:?}"),
    )?;
    Ok("the client reconnects, re-authenticates and re-subscribes by itself".into())
}

const CHECKS: &[(&str, &str, Check)] = &[
    ("connect", "connect; wrong access key", check_connect),
    (
        "pubsub",
        "publish -> subscribe: payload decrypted, id, `block` >= 1, metadata",
        check_publish_receive,
    ),
    (
        "ack",
        "ack: acked events never come again; unacked ones do",
        check_ack,
    ),
    (
        "rollback",
        "rollback: redelivered after ~1 s",
        check_rollback,
    ),
    (
        "unsub",
        "unsubscribe: no more deliveries to that session",
        check_unsubscribe,
    ),
    (
        "burst",
        "20 concurrent publishes (auto-ack on)",
        check_concurrent,
    ),
    (
        "rust-to-node",
        "our Rust client publishes -> the npm client receives and decrypts",
        check_rust_to_node,
    ),
    (
        "node-to-rust",
        "the npm client publishes -> our Rust client receives and decrypts",
        check_node_to_rust,
    ),
];
const RECONNECT: (&str, &str) = ("restart", "reconnect after a node restart");

const INTRO: &str = "
The Node.js client published on npm, `ensync-client-sdk@0.0.18` (its default export is a
WebSocket client), against our node's WebSocket endpoint, driven through its own API by
`tests/interop/ensync_driver.js`; the checks with our Rust client (`ensync-tokio`, gRPC)
go through the same node. Pinned by `tests/interop/package-lock.json`, installed with
`npm ci` by `scripts/node-env.sh`.
";

fn replay_forms() -> String {
    let mut s = String::from(
        "Which form each client gets for a gRPC replay answer (`ReplayResponse.event_data` /\n\
         `message_data`) and which stream carries its events, by the gRPC `user-agent` of the\n\
         request (`ensync_proto::clients`; checked on the wire by\n\
         `ensync-node/tests/published_clients.rs`). Our own SDK reads every form.\n\n\
         | client | user-agent | replay answer | delivery (config `multiplex` unset) |\n|---|---|---|---|\n",
    );
    let rows = [
        (
            "`ensync-sdk` 0.4.x (Python)",
            "grpc-python/1.85.3 grpc-c/50.0.0",
            ClientKind::Python,
        ),
        (
            "Go SDK (EnSync-engine/Go-SDK)",
            "grpc-go/1.67.1",
            ClientKind::Go,
        ),
        (
            "Node.js gRPC SDK 0.2.2 (EnSync-engine/Node-SDK)",
            "grpc-node-js/1.14.1",
            ClientKind::NodeJs,
        ),
        (
            "our Rust clients (tonic, ensync-h2)",
            "tonic/0.14.5, ensync-h2/0.1.0",
            ClientKind::Other,
        ),
    ];
    for (name, ua, expected) in rows {
        let kind = ClientKind::from_user_agent(Some(ua.split(',').next().unwrap_or(ua)));
        assert_eq!(kind, expected, "{ua}");
        let form = match kind.replay_form() {
            ensync_proto::clients::ReplayForm::Envelope => "bare envelope (base64)",
            _ => {
                "stream-message JSON: `message_idem`, `message_name`, `payload`, `partition_block`, `metadata`, `sender`"
            }
        };
        let delivery = match kind.delivery() {
            ensync_proto::clients::Delivery::FirstStream => "every event on its first stream",
            _ => "each event on the stream of its name",
        };
        s.push_str(&format!("| {name} | `{ua}` | {form} | {delivery} |\n"));
    }
    s.push_str(
        "\nThe WebSocket `+REPLAY:` answer is the record JSON for every client, like `+RECORD:`, with the\n\
         event id under both `idem` and `id` (the npm client reads only `id`). An explicit\n\
         `multiplex = true` / `false` in the node's config applies to every client.",
    );
    s
}

#[test]
fn published_node_client_against_our_node() {
    let started = Instant::now();
    let (node_bin, script) = match find_node() {
        Ok(found) => found,
        Err(why) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{SUITE}: {why} (required under CI)"
            );
            eprintln!("{SUITE}: skipped: {why}");
            return;
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let node = rt.block_on(TestNode::start(3));
    let apps = node
        .setup
        .apps
        .iter()
        .zip(["a", "b", "c"])
        .map(|(app, name)| TestApp {
            name: name.into(),
            access_key: app.access_key.clone(),
            secret_key: app.secret_key().to_string(),
            public_key: app.public_key.clone(),
        })
        .collect();
    let mut ctx = Ctx {
        node,
        rt,
        apps,
        node_bin,
        script,
    };

    let mut rows: Vec<Row> = CHECKS
        .iter()
        .map(|(id, title, _)| Row { id, title })
        .collect();
    rows.push(Row {
        id: RECONNECT.0,
        title: RECONNECT.1,
    });
    let mut results = Results {
        suite: SUITE.into(),
        rows,
        columns: vec![Column {
            id: COLUMN.into(),
            title: "ensync-client-sdk 0.0.18 (npm, WebSocket)".into(),
        }],
        ..Results::default()
    };
    let run =
        |id: &'static str, result: Result<String, String>, t0: Instant, results: &mut Results| {
            results
                .elapsed_ms
                .insert(format!("{COLUMN}/{id}"), t0.elapsed().as_millis());
            results.outcomes.push(Outcome {
                row: id,
                column: COLUMN.into(),
                result,
            });
        };
    for (id, _, check) in CHECKS {
        let t0 = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&ctx)))
            .unwrap_or_else(|_| Err("the check panicked".into()));
        run(id, result, t0, &mut results);
    }
    let t0 = Instant::now();
    let result = check_reconnect(&mut ctx);
    run(RECONNECT.0, result, t0, &mut results);
    for (text, _) in [
        (
            "`publish`/`ack`/... key their pending replies by `Date.now()`, so two requests sent in one millisecond share a slot and only one promise settles: the driver starts concurrent requests 2 ms apart (all still in flight together; replies are matched first-in first-out).",
            (),
        ),
        (
            "a `+RECORD` that arrives before `on(handler)` is registered (a backlog sent right after the `SUB` reply) is dropped by the client: the driver subscribes only while the name's queue is empty; checks of what stays queued are made with our Rust client.",
            (),
        ),
        (
            "`close()` hangs when the socket is already closed: the driver races it against a 1 s timer.",
            (),
        ),
    ] {
        results
            .workarounds
            .entry(text.into())
            .or_default()
            .insert(COLUMN.into());
    }
    let mut ctx = ctx;
    ctx.rt.block_on(ctx.node.stop());

    let forms = replay_forms();
    let rendered = results.render_titled(
        "## The Node.js client from npm",
        INTRO,
        &[("Replay answers and delivery per client", forms.as_str())],
    );
    report::save(&results, &rendered).expect("write interop results");
    let failures = results.failures();
    assert!(
        failures.is_empty(),
        "{} check(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    if std::env::var(report::WRITE_ENV).as_deref() != Ok("1") {
        assert!(
            report::doc_section(SUITE).as_deref() == Some(rendered.as_str()),
            "docs/interop.md does not match this run's results (see target/interop/{SUITE}.md); \
             regenerate it with {}=1 cargo test -p ensync-tests --test {SUITE}",
            report::WRITE_ENV
        );
    }
    eprintln!(
        "{SUITE}: {} checks in {:?}",
        results.outcomes.len(),
        started.elapsed()
    );
}
