//! # ensync-blocking: a synchronous EnSync client for scripts
//!
//! No async in the API: every call blocks until the node answered. One std thread per
//! client owns the connection and the sans-IO session (it runs `ensync-h2` on a small
//! executor, async-executor over async-io's reactor); the calling thread only waits for
//! replies. Works from a plain `fn main()` and from any thread of a thread pool (a
//! [`Client`] is `Clone + Send + Sync`); dropping the last handle closes the connection
//! and stops the thread. Do not call it from inside an async task: it would block that
//! task's executor thread.
//!
//! ```no_run
//! use ensync_blocking::{ClientOptions, Engine};
//!
//! fn main() -> ensync_blocking::Result<()> {
//!     let engine = Engine::new("grpc://localhost:50051")?;
//!     let client = engine.create_client(
//!         &std::env::var("ENSYNC_APP_KEY").unwrap_or_default(),
//!         ClientOptions::default().app_secret_key(std::env::var("ENSYNC_SECRET_KEY").unwrap_or_default()),
//!     )?;
//!     let me = client.public_key().to_owned();
//!     client.publish("orders/status/updated", &[me], &serde_json::json!({"order_id": "1"}))?;
//!     let mut subscription = client.subscribe("orders/status/updated")?;
//!     for event in subscription.by_ref().take(1) {
//!         println!("{}", event.payload["order_id"]); // acknowledged when dropped
//!     }
//!     client.close()
//! }
//! ```
//!
//! All protocol policy (reconnect with backoff, heartbeats, acks, restoring
//! subscriptions) is the core's ([`ensync_proto::session`]), exactly as in the async
//! clients.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod worker;

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use futures::StreamExt;
use futures::executor::block_on;
use serde::Serialize;

pub use ensync_h2::{
    ClientOptions, ConnectionState, EnSyncError, EngineOptions, ErrorKind, PublishOptions, Result,
    RpcGeneration, SubscribeOptions,
};
/// The sans-IO core, re-exported for keys and advanced use.
pub use ensync_proto;

use worker::Worker;

/// Where the node is and how to reach it; creates [`Client`]s. Same URL rules and
/// options as the async clients.
#[derive(Clone)]
pub struct Engine {
    core: ensync_h2::GrpcEngineCore,
}

impl Engine {
    /// An engine for the node at `url` (or the nodes, separated by commas) with default
    /// options.
    pub fn new(url: &str) -> Result<Self> {
        Self::with_options(url, EngineOptions::default())
    }

    /// An engine for the node at `url` (or the nodes, separated by commas, and those of
    /// [`EngineOptions::extra_urls`]) with `options`. The URLs are checked now; the
    /// client moves on to the next node when the current one fails.
    pub fn with_options(url: &str, options: EngineOptions) -> Result<Self> {
        let core = ensync_h2::GrpcEngineCore::new(url, options)?;
        ensync_h2::EnSyncEngine::check_reachable(&core)?;
        Ok(Engine { core })
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

    /// Starts the client's thread, connects and authenticates; blocks until done.
    ///
    /// Fails with [`ErrorKind::Auth`] when the node refuses the key and
    /// [`ErrorKind::Connection`] when it cannot be reached.
    pub fn create_client(&self, app_key: &str, options: ClientOptions) -> Result<Client> {
        let worker = Worker::start().map_err(|e| {
            EnSyncError::new(ErrorKind::Connection, "cannot start the client thread").with_source(e)
        })?;
        let engine = ensync_h2::EnSyncEngine::from_core(self.core.clone(), worker.runtime())?;
        let client = block_on(engine.create_client(app_key, options))?;
        Ok(Client {
            inner: Arc::new(Inner {
                client,
                _worker: worker,
            }),
        })
    }
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.core.fmt_as("Engine", f)
    }
}

/// What the client's handles share: dropping the last closes and stops the thread.
struct Inner {
    client: ensync_h2::Client,
    _worker: Worker,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = block_on(self.client.close());
        // `_worker` is dropped next: it stops and joins the thread.
    }
}

/// A connected, authenticated client. Cheap to clone; clones share the connection and
/// its thread, which stop when the last client and subscription are dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// This app's public key (standard base64), as the node reported it.
    pub fn public_key(&self) -> &str {
        self.inner.client.public_key()
    }

    /// The session id the node assigned at the first authentication.
    pub fn client_id(&self) -> &str {
        self.inner.client.client_id()
    }

    /// The connection's current state.
    pub fn state(&self) -> ConnectionState {
        self.inner.client.state()
    }

    /// The state now, then each change as it happens (blocking iterator; ends when the
    /// client closes for good).
    pub fn state_changes(&self) -> impl Iterator<Item = ConnectionState> + Send + use<> {
        futures::executor::block_on_stream(Box::pin(self.inner.client.state_changes()))
    }

    /// Publishes `payload` under `event_name` to each of `recipients` (public keys),
    /// encrypted for each; returns the event ids in recipient order.
    pub fn publish<P: Serialize + ?Sized>(
        &self,
        event_name: &str,
        recipients: &[impl AsRef<str>],
        payload: &P,
    ) -> Result<Vec<String>> {
        block_on(self.inner.client.publish(event_name, recipients, payload))
    }

    /// [`publish`](Client::publish) with unencrypted metadata (a JSON object).
    pub fn publish_with_metadata<P: Serialize + ?Sized, M: Serialize + ?Sized>(
        &self,
        event_name: &str,
        recipients: &[impl AsRef<str>],
        payload: &P,
        metadata: &M,
    ) -> Result<Vec<String>> {
        block_on(
            self.inner
                .client
                .publish_with_metadata(event_name, recipients, payload, metadata),
        )
    }

    /// [`publish`](Client::publish) with [`PublishOptions`] (metadata, hybrid encryption).
    pub fn publish_with<P: Serialize + ?Sized>(
        &self,
        event_name: &str,
        recipients: &[impl AsRef<str>],
        payload: &P,
        options: PublishOptions,
    ) -> Result<Vec<String>> {
        block_on(
            self.inner
                .client
                .publish_with(event_name, recipients, payload, options),
        )
    }

    /// Subscribes to `event_name` (auto-ack, the client's key).
    pub fn subscribe(&self, event_name: &str) -> Result<Subscription> {
        self.subscribe_with(event_name, SubscribeOptions::default())
    }

    /// Subscribes to `event_name` with [`SubscribeOptions`].
    pub fn subscribe_with(
        &self,
        event_name: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        let inner = block_on(self.inner.client.subscribe_with(event_name, options))?;
        Ok(Subscription {
            inner,
            _client: self.inner.clone(),
        })
    }

    /// Closes the connection; calls still waiting fail with [`ErrorKind::Closed`].
    /// Automatic acknowledgements under way (events dropped just before) are given up
    /// to 2 s to reach the node first, as in the async clients. The thread stops when
    /// the last handle is dropped.
    pub fn close(&self) -> Result<()> {
        block_on(self.inner.client.close())
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner.client, f)
    }
}

/// A subscription: an [`Iterator`] of decrypted [`Event`]s that blocks for the next one
/// (it ends when the subscription or client ends), plus
/// [`recv_timeout`](Subscription::recv_timeout) and the seed README's controls.
pub struct Subscription {
    inner: ensync_h2::Subscription,
    _client: Arc<Inner>,
}

impl Subscription {
    /// The subscribed event name.
    pub fn event_name(&self) -> &str {
        self.inner.event_name()
    }

    /// Waits for the next event; `None` once the subscription ended.
    pub fn recv(&mut self) -> Option<Event> {
        block_on(self.inner.next()).map(Event)
    }

    /// Waits up to `timeout` for the next event.
    pub fn recv_timeout(
        &mut self,
        timeout: Duration,
    ) -> std::result::Result<Event, RecvTimeoutError> {
        let timer = async_io::Timer::after(timeout);
        match block_on(futures::future::select(self.inner.next(), timer)) {
            futures::future::Either::Left((Some(event), _)) => Ok(Event(event)),
            futures::future::Either::Left((None, _)) => Err(RecvTimeoutError::Disconnected),
            futures::future::Either::Right(_) => Err(RecvTimeoutError::Timeout),
        }
    }

    /// Acknowledges the event `idem` at `block` (for `auto_ack(false)` subscriptions).
    pub fn ack(&self, idem: &str, block: i64) -> Result<()> {
        block_on(self.inner.ack(idem, block))
    }

    /// Defers the event `idem` by `delay` (1 s ..= 24 h); returns the planned delivery
    /// time in epoch milliseconds.
    pub fn defer(&self, idem: &str, delay: Duration, reason: &str) -> Result<i64> {
        block_on(self.inner.defer(idem, delay, reason))
    }

    /// Discards the event `idem`: it is never delivered again.
    pub fn discard(&self, idem: &str, reason: &str) -> Result<()> {
        block_on(self.inner.discard(idem, reason))
    }

    /// Fetches a stored event by id and returns its decrypted payload.
    pub fn replay(&self, idem: &str) -> Result<serde_json::Value> {
        block_on(self.inner.replay(idem))
    }

    /// Pauses delivery of this event name.
    pub fn pause(&self, reason: &str) -> Result<()> {
        block_on(self.inner.pause(reason))
    }

    /// Resumes delivery after [`pause`](Subscription::pause).
    pub fn resume(&self) -> Result<()> {
        block_on(self.inner.resume())
    }

    /// Unsubscribes.
    pub fn unsubscribe(self) -> Result<()> {
        block_on(self.inner.unsubscribe())
    }
}

impl Iterator for Subscription {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        self.recv()
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

/// A decrypted event. Its fields (`idem`, `event_name`, `block`, `payload`, `sender`,
/// `metadata`, ...) are those of [`ensync_h2::Event`], reached through `Deref`. On an
/// auto-ack subscription it is acknowledged when dropped (not while panicking).
pub struct Event(ensync_h2::Event);

impl Deref for Event {
    type Target = ensync_h2::Event;

    fn deref(&self) -> &ensync_h2::Event {
        &self.0
    }
}

impl Event {
    /// Acknowledges the event.
    pub fn ack(self) -> Result<()> {
        block_on(self.0.ack())
    }

    /// Defers the event by `delay` (1 s ..= 24 h); returns the planned delivery time.
    pub fn defer(self, delay: Duration, reason: &str) -> Result<i64> {
        block_on(self.0.defer(delay, reason))
    }

    /// Discards the event.
    pub fn discard(self, reason: &str) -> Result<()> {
        block_on(self.0.discard(reason))
    }

    /// Marks the handling as failed: not acknowledged, delivered again shortly.
    pub fn fail(self) {
        self.0.fail()
    }

    /// The underlying async event.
    pub fn into_inner(self) -> ensync_h2::Event {
        self.0
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}
