//! The engine: where the node is and how to reach it.

use std::fmt;

use ensync_proto::url;

#[cfg(doc)]
use ensync_client::ErrorKind;
use ensync_client::driver;
use ensync_client::{Client, ClientOptions, EngineOptions, Executor, GrpcEngineCore, Result};

use crate::grpc::GrpcTransport;
use crate::ws::WsTransport;

/// The gRPC engine (the seed README's `EnSyncEngine`): knows the node's address and the
/// connection options, and creates authenticated [`Client`]s.
///
/// URL rules: `grpcs://host[:port]` is TLS (default port 443), `grpc://host[:port]` is
/// plaintext (default port 50051); without a scheme `localhost`/`127.0.0.1` mean
/// plaintext on 50051 and any other host TLS on 443; an explicit port always wins.
///
/// Several nodes: give several URLs separated by commas
/// (`"grpc://node-a:50051,grpc://node-b:50051"`) or add them with
/// [`EngineOptions::extra_urls`]; the client moves on to the next node when the current
/// one fails (all gRPC, all TLS or all plaintext).
///
/// ```no_run
/// use ensync_tokio::{ClientOptions, EnSyncEngine};
///
/// # async fn f() -> ensync_tokio::Result<()> {
/// let engine = EnSyncEngine::new("node.ensync.cloud")?; // TLS on 443
/// let client = engine
///     .create_client(
///         &std::env::var("ENSYNC_APP_KEY").unwrap_or_default(),
///         ClientOptions::default().app_secret_key(std::env::var("ENSYNC_SECRET_KEY").unwrap_or_default()),
///     )
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EnSyncEngine {
    core: GrpcEngineCore,
}

impl EnSyncEngine {
    /// An engine for the node at `url` (or the nodes, separated by commas) with default
    /// options.
    pub fn new(url: &str) -> Result<Self> {
        Self::with_options(url, EngineOptions::default())
    }

    /// An engine for the node at `url` (or the nodes, separated by commas, and those of
    /// [`EngineOptions::extra_urls`]) with `options`.
    pub fn with_options(url: &str, options: EngineOptions) -> Result<Self> {
        Ok(EnSyncEngine {
            core: GrpcEngineCore::new(url, options)?,
        })
    }

    /// Whether connections use TLS.
    pub fn uses_tls(&self) -> bool {
        self.core.uses_tls()
    }

    /// The (first) node's `host:port`.
    pub fn authority(&self) -> String {
        self.core.authority()
    }

    /// Every node's `host:port`, in the order they are tried.
    pub fn authorities(&self) -> Vec<String> {
        self.core.authorities()
    }

    /// The engine's options.
    pub fn options(&self) -> &EngineOptions {
        self.core.options()
    }

    /// Connects, authenticates with the app's access key, and returns the client.
    ///
    /// Fails with [`ErrorKind::Auth`] (and the node's reason) when the node refuses the
    /// key, [`ErrorKind::Connection`] when the node cannot be reached, and
    /// [`ErrorKind::Validation`] for a malformed secret key.
    pub async fn create_client(&self, app_key: &str, options: ClientOptions) -> Result<Client> {
        let transport = GrpcTransport::new(self.core.endpoints(), self.core.options())?;
        driver::start(executor(), transport, app_key, options, self.core.options()).await
    }
}

impl fmt::Debug for EnSyncEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.core.fmt_as("EnSyncEngine", f)
    }
}

/// The WebSocket engine (the seed README's `EnSyncWebSocketEngine`): the same
/// [`Client`] as [`EnSyncEngine`], over the node's WebSocket endpoint (`/message`,
/// text frames) instead of gRPC. Reconnects, resubscribes, acks and everything else
/// behave the same; events also carry the node's log time ([`Event::timestamp`](crate::Event)).
///
/// URL rules: `wss://host[:port]` (or `https://`) is TLS, default port 443;
/// `ws://host[:port]` (or `http://`) is plaintext, default port 80; without a scheme
/// `localhost`/`127.0.0.1` mean `ws://…:8082` and any other host `wss://…:443`; an
/// explicit port always wins; the path is `/message` unless the URL gives one. Several
/// nodes: as for [`EnSyncEngine`] (all WebSocket URLs, all TLS or all plaintext).
///
/// Keep-alive: the node sends `PING`, answered with `PONG`; the client also sends a
/// WebSocket ping every [`EngineOptions::heartbeat_interval`] and treats a node silent
/// for two intervals as lost.
///
/// ```no_run
/// use ensync_tokio::{ClientOptions, EnSyncWebSocketEngine};
///
/// # async fn f() -> ensync_tokio::Result<()> {
/// let engine = EnSyncWebSocketEngine::new("wss://node.ensync.cloud")?;
/// let client = engine
///     .create_client(
///         &std::env::var("ENSYNC_APP_KEY").unwrap_or_default(),
///         ClientOptions::default().app_secret_key(std::env::var("ENSYNC_SECRET_KEY").unwrap_or_default()),
///     )
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EnSyncWebSocketEngine {
    /// Never empty; all with the same TLS setting.
    endpoints: Vec<url::WsEndpoint>,
    options: EngineOptions,
}

impl EnSyncWebSocketEngine {
    /// An engine for the node's WebSocket endpoint at `url` (or the nodes', separated by
    /// commas) with default options.
    pub fn new(url: &str) -> Result<Self> {
        Self::with_options(url, EngineOptions::default())
    }

    /// An engine for the node's WebSocket endpoint at `url` (or the nodes', separated by
    /// commas, and those of [`EngineOptions::extra_urls`]) with `options`.
    pub fn with_options(url: &str, options: EngineOptions) -> Result<Self> {
        let endpoints = driver::ws_endpoints(url, &options)?;
        Ok(EnSyncWebSocketEngine { endpoints, options })
    }

    /// Whether connections use TLS (`wss://`).
    pub fn uses_tls(&self) -> bool {
        self.endpoints[0].tls
    }

    /// The URL connections are made to (the first node's), e.g.
    /// `ws://localhost:8082/message`.
    pub fn url(&self) -> String {
        self.endpoints[0].url()
    }

    /// Every node's URL, in the order they are tried.
    pub fn urls(&self) -> Vec<String> {
        self.endpoints.iter().map(url::WsEndpoint::url).collect()
    }

    /// The engine's options.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Connects, authenticates with the app's access key (`CONN`), and returns the client.
    ///
    /// Fails like [`EnSyncEngine::create_client`]: [`ErrorKind::Auth`] when the node
    /// refuses the key, [`ErrorKind::Connection`] when it cannot be reached,
    /// [`ErrorKind::Validation`] for a malformed secret key or TLS setting.
    pub async fn create_client(&self, app_key: &str, options: ClientOptions) -> Result<Client> {
        let transport = WsTransport::new(&self.endpoints, &self.options)?;
        driver::start(executor(), transport, app_key, options, &self.options).await
    }
}

impl fmt::Debug for EnSyncWebSocketEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnSyncWebSocketEngine")
            .field("urls", &self.urls())
            .field("options", &self.options)
            .finish()
    }
}

/// The tokio executor: tasks on the current runtime, tokio's timer.
fn executor() -> Executor {
    Executor::new(
        |task| {
            tokio::spawn(task);
        },
        tokio::time::sleep,
    )
}
