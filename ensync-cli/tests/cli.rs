//! The `ensync` binary: keygen, config errors, dev mode, and the crash test (SIGKILL
//! under publish load, restart on the same data directory, nothing acknowledged lost).

#[path = "../../ensync-node/tests/common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ensync_proto::wire;

const BIN: &str = env!("CARGO_BIN_EXE_ensync");

/// A running `ensync node`; its stdout lines arrive on `lines`. Killed (SIGKILL) on drop.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ensync");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// Lines up to and including the ready line (the last); returns them and the address.
    fn wait_ready(&self) -> (Vec<String>, std::net::SocketAddr) {
        let mut seen = Vec::new();
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no ready line; saw {seen:?}"));
            if let Some(addr) = line.strip_prefix("ensync node ready grpc=") {
                let addr = addr.split_whitespace().next().unwrap_or_default();
                let addr = addr.parse().expect("address in ready line");
                seen.push(line);
                return (seen, addr);
            }
            seen.push(line);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn keygen_prints_a_valid_key_pair() {
    let out = Command::new(BIN).arg("keygen").output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let public = v["public_key"].as_str().unwrap();
    let secret = v["secret_key"].as_str().unwrap();
    assert_eq!(public.len(), 44);
    assert_eq!(secret.len(), 88);
    let sk = ensync_proto::keys::SecretKey::from_base64(secret).unwrap();
    assert_eq!(sk.public_key().to_base64(), public);
    let again = Command::new(BIN).arg("keygen").output().unwrap();
    assert_ne!(again.stdout, out.stdout, "fresh keys each time");
}

#[test]
fn keygen_app_prints_a_config_block_and_keeps_the_secret_apart() {
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("orders.env");
    let out = Command::new(BIN)
        .args(["keygen", "--app", "orders", "--send", "orders/*,audit/*"])
        .args(["--receive", "billing/*", "--env"])
        .arg(&env)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let block = String::from_utf8(out.stdout).unwrap();
    let env_text = std::fs::read_to_string(&env).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&env).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let value = |name: &str| {
        let line = env_text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}='")))
            .unwrap_or_else(|| panic!("no {name} in {env_text}"));
        line.trim_end_matches('\'').to_owned()
    };
    let secret = value("ENSYNC_SECRET_KEY");
    let access = value("ENSYNC_APP_KEY");
    assert!(
        !block.contains(&secret),
        "the node's block holds no secret key"
    );
    // The block is a valid node config whose app is this key pair.
    let data = dir.path().join("data");
    let text = format!("data_dir = {:?}\n{block}", data.display().to_string());
    let config: ensync_node::NodeConfig = toml::from_str(&text).unwrap();
    config.validate().unwrap();
    let app = &config.apps[0];
    assert_eq!(app.name, "orders");
    assert_eq!(app.access_key, access);
    assert_eq!(app.send, ["orders/*", "audit/*"]);
    assert_eq!(app.receive, ["billing/*"]);
    let sk = ensync_proto::keys::SecretKey::from_base64(&secret).unwrap();
    assert_eq!(sk.public_key().to_base64(), app.public_key);

    // Refused: an existing --env file (not overwritten), a bad pattern, --send alone.
    let again = Command::new(BIN)
        .args(["keygen", "--app", "x", "--env"])
        .arg(&env)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&env).unwrap(), env_text);
    let bad = Command::new(BIN)
        .args(["keygen", "--app", "x", "--send", "a/*/b"])
        .output()
        .unwrap();
    assert_eq!(
        bad.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let alone = Command::new(BIN)
        .args(["keygen", "--send", "a"])
        .output()
        .unwrap();
    assert_eq!(alone.status.code(), Some(2));
}

fn run_with_config(dir: &Path, text: &str) -> (bool, String) {
    let path = dir.join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["node", "--config"])
        .arg(&path)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_config_exits_non_zero_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let key = ensync_node::keys::generate().public_key;
    let data = dir.path().join("data");
    let data = data.display();
    for (text, field) in [
        (
            "grpc_listen = \"not an address\"\n".to_owned(),
            "grpc_listen",
        ),
        ("data_dir = 5\n".to_owned(), "data_dir"),
        ("surprise = true\n".to_owned(), "surprise"),
        (
            format!(
                "data_dir = \"{data}\"\n[[apps]]\nname = \"a\"\naccess_key = \"k\"\npublic_key = \"bad\"\n"
            ),
            "apps[0].public_key",
        ),
        (
            format!("data_dir = \"{data}\"\n[[apps]]\nname = \"a\"\npublic_key = \"{key}\"\n"),
            "access_key",
        ),
        (
            format!(
                "data_dir = \"{data}\"\n[[apps]]\nname = \"a\"\naccess_key = \"k\"\npublic_key = \"{key}\"\nreceive = [\"x/*/y\"]\n"
            ),
            "apps[0].receive[0]",
        ),
        (
            format!("data_dir = \"{data}\"\ntls_cert = \"c.pem\"\n"),
            "tls_key",
        ),
        ("store = \"jetstream\"\n".to_owned(), "jetstream"),
        (
            "store = \"jetstream\"\n[jetstream]\nservers = [\"nats://127.0.0.1:4222\"]\nreplicas = 7\n"
                .to_owned(),
            "jetstream.replicas",
        ),
        (
            format!("data_dir = \"{data}\"\nadmin_listen = \"127.0.0.1:0\"\n"),
            "admin_key",
        ),
        (
            format!(
                "data_dir = \"{data}\"\nadmin_listen = \"127.0.0.1:0\"\nadmin_key = \"short\"\n"
            ),
            "admin_key",
        ),
        (
            format!("data_dir = \"{data}\"\nadmin_key = \"0123456789abcdef0123\"\n"),
            "admin_listen",
        ),
        (
            format!("data_dir = \"{data}\"\nmax_connections_per_ip = 0\n"),
            "max_connections_per_ip",
        ),
        // A one-time decision of the operator (a flag), never a setting of the file.
        (
            format!("data_dir = \"{data}\"\naccept_store_rollback = true\n"),
            "accept_store_rollback",
        ),
    ] {
        let (ok, stderr) = run_with_config(dir.path(), &text);
        assert!(!ok, "accepted: {text}");
        assert!(stderr.contains(field), "{field} not named in: {stderr}");
    }
    let out = Command::new(BIN)
        .args(["node", "--config", "/nonexistent/ensync.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/ensync.toml"));
}

#[tokio::test]
async fn dev_mode_prints_working_keys_and_stops_on_sigterm() {
    let proc = Proc::spawn(&["node", "--dev", "--grpc-listen", "127.0.0.1:0"]);
    let (lines, addr) = proc.wait_ready();
    let apps: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(apps.len(), 2, "{lines:?}");
    let mut c = client(addr).await;
    for app in &apps {
        let r = c
            .connect(wire::ConnectRequest {
                access_key: app["access_key"].as_str().unwrap().to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.success);
        assert_eq!(r.client_hash, app["public_key"].as_str().unwrap());
        let sk = ensync_proto::keys::SecretKey::from_base64(app["secret_key"].as_str().unwrap())
            .unwrap();
        assert_eq!(sk.public_key().to_base64(), r.client_hash);
    }
    let mut proc = proc;
    let status = Command::new("kill")
        .args(["-TERM", &proc.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || {
        let s = proc.child.wait();
        (s, proc)
    })
    .await
    .unwrap();
    assert!(exit.0.unwrap().success(), "clean exit on SIGTERM");
}

fn write_config(dir: &Path, apps: &[(&str, &str, &str)]) -> std::path::PathBuf {
    let mut text = format!(
        "grpc_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n",
        dir.join("data").display()
    );
    for (name, access, public) in apps {
        text.push_str(&format!(
            "[[apps]]\nname = \"{name}\"\naccess_key = \"{access}\"\npublic_key = \"{public}\"\nsend = [\"*\"]\nreceive = [\"*\"]\n"
        ));
    }
    let path = dir.join("ensync.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// SIGKILL the node under concurrent publish load, restart it on the same data dir and
/// port: every event whose publish succeeded is either acknowledged before the kill or
/// delivered after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_under_load_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let publisher = ensync_node::keys::generate();
    let consumer = ensync_node::keys::generate();
    let config = write_config(
        dir.path(),
        &[
            ("pub", "pub-access", &publisher.public_key),
            ("sub", "sub-access", &consumer.public_key),
        ],
    );
    let config = config.to_str().unwrap().to_owned();
    let proc = Proc::spawn(&["node", "--config", &config]);
    let (_, addr) = proc.wait_ready();

    let succeeded = Arc::new(Mutex::new(HashSet::new()));
    let acked = Arc::new(Mutex::new(HashSet::new()));
    // Acks sent whose answer never came (the kill hit between commit and reply): the node
    // may or may not have applied them.
    let ack_unconfirmed = Arc::new(Mutex::new(HashSet::new()));

    // The consumer acks as it goes.
    let consumer_task = {
        let acked = acked.clone();
        let ack_unconfirmed = ack_unconfirmed.clone();
        tokio::spawn(async move {
            let mut c = client(addr).await;
            let sid = connect(&mut c, "sub-access").await;
            let mut s = subscribe(&mut c, &sid, "load").await;
            while let Ok(Some(ev)) = s.message().await {
                match c
                    .acknowledge_event(wire::AcknowledgeRequest {
                        client_id: sid.clone(),
                        event_idem: ev.event_idem.clone(),
                        event_name: ev.event_name.clone(),
                        partition_block: ev.partition_block,
                    })
                    .await
                {
                    Ok(r) if r.get_ref().success => {
                        acked.lock().unwrap().insert(ev.event_idem);
                    }
                    _ => {
                        ack_unconfirmed.lock().unwrap().insert(ev.event_idem);
                        return;
                    }
                }
            }
        })
    };
    let mut publishers = Vec::new();
    for p in 0..4 {
        let succeeded = succeeded.clone();
        let to = consumer.public_key.clone();
        publishers.push(tokio::spawn(async move {
            let mut c = client(addr).await;
            let pid = connect(&mut c, "pub-access").await;
            for i in 0.. {
                let r = c
                    .publish_event(publish_req(&pid, "load", &to, p * 1_000_000 + i))
                    .await;
                match r {
                    Ok(r) if r.get_ref().success => {
                        succeeded.lock().unwrap().insert(r.into_inner().event_idem);
                    }
                    _ => return,
                }
            }
        }));
    }
    // Let load build up, then SIGKILL mid-load.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while succeeded.lock().unwrap().len() < 2000 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(proc); // Child::kill is SIGKILL on Unix.
    for p in publishers {
        let _ = p.await;
    }
    let _ = consumer_task.await;
    let succeeded = succeeded.lock().unwrap().clone();
    let acked = acked.lock().unwrap().clone();
    let ack_unconfirmed = ack_unconfirmed.lock().unwrap().clone();
    assert!(
        succeeded.len() >= 100,
        "load too small: {}",
        succeeded.len()
    );

    // Restart on the same data directory and port.
    let proc = Proc::spawn(&[
        "node",
        "--config",
        &config,
        "--grpc-listen",
        &addr.to_string(),
    ]);
    let (_, addr2) = proc.wait_ready();
    assert_eq!(addr2, addr);
    let mut c = client(addr).await;
    let sid = connect(&mut c, "sub-access").await;
    let mut s = subscribe(&mut c, &sid, "load").await;
    let missing_before: HashSet<_> = succeeded
        .difference(&acked)
        .filter(|id| !ack_unconfirmed.contains(*id))
        .cloned()
        .collect();
    let mut delivered = HashSet::new();
    let mut last_block = 0;
    loop {
        let wait = if missing_before.is_subset(&delivered) {
            500
        } else {
            15_000
        };
        let ev = match tokio::time::timeout(Duration::from_millis(wait), s.message()).await {
            Ok(Ok(Some(ev))) => ev,
            Ok(other) => panic!("stream ended: {other:?}"),
            Err(_) => break,
        };
        assert!(ev.partition_block > last_block, "delivered in block order");
        last_block = ev.partition_block;
        assert!(ack(&mut c, &sid, &ev).await.success);
        delivered.insert(ev.event_idem);
    }
    println!(
        "crash test: published (success) {}, acknowledged before kill {}, delivered after restart {} \
         (acks cut off by the kill, outcome unknown: {})",
        succeeded.len(),
        acked.len(),
        delivered.len(),
        ack_unconfirmed.len()
    );
    let lost: Vec<_> = missing_before.difference(&delivered).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged publishes lost",
        lost.len()
    );
    assert!(
        acked.is_disjoint(&delivered),
        "acked events are not delivered again"
    );
    drop(proc);
}

/// `ensync admin`: keys made, shown, re-permissioned, rotated and deleted through the
/// node's admin API from the command line, with the usual exit codes (0, 2 for what
/// the node refuses as bad input, 1 when it cannot be reached).
#[test]
fn admin_subcommands_drive_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let key = ensync_node::keys::generate().public_key;
    let cfg = dir.path().join("ensync.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &cfg,
        format!(
            "grpc_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nadmin_listen = \"127.0.0.1:0\"\n\
             admin_key = \"cli-admin-key-0123456789\"\n[[apps]]\nname = \"boot\"\n\
             access_key = \"boot-access\"\npublic_key = \"{key}\"\nsend = [\"*\"]\nreceive = [\"*\"]\n",
            data.display()
        ),
    )
    .unwrap();
    let proc = Proc::spawn(&["node", "--config", cfg.to_str().unwrap()]);
    let (lines, _) = proc.wait_ready();
    let ready = lines.last().unwrap();
    let admin = ready
        .split(' ')
        .find_map(|w| w.strip_prefix("admin="))
        .unwrap_or_else(|| panic!("no admin address in {ready:?}"))
        .to_owned();
    let url = format!("http://{admin}");
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("admin")
            .args(["--url", &url])
            .args(args)
            .env("ENSYNC_ADMIN_KEY", "cli-admin-key-0123456789")
            .output()
            .unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (
            out.status.code(),
            json,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, made, err) = run(&[
        "keys",
        "create",
        "--name",
        "billing",
        "--send",
        "billing/*",
        "--receive",
        "orders/*,billing/*",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let id = made["id"].as_str().unwrap().to_owned();
    let access = made["accessKey"].as_str().unwrap().to_owned();
    assert_eq!(
        made["service_key_pair"]["private_key"]
            .as_str()
            .unwrap()
            .len(),
        88
    );
    assert_eq!(
        made["permissions"]["receive"],
        serde_json::json!(["orders/*", "billing/*"])
    );

    let (code, list, _) = run(&["keys", "list"]);
    assert_eq!(code, Some(0));
    assert_eq!(list["resultsLength"], 2);
    let (code, got, _) = run(&["keys", "get", &id]);
    assert_eq!((code, got["name"].as_str()), (Some(0), Some("billing")));
    let (code, _, _) = run(&["keys", "permissions", &access, "--set", "--send", "x/*"]);
    assert_eq!(code, Some(0));
    let (_, perms, _) = run(&["keys", "permissions", &access]);
    assert_eq!(
        perms["permissions"],
        serde_json::json!({"send": ["x/*"], "receive": []})
    );
    let (code, pair, _) = run(&["keys", "rotate", &access]);
    assert_eq!(code, Some(0));
    assert_ne!(pair["public_key"], made["service_key_pair"]["public_key"]);
    let (code, _, _) = run(&[
        "events",
        "create",
        "orders/created",
        "--payload",
        r#"{"id":"string"}"#,
    ]);
    assert_eq!(code, Some(0));
    let (code, ev, _) = run(&["events", "get", "orders/created"]);
    assert_eq!(
        (code, &ev["payload"]),
        (Some(0), &serde_json::json!({"id": "string"}))
    );

    // Refusals: bad input 2, and nothing changed.
    let (code, _, err) = run(&["keys", "create", "--name", "bad", "--send", "a/*/b"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, _, _) = run(&["events", "create", "x", "--payload", "[1]"]);
    assert_eq!(code, Some(2));
    let (code, _, _) = run(&["keys", "get", "no-such-id"]);
    assert_eq!(code, Some(2));
    let out = Command::new(BIN)
        .args([
            "admin",
            "--url",
            &url,
            "--admin-key",
            "wrong-wrong-wrong-wrong",
            "keys",
            "list",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a wrong admin key");
    assert_eq!(run(&["keys", "list"]).1["resultsLength"], 2);

    let (code, _, _) = run(&["keys", "delete", &id]);
    assert_eq!(code, Some(0));
    assert_eq!(run(&["keys", "list"]).1["resultsLength"], 1);
    drop(proc);
    let out = Command::new(BIN)
        .args(["admin", "--url", &url, "--admin-key", "x", "keys", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "node gone: not reachable");
}

/// A self-signed certificate for `localhost` in `dir` (`cert.pem`, `key.pem`); returns
/// the certificate's path.
fn write_cert(dir: &Path, name: &str) -> std::path::PathBuf {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, cert.cert.pem()).unwrap();
    std::fs::write(
        dir.join(format!("{name}.key")),
        cert.signing_key.serialize_pem(),
    )
    .unwrap();
    path
}

/// Issue 16: a certificate or key the node cannot use, or an `admin_tls` it cannot
/// honour, exits with status 2 naming the field.
#[test]
fn bad_tls_config_exits_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.display();
    let good = write_cert(dir.path(), "good");
    let other = write_cert(dir.path(), "other");
    let good_key = dir.path().join("good.key");
    let other_key = dir.path().join("other.key");
    std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
    let junk = dir.path().join("junk.pem");
    let tls = |cert: &Path, key: &Path| {
        format!(
            "data_dir = \"{data}\"\ngrpc_listen = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        )
    };
    let admin = "admin_key = \"0123456789abcdef0123\"\n";
    for (text, field) in [
        (tls(&dir.path().join("missing.pem"), &good_key), "tls_cert"),
        (tls(&junk, &good_key), "tls_cert"),
        (tls(&good, &dir.path().join("missing.key")), "tls_key"),
        (tls(&good, &other_key), "tls_key"),
        (
            format!(
                "data_dir = \"{data}\"\nadmin_listen = \"127.0.0.1:0\"\n{admin}admin_tls = true\n"
            ),
            "admin_tls",
        ),
        (
            format!(
                "{}admin_listen = \"0.0.0.0:0\"\n{admin}admin_tls = false\n",
                tls(&good, &good_key)
            ),
            "admin_tls",
        ),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, &text).unwrap();
        let out = Command::new(BIN)
            .args(["node", "--config"])
            .arg(&path)
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {stderr}");
        assert!(stderr.contains(field), "{field} not named in: {stderr}");
    }
    drop(other);
}

/// Issue 16: `ensync admin` over HTTPS: the node's admin endpoint serves its
/// certificate; `--ca-cert` with that certificate is answered, another CA is refused
/// (exit 1), an unreadable `--ca-cert` is bad input (exit 2).
#[test]
fn admin_commands_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let cert = write_cert(dir.path(), "node");
    let other = write_cert(dir.path(), "other");
    let cfg = dir.path().join("ensync.toml");
    std::fs::write(
        &cfg,
        format!(
            "grpc_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\
             admin_listen = \"127.0.0.1:0\"\nadmin_key = \"cli-admin-key-0123456789\"\n",
            dir.path().join("data").display(),
            cert.display(),
            dir.path().join("node.key").display(),
        ),
    )
    .unwrap();
    let proc = Proc::spawn(&["node", "--config", cfg.to_str().unwrap()]);
    let (lines, _) = proc.wait_ready();
    let ready = lines.last().unwrap();
    let port = ready
        .split(' ')
        .find_map(|w| w.strip_prefix("admin="))
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .unwrap_or_else(|| panic!("no admin address in {ready:?}"))
        .port();
    let url = format!("https://localhost:{port}");
    let run = |ca: &Path| {
        let out = Command::new(BIN)
            .args(["admin", "--url", &url, "--ca-cert"])
            .arg(ca)
            .args(["keys", "list"])
            .env("ENSYNC_ADMIN_KEY", "cli-admin-key-0123456789")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = run(&cert);
    assert_eq!(code, Some(0), "{stderr}");
    let list: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(list["resultsLength"], 0, "{stdout}");
    let (code, _, stderr) = run(&other);
    assert_eq!(code, Some(1), "another CA: {stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    let (code, _, stderr) = run(&dir.path().join("missing.pem"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--ca-cert"), "{stderr}");
    drop(proc);
}
