//! The node under test, in a child process of this binary (`ensync-bench serve-node`), so
//! that its memory and CPU are its own and the clients measured are separate from it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use ensync_node::{Node, NodeConfig};

/// A boxed error with a message, for the bench's plumbing.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `serve-node`: runs a node from `config` until stdin reaches EOF (the parent dropped
/// its end, or died).
pub fn serve(config: &Path) -> Result<(), BoxError> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| format!("cannot read {}: {e}", config.display()))?;
    let config: NodeConfig =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", config.display()))?;
    let stats_path = config.data_dir.join(STATS_FILE);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let node = Node::start(config).await?;
        match node.ws_addr() {
            Some(ws) => println!("ensync node ready grpc={} ws={ws}", node.grpc_addr()),
            None => println!("ensync node ready grpc={}", node.grpc_addr()),
        }
        std::io::stdout().flush()?;
        // Wait for stdin to close on a blocking thread.
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await?;
        let service = node.service().clone();
        node.shutdown().await;
        // The final counters, for `NodeProcess::stop` (the parent no longer reads stdout).
        let s = service.stats();
        std::fs::write(
            &stats_path,
            format!(
                "commits {}\ncommitted_ops {}\nready {}\ndeferred {}\nin_flight {}\n",
                s.commits, s.committed_ops, s.ready, s.deferred, s.in_flight
            ),
        )?;
        Ok::<(), BoxError>(())
    })
}

/// Where `serve-node` writes its final counters (in its data directory).
const STATS_FILE: &str = "bench-node-stats.txt";

/// The node's counters when it stopped (see [`NodeProcess::stop`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct FinalStats {
    /// Store transactions committed.
    pub commits: u64,
    /// Write operations in them.
    pub committed_ops: u64,
    /// Events ready in queues.
    pub ready: u64,
    /// Deferred events.
    pub deferred: u64,
    /// Events in flight.
    pub in_flight: u64,
}

/// A running node child process. Dropping it closes the child's stdin (the node shuts
/// down) and waits for it; a child that does not exit within 10 s is killed.
pub struct NodeProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The node's gRPC address.
    pub grpc_addr: SocketAddr,
    /// The node's WebSocket address, when `ws_listen` was set.
    pub ws_addr: Option<SocketAddr>,
    data_dir: PathBuf,
}

impl NodeProcess {
    /// Writes `config` next to its data directory and starts `ensync-bench serve-node`
    /// on it; returns once the node printed its ready line.
    pub fn spawn(config: &NodeConfig) -> Result<Self, BoxError> {
        let path = config.data_dir.join("bench-node.toml");
        std::fs::create_dir_all(&config.data_dir)?;
        std::fs::write(&path, toml::to_string(config)?)?;
        let mut child = Command::new(std::env::current_exe()?)
            .arg("serve-node")
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("no stdout of the node process")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(rest) = line.trim().strip_prefix("ensync node ready ") else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("the node did not start (said {line:?})").into());
        };
        let mut grpc_addr = None;
        let mut ws_addr = None;
        for part in rest.split_whitespace() {
            if let Some(a) = part.strip_prefix("grpc=") {
                grpc_addr = Some(a.parse()?);
            } else if let Some(a) = part.strip_prefix("ws=") {
                ws_addr = Some(a.parse()?);
            }
        }
        Ok(NodeProcess {
            grpc_addr: grpc_addr.ok_or("no grpc address in the ready line")?,
            ws_addr,
            child,
            stdin,
            data_dir: config.data_dir.clone(),
        })
    }

    /// Stops the node (as dropping does) and returns the counters it wrote on its way
    /// out (commits, batch sizes, queued events).
    pub fn stop(self) -> Result<FinalStats, BoxError> {
        let path = self.data_dir.join(STATS_FILE);
        let _ = std::fs::remove_file(&path);
        drop(self);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("the node wrote no final counters ({}): {e}", path.display()))?;
        let mut s = FinalStats::default();
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(k), Some(v)) = (parts.next(), parts.next()) else {
                continue;
            };
            let v: u64 = v.parse()?;
            match k {
                "commits" => s.commits = v,
                "committed_ops" => s.committed_ops = v,
                "ready" => s.ready = v,
                "deferred" => s.deferred = v,
                "in_flight" => s.in_flight = v,
                _ => {}
            }
        }
        Ok(s)
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's peak resident set size (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        status_field(self.pid(), "VmHWM:")
    }

    /// The child's current resident set size (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        status_field(self.pid(), "VmRSS:")
    }

    /// CPU time (user + system) the child used so far.
    pub fn cpu_time(&self) -> Option<Duration> {
        process_cpu_time(self.pid())
    }
}

/// CPU time (user + system) process `pid` used so far, from `/proc/<pid>/stat`.
pub fn process_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_second(),
    ))
}

fn clock_ticks_per_second() -> f64 {
    // USER_HZ is 100 on every Linux architecture this runs on.
    100.0
}

fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        drop(self.stdin.take());
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
