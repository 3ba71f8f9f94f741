//! `ensync publish` and `ensync subscribe` against an `ensync node --dev`, all three as
//! the real binary.

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_ensync");

/// One app of the dev node.
struct App {
    access_key: String,
    public_key: String,
    secret_key: String,
}

/// A running `ensync node --dev` on an ephemeral port; killed on drop.
struct DevNode {
    child: Child,
    url: String,
    apps: Vec<App>,
}

impl DevNode {
    fn start() -> Self {
        let child = Command::new(BIN)
            .args(["node", "--dev", "--grpc-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ensync node");
        // Owned at once, so that a failure below still kills the node.
        let mut node = DevNode {
            child,
            url: String::new(),
            apps: Vec::new(),
        };
        let (tx, rx) = mpsc::channel();
        let stdout = node.child.stdout.take().expect("node stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the node's ready line");
            if let Some(addr) = line.strip_prefix("ensync node ready grpc=") {
                let addr = addr.split_whitespace().next().unwrap_or_default();
                node.url = format!("grpc://{addr}");
                assert_eq!(node.apps.len(), 2);
                return node;
            }
            if let Ok(app) = serde_json::from_str::<Value>(&line) {
                node.apps.push(App {
                    access_key: app["access_key"].as_str().unwrap().to_owned(),
                    public_key: app["public_key"].as_str().unwrap().to_owned(),
                    secret_key: app["secret_key"].as_str().unwrap().to_owned(),
                });
            }
        }
    }

    /// `ensync <args>` as `app`, keys and URL from the environment.
    fn command(&self, app: usize, args: &[&str]) -> Command {
        let app = &self.apps[app];
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("ENSYNC_URL", &self.url)
            .env("ENSYNC_APP_KEY", &app.access_key)
            .env("ENSYNC_SECRET_KEY", &app.secret_key)
            .env("RUST_LOG", "warn");
        cmd
    }

    fn run(&self, app: usize, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = self
            .command(app, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ensync");
        let mut input = child.stdin.take().expect("stdin");
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).expect("write stdin");
        }
        drop(input);
        child.wait_with_output().expect("wait for ensync")
    }
}

impl Drop for DevNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok_lines(out: &Output) -> Vec<String> {
    assert!(
        out.status.success(),
        "ensync failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout).lines().map(str::to_owned).collect()
}

fn events(out: &Output) -> Vec<Value> {
    ok_lines(out)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn subscriber_prints_the_published_event_as_a_json_line() {
    let node = DevNode::start();
    let mut subscriber = node
        .command(
            0,
            &["subscribe", "--event", "orders/created", "--count", "1"],
        )
        .arg("--timeout")
        .arg("60")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ensync subscribe");
    // Publish once the subscription is live, so the event is delivered on it.
    let stderr = subscriber.stderr.take().expect("subscriber stderr");
    let mut stderr = BufReader::new(stderr).lines();
    let first = stderr.next().and_then(Result::ok).unwrap_or_default();
    assert!(
        first.starts_with("ensync: subscribed to orders/created as "),
        "{first}"
    );

    // Keys as flags this time (the environment holds app 2's).
    let app1 = &node.apps[0];
    let app2 = &node.apps[1];
    let out = Command::new(BIN)
        .args(["publish", "--url", &node.url, "--app-key", &app2.access_key])
        .args(["--event", "orders/created", "--to", &app1.public_key])
        .args(["--metadata", r#"{"source":"cli-test"}"#])
        .arg(r#"{"order_id":"order-123","status":"completed"}"#)
        .env_remove("ENSYNC_URL")
        .env_remove("ENSYNC_APP_KEY")
        .env_remove("ENSYNC_SECRET_KEY")
        .output()
        .expect("run ensync publish");
    let ids = ok_lines(&out);
    assert_eq!(ids.len(), 1, "one id for one recipient: {ids:?}");

    let out = subscriber.wait_with_output().expect("subscriber output");
    let got = events(&out);
    assert_eq!(got.len(), 1, "{got:?}");
    let event = &got[0];
    assert_eq!(event["idem"], ids[0].as_str());
    assert_eq!(event["eventName"], "orders/created");
    assert!(event["block"].as_i64().is_some_and(|b| b > 0), "{event}");
    assert!(event.get("timestamp").is_some(), "{event}");
    assert_eq!(
        event["payload"],
        json!({"order_id": "order-123", "status": "completed"})
    );
    assert_eq!(event["sender"], app2.public_key.as_str());
    assert_eq!(event["metadata"], json!({"source": "cli-test"}));
}

#[test]
fn publish_reads_payloads_from_stdin_for_several_recipients() {
    let node = DevNode::start();
    let to_both = format!("{},{}", node.apps[0].public_key, node.apps[1].public_key);
    let out = node.run(
        1,
        &["publish", "-e", "jobs/queued", "--to", &to_both],
        Some("{\"job\": 1}\n{\"job\": 2}\n"),
    );
    let ids = ok_lines(&out);
    assert_eq!(ids.len(), 4, "2 payloads x 2 recipients: {ids:?}");

    for app in 0..2 {
        let out = node.run(
            app,
            &[
                "subscribe",
                "-e",
                "jobs/queued",
                "-n",
                "2",
                "--timeout",
                "60",
            ],
            None,
        );
        let got = events(&out);
        let jobs: Vec<&Value> = got.iter().map(|e| &e["payload"]["job"]).collect();
        assert_eq!(jobs, [&json!(1), &json!(2)], "app {app}: in order");
        // Ids come recipient by recipient within a payload.
        assert_eq!(got[0]["idem"], ids[app].as_str());
        assert_eq!(got[1]["idem"], ids[2 + app].as_str());
        assert!(
            got.iter()
                .all(|e| e["sender"] == node.apps[1].public_key.as_str())
        );
    }

    // Repeated --to works the same way.
    let out = node.run(
        1,
        &[
            "publish",
            "-e",
            "jobs/queued",
            "--to",
            &node.apps[0].public_key,
            "--to",
            &node.apps[1].public_key,
            "-",
        ],
        Some(r#"{"job": 3}"#),
    );
    assert_eq!(ok_lines(&out).len(), 2);
}

#[test]
fn no_ack_leaves_the_event_for_the_next_subscriber() {
    let node = DevNode::start();
    let to = node.apps[0].public_key.clone();
    let ids = ok_lines(&node.run(
        1,
        &["publish", "-e", "a/b", "--to", &to, r#"{"n":1}"#],
        None,
    ));
    let subscribe = |extra: &[&str]| {
        let mut args = vec!["subscribe", "-e", "a/b", "-n", "1", "--timeout", "60"];
        args.extend_from_slice(extra);
        node.run(0, &args, None)
    };
    let first = events(&subscribe(&["--no-ack"]));
    assert_eq!(first[0]["idem"], ids[0].as_str());
    let second = events(&subscribe(&[]));
    assert_eq!(second[0]["idem"], ids[0].as_str(), "delivered again");
    // The second subscriber acknowledged it: nothing is left.
    let out = node.run(0, &["subscribe", "-e", "a/b", "--timeout", "1"], None);
    assert!(ok_lines(&out).is_empty(), "{}", text(&out.stdout));
}

#[test]
fn failures_exit_non_zero_and_say_why() {
    let node = DevNode::start();
    let to = node.apps[0].public_key.clone();
    let cases: Vec<(Output, i32, &str)> = vec![
        (
            node.run(1, &["publish", "-e", "x", "--to", &to, "{bad"], None),
            2,
            "not valid JSON",
        ),
        (
            node.run(1, &["publish", "-e", "x", "--to", &to, "[1]"], None),
            2,
            "must be a JSON object",
        ),
        (
            node.run(1, &["publish", "-e", "x", "--to", &to], Some("")),
            2,
            "no payload",
        ),
        (
            node.run(1, &["publish", "-e", "x", "--to", "not-a-key", "{}"], None),
            2,
            "public key",
        ),
        (
            node.run(
                1,
                &[
                    "publish",
                    "--app-key",
                    "wrong",
                    "-e",
                    "x",
                    "--to",
                    &to,
                    "{}",
                ],
                None,
            ),
            1,
            "authentication",
        ),
        (
            node.run(
                1,
                &[
                    "publish",
                    "--url",
                    "grpc://127.0.0.1:1",
                    "-e",
                    "x",
                    "--to",
                    &to,
                    "{}",
                ],
                None,
            ),
            1,
            "cannot connect",
        ),
        (
            node.run(
                0,
                &["subscribe", "-e", "x", "--secret-key", "", "-n", "1"],
                None,
            ),
            2,
            "secret key",
        ),
        (
            node.run(
                0,
                &["subscribe", "-e", "x", "-n", "1", "--timeout", "0.5"],
                None,
            ),
            1,
            "timed out: 0 of 1",
        ),
    ];
    for (out, status, needle) in cases {
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(status), "{needle}: {stderr}");
        assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
        assert!(text(&out.stdout).is_empty(), "{needle}: printed something");
    }
}
