//! # ensync-tokio: the EnSync SDK for Rust on tokio
//!
//! End-to-end encrypted event streaming between apps over gRPC. An app publishes an
//! event to named recipients; the payload is encrypted on the publisher's machine for
//! each recipient's public key; the node stores and delivers it; only the recipient
//! can read it. Wire-compatible with the published Python, Node and Go SDKs.
//!
//! ```no_run
//! use ensync_tokio::{ClientOptions, EnSyncEngine};
//! use futures::StreamExt;
//!
//! # async fn quick_start() -> ensync_tokio::Result<()> {
//! // 1. Initialize engine and create client
//! let engine = EnSyncEngine::new("node.ensync.cloud")?;
//! let client = engine
//!     .create_client(
//!         &std::env::var("ENSYNC_APP_KEY").unwrap_or_default(),
//!         ClientOptions::default()
//!             .app_secret_key(std::env::var("ENSYNC_SECRET_KEY").unwrap_or_default()),
//!     )
//!     .await?;
//!
//! // 2. Publish an event
//! let app_id = client.public_key().to_owned(); // the receiving party's public key
//! client
//!     .publish(
//!         "orders/status/updated",
//!         &[app_id],
//!         &serde_json::json!({"order_id": "order-123", "status": "completed"}),
//!     )
//!     .await?;
//!
//! // 3. Subscribe to events
//! let mut subscription = client.subscribe("orders/status/updated").await?;
//!
//! // 4. Handle incoming events
//! if let Some(event) = subscription.next().await {
//!     println!("Received order update: {}", event.payload["order_id"]);
//! }
//!
//! // 5. Clean up
//! subscription.unsubscribe().await?;
//! client.close().await?;
//! # Ok(()) }
//! ```
//!
//! The protocol itself (authentication, heartbeats, reconnect with backoff, restoring
//! subscriptions, acknowledgements, duplicate suppression, RPC generation) lives in the
//! sans-IO core [`ensync_proto`]; this crate drives it on tokio with tonic, or over the
//! node's WebSocket endpoint with [`EnSyncWebSocketEngine`] (same [`Client`], same API).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod engine;
mod grpc;
mod ws;

pub use engine::{EnSyncEngine, EnSyncWebSocketEngine};
pub use ensync_client::{
    Client, ClientOptions, ConnectionState, EnSyncError, EngineOptions, ErrorKind, Event,
    HandlerResult, PublishOptions, Result, RpcGeneration, SubscribeOptions, Subscription,
};

/// The sans-IO core, re-exported for keys and advanced use.
pub use ensync_proto;

/// The Rust snippets of the top-level README, compiled (and the self-contained ones run)
/// as doctests, so that the README stays true to the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    /// The handles an application shares between tasks must be `Send + Sync`, and the
    /// client cheap to clone; this fails to compile otherwise.
    #[test]
    fn handles_are_thread_safe() {
        fn shared<T: Send + Sync + 'static>() {}
        fn cloneable<T: Clone>() {}
        shared::<crate::Client>();
        cloneable::<crate::Client>();
        shared::<crate::EnSyncEngine>();
        cloneable::<crate::EnSyncEngine>();
        shared::<crate::Subscription>();
        shared::<crate::Event>();
        shared::<crate::EnSyncError>();
    }
}
