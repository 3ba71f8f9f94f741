//! In-process nodes for the end-to-end tests of the SDKs: a node on `127.0.0.1:0` with
//! generated apps, restartable on the same port and data directory, and a variant that
//! serves only one RPC generation.
//!
//! With env `ENSYNC_TEST_STORE=jetstream` every node is on the JetStream backend (a
//! stream of its own on a 3-server loopback cluster shared by the test process; see
//! [`store_from_env`]): `scripts/test.sh` runs the interop suites that way too.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ensync_node::dev::{DevApp, DevSetup};
use ensync_node::{NodeConfig, NodeService, NodeStats, RunningNode};
use ensync_tokio::{Client, ClientOptions, EnSyncEngine, EngineOptions};
use futures::future::BoxFuture;
use tonic::codegen::Service;
use tonic::codegen::http;
use tonic::server::NamedService;

/// The limit of every bounded wait in the tests: generous, only hit when something is
/// broken.
pub const WAIT: Duration = Duration::from_secs(20);

/// Awaits `fut`, failing the test with `what` after [`WAIT`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// Polls `cond` every 20 ms until it holds, failing the test with `what` after [`WAIT`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Engine options for tests: short reconnect interval, bounded timeouts.
pub fn fast_options() -> EngineOptions {
    EngineOptions::default()
        .reconnect_interval(Duration::from_millis(100))
        .max_reconnect_attempts(50)
        .request_timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(5))
}

/// Whether this run puts the test nodes on JetStream (`ENSYNC_TEST_STORE=jetstream`;
/// unset or `embedded`: the embedded store).
pub fn on_jetstream() -> bool {
    match std::env::var("ENSYNC_TEST_STORE").as_deref() {
        Ok("jetstream") => true,
        Ok("embedded") | Err(_) => false,
        Ok(other) => panic!("ENSYNC_TEST_STORE={other:?}: expected jetstream or embedded"),
    }
}

/// Puts `config` on the backend this run asks for: with `ENSYNC_TEST_STORE=jetstream`,
/// a stream of its own on the process's shared 3-server NATS cluster (a missing
/// `nats-server` fails the test then); else unchanged (the embedded store).
pub async fn store_from_env(config: &mut NodeConfig) {
    if !on_jetstream() {
        return;
    }
    let cluster = crate::nats::shared("ENSYNC_TEST_STORE=jetstream")
        .await
        .expect("ENSYNC_TEST_STORE=jetstream needs nats-server");
    config.store = ensync_node::config::StoreKind::Jetstream;
    config.jetstream = Some(cluster.jetstream_config(&crate::nats::unique_stream()));
}

/// Which RPC generation a [`TestNode`] refuses (answers `UNIMPLEMENTED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refuse {
    /// Serve both generations.
    Nothing,
    /// Refuse generation 1 (`PublishEvent`, `AcknowledgeEvent`, ..., `PauseEvents`).
    EventNames,
    /// Refuse generation 2 (`PublishMessage`, ..., `ContinueMessages`).
    MessageNames,
}

enum Running {
    Full(RunningNode),
    Filtered {
        service: NodeService,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        server: tokio::task::JoinHandle<()>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    },
}

/// A node running in this process, with `n` generated apps that may send and receive
/// every event name.
pub struct TestNode {
    /// The generated apps and configuration (owns the data directory).
    pub setup: DevSetup,
    running: Option<Running>,
    addr: SocketAddr,
    refuse: Refuse,
    /// The `user-agent` every gRPC request is seen with (`None`: as sent).
    pose_as: Option<&'static str>,
}

impl TestNode {
    /// Starts a node with `apps` apps.
    pub async fn start(apps: usize) -> Self {
        Self::start_with(apps, Refuse::Nothing, |_| {}).await
    }

    /// Starts a node with `apps` apps, refusing one generation, with `tweak` applied to
    /// the configuration.
    pub async fn start_with(
        apps: usize,
        refuse: Refuse,
        tweak: impl FnOnce(&mut NodeConfig),
    ) -> Self {
        let mut setup = DevSetup::generate(apps).expect("generate dev setup");
        store_from_env(&mut setup.config).await;
        tweak(&mut setup.config);
        let mut node = TestNode {
            setup,
            running: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            refuse,
            pose_as: None,
        };
        node.boot().await;
        node
    }

    /// Starts a node with `apps` apps that sees every gRPC request with `user_agent`
    /// instead of the client's own (so that it answers our clients in the form it
    /// answers that client, e.g. `grpc-python/1.85.3`: the bare-envelope replay).
    pub async fn start_seeing_user_agent(apps: usize, user_agent: &'static str) -> Self {
        let mut setup = DevSetup::generate(apps).expect("generate dev setup");
        store_from_env(&mut setup.config).await;
        let mut node = TestNode {
            setup,
            running: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            refuse: Refuse::Nothing,
            pose_as: Some(user_agent),
        };
        node.boot().await;
        node
    }

    async fn boot(&mut self) {
        assert!(self.running.is_none(), "node already running");
        let running = match self.refuse {
            Refuse::Nothing if self.pose_as.is_none() => {
                let node = ensync_node::Node::start(self.setup.config.clone())
                    .await
                    .expect("start node");
                self.addr = node.grpc_addr();
                // A restart binds the same WebSocket port too.
                if let Some(ws) = node.ws_addr() {
                    self.setup.config.ws_listen = Some(ws);
                }
                if let Some(admin) = node.admin_addr() {
                    self.setup.config.admin_listen = Some(admin);
                }
                Running::Full(node)
            }
            refuse => self.boot_filtered(refuse).await,
        };
        // A restart binds the same port.
        self.setup.config.grpc_listen = self.addr;
        self.running = Some(running);
    }

    async fn boot_filtered(&mut self, refuse: Refuse) -> Running {
        let config = &self.setup.config;
        let service = match config.store {
            ensync_node::config::StoreKind::Embedded => {
                let store = Arc::new(
                    ensync_node::store::RedbStore::open(&config.data_dir).expect("open store"),
                );
                NodeService::new(config, store).expect("node service")
            }
            ensync_node::config::StoreKind::Jetstream => {
                let backend = ensync_node::backend::jetstream::JetStreamBackend::connect(config)
                    .await
                    .expect("connect to JetStream");
                NodeService::with_backend(config, Arc::new(backend)).expect("node service")
            }
        };
        let tasks = service.spawn_background();
        let listener = tokio::net::TcpListener::bind(config.grpc_listen)
            .await
            .expect("bind");
        self.addr = listener.local_addr().expect("local addr");
        let inner = ensync_node::grpc::GrpcService::new(service.clone()).into_server(8 << 20);
        let svc = OneGeneration {
            inner,
            refuse,
            pose_as: self.pose_as,
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let incoming = tokio_stream_listener(listener);
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_rx.await;
                })
                .await;
        });
        Running::Filtered {
            service,
            stop: Some(stop_tx),
            server,
            tasks,
        }
    }

    /// The node's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `grpc://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("grpc://{}", self.addr)
    }

    /// Generated app `i` (0-based).
    pub fn app(&self, i: usize) -> &DevApp {
        &self.setup.apps[i]
    }

    /// The WebSocket endpoint's address, when the node serves one.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        match self.running.as_ref()? {
            Running::Full(node) => node.ws_addr(),
            Running::Filtered { .. } => None,
        }
    }

    /// The admin endpoint's address, when the node serves one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        match self.running.as_ref()? {
            Running::Full(node) => node.admin_addr(),
            Running::Filtered { .. } => None,
        }
    }

    /// The node's counters.
    pub fn stats(&self) -> NodeStats {
        match self.running.as_ref().expect("node is running") {
            Running::Full(node) => node.stats(),
            Running::Filtered { service, .. } => service.stats(),
        }
    }

    /// An engine for this node.
    pub fn engine(&self, options: EngineOptions) -> EnSyncEngine {
        EnSyncEngine::with_options(&self.url(), options).expect("engine")
    }

    /// A client connected as app `i` with its own secret key.
    pub async fn client(&self, i: usize, options: EngineOptions) -> Client {
        let app = self.app(i);
        within(
            "create_client",
            self.engine(options).create_client(
                &app.access_key,
                ClientOptions::default().app_secret_key(app.secret_key()),
            ),
        )
        .await
        .expect("create client")
    }

    /// Stops the node (its data stays).
    pub async fn stop(&mut self) {
        match self.running.take() {
            Some(Running::Full(node)) => node.shutdown().await,
            Some(Running::Filtered {
                service,
                mut stop,
                server,
                tasks,
            }) => {
                service.close().await;
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                }
                let abort = server.abort_handle();
                if tokio::time::timeout(Duration::from_secs(5), server)
                    .await
                    .is_err()
                {
                    abort.abort();
                }
                for t in tasks {
                    t.abort();
                }
            }
            None => {}
        }
    }

    /// Starts the node again on the same port and data directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.boot().await;
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(Running::Filtered {
            service,
            stop,
            server,
            tasks,
        }) = self.running.as_mut()
        {
            service.close_now();
            if let Some(stop) = stop.take() {
                let _ = stop.send(());
            }
            server.abort();
            for t in tasks {
                t.abort();
            }
        }
    }
}

fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(s, _)| s);
        Some((accepted, listener))
    })
}

/// Whether `rpc` (the last segment of the path) belongs to the refused generation.
fn refused(refuse: Refuse, rpc: &str) -> bool {
    match refuse {
        Refuse::Nothing => false,
        Refuse::EventNames => rpc.ends_with("Event") || rpc.ends_with("Events"),
        Refuse::MessageNames => rpc.ends_with("Message") || rpc.ends_with("Messages"),
    }
}

/// The node's gRPC service, optionally seen with another `user-agent`, with one
/// generation's RPCs answered `UNIMPLEMENTED`, as a
/// node of the other generation answers them.
#[derive(Clone)]
struct OneGeneration<S> {
    inner: S,
    refuse: Refuse,
    pose_as: Option<&'static str>,
}

impl<S> Service<http::Request<tonic::body::Body>> for OneGeneration<S>
where
    S: Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(ua) = self.pose_as {
            request
                .headers_mut()
                .insert(http::header::USER_AGENT, http::HeaderValue::from_static(ua));
        }
        let rpc = request.uri().path().rsplit('/').next().unwrap_or_default();
        if refused(self.refuse, rpc) {
            let status = tonic::Status::unimplemented(format!("{rpc} is not served here"));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        Box::pin(self.inner.call(request))
    }
}

impl<S: NamedService> NamedService for OneGeneration<S> {
    const NAME: &'static str = S::NAME;
}
