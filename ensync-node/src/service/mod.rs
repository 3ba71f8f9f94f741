//! The node's core, independent of any transport: apps and permissions, sessions and
//! what is per session (subscriptions, delivery windows, pause, which session holds which
//! event, which stream an event goes out on), over a [`Backend`] that keeps the shared
//! queue state (queues, durable storage, defer timers, replay, retention).
//!
//! [`NodeService`] has one plain method per protocol operation; the gRPC service
//! (`crate::grpc`) and the WebSocket endpoint (`crate::ws`) call them.
//! Application errors are [`ServiceError`]s whose `Display` text is the reason sent to the
//! client (`success = false` plus the text).
//!
//! Files: this one holds the public types and the operations; `state` the per-session
//! tables; `delivery` the delivery task of each subscription, the stream it feeds and
//! session expiry.
//!
//! Delivery: every subscription has a task that claims events from the backend's queue
//! (recipient app, event name) while fewer than `max_in_flight` of its events are
//! unsettled and sends them on a bounded channel; so a slow subscriber only ever holds
//! `max_in_flight` events in memory and the backlog stays in the backend. Several
//! subscriptions on one queue compete for its events. An event in flight goes back to its
//! queue when the stream it was sent on closes, when its session ends, or when its
//! subscription is dropped by `unsubscribe`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ensync_proto::clients::{ClientKind, Delivery};
use ensync_proto::validate;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::backend::embedded::EmbeddedBackend;
use crate::backend::{Backend, QueueKey};
use crate::config::NodeConfig;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::{NewEvent, Store, StoreError, StoredEvent};

mod admin;
mod delivery;
mod state;

pub use admin::{AccessKeyInfo, AdminError, EventDefinition};
pub use delivery::EventStream;
use state::{Session, State, Sub, touch};

/// Why an operation was refused. The `Display` text is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The `client_id` is not a live session.
    #[error("not authenticated")]
    NotAuthenticated,
    /// `Connect` with an unknown access key.
    #[error("invalid access key")]
    InvalidAccessKey,
    /// Malformed input (event name, payload, metadata, delay, size).
    #[error("{0}")]
    Invalid(String),
    /// The app lacks the `send` or `receive` permission for the name.
    #[error("{0}")]
    Forbidden(String),
    /// `delivery_to` is not the public key of a configured app.
    #[error("unknown recipient {0:?}")]
    UnknownRecipient(String),
    /// Ack, defer or discard of an event that is not in flight to this session.
    #[error("{0}")]
    NotInFlight(String),
    /// Replay of an event this app does not have (or no longer has).
    #[error("{0}")]
    NotFound(String),
    /// The store failed; nothing was changed.
    #[error("{0}")]
    Storage(String),
    /// The node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
}

impl ServiceError {
    /// A short label for metrics (`refused_requests{reason=...}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotAuthenticated => "not_authenticated",
            Self::InvalidAccessKey => "invalid_access_key",
            Self::Invalid(_) => "invalid",
            Self::Forbidden(_) => "forbidden",
            Self::UnknownRecipient(_) => "unknown_recipient",
            Self::NotInFlight(_) => "not_in_flight",
            Self::NotFound(_) => "not_found",
            Self::Storage(_) => "storage",
            Self::ShuttingDown => "shutting_down",
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Closed => ServiceError::ShuttingDown,
            other => ServiceError::Storage(other.to_string()),
        }
    }
}

/// The answer to a successful `Connect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    /// The session id (`client_id`): 128 random bits, hex.
    pub client_id: String,
    /// The app's public key, standard base64 (`client_hash`).
    pub client_hash: String,
    /// The app's configured name.
    pub app_name: String,
    /// Settings a client may want to know (`heartbeat_interval_ms`, `multiplex`).
    pub server_config: HashMap<String, String>,
}

/// A publish request, as the wire carries it.
#[derive(Debug, Clone, Default)]
pub struct PublishRequest {
    /// Session id.
    pub client_id: String,
    /// Event name.
    pub event_name: String,
    /// Standard base64 of the encrypted envelope.
    pub payload: String,
    /// The recipient app's public key (standard base64).
    pub delivery_to: String,
    /// JSON object text; empty means `{}`.
    pub metadata: String,
    /// The publisher's payload metadata JSON, if sent.
    pub payload_metadata: Option<String>,
}

/// One event as delivered on a subscription stream or returned by replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredEvent {
    /// Its id (`event_idem`).
    pub idem: String,
    /// Its name.
    pub name: String,
    /// Its `partition_block` (from 1).
    pub block: u64,
    /// The encrypted payload envelope (base64 text).
    pub payload: String,
    /// Metadata JSON object text.
    pub metadata: String,
    /// The publisher's public key (base64).
    pub sender: String,
    /// When the node accepted it, epoch ms.
    pub published_ms: u64,
}

impl From<StoredEvent> for DeliveredEvent {
    fn from(stored: StoredEvent) -> Self {
        let ev = stored.event;
        DeliveredEvent {
            idem: ev.id,
            name: ev.name,
            block: stored.block,
            payload: ev.payload,
            metadata: ev.metadata,
            sender: ev.sender,
            published_ms: ev.published_ms,
        }
    }
}

/// Why a subscription stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamEnd {
    /// The client unsubscribed (a normal end).
    Unsubscribed,
    /// The same session subscribed to the same name again (a normal end).
    Replaced,
    /// The session ended (missed heartbeats); clients should reconnect.
    SessionEnded,
    /// The node is shutting down; clients should reconnect.
    ShuttingDown,
    /// The node could not go on delivering on this stream (its store failed, or its
    /// delivery task did); clients should reconnect. Its events go back to the queue,
    /// except records that could not be read, which are held back (logged).
    DeliveryFailed,
}

impl StreamEnd {
    /// Whether the stream should end with an error status (reconnect) rather than normally.
    pub fn is_error(self) -> bool {
        matches!(
            self,
            Self::SessionEnded | Self::ShuttingDown | Self::DeliveryFailed
        )
    }
}

impl std::fmt::Display for StreamEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Unsubscribed => "unsubscribed",
            Self::Replaced => "subscribed again on this session",
            Self::SessionEnded => "session ended",
            Self::ShuttingDown => "node is shutting down",
            Self::DeliveryFailed => "the node failed to deliver on this stream; reconnect",
        })
    }
}

/// Counters for monitoring and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStats {
    /// Live sessions.
    pub sessions: usize,
    /// Open subscriptions.
    pub subscriptions: usize,
    /// Events handed out and not yet acknowledged, deferred or discarded.
    pub in_flight: usize,
    /// Events waiting in queues, ready for delivery.
    pub ready: usize,
    /// Deferred events waiting for their time.
    pub deferred: usize,
    /// Store transactions committed by the writer since the node started.
    pub commits: u64,
    /// Write operations (publishes, acks, defers, ...) in those transactions; divided by
    /// `commits`, the mean group-commit batch.
    pub committed_ops: u64,
}

/// Settings of the service taken from [`NodeConfig`].
#[derive(Debug, Clone)]
struct Settings {
    heartbeat_interval_ms: u64,
    session_timeout: Duration,
    /// `Some`: the configured delivery for every session; `None`: by client kind.
    multiplex: Option<bool>,
    max_payload: usize,
    max_metadata: usize,
    window: usize,
    retention_ms: u64,
    /// Most queues shown by the per-queue gauges; 0: none.
    metrics_queue_limit: usize,
}

pub(crate) struct Inner {
    settings: Settings,
    /// Lock order: `state` before `apps` when both are held.
    apps: RwLock<Registry>,
    state: Mutex<State>,
    backend: Arc<dyn Backend>,
    /// Event definitions of the admin API.
    events: Mutex<Vec<EventDefinition>>,
    /// Serializes administrative changes (made here or reported by the backend's
    /// watch); holds the revision of the last change applied to each record.
    admin: tokio::sync::Mutex<HashMap<String, crate::backend::Revision>>,
    metrics: Arc<Metrics>,
}

/// The node's operations, callable from any transport. Cheap to clone.
///
/// Methods that start delivery ([`NodeService::subscribe`]) must be called inside a tokio
/// runtime.
#[derive(Clone)]
pub struct NodeService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NodeService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeService").finish_non_exhaustive()
    }
}

/// Current wall-clock time in epoch ms.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether `text` decodes as standard base64 (with padding), without keeping the bytes:
/// they are decoded into a buffer per thread that is reused (a publish's payload is
/// checked on every publish; the store decodes it again when it packs the record).
fn is_standard_base64(text: &str) -> bool {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        buf.resize(base64::decoded_len_estimate(text.len()), 0);
        let ok = STANDARD.decode_slice(text.as_bytes(), &mut buf[..]).is_ok();
        // Bounded: a buffer kept for a huge payload is given back.
        if buf.capacity() > 1 << 20 {
            *buf = Vec::new();
        }
        ok
    })
}

/// 128 random bits as 32 hex characters.
pub(crate) fn random_id() -> String {
    use rand_core::RngCore as _;
    let mut bytes = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A new event id: 32 hex digits, 128 bits: 8 bytes of a process-wide counter that
/// starts at the start time (epoch ms << 16), then 8 random bytes. Ids published later
/// sort later, so the store appends new records at the end of its id index instead of
/// rewriting pages all over it (random ids cost several times the disk writes per commit);
/// the random half keeps them unique across restarts and nodes.
///
/// The random bytes come from a ChaCha12 generator per thread, seeded once from the OS:
/// one `getrandom` syscall per publish was ~1 % of the node's CPU under load.
pub(crate) fn event_id() -> String {
    use rand_chacha::rand_core::{RngCore as _, SeedableRng as _};
    static NEXT: std::sync::OnceLock<AtomicU64> = std::sync::OnceLock::new();
    thread_local! {
        static RNG: std::cell::RefCell<rand_chacha::ChaCha12Rng> =
            std::cell::RefCell::new(rand_chacha::ChaCha12Rng::from_entropy());
    }
    let next = NEXT.get_or_init(|| AtomicU64::new(now_ms() << 16));
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&next.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    RNG.with(|rng| rng.borrow_mut().fill_bytes(&mut bytes[8..]));
    hex::encode(bytes)
}

impl NodeService {
    /// Builds the service over an opened store with the embedded backend
    /// ([`EmbeddedBackend`]): loads the pending events into their queues and starts the
    /// writer thread. Call [`NodeService::spawn_background`] inside a tokio runtime to
    /// run session expiry, defer timers and the retention purge.
    pub fn new(config: &NodeConfig, store: Arc<dyn Store>) -> Result<Self, crate::NodeError> {
        config.validate()?;
        let metrics = Arc::new(Metrics::default());
        let backend = EmbeddedBackend::open_with_metrics(
            store,
            config.group_commit,
            config.retention_secs.saturating_mul(1000),
            Duration::from_micros(config.settle_delay_us),
            Some(metrics.clone()),
        )?;
        Self::build(config, Arc::new(backend), metrics)
    }

    /// Builds the service over `backend` (which keeps the queues; see
    /// [`crate::backend`]).
    pub fn with_backend(
        config: &NodeConfig,
        backend: Arc<dyn Backend>,
    ) -> Result<Self, crate::NodeError> {
        Self::build(config, backend, Arc::new(Metrics::default()))
    }

    fn build(
        config: &NodeConfig,
        backend: Arc<dyn Backend>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, crate::NodeError> {
        config.validate()?;
        let apps = Registry::from_config(&config.apps, now_ms())?;
        let settings = Settings {
            heartbeat_interval_ms: config.heartbeat_interval_ms,
            session_timeout: config.session_timeout(),
            multiplex: config.multiplex,
            max_payload: config.max_payload_bytes,
            max_metadata: config.max_metadata_bytes,
            window: config.max_in_flight,
            retention_ms: config.retention_secs.saturating_mul(1000),
            metrics_queue_limit: config.metrics_queue_limit,
        };
        let inner = Arc::new(Inner {
            settings,
            apps: RwLock::new(apps),
            state: Mutex::new(State::default()),
            backend,
            events: Mutex::new(Vec::new()),
            admin: tokio::sync::Mutex::new(HashMap::new()),
            metrics,
        });
        Ok(Self { inner })
    }

    /// Spawns the background tasks (session expiry; the backend's: defer timers,
    /// retention purge; and, on a backend shared by several nodes, applying the admin
    /// changes the other nodes make) on the current tokio runtime. They stop at
    /// [`NodeService::close`].
    pub fn spawn_background(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = vec![tokio::spawn(delivery::reaper(Arc::downgrade(&self.inner)))];
        tasks.extend(self.inner.backend.spawn_background());
        if let Some(changes) = self.inner.backend.watch_records() {
            tasks.push(tokio::spawn(admin::follow_records(
                Arc::downgrade(&self.inner),
                changes,
            )));
        }
        tasks
    }

    /// Ends every session (their streams end with [`StreamEnd::ShuttingDown`]), refuses
    /// further calls, waits until the backend has made durable what it accepted, and
    /// releases the store.
    pub async fn close(&self) {
        self.close_now();
        self.inner.backend.close().await;
    }

    /// `Connect`: opens a session for the app with this access key, for a client of kind
    /// [`ClientKind::Other`] (see [`NodeService::connect_as`]).
    pub fn connect(&self, access_key: &str) -> Result<Connected, ServiceError> {
        self.connect_as(access_key, ClientKind::Other)
    }

    /// `Connect` from a client of `kind` (told by its gRPC `user-agent`): the session's
    /// delivery is the configured `multiplex` when set, else what that client needs
    /// ([`ClientKind::delivery`]: all on the first stream for the Node.js gRPC SDK, each
    /// event on the stream of its name for everyone else).
    pub fn connect_as(
        &self,
        access_key: &str,
        kind: ClientKind,
    ) -> Result<Connected, ServiceError> {
        let res = self.connect_inner(access_key, kind);
        self.count("connect", res, &self.inner.metrics.connects)
    }

    fn connect_inner(&self, access_key: &str, kind: ClientKind) -> Result<Connected, ServiceError> {
        if lock(&self.inner.state).closed {
            return Err(ServiceError::ShuttingDown);
        }
        let apps = read(&self.inner.apps);
        let Some(app) = apps.by_access_key(access_key) else {
            return Err(ServiceError::InvalidAccessKey);
        };
        let Some(a) = apps.get(app) else {
            return Err(ServiceError::InvalidAccessKey);
        };
        let multiplex = self
            .inner
            .settings
            .multiplex
            .unwrap_or(kind.delivery() == Delivery::FirstStream);
        let id: Arc<str> = Arc::from(random_id().as_str());
        {
            let mut st = lock(&self.inner.state);
            if st.closed {
                return Err(ServiceError::ShuttingDown);
            }
            st.sessions.insert(
                id.clone(),
                Session {
                    app,
                    last_seen: Instant::now(),
                    subs: HashMap::new(),
                    streams: Vec::new(),
                    multiplex,
                    paused: HashSet::new(),
                },
            );
        }
        tracing::info!(app = %a.name, client = kind.as_str(), multiplex, "session opened");
        Ok(Connected {
            client_id: id.to_string(),
            client_hash: a.key_text.to_string(),
            app_name: a.name.clone(),
            server_config: HashMap::from([
                (
                    "heartbeat_interval_ms".to_owned(),
                    self.inner.settings.heartbeat_interval_ms.to_string(),
                ),
                ("multiplex".to_owned(), multiplex.to_string()),
            ]),
        })
    }

    /// `Heartbeat`: keeps the session alive.
    pub fn heartbeat(&self, client_id: &str) -> Result<(), ServiceError> {
        let mut st = lock(&self.inner.state);
        touch(&mut st, client_id).map(|_| ())
    }

    /// Ends a session now (e.g. its transport closed): its streams end and its in-flight
    /// events go back to their queues. Unknown ids are ignored.
    pub fn end_session(&self, client_id: &str) {
        self.inner.end_session(client_id, StreamEnd::SessionEnded);
    }

    /// `PublishEvent` / `PublishMessage`: validates, stores durably (group commit) and
    /// enqueues the event for its recipient; returns its id once it is on disk.
    pub async fn publish(&self, req: PublishRequest) -> Result<String, ServiceError> {
        let res = self.publish_inner(req).await;
        self.count("publish", res, &self.inner.metrics.publishes)
    }

    async fn publish_inner(&self, req: PublishRequest) -> Result<String, ServiceError> {
        let s = &self.inner.settings;
        let app = {
            let mut st = lock(&self.inner.state);
            touch(&mut st, &req.client_id)?
        };
        validate::event_name(&req.event_name).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let (sender, recipient) = {
            let apps = read(&self.inner.apps);
            let publisher = apps.get(app).ok_or(ServiceError::NotAuthenticated)?;
            if !publisher.send.allows(&req.event_name) {
                return Err(ServiceError::Forbidden(format!(
                    "app {:?} may not publish {:?}",
                    publisher.name, req.event_name
                )));
            }
            // Only known apps (whose keys were validated when added) can receive: look
            // the key's bytes up directly, and parse (and check the point) only text that
            // is not plain standard base64 of 32 bytes. A full point check is a scalar
            // multiplication, the most expensive step of a publish when done every time.
            let recipient = STANDARD
                .decode(&req.delivery_to)
                .ok()
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .or_else(|| crate::keys::parse_public_key(&req.delivery_to).ok())
                .and_then(|k| apps.by_public(&k))
                .and_then(|slot| apps.get(slot))
                .ok_or_else(|| ServiceError::UnknownRecipient(req.delivery_to.clone()))?;
            (publisher.key_text.clone(), recipient.key_text.clone())
        };
        if req.payload.is_empty() {
            return Err(ServiceError::Invalid("payload is empty".into()));
        }
        if req.payload.len() > s.max_payload {
            return Err(ServiceError::Invalid(format!(
                "payload is {} bytes; the limit is {}",
                req.payload.len(),
                s.max_payload
            )));
        }
        if !is_standard_base64(&req.payload) {
            return Err(ServiceError::Invalid(
                "payload is not valid standard base64".into(),
            ));
        }
        let metadata = if req.metadata.trim().is_empty() {
            "{}".to_owned()
        } else {
            req.metadata
        };
        if metadata.len() > s.max_metadata {
            return Err(ServiceError::Invalid(format!(
                "metadata is {} bytes; the limit is {}",
                metadata.len(),
                s.max_metadata
            )));
        }
        if serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&metadata).is_err() {
            return Err(ServiceError::Invalid(
                "metadata must be a JSON object".into(),
            ));
        }
        let payload_metadata = req.payload_metadata.filter(|p| !p.is_empty());
        if let Some(pm) = &payload_metadata {
            if pm.len() > s.max_metadata {
                return Err(ServiceError::Invalid(format!(
                    "payload_metadata is {} bytes; the limit is {}",
                    pm.len(),
                    s.max_metadata
                )));
            }
            if serde_json::from_str::<serde_json::Value>(pm).is_err() {
                return Err(ServiceError::Invalid(
                    "payload_metadata must be JSON".into(),
                ));
            }
        }
        let event = NewEvent {
            id: event_id(),
            recipient: recipient.to_string(),
            name: req.event_name,
            sender: sender.to_string(),
            payload: req.payload,
            metadata,
            payload_metadata,
            published_ms: now_ms(),
        };
        let published = self.inner.backend.publish(event).await?;
        Ok(published.id)
    }

    /// `Subscribe`: opens a stream of the app's events named `event_name`. A second
    /// subscribe of the same session to the same name replaces the first stream.
    pub fn subscribe(
        &self,
        client_id: &str,
        event_name: &str,
    ) -> Result<EventStream, ServiceError> {
        let res = self.subscribe_inner(client_id, event_name);
        self.count("subscribe", res, &self.inner.metrics.subscribes)
    }

    fn subscribe_inner(
        &self,
        client_id: &str,
        event_name: &str,
    ) -> Result<EventStream, ServiceError> {
        validate::event_name(event_name).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let inner = &self.inner;
        let (rx, end_rx, stream, notify, multiplex) = {
            let mut st = lock(&inner.state);
            let app = touch(&mut st, client_id)?;
            let apps = read(&inner.apps);
            let a = apps.get(app).ok_or(ServiceError::NotAuthenticated)?;
            if !a.receive.allows(event_name) {
                return Err(ServiceError::Forbidden(format!(
                    "app {:?} may not receive {:?}",
                    a.name, event_name
                )));
            }
            let name: Arc<str> = Arc::from(event_name);
            let session: Arc<str> = Arc::from(client_id);
            let old = st
                .sessions
                .get(client_id)
                .and_then(|s| s.subs.get(event_name).copied());
            if let Some(old) = old {
                st.remove_sub(old, Some(StreamEnd::Replaced));
            }
            let stream = st.next_seq();
            let (tx, rx) = mpsc::channel(inner.settings.window.max(1));
            let (end_tx, end_rx) = oneshot::channel();
            let notify = Arc::new(Notify::new());
            let key = QueueKey {
                recipient: a.key_text.clone(),
                name: name.clone(),
            };
            st.subs.insert(
                stream,
                Sub {
                    session: session.clone(),
                    key,
                    tx,
                    end: Some(end_tx),
                    notify: notify.clone(),
                    in_flight: 0,
                },
            );
            let mut multiplex = false;
            if let Some(s) = st.sessions.get_mut(client_id) {
                s.subs.insert(name, stream);
                s.streams.push(stream);
                multiplex = s.multiplex;
            }
            (rx, end_rx, stream, notify, multiplex)
        };
        if multiplex {
            // A new stream may be the session's multiplex sink: wake its other subscriptions.
            inner.wake_session(client_id);
        }
        tokio::spawn(delivery::supervise(Arc::downgrade(inner), stream, notify));
        tracing::debug!(event_name, stream, "subscribed");
        Ok(EventStream::new(stream, rx, end_rx, Arc::downgrade(inner)))
    }

    /// `Unsubscribe`: ends the session's stream for `event_name`; what was in flight on it
    /// goes back to the queue.
    pub fn unsubscribe(&self, client_id: &str, event_name: &str) -> Result<(), ServiceError> {
        let mut st = lock(&self.inner.state);
        touch(&mut st, client_id)?;
        let stream = st
            .sessions
            .get(client_id)
            .and_then(|s| s.subs.get(event_name).copied())
            .ok_or_else(|| ServiceError::Invalid(format!("not subscribed to {event_name:?}")))?;
        st.remove_sub(stream, Some(StreamEnd::Unsubscribed));
        st.return_where(&*self.inner.backend, |f| {
            f.stream == stream || f.sub == stream
        });
        Ok(())
    }

    /// `AcknowledgeEvent` / `AcknowledgeMessage`: the event is done; it is never delivered
    /// again (durably). `event_name` and `partition_block` are not needed to find it (the
    /// id is unique); [`NodeService::ack_at`] checks a given `partition_block`.
    pub async fn ack(&self, client_id: &str, event_idem: &str) -> Result<(), ServiceError> {
        self.finish(client_id, event_idem, None, false).await
    }

    /// Like [`NodeService::ack`], with the `partition_block` the client sent: when given
    /// ([`ensync_proto::validate::given_partition_block`]: not 0) and not the event's,
    /// the ack is refused and the event stays in flight.
    pub async fn ack_at(
        &self,
        client_id: &str,
        event_idem: &str,
        partition_block: i64,
    ) -> Result<(), ServiceError> {
        let block = validate::given_partition_block(partition_block);
        self.finish(client_id, event_idem, block, false).await
    }

    /// `DiscardEvent` / `DiscardMessage`: like ack (the event is never delivered again); it
    /// stays replayable within the retention window.
    pub async fn discard(
        &self,
        client_id: &str,
        event_idem: &str,
        reason: &str,
    ) -> Result<(), ServiceError> {
        tracing::debug!(event_idem, reason, "discard");
        self.finish(client_id, event_idem, None, true).await
    }

    async fn finish(
        &self,
        client_id: &str,
        idem: &str,
        given_block: Option<i64>,
        discard: bool,
    ) -> Result<(), ServiceError> {
        let res = self
            .finish_inner(client_id, idem, given_block, discard)
            .await;
        let m = &self.inner.metrics;
        if discard {
            self.count("discard", res, &m.discards)
        } else {
            self.count("ack", res, &m.acks)
        }
    }

    async fn finish_inner(
        &self,
        client_id: &str,
        idem: &str,
        given_block: Option<i64>,
        discard: bool,
    ) -> Result<(), ServiceError> {
        let what = if discard { "discard" } else { "acknowledge" };
        let (key, block) = self
            .inner
            .take_in_flight(client_id, idem, given_block, what)?;
        // On `Err` the backend has the event delivered again (not durable: not settled).
        let backend = &self.inner.backend;
        if discard {
            backend.discard(&key, idem, block).await?;
        } else {
            backend.ack(&key, idem, block).await?;
        }
        Ok(())
    }

    /// `DeferEvent` / `DeferMessage`: takes the event out of flight and delivers it again
    /// after `delay_ms` (1000 ..= 86 400 000). Returns the due time, epoch ms.
    pub async fn defer(
        &self,
        client_id: &str,
        event_idem: &str,
        delay_ms: i64,
        reason: &str,
    ) -> Result<u64, ServiceError> {
        let res = self
            .defer_inner(client_id, event_idem, delay_ms, reason)
            .await;
        self.count("defer", res, &self.inner.metrics.defers)
    }

    async fn defer_inner(
        &self,
        client_id: &str,
        event_idem: &str,
        delay_ms: i64,
        reason: &str,
    ) -> Result<u64, ServiceError> {
        {
            let mut st = lock(&self.inner.state);
            touch(&mut st, client_id)?;
        }
        validate::defer_delay_ms(delay_ms).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let (key, block) = self
            .inner
            .take_in_flight(client_id, event_idem, None, "defer")?;
        let due_ms = now_ms() + delay_ms as u64;
        self.inner
            .backend
            .defer(&key, event_idem, block, due_ms)
            .await?;
        tracing::debug!(event_idem, delay_ms, reason, "deferred");
        Ok(due_ms)
    }

    /// `ReplayEvent` / `ReplayMessage`: a stored event of this app by id (also after ack
    /// or discard) within the retention window. A non-empty `event_name` must match.
    pub async fn replay(
        &self,
        client_id: &str,
        event_idem: &str,
        event_name: &str,
    ) -> Result<DeliveredEvent, ServiceError> {
        let res = self.replay_inner(client_id, event_idem, event_name).await;
        self.count("replay", res, &self.inner.metrics.replays)
    }

    async fn replay_inner(
        &self,
        client_id: &str,
        event_idem: &str,
        event_name: &str,
    ) -> Result<DeliveredEvent, ServiceError> {
        let app = {
            let mut st = lock(&self.inner.state);
            touch(&mut st, client_id)?
        };
        let (key_text, app_name) = {
            let apps = read(&self.inner.apps);
            let a = apps.get(app).ok_or(ServiceError::NotAuthenticated)?;
            (a.key_text.clone(), a.name.clone())
        };
        let not_found =
            || ServiceError::NotFound(format!("no stored event {event_idem:?} for this app"));
        if event_idem.is_empty() {
            return Err(ServiceError::Invalid("event id is empty".into()));
        }
        let stored = self
            .inner
            .backend
            .get(event_idem)
            .await?
            .filter(|s| *s.event.recipient == *key_text)
            .ok_or_else(not_found)?;
        let ev = stored.event;
        if !event_name.is_empty() && ev.name != event_name {
            return Err(ServiceError::NotFound(format!(
                "event {event_idem:?} is named {:?}, not {event_name:?}",
                ev.name
            )));
        }
        if self.inner.check_receive(app, &ev.name).is_err() {
            return Err(ServiceError::Forbidden(format!(
                "app {app_name:?} may not receive {:?}",
                ev.name
            )));
        }
        if now_ms().saturating_sub(ev.published_ms) > self.inner.settings.retention_ms {
            return Err(ServiceError::NotFound(format!(
                "event {event_idem:?} is past the retention window"
            )));
        }
        Ok(DeliveredEvent::from(StoredEvent {
            event: ev,
            block: stored.block,
        }))
    }

    /// `PauseEvents` / `PauseMessages`: holds delivery of `event_name` to this session
    /// until [`NodeService::resume`]; held events are then delivered in order.
    pub fn pause(
        &self,
        client_id: &str,
        event_name: &str,
        reason: &str,
    ) -> Result<(), ServiceError> {
        validate::event_name(event_name).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let mut st = lock(&self.inner.state);
        let app = touch(&mut st, client_id)?;
        self.inner.check_receive(app, event_name)?;
        if let Some(s) = st.sessions.get_mut(client_id) {
            s.paused.insert(Arc::from(event_name));
        }
        tracing::debug!(event_name, reason, "paused");
        Ok(())
    }

    /// `ContinueEvents` / `ContinueMessages`: resumes delivery of `event_name`.
    pub fn resume(&self, client_id: &str, event_name: &str) -> Result<(), ServiceError> {
        validate::event_name(event_name).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let mut st = lock(&self.inner.state);
        let app = touch(&mut st, client_id)?;
        self.inner.check_receive(app, event_name)?;
        if let Some(s) = st.sessions.get_mut(client_id) {
            s.paused.remove(event_name);
        }
        drop(st);
        self.inner.wake_session(client_id);
        Ok(())
    }

    /// The node's metrics in the Prometheus text format (see [`crate::metrics`]).
    pub fn metrics_text(&self) -> String {
        let stats = self.stats();
        let backend = self.inner.backend.stats();
        let apps = read(&self.inner.apps).apps().count();
        self.inner.metrics.encode(
            crate::metrics::Snapshot {
                apps: apps as u64,
                sessions: stats.sessions as u64,
                subscriptions: stats.subscriptions as u64,
                in_flight: stats.in_flight as u64,
                ready: stats.ready as u64,
                deferred: stats.deferred as u64,
                store_bytes: backend.store_bytes.unwrap_or(0),
                commits: backend.commits,
            },
            self.queue_report(),
        )
    }

    /// The per-queue gauges now: the backend's ready and deferred counts per queue with
    /// what this node's sessions hold of each, at most `metrics_queue_limit` queues.
    /// `None` when the limit is 0 or the backend does not count per queue.
    fn queue_report(&self) -> Option<crate::metrics::QueueReport> {
        let limit = self.inner.settings.metrics_queue_limit;
        if limit == 0 {
            return None;
        }
        let counts = self.inner.backend.queue_counts()?;
        let mut queues: HashMap<QueueKey, (u64, u64, u64)> = counts
            .into_iter()
            .map(|c| (c.key, (c.ready, 0, c.deferred)))
            .collect();
        {
            let st = lock(&self.inner.state);
            for f in st.in_flight.values() {
                queues.entry(f.key.clone()).or_default().1 += 1;
            }
        }
        let apps = read(&self.inner.apps);
        let mut names: HashMap<&str, &str> = HashMap::new();
        let mut uses: HashMap<&str, usize> = HashMap::new();
        for (_, a) in apps.apps() {
            names.insert(&a.key_text, &a.name);
            *uses.entry(&a.name).or_default() += 1;
        }
        let prefix = |key: &str| {
            key.chars()
                .take(crate::metrics::KEY_PREFIX_LEN)
                .collect::<String>()
        };
        let rows = queues.into_iter().map(|(key, (ready, held, deferred))| {
            let app = match names.get(&*key.recipient) {
                // Two apps of one name: told apart by their keys.
                Some(name) if uses.get(name).copied().unwrap_or(0) > 1 => {
                    format!("{name} ({})", prefix(&key.recipient))
                }
                Some(name) => (*name).to_owned(),
                None => prefix(&key.recipient),
            };
            crate::metrics::QueueRow {
                app,
                event: key.name.to_string(),
                ready,
                held,
                deferred,
            }
        });
        Some(crate::metrics::QueueReport::capped(rows, limit))
    }

    /// Counts the outcome of one operation: `ok` on success, a refusal by reason else.
    fn count<T>(
        &self,
        op: &'static str,
        res: Result<T, ServiceError>,
        ok: &prometheus_client::metrics::counter::Counter,
    ) -> Result<T, ServiceError> {
        match &res {
            Ok(_) => {
                ok.inc();
            }
            Err(e) => self.inner.metrics.refuse(op, e.reason()),
        }
        res
    }

    /// Counters (sessions, subscriptions, in-flight, ready and deferred events).
    pub fn stats(&self) -> NodeStats {
        let backend = self.inner.backend.stats();
        let st = lock(&self.inner.state);
        NodeStats {
            sessions: st.sessions.len(),
            subscriptions: st.subs.len(),
            in_flight: st.in_flight.len(),
            ready: backend.ready.unwrap_or(0) as usize,
            deferred: backend.deferred.unwrap_or(0) as usize,
            commits: backend.commits,
            committed_ops: backend.committed_ops,
        }
    }
}

fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl NodeService {
    /// The synchronous part of [`NodeService::close`]: refuses further calls, ends every
    /// session and has the backend stop accepting writes (without waiting).
    pub fn close_now(&self) {
        let sessions: Vec<Arc<str>> = {
            let mut st = lock(&self.inner.state);
            st.closed = true;
            st.sessions.keys().cloned().collect()
        };
        for s in sessions {
            self.inner.end_session(&s, StreamEnd::ShuttingDown);
        }
        self.inner.backend.close_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_unique_hex_and_increase() {
        let ids: Vec<String> = (0..1000).map(|_| event_id()).collect();
        for id in &ids {
            assert_eq!(id.len(), 32);
            assert!(
                id.bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "later ids sort later");
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
    }
}
