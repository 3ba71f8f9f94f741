//! The published EnSync Python clients (`ensync-sdk` 0.4.0, generation 1 RPC names,
//! and 0.4.4, generation 2) against our node, through their public API, driven by
//! `tests/interop/ensync_driver.py`.
//!
//! One node is started in-process on 127.0.0.1:0 with generated apps; every check
//! runs in its own driver process for each published version (event names are
//! unique per check and version, so checks run side by side). Every driver step
//! has a timeout: a published client that hangs fails the check, it never hangs
//! the suite. Results go to `target/interop/interop_python.{json,md}`, and to
//! `docs/interop.md` with `ENSYNC_WRITE_INTEROP=1`.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ensync_tests::report::{self, Column, Outcome, Results, Row};
use ensync_tests::{PublishedClient, PyDriver, TestApp, driver_config, require_python};
use ensync_tokio::Client;
use ensync_tokio::{ClientOptions, EnSyncEngine, Event, PublishOptions, Subscription};
use futures::StreamExt;
use serde_json::{Value, json};

const SUITE: &str = "interop_python";
/// Checks running at once (each is one Python process, mostly idle).
const PARALLEL: usize = 4;
/// Failsafe for the whole suite; every step has its own, much shorter timeout.
const SUITE_DEADLINE: Duration = Duration::from_secs(150);

/// What a check knows: which client it drives, the apps, a key no app has.
struct Ctx {
    client: PublishedClient,
    row: &'static str,
    apps: Vec<TestApp>,
    unknown_key: String,
    /// The node's URL, for our own Rust client.
    url: String,
    /// The runtime our Rust client runs on (the node's).
    rt: tokio::runtime::Handle,
}

impl Ctx {
    /// An event name unique to this check and client version.
    fn ev(&self, name: &str) -> String {
        format!("interop/{}/{}/{name}", self.client.tag(), self.row)
    }

    fn app(&self, name: &str) -> Result<&TestApp, String> {
        self.apps
            .iter()
            .find(|a| a.name == name)
            .ok_or_else(|| format!("no app {name}"))
    }

    fn pk(&self, app: &str) -> String {
        self.apps
            .iter()
            .find(|a| a.name == app)
            .map(|a| a.public_key.clone())
            .unwrap_or_default()
    }
}

type CheckResult = Result<String, String>;
type Scenario = fn(&mut PyDriver, &Ctx) -> CheckResult;

fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

fn events(answer: &Value) -> Vec<Value> {
    answer["events"].as_array().cloned().unwrap_or_default()
}

fn idems(answer: &Value) -> Vec<String> {
    answer["idems"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn idem_list(evs: &[Value]) -> Vec<String> {
    evs.iter()
        .map(|e| e["idem"].as_str().unwrap_or("").to_string())
        .collect()
}

/// The published client must report the failure itself (an exception), not hang.
fn expect_failure(answer: &Value, what: &str) -> CheckResult {
    ensure(answer["ok"] == json!(false), || {
        format!("{what}: the client reported success: {answer}")
    })?;
    ensure(answer["timeout"] == json!(false), || {
        format!("{what}: the client hung instead of failing: {answer}")
    })?;
    Ok(format!(
        "raises `{}`",
        answer["error_type"].as_str().unwrap_or("?")
    ))
}

fn connect(d: &mut PyDriver, session: &str, app: &str) -> Result<Value, String> {
    d.ok(json!({"op": "connect", "session": session, "app": app}))
}

fn subscribe(
    d: &mut PyDriver,
    session: &str,
    event: &str,
    auto_ack: bool,
) -> Result<Value, String> {
    d.ok(json!({"op": "subscribe", "session": session, "event": event, "auto_ack": auto_ack}))
}

fn publish(
    d: &mut PyDriver,
    session: &str,
    event: &str,
    to: &[&str],
    payload: Value,
) -> Result<Vec<String>, String> {
    let answer = d.ok(
        json!({"op": "publish", "session": session, "event": event, "to": to, "payload": payload}),
    )?;
    let ids = idems(&answer);
    ensure(
        ids.len() == to.len() && ids.iter().all(|i| !i.is_empty()),
        || format!("publish to {} recipient(s) returned ids {ids:?}", to.len()),
    )?;
    Ok(ids)
}

fn wait(d: &mut PyDriver, session: &str, event: &str, count: usize) -> Result<Vec<Value>, String> {
    let answer = d.ok(json!({"op": "wait", "session": session, "event": event, "count": count}))?;
    Ok(events(&answer))
}

fn wait_ms(
    d: &mut PyDriver,
    session: &str,
    event: &str,
    count: usize,
    ms: u64,
) -> Result<Vec<Value>, String> {
    let answer = d.ok(
        json!({"op": "wait", "session": session, "event": event, "count": count, "timeout_ms": ms}),
    )?;
    Ok(events(&answer))
}

/// Polls the published clients' error log until a line contains `needle` (8 s at most).
fn wait_log(d: &mut PyDriver, session: &str, event: &str, needle: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut log = Vec::new();
    loop {
        let answer = d.ok(json!({"op": "client_log"}))?;
        log.extend(answer["lines"].as_array().cloned().unwrap_or_default());
        if log
            .iter()
            .any(|l| l.as_str().unwrap_or("").contains(needle))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the event never reached the client, or it did not log {needle:?}; log: {log:?}"
            ));
        }
        quiet(d, session, event, 200)?;
    }
}

/// Waits until the event `idem` was delivered (others may come first); returns all.
fn wait_for_idem(
    d: &mut PyDriver,
    session: &str,
    event: &str,
    idem: &str,
) -> Result<Vec<Value>, String> {
    let mut evs = wait(d, session, event, 1)?;
    for _ in 0..5 {
        if idem_list(&evs).iter().any(|i| i == idem) {
            return Ok(evs);
        }
        evs = wait(d, session, event, evs.len() + 1)?;
    }
    Err(format!("{idem} not delivered; got {:?}", idem_list(&evs)))
}

fn quiet(d: &mut PyDriver, session: &str, event: &str, ms: u64) -> Result<Vec<Value>, String> {
    let answer = d.ok(json!({"op": "quiet", "session": session, "event": event, "ms": ms}))?;
    Ok(events(&answer))
}

fn ack(d: &mut PyDriver, session: &str, event: &str, ev: &Value) -> Result<Value, String> {
    d.ok(json!({"op": "ack", "session": session, "event": event, "idem": ev["idem"], "block": ev["block"]}))
}

fn close(d: &mut PyDriver, session: &str) -> Result<Value, String> {
    d.ok(json!({"op": "close", "session": session}))
}

// ---- the checks -------------------------------------------------------------------

fn check_connect(d: &mut PyDriver, c: &Ctx) -> CheckResult {
    for (session, app) in [("A", "a"), ("B", "b")] {
        let answer = connect(d, session, app)?;
        ensure(answer["client_hash"] == json!(c.pk(app)), || {
            format!(
                "client_hash of app {app} is {}, not its public key",
                answer["client_hash"]
            )
        })?;
        ensure(answer["client_id_set"] == json!(true), || {
            "no client_id".into()
        })?;
    }
    Ok(String::new())
}

fn check_publish_subscribe(d: &mut PyDriver, c: &Ctx) -> CheckResult {
    let e = c.ev("orders/status/updated");
    connect(d, "A", "a")?;
    connect(d, "B", "b")?;
    subscribe(d, "B", &e, true)?;
    let payload = json!({
        "order_id": "order-123", "status": "completed", "count": 42, "big": 9_007_199_254_740_000_i64,
        "price": 9.5, "paid": true, "tags": ["a", "b"], "nested": {"k": null}, "text": "h\u{e9}llo \u{2713}"
    });
    let metadata = json!({"source": "interop", "priority": "high"});
    let answer = d.ok(
        json!({"op": "publish", "session": "A", "event": e, "to": ["@b"],
                             "payload": payload, "metadata": metadata}),
    )?;
    let ids = idems(&answer);
    ensure(ids.len() == 1, || format!("publish returned ids {ids:?}"))?;
    let evs = wait(d, "B", &e, 1)?;
    let ev = &evs[0];
    ensure(ev["idem"] == json!(ids[0]), || {
        format!("delivered idem {} != published {}", ev["idem"], ids[0])
    })?;
    ensure(ev["payload"] == payload, || {
        format!("payload {} != {payload}", ev["payload"])
    })?;
    ensure(ev["sender"] == json!(c.pk("a")), || {
        format!("sender {} is not app a", ev["sender"])
    })?;
    ensure(ev["metadata"] == metadata, || {
        format!("metadata {}", ev["metadata"])
    })?;
    ensure(ev["event_name"] == json!(e), || {
        format!("event name {}", ev["event_name"])
    })?;
    ensure(ev["block"].as_i64().unwrap_or(0) >= 1, || {
        format!("block {} (must be >= 1)", ev["block"])
    })?;
    Ok(String::new())
}

fn check_multi_recipient(d: &mut PyDriver, c: &Ctx) -> CheckResult {
    let e = c.ev("fanout");
    connect(d, "A", "a")?;
    connect(d, "B", "b")?;
    connect(d, "C", "c")?;
    subscribe(d, "B", &e, true)?;
    subscribe(d, "C", &e, true)?;
    let payload = json!({"fanout": 2});
    // useHybridEncryption=false: one single-recipient envelope per recipient.
    let answer = d.ok(
        json!({"op": "publish", "session": "A", "event": e, "to": ["@b", "@c"],
                             "payload": payload, "hybrid": false}),
    )?;
    let ids = idems(&answer);
    ensure(ids.len() == 2 && ids[0] != ids[1], || {
        format!("publish returned ids {ids:?}")
    })?;
    let b = wait(d, "B", &e, 1)?;
    let cc = wait(d, "C", &e, 1)?;
    ensure(
        b[0]["payload"] == payload && cc[0]["payload"] == payload,
        || "payload differs".into(),
    )?;
    ensure(
        b[0]["idem"] == json!(ids[0]) && cc[0]["idem"] == json!(ids[1]),
        || {
            format!(
                "idems b={} c={} published {ids:?}",
                b[0]["idem"], cc[0]["idem"]
            )
        },
    )?;
    Ok("one envelope per recipient".into())
}

fn check_auto_ack(d: &mut PyDriver, c: &Ctx) -> CheckResult {
    let e = c.ev("auto");
    connect(d, "A", "a")?;
    connect(d, "B", "b")?;
    subscribe(d, "B", &e, true)?;
    let first = publish(d, "A", &e, &["@b"], json!({"n": 1}))?;
    // The client handles one event at a time and acks it before it reads the next,
    // so once the second event reached the handler the first one's ack is done.
    publish(d, "A", &e, &["@b"], json!({"n": 2}))?;
    wait(d, "B", &e, 2)?;
    close(d, "B")?;
    connect(d, "B2", "b")?;
    let marker = publish(d, "A", &e, &["@b"], json!({"n": 3}))?;
    subscribe(d, "B2", &e, true)?;
    wait_for_idem(d, "B2", &e, &marker[0])?;
    let seen = idem_list(&quiet(d, "B2", &e, 300)?);
    ensure(!seen.contains(&first[0]), || {
        format!(
            "the auto-acked event {} came again in the next session: {seen:?}",
            first[0]
        )
    })?;
    ensure(seen.contains(&marker[0]), || {
        format!("marker missing: {seen:?}")
    })?;
    Ok(String::new())
}

fn check_manual_ack(d: &mut PyDriver, c: &Ctx) -> CheckResult {
    let e = c.ev("manual");
    connect(d, "A", "a")?;
    connect(d, "B", "b")?;
    subscribe(d, "B", &e, false)?;
    let m1 = publish(d, "A", &e, &["@b"], json!({"n": 1}))?;
    wait(d, "B", &e, 1)?;
    close(d, "B")?; // m1 not acked
    connect(d, "B2", "b")?;
    subscribe(d, "B2", &e, false)?;
    let evs = wait(d, "B2", &e, 1)?;
    ensure(evs[0]["idem"] == json!(m1[0]), || {
        format!(
            "unacked event {} was not delivered to the next session; got {}",
            m1[0], evs[0]["idem"]
        )
    })?;
    ack(d, "B2", &e, &evs[0])?;
    let m2 = publish(d, "A", &e, &["@b"], json!({"n": 2}))?;
    let evs = wait(d, "B2", &e, 2)?;
    ensure(evs[1]["idem"] == json!(m2[0]), || {
        format!("expected {} next, got {}", m2[0], evs[1]["idem"])
    })?;
    ack(d, "B2", &e, &evs[1])?;
    close(d, "B2")?;
    connect(d, "B3", "b")?;
    subscribe(d, "B3", &e, false)?;
    let m3 = publish(d, "A", &e, &["@b"], json!({"n": 3}))?;
    let evs = wait(d, "B3", &e, 1)?;
    ensure(evs[0]["idem"] == json!(m3[0]), || {
        format!(
            "after acking, the next session got {} instead of {}",
            evs[0]["idem"], m3[0]
        )
    })?;
    let seen = idem_list(&quiet(d, "B3", &e, 300)?);
    ensure(seen == vec![m3[0].clone()], || {
        format!("acked events came again: {seen:?}")
    })?;
    Ok("unacked event redelivered to the next session".into())
}

fn check_defer(d: &mut PyDriver, c: &Ctx) -> CheckResult {
    let e = c.ev("defer");
    connect(d, "A", "a")?;
    connect(d, "B", "b")?;
    subscribe(d, "B", &e, false)?;
    let payload = json!({"deferred": true});
    let ids = publish(d, "A", &e, &["@b"], payload.clone())?;
    wait(d, "B", &e, 1)?;
    let answer = d.ok(
        json!({"op": "defer", "session": "B", "event": e, "idem": ids[0],
                             "delay_ms": 1000, "reason": "interop"}),
    )?;
    let sent_at = answer["sent_at_ms"].as_f64().unwrap_or(0.0);
    let evs = wait_ms(d, "B", &e, 2, 8000)?;
    ensure(evs[1]["idem"] == json!(ids[0]), || {
        format!("redelivered {} instead of {}", evs[1]["idem"], ids[0])
    })?;
    ensure(evs[1]["payload"] == payload, || {
        format!("payload {}", evs[1]["payload"])
    })?;
    let gap = evs[1]["at_ms"].as_f64().unwrap_or(0.0) - sent_at;
    // A lower bound (the delay is behaviour), with 10 ms for clock rounding.
    ensure(gap >= 990.0, || {
        format!("redelivered {gap} ms after the 1000 ms defer")
    })?;
    ack(d, "B", &e, &evs[1])?;
    Ok("redelivered, not before 1 s".into())
}

fn check_discard(d: &mut PyDriver, c: &Ctx) -> CheckResult {
    let e = c.ev("discard");
    connect(d, "A", "a")?;
    connect(d, "B", "b")?;
    subscribe(d, "B", &e, false)?;
    let x1 = publish(d, "A", &e, &["@b"], json!({"n": 1}))?;
    wait(d, "B", &e, 1)?;
    d.ok(json!({"op": "discard", "session": "B", "event": e, "idem": x1[0], "reason": "interop"}))?;
    let x2 = publish(d, "A", &e, &["@b"], json!({"n": 2}))?;
    let evs = wait(d, "B", &e, 2)?;
    ensure(evs[1]["idem"] == json!(x2[0]), || {
        format!("after discard got {} instead of {}", evs[1]["idem"], x2[0])
    })?;
    ack(d, "B", &e, &evs[1])?;
    close(d, "B")?;
    connect(d, "B2", "b")?;
    subscribe(d, "B2", &e, false)?;
    let x3 = publish(d, "A", &e, &["@b"], json!({"n": 3}))?;
    wait(d, "B2", &e, 1)?;
    let seen = idem_list(&quiet(d, "B2", &e, 300)?);
    ensure(seen == vec![x3[0].clone()], || {
        format!(
            "the next session got {seen:?}; only {} expected (discarded: {})",
            x3[0], x1[0]
        )
    })?;
    Ok(String::new())
}

fn check_replay(d: &mut PyDriver, c: &Ctx) -> CheckResult {
    let e = c.ev("replay");
    connect(d, "A", "a")?;
    connect(d, "B", "b")?;
    subscribe(d, "B", &e, false)?;
    let payload = json!({"replay": "me", "n": 7});
    let ids = publish(d, "A", &e, &["@b"], payload.clone())?;
    let evs = wait(d, "B", &e, 1)?;
    let answer = d.ok(json!({"op": "replay", "session": "B", "event": e, "idem": ids[0]}))?;
    ensure(answer["payload"] == payload, || {
        format!("replayed payload {}", answer["payload"])
    })?;
    ensure(answer["idem"] == json!(ids[0]), || {
        format!("replayed idem {}", answer["idem"])
    })?;
    ack(d, "B", &e, &evs[0])?;
    let again = d.ok(json!({"op": "replay", "session": "B", "event": e, "idem": ids[0]}))?;
    ensure(again["payload"] == payload, || {
        format!("replay after ack: payload {}", again["payload"])
    })?;
    Ok("before and after ack".into())
}

fn check_pause_continue(d: &mut PyDriver, c: &Ctx) -> CheckResult {
    let e = c.ev("pause");
    connect(d, "A", "a")?;
    connect(d, "B", "b")?;
    subscribe(d, "B", &e, true)?;
    d.ok(json!({"op": "pause", "session": "B", "event": e, "reason": "interop"}))?;
    let ids = publish(d, "A", &e, &["@b"], json!({"paused": true}))?;
    let held = quiet(d, "B", &e, 800)?;
    ensure(held.is_empty(), || {
        format!("delivered while paused: {:?}", idem_list(&held))
    })?;
    d.ok(json!({"op": "resume", "session": "B", "event": e}))?;
    let evs = wait(d, "B", &e, 1)?;
    ensure(evs[0]["idem"] == json!(ids[0]), || {
        format!("after continue got {}", evs[0]["idem"])
    })?;
    Ok(String::new())
}

fn check_reply_to_sender(d: &mut PyDriver, c: &Ctx) -> CheckResult {
    let request = c.ev("request");
    let reply = c.ev("reply");
    connect(d, "A", "a")?;
    connect(d, "B", "b")?;
    subscribe(d, "A", &reply, true)?;
    let answer_payload = json!({"status": "received", "response": "Processing complete"});
    d.ok(
        json!({"op": "subscribe", "session": "B", "event": request, "auto_ack": true,
                "reply": {"event": reply, "payload": answer_payload}}),
    )?;
    publish(d, "A", &request, &["@b"], json!({"question": 42}))?;
    let got = wait(d, "B", &request, 1)?;
    ensure(got[0]["sender"] == json!(c.pk("a")), || {
        format!("request sender {}", got[0]["sender"])
    })?;
    let replies = wait(d, "A", &reply, 1)?;
    ensure(replies[0]["payload"] == answer_payload, || {
        format!("reply payload {}", replies[0]["payload"])
    })?;
    ensure(replies[0]["sender"] == json!(c.pk("b")), || {
        format!("reply sender {}", replies[0]["sender"])
    })?;
    Ok("from inside the handler".into())
}

fn check_wrong_access_key(d: &mut PyDriver, _c: &Ctx) -> CheckResult {
    let answer = d.step(json!({"op": "connect", "session": "X", "app": "a",
                               "access_key": "not-an-access-key-of-this-node"}))?;
    expect_failure(&answer, "create_client with a wrong access key")
}

fn check_unknown_recipient(d: &mut PyDriver, c: &Ctx) -> CheckResult {
    connect(d, "A", "a")?;
    let answer = d.step(
        json!({"op": "publish", "session": "A", "event": c.ev("nobody"),
                               "to": [c.unknown_key], "payload": {"n": 1}}),
    )?;
    expect_failure(&answer, "publish to a key no app has")
}

fn check_foreign_ack(d: &mut PyDriver, c: &Ctx) -> CheckResult {
    let e = c.ev("foreign");
    connect(d, "A", "a")?;
    connect(d, "B", "b")?;
    connect(d, "C", "c")?;
    subscribe(d, "C", &e, false)?;
    publish(d, "A", &e, &["@c"], json!({"for": "c"}))?;
    let evs = wait(d, "C", &e, 1)?;
    subscribe(d, "B", &e, false)?;
    let answer = d.step(
        json!({"op": "ack", "session": "B", "event": e, "idem": evs[0]["idem"],
                               "block": evs[0]["block"]}),
    )?;
    let note = expect_failure(&answer, "app b acking app c's event")?;
    ack(d, "C", &e, &evs[0])
        .map_err(|err| format!("the owner could not ack after the foreign ack: {err}"))?;
    Ok(note)
}

fn check_replay_unknown(d: &mut PyDriver, c: &Ctx) -> CheckResult {
    let e = c.ev("replay-unknown");
    connect(d, "B", "b")?;
    subscribe(d, "B", &e, false)?;
    let answer =
        d.step(json!({"op": "replay", "session": "B", "event": e, "idem": "no-such-event-id"}))?;
    expect_failure(&answer, "replay of an id that does not exist")
}

fn check_python_hybrid(d: &mut PyDriver, c: &Ctx) -> CheckResult {
    let e = c.ev("hybrid");
    connect(d, "A", "a")?;
    connect(d, "B", "b")?;
    subscribe(d, "B", &e, true)?;
    d.ok(json!({"op": "client_log"}))?;
    // Two recipients: the published client writes its hybrid envelope.
    publish(d, "A", &e, &["@b", "@c"], json!({"hybrid": true}))?;
    wait_log(d, "B", &e, "Failed to decrypt hybrid")?;
    let handled = quiet(d, "B", &e, 100)?;
    ensure(handled.is_empty(), || {
        format!("the handler got something: {handled:?}")
    })?;
    Ok("node delivers; the client logs `Failed to decrypt hybrid message` (its own format, see below)".into())
}

/// The published `defer()` / `discard()` methods, called as they are.
fn check_public_defer_discard(d: &mut PyDriver, c: &Ctx) -> CheckResult {
    let e = c.ev("public");
    connect(d, "A", "a")?;
    connect(d, "B", "b")?;
    subscribe(d, "B", &e, false)?;
    let y1 = publish(d, "A", &e, &["@b"], json!({"n": 1}))?;
    wait(d, "B", &e, 1)?;
    let broken = c.client == PublishedClient::Sdk044;
    let judge = |answer: &Value, what: &str| -> Result<(), String> {
        if broken {
            // Known defect: raises after the node applied it.
            ensure(
                answer["ok"] == json!(false)
                    && answer["error"]
                        .as_str()
                        .unwrap_or("")
                        .contains("get_message_loop"),
                || format!("{what}: expected the known get_message_loop failure, got {answer}"),
            )
        } else {
            ensure(answer["ok"] == json!(true), || {
                format!("{what} failed: {answer}")
            })
        }
    };
    let answer = d.step(
        json!({"op": "defer", "session": "B", "event": e, "idem": y1[0], "delay_ms": 1000,
                               "public": true}),
    )?;
    judge(&answer, "defer()")?;
    let evs = wait_ms(d, "B", &e, 2, 8000)?;
    ensure(evs[1]["idem"] == json!(y1[0]), || {
        format!("the node did not apply defer: got {}", evs[1]["idem"])
    })?;
    let answer = d.step(
        json!({"op": "discard", "session": "B", "event": e, "idem": y1[0], "public": true}),
    )?;
    judge(&answer, "discard()")?;
    let y2 = publish(d, "A", &e, &["@b"], json!({"n": 2}))?;
    let evs = wait(d, "B", &e, 3)?;
    ensure(evs[2]["idem"] == json!(y2[0]), || {
        format!("the node did not apply discard: got {}", evs[2]["idem"])
    })?;
    let seen = idem_list(&quiet(d, "B", &e, 300)?);
    ensure(seen.len() == 3, || {
        format!("discarded event came again: {seen:?}")
    })?;
    Ok(if broken {
        "the node applies both; the client then raises (`get_message_loop`, see below)".into()
    } else {
        "both succeed".into()
    })
}

/// `create_client(key, {"app_secret_key": ...})` exactly as the README shows.
fn check_readme_secret_option(d: &mut PyDriver, c: &Ctx) -> CheckResult {
    let e = c.ev("readme-secret");
    connect(d, "A", "a")?;
    d.ok(json!({"op": "connect", "session": "B", "app": "b", "readme_options": true}))?;
    d.ok(json!({"op": "subscribe", "session": "B", "event": e, "readme_options": true}))?;
    d.ok(json!({"op": "client_log"}))?;
    publish(d, "A", &e, &["@b"], json!({"n": 1}))?;
    wait_log(d, "B", &e, "Failed to decrypt")?;
    let handled = quiet(d, "B", &e, 100)?;
    if !handled.is_empty() {
        return Ok("works as documented".into());
    }
    Ok("the client cannot decrypt (it reads `appSecretKey`; see below)".into())
}

/// `subscription = await client.subscribe(name)` exactly as the README shows.
fn check_readme_subscribe(d: &mut PyDriver, c: &Ctx) -> CheckResult {
    connect(d, "B", "b")?;
    let answer =
        d.step(json!({"op": "readme_subscribe", "session": "B", "event": c.ev("readme")}))?;
    if answer["ok"] == json!(true) {
        return Ok("works as documented".into());
    }
    ensure(
        answer["error_type"] == json!("TypeError") && answer["timeout"] == json!(false),
        || format!("unexpected failure: {answer}"),
    )?;
    Ok("client-side `TypeError` (not awaitable; see below)".into())
}

// ---- our Rust client (ensync-tokio) with the published client, through our node ---

/// Our client, connected as `app`.
fn rust_client(c: &Ctx, app: &str) -> Result<Client, String> {
    let app = c.app(app)?;
    c.rt.block_on(async {
        EnSyncEngine::new(&c.url)?
            .create_client(
                &app.access_key,
                ClientOptions::default().app_secret_key(app.secret_key.clone()),
            )
            .await
    })
    .map_err(|e| format!("our client could not connect: {e}"))
}

fn rust_subscribe(c: &Ctx, client: &Client, event: &str) -> Result<Subscription, String> {
    c.rt.block_on(client.subscribe(event))
        .map_err(|e| format!("our client could not subscribe to {event}: {e}"))
}

/// The next event on our subscription, within 10 s. Dropping it acks it.
fn rust_next(c: &Ctx, sub: &mut Subscription) -> Result<Event, String> {
    // The timer must be created inside the runtime.
    let next =
        c.rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), sub.next()).await });
    match next {
        Ok(Some(ev)) => Ok(ev),
        Ok(None) => Err(format!("our subscription to {} ended", sub.event_name())),
        Err(_) => Err(format!(
            "our client received nothing on {} within 10 s",
            sub.event_name()
        )),
    }
}

fn rust_publish(
    c: &Ctx,
    client: &Client,
    event: &str,
    to: &[String],
    payload: &Value,
    hybrid: bool,
) -> Result<Vec<String>, String> {
    let options = PublishOptions::default()
        .metadata(json!({"from": "rust"}))
        .hybrid(hybrid);
    c.rt.block_on(client.publish_with(event, to, payload, options))
        .map_err(|e| format!("our client could not publish: {e}"))
}

fn rust_close(c: &Ctx, client: Client) -> Result<(), String> {
    c.rt.block_on(client.close())
        .map_err(|e| format!("our client could not close: {e}"))
}

fn check_rs_receive(d: &mut PyDriver, c: &Ctx) -> CheckResult {
    let e = c.ev("to-rust");
    let ours = rust_client(c, "c")?;
    let mut sub = rust_subscribe(c, &ours, &e)?;
    connect(d, "A", "a")?;
    let payload =
        json!({"order_id": "order-9", "qty": 3, "price": 1.25, "ok": false, "list": [1, 2]});
    let metadata = json!({"source": "python"});
    let answer = d.ok(
        json!({"op": "publish", "session": "A", "event": e, "to": ["@c"],
                             "payload": payload, "metadata": metadata}),
    )?;
    let ids = idems(&answer);
    let ev = rust_next(c, &mut sub)?;
    ensure(ev.payload == payload, || {
        format!("our client decrypted {} instead of {payload}", ev.payload)
    })?;
    ensure(ev.sender == c.pk("a"), || format!("sender {}", ev.sender))?;
    ensure(ev.metadata == metadata, || {
        format!("metadata {}", ev.metadata)
    })?;
    ensure(ids.first() == Some(&ev.idem), || {
        format!("idem {} published {ids:?}", ev.idem)
    })?;
    ensure(ev.event_name == e, || {
        format!("event name {}", ev.event_name)
    })?;
    drop(ev);
    drop(sub);
    rust_close(c, ours)?;
    Ok(String::new())
}

fn check_rs_receive_python_hybrid(d: &mut PyDriver, c: &Ctx) -> CheckResult {
    let e = c.ev("hybrid-to-rust");
    let ours = rust_client(c, "c")?;
    let mut sub = rust_subscribe(c, &ours, &e)?;
    connect(d, "A", "a")?;
    let payload = json!({"hybrid": "from python", "n": 2});
    // Two recipients: the published client writes its own hybrid envelope.
    publish(d, "A", &e, &["@c", "@b"], payload.clone())?;
    let ev = rust_next(c, &mut sub)?;
    ensure(ev.payload == payload, || {
        format!("our client decrypted {} instead of {payload}", ev.payload)
    })?;
    ensure(ev.sender == c.pk("a"), || format!("sender {}", ev.sender))?;
    drop(ev);
    drop(sub);
    rust_close(c, ours)?;
    Ok("our client reads it (keys by hex, boxed raw key)".into())
}

fn check_rs_send_single(d: &mut PyDriver, c: &Ctx) -> CheckResult {
    let e = c.ev("from-rust");
    connect(d, "B", "b")?;
    subscribe(d, "B", &e, true)?;
    let ours = rust_client(c, "c")?;
    let payload = json!({"greeting": "from rust", "n": 1, "big": 3_000_000_000_i64, "x": 0.5, "nested": {"a": [true, null]}});
    let ids = rust_publish(c, &ours, &e, &[c.pk("b")], &payload, false)?;
    let evs = wait(d, "B", &e, 1)?;
    ensure(evs[0]["payload"] == payload, || {
        format!("the published client decrypted {}", evs[0]["payload"])
    })?;
    ensure(evs[0]["sender"] == json!(c.pk("c")), || {
        format!("sender {}", evs[0]["sender"])
    })?;
    ensure(evs[0]["metadata"] == json!({"from": "rust"}), || {
        format!("metadata {}", evs[0]["metadata"])
    })?;
    ensure(evs[0]["idem"] == json!(ids[0]), || {
        format!("idem {} published {ids:?}", evs[0]["idem"])
    })?;
    rust_close(c, ours)?;
    Ok(String::new())
}

fn check_rs_send_hybrid(d: &mut PyDriver, c: &Ctx) -> CheckResult {
    let e = c.ev("hybrid-from-rust");
    connect(d, "B", "b")?;
    subscribe(d, "B", &e, true)?;
    d.ok(json!({"op": "client_log"}))?;
    let ours = rust_client(c, "c")?;
    let mut own = rust_subscribe(c, &ours, &e)?;
    let payload = json!({"hybrid": "from rust"});
    // To the Python app and to ourselves: one hybrid envelope for both.
    rust_publish(c, &ours, &e, &[c.pk("b"), c.pk("c")], &payload, true)?;
    let ev = rust_next(c, &mut own)?;
    ensure(ev.payload == payload, || {
        format!("our own hybrid decrypted to {}", ev.payload)
    })?;
    drop(ev);
    wait_log(d, "B", &e, "Failed to decrypt hybrid")?;
    let handled = quiet(d, "B", &e, 100)?;
    ensure(handled.is_empty(), || {
        format!("the published client's handler got {handled:?}")
    })?;
    drop(own);
    rust_close(c, ours)?;
    Ok("the published client reports a decryption failure (it reads no hybrid); our client reads it".into())
}

fn check_rs_reply(d: &mut PyDriver, c: &Ctx) -> CheckResult {
    let (req1, rep1) = (c.ev("req-from-rust"), c.ev("rep-from-python"));
    let (req2, rep2) = (c.ev("req-from-python"), c.ev("rep-from-rust"));
    let ours = rust_client(c, "c")?;
    let mut replies = rust_subscribe(c, &ours, &rep1)?;
    let mut requests = rust_subscribe(c, &ours, &req2)?;
    connect(d, "A", "a")?;
    connect(d, "B", "b")?;
    let python_reply = json!({"status": "received"});
    d.ok(
        json!({"op": "subscribe", "session": "B", "event": req1, "auto_ack": true,
                "reply": {"event": rep1, "payload": python_reply}}),
    )?;
    subscribe(d, "A", &rep2, true)?;
    // ours -> published -> ours
    rust_publish(
        c,
        &ours,
        &req1,
        &[c.pk("b")],
        &json!({"question": 1}),
        false,
    )?;
    let ev = rust_next(c, &mut replies)?;
    ensure(ev.payload == python_reply, || {
        format!("reply payload {}", ev.payload)
    })?;
    ensure(ev.sender == c.pk("b"), || {
        format!("reply sender {}", ev.sender)
    })?;
    drop(ev);
    // published -> ours -> published
    publish(d, "A", &req2, &["@c"], json!({"question": 2}))?;
    let ev = rust_next(c, &mut requests)?;
    ensure(ev.sender == c.pk("a"), || {
        format!("request sender {}", ev.sender)
    })?;
    let our_reply = json!({"answer": 2});
    rust_publish(
        c,
        &ours,
        &rep2,
        std::slice::from_ref(&ev.sender),
        &our_reply,
        false,
    )?;
    drop(ev);
    let evs = wait(d, "A", &rep2, 1)?;
    ensure(evs[0]["payload"] == our_reply, || {
        format!("reply payload {}", evs[0]["payload"])
    })?;
    ensure(evs[0]["sender"] == json!(c.pk("c")), || {
        format!("reply sender {}", evs[0]["sender"])
    })?;
    drop((replies, requests));
    rust_close(c, ours)?;
    Ok("both directions".into())
}

fn check_rs_envelope_shapes(d: &mut PyDriver, c: &Ctx) -> CheckResult {
    let e = c.ev("shapes");
    let ours = rust_client(c, "c")?;
    let mut sub = rust_subscribe(c, &ours, &e)?;
    connect(d, "A", "a")?;
    let shapes = ["single", "hybrid-go", "hybrid-node", "hybrid-python"];
    for (n, shape) in shapes.iter().enumerate() {
        d.ok(
            json!({"op": "publish_raw", "session": "A", "event": e, "to": "@c", "shape": shape,
                    "payload": {"shape": shape, "n": n}}),
        )?;
    }
    let mut got = Vec::new();
    for _ in shapes {
        let ev = rust_next(c, &mut sub)?;
        got.push(ev.payload.clone());
    }
    for (n, shape) in shapes.iter().enumerate() {
        let want = json!({"shape": shape, "n": n});
        ensure(got.contains(&want), || {
            format!("{shape}: not decrypted; got {got:?}")
        })?;
    }
    drop(sub);
    rust_close(c, ours)?;
    Ok("single, Go, Node and Python hybrid shapes".into())
}

const CHECKS: &[(Row, Scenario)] = &[
    (
        Row {
            id: "connect",
            title: "connect: access key accepted; `client_hash` is the app's public key",
        },
        check_connect,
    ),
    (
        Row {
            id: "pubsub",
            title: "publish -> subscribe: payload decrypted; `sender`, metadata, idem, `block` >= 1",
        },
        check_publish_subscribe,
    ),
    (
        Row {
            id: "fanout",
            title: "publish to two recipients: each receives its copy",
        },
        check_multi_recipient,
    ),
    (
        Row {
            id: "autoack",
            title: "auto-ack: a handled event is not delivered to the next session",
        },
        check_auto_ack,
    ),
    (
        Row {
            id: "manualack",
            title: "manual ack: acked events never come again; unacked ones do",
        },
        check_manual_ack,
    ),
    (
        Row {
            id: "defer",
            title: "defer 1000 ms: delivered again after the delay",
        },
        check_defer,
    ),
    (
        Row {
            id: "discard",
            title: "discard: never delivered again",
        },
        check_discard,
    ),
    (
        Row {
            id: "replay",
            title: "replay: the stored event comes back, the client decrypts it",
        },
        check_replay,
    ),
    (
        Row {
            id: "pause",
            title: "pause holds delivery; continue releases it",
        },
        check_pause_continue,
    ),
    (
        Row {
            id: "reply",
            title: "reply to the event's `sender`",
        },
        check_reply_to_sender,
    ),
    (
        Row {
            id: "badkey",
            title: "error: wrong access key (client fails, no hang)",
        },
        check_wrong_access_key,
    ),
    (
        Row {
            id: "unknownrcpt",
            title: "error: publish to an unknown recipient (client fails, no hang)",
        },
        check_unknown_recipient,
    ),
    (
        Row {
            id: "foreignack",
            title: "error: ack of another app's event (client fails, no hang; owner acks)",
        },
        check_foreign_ack,
    ),
    (
        Row {
            id: "replayunknown",
            title: "error: replay of an unknown id (client fails, no hang)",
        },
        check_replay_unknown,
    ),
    (
        Row {
            id: "publicdefer",
            title: "the client's own `defer()` / `discard()` methods, as published",
        },
        check_public_defer_discard,
    ),
    (
        Row {
            id: "readmesub",
            title: "README's `await client.subscribe(name)`, as written",
        },
        check_readme_subscribe,
    ),
    (
        Row {
            id: "readmesecret",
            title: "README's `create_client(key, {\"app_secret_key\": ...})`, as written",
        },
        check_readme_secret_option,
    ),
    (
        Row {
            id: "rsreceive",
            title: "published client publishes -> our Rust client (`ensync-tokio`) receives and decrypts",
        },
        check_rs_receive,
    ),
    (
        Row {
            id: "rsreceivehybrid",
            title: "published client's hybrid envelope (2 recipients) -> our Rust client decrypts",
        },
        check_rs_receive_python_hybrid,
    ),
    (
        Row {
            id: "rssend",
            title: "our Rust client publishes (single envelope) -> published client receives and decrypts",
        },
        check_rs_send_single,
    ),
    (
        Row {
            id: "rssendhybrid",
            title: "our Rust client publishes a hybrid envelope -> published client",
        },
        check_rs_send_hybrid,
    ),
    (
        Row {
            id: "rsreply",
            title: "reply to `sender` between our Rust client and the published client",
        },
        check_rs_reply,
    ),
    (
        Row {
            id: "rsshapes",
            title: "envelopes built with PyNaCl in the single and Go / Node / Python hybrid shapes -> our Rust client decrypts",
        },
        check_rs_envelope_shapes,
    ),
    (
        Row {
            id: "pyhybrid",
            title: "the client's own hybrid (2 recipients) envelope through our node",
        },
        check_python_hybrid,
    ),
];

const INTRO: &str = "
Our node (`ensync-node`, started in-process) against the EnSync Python clients published on
PyPI, driven through their own API by `tests/interop/ensync_driver.py` (one process per check
and version, a timeout on every step). `ensync-sdk` 0.4.0 speaks the generation 1 RPC names
(`PublishEvent`, `AcknowledgeEvent`, ...), 0.4.4 the generation 2 names (`PublishMessage`,
`AcknowledgeMessage`, ...); the node serves both. Pins: `scripts/python-env.sh`.
";

const NOTES: &[(&str, &str)] = &[(
    "Hybrid envelopes and the Python client",
    "
`ensync-core` 0.1.2 (the published Python client's crypto) writes a hybrid envelope when a
message has several recipients: `keys` is keyed by the recipient's public key in hex and each
entry boxes the raw 32-byte message key, but its reader expects the boxed bytes to be the
base64 text of the key. So the published Python client cannot read hybrid envelopes, not even
its own (PROTOCOL.md section 2). The row above shows our node delivers them and the client
reports a decryption failure (its logger, `Failed to decrypt hybrid message`) instead of handing
garbage to the handler. Python interop for several recipients therefore uses
`useHybridEncryption: false` (one single envelope per recipient), which every client reads.
",
)];

// ---- runner -----------------------------------------------------------------------

fn collect_workarounds(d: &PyDriver, column: &str, results: &Mutex<Results>) {
    for line in &d.transcript {
        let Some(json) = line.strip_prefix("<- ") else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(json) else {
            continue;
        };
        if let Some(w) = v["workaround"].as_str() {
            if let Ok(mut r) = results.lock() {
                r.workarounds
                    .entry(w.to_string())
                    .or_default()
                    .insert(column.to_string());
            }
        }
    }
}

/// What every check of the run shares.
struct Shared {
    config: Value,
    apps: Vec<TestApp>,
    unknown_key: String,
    url: String,
    rt: tokio::runtime::Handle,
    results: Mutex<Results>,
}

fn run_one(
    python: &Path,
    client: PublishedClient,
    row: &Row,
    scenario: Scenario,
    shared: &Shared,
) -> CheckResult {
    let label = format!("{} / {}", client.label(), row.id);
    let mut d = PyDriver::spawn(python, &shared.config, &label)?;
    let hello = d.hello.clone();
    if hello["sdk_version"] != json!(client.version())
        || hello["generation"] != json!(client.generation())
    {
        return Err(format!("{label}: wrong interpreter: {hello}"));
    }
    let ctx = Ctx {
        client,
        row: row.id,
        apps: shared.apps.clone(),
        unknown_key: shared.unknown_key.clone(),
        url: shared.url.clone(),
        rt: shared.rt.clone(),
    };
    let result = scenario(&mut d, &ctx);
    collect_workarounds(&d, client.tag(), &shared.results);
    let result = result.map_err(|e| format!("{e}\n  transcript:\n{}", d.transcript_tail(12)));
    d.finish();
    result
}

#[test]
fn published_python_clients_against_our_node() {
    let started = Instant::now();
    let mut clients = Vec::new();
    let mut skipped = Vec::new();
    for client in PublishedClient::ALL {
        match require_python(client, SUITE) {
            Some(p) => clients.push((client, p)),
            None => skipped.push((client.label(), "no interpreter".to_string())),
        }
    }
    if clients.is_empty() {
        return;
    }
    let node = ensync_tests::interop_node::InteropNode::start(3);
    let results = Results {
        suite: SUITE.into(),
        rows: CHECKS.iter().map(|(r, _)| r.clone()).collect(),
        columns: clients
            .iter()
            .map(|(c, _)| Column {
                id: c.tag().into(),
                title: format!("{} (generation {} names)", c.label(), c.generation()),
            })
            .collect(),
        skipped,
        ..Results::default()
    };
    let shared = Arc::new(Shared {
        config: driver_config(&node.url, &node.apps),
        apps: node.apps.clone(),
        unknown_key: ensync_tests::interop_node::unregistered_public_key(),
        url: node.url.clone(),
        rt: node.runtime().handle().clone(),
        results: Mutex::new(results),
    });

    let mut queue = VecDeque::new();
    for (client, python) in &clients {
        for (row, scenario) in CHECKS {
            queue.push_back((*client, python.clone(), row.clone(), *scenario));
        }
    }
    let total = queue.len();
    let queue = Arc::new(Mutex::new(queue));
    let (tx, rx) = mpsc::channel::<Outcome>();
    let mut workers = Vec::new();
    for _ in 0..PARALLEL {
        let queue = Arc::clone(&queue);
        let tx = tx.clone();
        let shared = Arc::clone(&shared);
        workers.push(thread::spawn(move || {
            loop {
                let job = queue.lock().ok().and_then(|mut q| q.pop_front());
                let Some((client, python, row, scenario)) = job else {
                    break;
                };
                let t0 = Instant::now();
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_one(&python, client, &row, scenario, &shared)
                }))
                .unwrap_or_else(|_| Err("the check panicked".into()));
                if let Ok(mut r) = shared.results.lock() {
                    r.elapsed_ms.insert(
                        format!("{}/{}", client.tag(), row.id),
                        t0.elapsed().as_millis(),
                    );
                }
                let _ = tx.send(Outcome {
                    row: row.id,
                    column: client.tag().into(),
                    result,
                });
            }
        }));
    }
    drop(tx);
    let deadline = started + SUITE_DEADLINE;
    let mut outcomes = Vec::new();
    while outcomes.len() < total {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(o) => outcomes.push(o),
            Err(_) => break,
        }
    }
    let finished = outcomes.len();
    let mut results = shared
        .results
        .lock()
        .map(|mut r| std::mem::take(&mut *r))
        .unwrap_or_default();
    results.outcomes = outcomes;
    assert!(
        finished == total,
        "only {finished} of {total} checks finished within {SUITE_DEADLINE:?}"
    );
    for w in workers {
        let _ = w.join();
    }
    node.shutdown();

    let rendered = results.render(INTRO, NOTES);
    report::save(&results, &rendered).expect("write interop results");
    let failures = results.failures();
    assert!(
        failures.is_empty(),
        "{} interop check(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );

    // docs/interop.md is generated from these results: it must say what this run found.
    if results.skipped.is_empty() && std::env::var(report::WRITE_ENV).as_deref() != Ok("1") {
        let on_disk = report::doc_section(SUITE).unwrap_or_default();
        assert!(
            on_disk == rendered,
            "docs/interop.md does not match this run's results (see target/interop/{SUITE}.md); \
             regenerate it with {}=1 cargo test -p ensync-tests --test {SUITE}",
            report::WRITE_ENV
        );
    }
    eprintln!("{SUITE}: {total} checks in {:?}", started.elapsed());
}
