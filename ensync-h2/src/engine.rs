//! The engine: where the node is and how to reach it.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;

use ensync_client::driver::{self, EventStream, Transport};
use ensync_client::{Client, ClientOptions, EngineOptions, GrpcEngineCore, Result};
use ensync_proto::session::{Call, Reply, RpcError};
use futures::future::{BoxFuture, Either};
use futures::{FutureExt, StreamExt};

use crate::grpc::{self, Conn};
use crate::runtime::{BoxIo, Runtime};

/// Where and how to open connections to the node.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) authority: String,
    pub(crate) connect_timeout: Duration,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::Tls>,
}

impl Target {
    /// Opens a connection with the runtime's connector, layers TLS if configured, and
    /// performs the HTTP/2 handshake.
    pub(crate) async fn open(
        &self,
        runtime: &Runtime,
    ) -> std::result::Result<(Conn, h2::client::Connection<BoxIo, Bytes>), String> {
        let io = runtime
            .connect(self.authority.clone())
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.authority))?;
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            let io = tls.wrap(io).await?;
            return grpc::handshake(io, true, &self.authority).await;
        }
        grpc::handshake(io, false, &self.authority).await
    }
}

/// The h2 [`Transport`]: connections opened by the caller's [`Runtime`] to the engine's
/// nodes (in the engine's order).
struct H2Transport {
    runtime: Runtime,
    targets: Vec<Target>,
}

/// An open connection: the request handle, and the HTTP/2 connection itself until the
/// driver starts driving it (in [`Transport::closed`]).
#[derive(Clone)]
struct H2Conn {
    conn: Conn,
    connection: Arc<Mutex<Option<h2::client::Connection<BoxIo, Bytes>>>>,
}

impl Transport for H2Transport {
    type Conn = H2Conn;

    fn endpoints(&self) -> usize {
        self.targets.len()
    }

    fn connect(&self, endpoint: usize) -> BoxFuture<'static, std::result::Result<H2Conn, String>> {
        let Some(target) = self.targets.get(endpoint).cloned() else {
            return futures::future::ready(Err(format!("no node endpoint {endpoint}"))).boxed();
        };
        let runtime = self.runtime.clone();
        async move {
            let timeout = runtime.executor().sleep(target.connect_timeout);
            let opening = std::pin::pin!(target.open(&runtime));
            match futures::future::select(opening, timeout).await {
                Either::Left((Ok((conn, connection)), _)) => Ok(H2Conn {
                    conn,
                    connection: Arc::new(Mutex::new(Some(connection))),
                }),
                Either::Left((Err(reason), _)) => Err(reason),
                Either::Right(_) => Err(format!("connecting to {} timed out", target.authority)),
            }
        }
        .boxed()
    }

    fn unary(
        &self,
        conn: &H2Conn,
        call: Call,
    ) -> BoxFuture<'static, std::result::Result<Reply, RpcError>> {
        grpc::unary(conn.conn.clone(), call).boxed()
    }

    fn subscribe(
        &self,
        conn: &H2Conn,
        call: Call,
    ) -> BoxFuture<'static, std::result::Result<EventStream, RpcError>> {
        let conn = conn.conn.clone();
        async move {
            let response = grpc::start(&conn, &call).await?;
            // Reads one message per poll: the driver takes a buffer slot before each
            // read, so a slow consumer stops the reading and flow control pushes back.
            let stream = futures::stream::unfold(Some(response), |response| async move {
                let mut response = response?;
                let item = match response.next_message().await {
                    Ok(Some(bytes)) => grpc::stream_item(&bytes),
                    Ok(None) => return response.finish().await.err().map(|e| (Err(e), None)),
                    Err(e) => Err(e),
                };
                match item {
                    Ok(event) => Some((Ok((event, None)), Some(response))),
                    Err(e) => Some((Err(e), None)),
                }
            });
            Ok(stream.boxed())
        }
        .boxed()
    }

    /// Drives the HTTP/2 connection until it closes.
    fn closed(&self, conn: &H2Conn) -> BoxFuture<'static, String> {
        let connection = conn
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        async move {
            let Some(connection) = connection else {
                return futures::future::pending().await;
            };
            match connection.await {
                Ok(()) => "the node closed the connection".to_owned(),
                Err(e) => format!("connection lost: {e}"),
            }
        }
        .boxed()
    }
}

/// The gRPC engine (the seed README's `EnSyncEngine`): knows the node's address, the
/// connection options and the caller's [`Runtime`], and creates authenticated
/// [`Client`]s.
///
/// URL rules: `grpcs://host[:port]` is TLS (default port 443), `grpc://host[:port]` is
/// plaintext (default port 50051); without a scheme `localhost`/`127.0.0.1` mean
/// plaintext on 50051 and any other host TLS on 443; an explicit port always wins.
/// Several nodes: several URLs separated by commas, or
/// [`EngineOptions::extra_urls`]; the client moves on to the next node when the current
/// one fails (all TLS or all plaintext).
///
/// ```no_run
/// use ensync_h2::{ClientOptions, EnSyncEngine, Runtime};
///
/// # async fn f(runtime: Runtime) -> ensync_h2::Result<()> {
/// let engine = EnSyncEngine::new("grpc://localhost:50051", runtime)?;
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
    runtime: Runtime,
}

impl EnSyncEngine {
    /// An engine for the node at `url` (or the nodes, separated by commas) with default
    /// options, on `runtime`.
    pub fn new(url: &str, runtime: Runtime) -> Result<Self> {
        Self::with_options(url, EngineOptions::default(), runtime)
    }

    /// An engine for the node at `url` (or the nodes, separated by commas, and those of
    /// [`EngineOptions::extra_urls`]) with `options`, on `runtime`.
    ///
    /// A TLS URL needs the `tls` feature; without it this fails with
    /// [`ErrorKind::Validation`](crate::ErrorKind::Validation) (use `grpc://` or [`EngineOptions::disable_tls`]).
    pub fn with_options(url: &str, options: EngineOptions, runtime: Runtime) -> Result<Self> {
        Self::from_core(GrpcEngineCore::new(url, options)?, runtime)
    }

    /// An engine for an endpoint already checked by the URL rules, on `runtime`
    /// (fails like [`EnSyncEngine::with_options`] for TLS without the `tls` feature).
    pub fn from_core(core: GrpcEngineCore, runtime: Runtime) -> Result<Self> {
        Self::check_reachable(&core)?;
        Ok(EnSyncEngine { core, runtime })
    }

    /// Whether this build of ensync-h2 can reach `core`'s endpoint: a TLS endpoint needs
    /// the `tls` feature ([`ErrorKind::Validation`](crate::ErrorKind::Validation) otherwise).
    pub fn check_reachable(core: &GrpcEngineCore) -> Result<()> {
        #[cfg(not(feature = "tls"))]
        if core.uses_tls() {
            return Err(ensync_client::EnSyncError::new(
                ensync_client::ErrorKind::Validation,
                format!(
                    "{} needs TLS: build ensync-h2 with the `tls` feature, or use grpc://",
                    core.authority()
                ),
            ));
        }
        #[cfg(feature = "tls")]
        let _ = core;
        Ok(())
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
    /// Fails with [`ErrorKind::Auth`](crate::ErrorKind::Auth) (and the node's reason) when the node refuses the
    /// key, [`ErrorKind::Connection`](crate::ErrorKind::Connection) when the node cannot be reached, and
    /// [`ErrorKind::Validation`](crate::ErrorKind::Validation) for a malformed secret key.
    pub async fn create_client(&self, app_key: &str, options: ClientOptions) -> Result<Client> {
        let mut targets = Vec::with_capacity(self.core.endpoints().len());
        for endpoint in self.core.endpoints() {
            targets.push(Target {
                authority: endpoint.authority(),
                connect_timeout: self.core.options().connect_timeout,
                #[cfg(feature = "tls")]
                tls: if endpoint.tls {
                    Some(crate::tls::Tls::new(endpoint, self.core.options())?)
                } else {
                    None
                },
            });
        }
        let transport = H2Transport {
            runtime: self.runtime.clone(),
            targets,
        };
        driver::start(
            self.runtime.executor().clone(),
            transport,
            app_key,
            options,
            self.core.options(),
        )
        .await
    }
}

impl fmt::Debug for EnSyncEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.core.fmt_as("EnSyncEngine", f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ensync_client::ErrorKind;

    fn runtime() -> Runtime {
        Runtime::new(
            |_task| {},
            |_delay| futures::future::ready(()),
            |_authority| futures::future::ready(Err::<BoxIo, _>(std::io::Error::other("none"))),
        )
    }

    #[test]
    fn url_rules() {
        let engine = EnSyncEngine::new("grpc://localhost:1234", runtime()).unwrap();
        assert_eq!(engine.authority(), "localhost:1234");
        assert!(!engine.uses_tls());
        let error = EnSyncEngine::new("ftp://x", runtime()).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Validation);
        let plain = EngineOptions::default().disable_tls(true);
        let engine = EnSyncEngine::with_options("grpcs://node.example", plain, runtime()).unwrap();
        assert!(!engine.uses_tls());
    }

    #[test]
    fn several_urls_in_order_one_transport() {
        let options = EngineOptions::default().extra_urls(["grpc://c:3"]);
        let engine =
            EnSyncEngine::with_options("grpc://a:1, grpc://b:2", options, runtime()).unwrap();
        assert_eq!(engine.authorities(), ["a:1", "b:2", "c:3"]);
        assert_eq!(engine.authority(), "a:1");
        let mixed = EnSyncEngine::new("grpc://a:1,wss://b", runtime()).unwrap_err();
        assert_eq!(mixed.kind(), ErrorKind::Validation);
        assert!(mixed.to_string().contains("\"wss://b\""), "{mixed}");
        let tls = EnSyncEngine::new("grpc://a:1,grpcs://b", runtime()).unwrap_err();
        assert_eq!(tls.kind(), ErrorKind::Validation);
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn tls_needs_the_feature() {
        let error = EnSyncEngine::new("grpcs://node.example", runtime()).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Validation);
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_with_the_feature() {
        let engine = EnSyncEngine::new("grpcs://node.example", runtime()).unwrap();
        assert!(engine.uses_tls());
    }
}
