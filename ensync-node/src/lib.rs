//! # ensync-node: an EnSync-compatible node
//!
//! Serves both RPC generations of the EnSync gRPC protocol (PROTOCOL.md) on one port,
//! with apps and permissions from a config file, durable per-(recipient, event name)
//! queues in an embedded transactional store ([`redb`]) with group commit (or, for
//! several nodes, in a shared NATS JetStream stream: `store = "jetstream"`), at-least-once
//! delivery with ack / defer / discard / pause / continue / replay, optional TLS. It
//! stores no app secret and never decrypts a payload.
//!
//! Layers:
//! - [`backend`]: the queue-level [`backend::Backend`] interface (what several nodes
//!   share) and its two implementations, embedded and JetStream;
//! - [`store`]: the [`store::Store`] trait and its redb implementation, under the
//!   embedded backend;
//! - [`service`]: the transport-independent core ([`service::NodeService`], one plain
//!   method per operation);
//! - [`grpc`]: the tonic service over it; [`rpc`]: the generated server and client stubs;
//! - [`limits`]: the connection caps (in total and per IP address, both endpoints) and
//!   the handshake deadline on the gRPC endpoint's sockets (the other bounds are settings
//!   of the HTTP/2 server; the node README, "Limits");
//! - [`ws`]: the WebSocket endpoint (`/message`, PROTOCOL.md section 3) over the same
//!   service, when `ws_listen` is set;
//! - [`Node`] / [`RunningNode`]: start and stop a node in-process;
//! - [`admin`]: the admin HTTP endpoint (EnSync's config-manager API, health), when
//!   `admin_listen` is set;
//! - [`registry`]: the apps (config file and run time);
//! - [`dev`]: a throw-away configuration with generated apps and keys.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ensync_node::NodeError> {
//! let dev = ensync_node::dev::DevSetup::generate(2)?;
//! let node = ensync_node::Node::start(dev.config.clone()).await?;
//! println!("serving on {}", node.grpc_addr());
//! // ... connect clients with dev.apps[0].access_key / dev.apps[0].secret_key() ...
//! node.shutdown().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod admin;
pub mod backend;
pub mod config;
pub mod dev;
pub mod grpc;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod perm;
pub mod registry;
pub mod service;
pub mod store;
pub mod ws;

/// The tonic server and client stubs of `proto/ensync.proto`, over the message types of
/// [`ensync_proto::wire`]. Build a client with `EnSyncServiceClient::new(channel)` (the
/// RPC `Connect` takes the name of tonic's usual `connect` constructor).
#[allow(missing_docs, clippy::all)]
pub mod rpc {
    include!(concat!(env!("OUT_DIR"), "/ensync.rs"));
}

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use config::{AppConfig, ConfigError, NodeConfig};
pub use service::{NodeService, NodeStats};
pub use store::StoreError;

use futures::StreamExt as _;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be used (the text names the field,
    /// `tls_cert` or `tls_key`).
    #[error("TLS: {0}")]
    Tls(String),
    /// Another IO failure.
    #[error("{0}")]
    Io(String),
}

/// Starts nodes.
#[derive(Debug)]
pub struct Node;

impl Node {
    /// Validates `config`, opens the store (`store = "embedded"`: the redb file in
    /// `config.data_dir`, loading the pending events; `store = "jetstream"`: connects to
    /// the `[jetstream]` cluster and sets up its stream and its records bucket), reads
    /// the access keys made through the admin API, binds `config.grpc_listen` (port 0
    /// picks a free port) and serves until [`RunningNode::shutdown`]. Must be called
    /// inside a tokio runtime.
    pub async fn start(config: NodeConfig) -> Result<RunningNode, NodeError> {
        config.validate()?;
        // The certificate and key, read once and checked here so that an unusable one is
        // refused naming its field (`tls_cert` / `tls_key`) before anything listens.
        let server_tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some((ws::tls_config(cert, key)?, cert, key)),
            _ => None,
        };
        let tls = match &server_tls {
            Some((_, cert, key)) => {
                let read = |p: &std::path::Path, field: &str| {
                    std::fs::read(p)
                        .map_err(|e| NodeError::Tls(format!("{field} ({}): {e}", p.display())))
                };
                Some(
                    tonic::transport::ServerTlsConfig::new()
                        .identity(tonic::transport::Identity::from_pem(
                            read(cert, "tls_cert")?,
                            read(key, "tls_key")?,
                        ))
                        .timeout(Duration::from_millis(config.handshake_timeout_ms)),
                )
            }
            None => None,
        };
        let server_tls = server_tls.map(|(tls, _, _)| tls);
        let mut builder = tonic::transport::Server::builder()
            // Larger HTTP/2 windows than the 64 KiB default, so a large event (a 64 KB
            // payload is an ~88 KB envelope) does not wait for a WINDOW_UPDATE round trip.
            .initial_stream_window_size(Some(1 << 20))
            .initial_connection_window_size(Some(4 << 20))
            .http2_keepalive_interval(Some(Duration::from_millis(config.keepalive_interval_ms)))
            .http2_keepalive_timeout(Some(Duration::from_millis(config.keepalive_interval_ms)))
            // Memory bounds (node README, "Limits"): streams per connection, requests
            // being received at a time per connection, and a deadline for each request.
            .max_concurrent_streams(Some(config.max_concurrent_streams))
            .concurrency_limit_per_connection(config.max_concurrent_requests)
            .timeout(Duration::from_millis(config.request_timeout_ms));
        if let Some(tls) = tls {
            builder = builder
                .tls_config(tls)
                .map_err(|e| NodeError::Tls(format!("{e}: {:?}", std::error::Error::source(&e))))?;
        }

        let ws_tls = server_tls.clone().filter(|_| config.ws_listen.is_some());
        // The TLS of the gRPC connections refused over the cap: they complete a TLS
        // handshake (ALPN h2, as tonic's) so they can be told why with a GOAWAY.
        let refusal_tls = server_tls.as_ref().map(|tls| {
            let mut tls = (**tls).clone();
            tls.alpn_protocols = vec![b"h2".to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(tls))
        });
        // The admin endpoint's HTTPS (HTTP/1.1), unless `admin_tls = false`.
        let admin_tls = server_tls
            .as_ref()
            .filter(|_| config.admin_uses_tls())
            .map(|tls| {
                let mut tls = (**tls).clone();
                tls.alpn_protocols = vec![b"http/1.1".to_vec()];
                Arc::new(tls)
            });

        let service = match config.store {
            config::StoreKind::Embedded => {
                let store = Arc::new(store::RedbStore::open_with(
                    &config.data_dir,
                    &store::StoreOptions::default()
                        .with_cache_bytes(config.store_cache_bytes)
                        .with_accept_rollback(config.accept_store_rollback),
                )?);
                NodeService::new(&config, store)?
            }
            config::StoreKind::Jetstream => {
                let backend = backend::jetstream::JetStreamBackend::connect(&config).await?;
                NodeService::with_backend(&config, Arc::new(backend))?
            }
        };
        if let Err(e) = service.load_admin_records().await {
            service.close().await;
            return Err(NodeError::Io(format!(
                "cannot read the access keys of the store: {e}"
            )));
        }
        let tasks = service.spawn_background();

        // tokio's listener sets SO_REUSEADDR, so a restarted node can bind the port of one
        // that was killed while clients were still connected.
        let listener = match tokio::net::TcpListener::bind(config.grpc_listen).await {
            Ok(l) => l,
            Err(source) => {
                service.close().await;
                return Err(NodeError::Bind {
                    addr: config.grpc_listen,
                    source,
                });
            }
        };
        let grpc_addr = listener
            .local_addr()
            .map_err(|e| NodeError::Io(e.to_string()))?;
        let admin = match (config.admin_listen, &config.admin_key) {
            (Some(addr), Some(key)) => {
                let options = admin::AdminOptions {
                    tls: admin_tls,
                    handshake_timeout: Duration::from_millis(config.handshake_timeout_ms),
                };
                match admin::AdminEndpoint::start_with(addr, key.clone(), options, service.clone())
                    .await
                {
                    Ok(admin) => Some(admin),
                    Err(e) => {
                        service.close().await;
                        return Err(e);
                    }
                }
            }
            _ => None,
        };
        let ws = match config.ws_listen {
            Some(addr) => {
                match ws::WsEndpoint::start(addr, &config, ws_tls, service.clone()).await {
                    Ok(ws) => Some(ws),
                    Err(e) => {
                        service.close().await;
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        let limit = limits::ConnLimit::new(config.max_connections, config.max_connections_per_ip);
        let refusals = limits::ConnLimit::new(limits::MAX_REFUSALS_IN_PROGRESS, usize::MAX);
        let handshake = Duration::from_millis(config.handshake_timeout_ms);
        let incoming =
            tokio_stream::wrappers::TcpListenerStream::new(listener).filter_map(move |s| {
                let accepted = match s {
                    Ok(tcp) => {
                        let _ = tcp.set_nodelay(true);
                        let peer = tcp.peer_addr().ok();
                        match limit.try_acquire(peer.map(|p| p.ip())) {
                            Ok(permit) => Some(Ok(limits::GuardedIo::new(tcp, handshake, permit))),
                            Err(why) => {
                                limits::log_refusal("gRPC", peer, why, &limit);
                                // Beyond the refusals in progress: closed unanswered.
                                if let Ok(slot) = refusals.try_acquire(None) {
                                    let tls = refusal_tls.clone();
                                    tokio::spawn(async move {
                                        let _slot = slot;
                                        match tls {
                                            None => limits::refuse_h2(tcp, why.text()).await,
                                            Some(tls) => {
                                                let accepted = tokio::time::timeout(
                                                    handshake,
                                                    tls.accept(tcp),
                                                )
                                                .await;
                                                if let Ok(Ok(tls)) = accepted {
                                                    limits::refuse_h2(tls, why.text()).await;
                                                }
                                            }
                                        }
                                    });
                                }
                                None
                            }
                        }
                    }
                    Err(e) => Some(Err(e)),
                };
                std::future::ready(accepted)
            });
        let max_message = config.max_grpc_message();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server = builder
            .add_service(grpc::GrpcService::new(service.clone()).into_server(max_message))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            });
        let server = tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "gRPC server failed");
            }
        });
        Ok(RunningNode {
            grpc_addr,
            ws_addr: ws.as_ref().map(|w| w.addr),
            ws,
            admin,
            tls: config.tls_cert.is_some(),
            service,
            stop: Some(stop_tx),
            server: Some(server),
            tasks,
        })
    }
}

/// A node serving in this process. Dropping it stops serving without waiting; prefer
/// [`RunningNode::shutdown`].
pub struct RunningNode {
    grpc_addr: SocketAddr,
    ws_addr: Option<SocketAddr>,
    ws: Option<ws::WsEndpoint>,
    admin: Option<admin::AdminEndpoint>,
    tls: bool,
    service: NodeService,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for RunningNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningNode")
            .field("grpc_addr", &self.grpc_addr)
            .field("ws_addr", &self.ws_addr)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl RunningNode {
    /// The bound gRPC address (the actual port when the config asked for port 0).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound WebSocket address, when `ws_listen` is set (the actual port when the
    /// config asked for port 0). Clients connect to `ws://<addr>/message` (`wss://` with TLS).
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws_addr
    }

    /// The bound admin HTTP address, when `admin_listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.addr)
    }

    /// Whether the admin endpoint serves HTTPS (see [`NodeConfig::admin_tls`]); `false`
    /// when there is none.
    pub fn admin_is_tls(&self) -> bool {
        self.admin.as_ref().is_some_and(|a| a.tls)
    }

    /// Whether the endpoint serves TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The transport-independent service (for other endpoints, e.g. WebSocket).
    pub fn service(&self) -> &NodeService {
        &self.service
    }

    /// Current counters.
    pub fn stats(&self) -> NodeStats {
        self.service.stats()
    }

    /// Stops serving: open streams end with `UNAVAILABLE` (clients reconnect), queued
    /// writes are committed, the server stops and the store is closed, so a new node can
    /// open the same data directory.
    pub async fn shutdown(mut self) {
        self.service.close().await;
        if let Some(mut ws) = self.ws.take() {
            ws.shutdown().await;
        }
        if let Some(admin) = self.admin.take() {
            admin.shutdown().await;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let abort = server.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        tracing::info!("node stopped");
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        self.service.close_now();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}
