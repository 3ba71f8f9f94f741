//! # ensync-h2: EnSync on any executor
//!
//! The EnSync client (end-to-end encrypted event streaming over gRPC) spoken over the
//! [`h2`] crate directly: no tonic, tower or hyper, and no runtime assumed. The caller
//! provides a [`Runtime`]: a spawner, a timer and a connector returning any connection
//! with tokio's `AsyncRead + AsyncWrite` (the traits `h2` uses; wrap async-std or smol
//! streams with `tokio_util::compat`). The `tokio` crate is linked for those two traits
//! only; no tokio runtime is started.
//!
//! The public API matches `ensync-tokio`'s: [`EnSyncEngine`] creates an authenticated
//! [`Client`] that publishes (with metadata, hybrid encryption), subscribes
//! ([`Subscription`] is a `Stream` of decrypted [`Event`]s with ack / defer / discard /
//! replay / pause / resume / unsubscribe), exposes its [`ConnectionState`], and closes.
//! Everything protocol (authentication, heartbeats, reconnect with backoff, restoring
//! subscriptions, acknowledgements, RPC generation) is the sans-IO core's,
//! [`ensync_proto::session`]; this crate only drives it.
//!
//! On async-std:
//!
//! ```no_run
//! use futures::StreamExt;
//! use tokio_util::compat::FuturesAsyncReadCompatExt;
//!
//! # async fn quick_start(app_key: &str, secret: &str) -> ensync_h2::Result<()> {
//! let runtime = ensync_h2::Runtime::new(
//!     |task| {
//!         async_std::task::spawn(task);
//!     },
//!     async_std::task::sleep,
//!     |authority: String| async move {
//!         Ok(async_std::net::TcpStream::connect(authority).await?.compat())
//!     },
//! );
//! let engine = ensync_h2::EnSyncEngine::new("grpc://localhost:50051", runtime)?;
//! let client = engine
//!     .create_client(app_key, ensync_h2::ClientOptions::default().app_secret_key(secret))
//!     .await?;
//! let me = client.public_key().to_owned();
//! let order = serde_json::json!({"order_id": "1"});
//! client.publish("orders/status/updated", &[me], &order).await?;
//! let mut subscription = client.subscribe("orders/status/updated").await?;
//! if let Some(event) = subscription.next().await {
//!     println!("{}", event.payload["order_id"]);
//! }
//! client.close().await?;
//! # Ok(()) }
//! ```
//!
//! TLS (rustls, web PKI roots, ALPN `h2`) is behind the `tls` feature.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod engine;
mod grpc;
mod runtime;
#[cfg(feature = "tls")]
mod tls;

pub use engine::EnSyncEngine;
pub use ensync_client::{
    Client, ClientOptions, ConnectionState, EnSyncError, EngineOptions, ErrorKind, Event,
    GrpcEngineCore, HandlerResult, PublishOptions, Result, RpcGeneration, SubscribeOptions,
    Subscription,
};
pub use runtime::{BoxIo, Connect, Io, Runtime, Sleep, Spawn};

/// The sans-IO core, re-exported for keys and advanced use.
pub use ensync_proto;
