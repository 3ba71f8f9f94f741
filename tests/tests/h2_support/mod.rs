//! Shared by the h2_* and blocking_* tests: an EnSync node on a thread of its own with
//! its own tokio runtime (so the clients under test run with no tokio runtime around
//! them), restartable on the same data directory and port; ensync-h2's async-std runtime.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use ensync_h2::Runtime;
use ensync_node::dev::DevSetup;
use tokio_util::compat::FuturesAsyncReadCompatExt;

/// Upper bound of every wait in these tests (never asserted as a timing target).
pub const WAIT: Duration = Duration::from_secs(20);

/// A node serving on its own thread.
pub struct NodeThread {
    pub dev: DevSetup,
    pub addr: SocketAddr,
    running: Option<Running>,
}

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl NodeThread {
    /// Generates `apps` apps and starts a node for them on an ephemeral port.
    pub fn start(apps: usize) -> NodeThread {
        Self::start_with(apps, |_| {})
    }

    /// [`NodeThread::start`] with a change to the generated configuration.
    pub fn start_with(
        apps: usize,
        change: impl FnOnce(&mut ensync_node::NodeConfig),
    ) -> NodeThread {
        let mut dev = DevSetup::generate(apps).expect("dev setup");
        change(&mut dev.config);
        let config = dev.config.clone();
        let (running, addr) = run(config);
        NodeThread {
            dev,
            addr,
            running: Some(running),
        }
    }

    /// `grpc://host:port`.
    pub fn url(&self) -> String {
        format!("grpc://{}", self.addr)
    }

    /// (access key, secret key) of app `i`.
    pub fn app(&self, i: usize) -> (String, String) {
        let app = &self.dev.apps[i];
        (app.access_key.clone(), app.secret_key().to_owned())
    }

    /// Public key of app `i`.
    pub fn public_key(&self, i: usize) -> String {
        self.dev.apps[i].public_key.clone()
    }

    /// Stops the node (graceful shutdown: streams end, the store is closed).
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.stop.send(());
            running.thread.join().expect("node thread");
        }
    }

    /// Starts the node again on the same data directory and port.
    pub fn restart(&mut self) {
        self.stop();
        let mut config = self.dev.config.clone();
        config.grpc_listen = self.addr;
        // The port was just freed; retry briefly in case the OS needs a moment.
        let mut tries = 0;
        loop {
            match try_run(config.clone()) {
                Ok((running, addr)) => {
                    assert_eq!(addr, self.addr);
                    self.running = Some(running);
                    return;
                }
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("node restart failed: {e}"),
            }
        }
    }
}

impl Drop for NodeThread {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(config: ensync_node::NodeConfig) -> (Running, SocketAddr) {
    try_run(config).expect("node start")
}

fn try_run(config: ensync_node::NodeConfig) -> Result<(Running, SocketAddr), String> {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("ensync-node".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("tokio runtime for the node");
            runtime.block_on(async move {
                match ensync_node::Node::start(config).await {
                    Ok(node) => {
                        let _ = addr_tx.send(Ok(node.grpc_addr()));
                        let _ = stopped.await;
                        node.shutdown().await;
                    }
                    Err(e) => {
                        let _ = addr_tx.send(Err(e.to_string()));
                    }
                }
            });
        })
        .map_err(|e| e.to_string())?;
    let result = addr_rx.recv().map_err(|e| e.to_string())?;
    match result {
        Ok(addr) => Ok((Running { stop, thread }, addr)),
        Err(e) => {
            let _ = thread.join();
            Err(e)
        }
    }
}

/// ensync-h2 on async-std.
pub fn async_std_runtime() -> Runtime {
    Runtime::new(
        |task| {
            async_std::task::spawn(task);
        },
        async_std::task::sleep,
        |authority: String| async move {
            let stream = async_std::net::TcpStream::connect(authority).await?;
            stream.set_nodelay(true)?;
            Ok(stream.compat())
        },
    )
}

/// Engine options for tests: short reconnect delays.
pub fn h2_options() -> ensync_h2::EngineOptions {
    ensync_h2::EngineOptions::default()
        .reconnect_interval(Duration::from_millis(100))
        .max_reconnect_attempts(30)
        .request_timeout(WAIT)
}

/// Awaits `future` on async-std with the test bound.
pub async fn bounded<F: std::future::Future>(what: &str, future: F) -> F::Output {
    async_std::future::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}
