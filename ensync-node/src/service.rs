//! The node's core, independent of any transport: apps and permissions, sessions,
//! queues, in-flight tracking, defer timers, pause, replay, and the group-commit writer
//! over a [`Store`].
//!
//! [`NodeService`] has one plain method per protocol operation; the gRPC service
//! (`crate::grpc`) calls them, and a WebSocket endpoint can call the same ones.
//! Application errors are [`ServiceError`]s whose `Display` text is the reason sent to the
//! client (`success = false` plus the text).
//!
//! Delivery: every subscription has a task that takes events from the queue
//! (recipient app, event name) while fewer than `max_in_flight` of its events are
//! unacknowledged, reads their payloads from the store and sends them on a bounded
//! channel; so a slow subscriber only ever holds `max_in_flight` events in memory and
//! the backlog stays on disk. Several subscriptions on one queue compete for its events.
//! An event in flight goes back to its queue when the stream it was sent on closes, when
//! its session ends, or when its subscription is dropped by `unsubscribe`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ensync_proto::clients::{ClientKind, Delivery};
use ensync_proto::validate;
use tokio::sync::{Notify, mpsc, oneshot};
use zeroize::Zeroizing;

use crate::config::NodeConfig;
use crate::perm::Permissions;
use crate::store::{NewEvent, PendingEntry, Store, StoreError, StoredEvent, WriteOp, WriteOutcome};

/// Most operations committed in one transaction.
const MAX_BATCH: usize = 1024;
/// Most events a subscription takes from its queue at once.
const TAKE_BATCH: usize = 16;
/// Bound of the queue of writes waiting for the writer.
const WRITE_QUEUE: usize = 8192;

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
}

struct App {
    name: String,
    access_key: Zeroizing<String>,
    key_text: String,
    send: Permissions,
    receive: Permissions,
}

type QueueKey = (usize, Arc<str>);

/// An event id as a ready queue keeps it: the node's own ids (32 lowercase hex digits)
/// as their 16 bytes, any other text as is. A queue may hold millions of ids (the
/// backlog of a recipient that is away), so they are kept compact: 24 bytes in the map
/// instead of an `Arc<str>` pointer plus a 48-byte allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
enum QueuedId {
    Hex([u8; 16]),
    Text(Box<str>),
}

impl QueuedId {
    fn new(id: &str) -> Self {
        let mut bytes = [0u8; 16];
        let lower_hex =
            id.len() == 32 && id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
        if lower_hex && hex::decode_to_slice(id, &mut bytes).is_ok() {
            QueuedId::Hex(bytes)
        } else {
            QueuedId::Text(id.into())
        }
    }

    /// The id text, exactly as given to [`QueuedId::new`].
    fn to_arc(&self) -> Arc<str> {
        match self {
            QueuedId::Hex(bytes) => Arc::from(hex::encode(bytes).as_str()),
            QueuedId::Text(text) => Arc::from(&**text),
        }
    }
}

#[derive(Default)]
struct Queue {
    /// block -> event id, ready now.
    ready: BTreeMap<u64, QueuedId>,
    /// Subscription (stream) ids on this queue.
    subs: Vec<u64>,
}

struct Session {
    app: usize,
    last_seen: Instant,
    /// Subscribed name -> stream id.
    subs: HashMap<Arc<str>, u64>,
    /// Open streams in the order they were opened (the first one is the multiplex sink).
    streams: Vec<u64>,
    /// Every event on the first open stream (else each on the stream of its name).
    multiplex: bool,
    paused: HashSet<Arc<str>>,
}

struct Sub {
    session: Arc<str>,
    key: QueueKey,
    tx: mpsc::Sender<DeliveredEvent>,
    end: Option<oneshot::Sender<StreamEnd>>,
    notify: Arc<Notify>,
    in_flight: usize,
}

struct InFlight {
    key: QueueKey,
    block: u64,
    session: Arc<str>,
    /// The subscription whose window it counts against.
    sub: u64,
    /// The stream it was sent on.
    stream: u64,
}

#[derive(Default)]
struct State {
    sessions: HashMap<Arc<str>, Session>,
    queues: HashMap<QueueKey, Queue>,
    subs: HashMap<u64, Sub>,
    in_flight: HashMap<Arc<str>, InFlight>,
    /// (due ms, seq) -> (queue, block, id).
    deferred: BTreeMap<(u64, u64), (QueueKey, u64, Arc<str>)>,
    next_id: u64,
    closed: bool,
}

struct WriteReq {
    op: WriteOp,
    /// For a publish: where to enqueue it once committed.
    enqueue: Option<(QueueKey, Arc<str>)>,
    reply: oneshot::Sender<Result<WriteOutcome, ServiceError>>,
}

pub(crate) struct Inner {
    settings: Settings,
    apps: Vec<App>,
    by_key: HashMap<[u8; 32], usize>,
    state: Mutex<State>,
    store: RwLock<Option<Arc<dyn Store>>>,
    writer: Mutex<Option<mpsc::Sender<WriteReq>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    timers: Notify,
    commits: AtomicU64,
    committed_ops: AtomicU64,
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
fn event_id() -> String {
    use rand_core::RngCore as _;
    static NEXT: std::sync::OnceLock<AtomicU64> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU64::new(now_ms() << 16));
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&next.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    rand_core::OsRng.fill_bytes(&mut bytes[8..]);
    hex::encode(bytes)
}

impl NodeService {
    /// Builds the service over an opened store: loads the pending events into their
    /// queues and starts the writer thread. Call [`NodeService::spawn_background`] inside
    /// a tokio runtime to run session expiry, defer timers and the retention purge.
    pub fn new(config: &NodeConfig, store: Arc<dyn Store>) -> Result<Self, crate::NodeError> {
        config.validate()?;
        let mut apps = Vec::new();
        let mut by_key = HashMap::new();
        let mut by_key_text = HashMap::new();
        for (i, a) in config.apps.iter().enumerate() {
            let key = crate::keys::parse_public_key(&a.public_key).map_err(|reason| {
                crate::config::ConfigError::Field {
                    field: format!("apps[{i}].public_key"),
                    reason,
                }
            })?;
            let invalid = |field: &str, reason: String| crate::config::ConfigError::Field {
                field: format!("apps[{i}].{field}"),
                reason,
            };
            let send = Permissions::parse(&a.send).map_err(|e| invalid("send", e))?;
            let receive = Permissions::parse(&a.receive).map_err(|e| invalid("receive", e))?;
            let key_text = STANDARD.encode(key);
            by_key.insert(key, i);
            by_key_text.insert(key_text.clone(), i);
            apps.push(App {
                name: a.name.clone(),
                access_key: Zeroizing::new(a.access_key.clone()),
                key_text,
                send,
                receive,
            });
        }
        let settings = Settings {
            heartbeat_interval_ms: config.heartbeat_interval_ms,
            session_timeout: config.session_timeout(),
            multiplex: config.multiplex,
            max_payload: config.max_payload_bytes,
            max_metadata: config.max_metadata_bytes,
            window: config.max_in_flight,
            retention_ms: config.retention_secs.saturating_mul(1000),
        };

        // Load what is pending into memory (ids and blocks only; payloads stay on disk).
        let mut state = State::default();
        let now = now_ms();
        let mut skipped = 0usize;
        // Streamed: a backlog of millions is never held as a list of entries.
        store.for_each_pending(&mut |entry: PendingEntry| {
            let Some(&app) = by_key_text.get(&entry.recipient) else {
                skipped += 1;
                return;
            };
            let key: QueueKey = (app, Arc::from(entry.name.as_str()));
            if entry.due_ms > now {
                let seq = state.next_seq();
                let id = Arc::from(entry.id.as_str());
                state
                    .deferred
                    .insert((entry.due_ms, seq), (key, entry.block, id));
            } else {
                let ready = &mut state.queues.entry(key).or_default().ready;
                ready.insert(entry.block, QueuedId::new(&entry.id));
            }
        })?;
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "pending events for apps no longer configured are kept on disk but not delivered"
            );
        }

        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let inner = Arc::new(Inner {
            settings,
            apps,
            by_key,
            state: Mutex::new(state),
            store: RwLock::new(Some(store.clone())),
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(None),
            timers: Notify::new(),
            commits: AtomicU64::new(0),
            committed_ops: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&inner);
        let max_batch = if config.group_commit { MAX_BATCH } else { 1 };
        let handle = std::thread::Builder::new()
            .name("ensync-writer".into())
            .spawn(move || writer_loop(rx, store, weak, max_batch))
            .map_err(|e| crate::NodeError::Io(e.to_string()))?;
        *lock(&inner.writer_thread) = Some(handle);
        Ok(Self { inner })
    }

    /// Spawns the background tasks (session expiry, defer timers, retention purge) on the
    /// current tokio runtime. They stop at [`NodeService::close`].
    pub fn spawn_background(&self) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            tokio::spawn(reaper(Arc::downgrade(&self.inner))),
            tokio::spawn(scheduler(self.inner.clone())),
            tokio::spawn(purger(Arc::downgrade(&self.inner))),
        ]
    }

    /// Ends every session (their streams end with [`StreamEnd::ShuttingDown`]), refuses
    /// further calls, stops the writer once it has committed what was queued, and releases
    /// the store.
    pub async fn close(&self) {
        self.close_now();
        let handle = lock(&self.inner.writer_thread).take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        if let Ok(mut store) = self.inner.store.write() {
            store.take();
        }
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
        // Compare with every app's key in constant time (no early exit on a match).
        let mut found = None;
        for (i, a) in self.inner.apps.iter().enumerate() {
            if ct_eq(a.access_key.as_bytes(), access_key.as_bytes()) {
                found = Some(i);
            }
        }
        let Some(app) = found else {
            return Err(ServiceError::InvalidAccessKey);
        };
        let a = &self.inner.apps[app];
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
            client_hash: a.key_text.clone(),
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
        let s = &self.inner.settings;
        let app = {
            let mut st = lock(&self.inner.state);
            touch(&mut st, &req.client_id)?
        };
        validate::event_name(&req.event_name).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let publisher = &self.inner.apps[app];
        if !publisher.send.allows(&req.event_name) {
            return Err(ServiceError::Forbidden(format!(
                "app {:?} may not publish {:?}",
                publisher.name, req.event_name
            )));
        }
        // Only configured apps (whose keys were validated at start) can receive: look the
        // key's bytes up directly, and parse (and check the point) only text that is not
        // plain standard base64 of 32 bytes. A full point check is a scalar multiplication,
        // the most expensive step of a publish when done every time.
        let recipient = STANDARD
            .decode(&req.delivery_to)
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .or_else(|| crate::keys::parse_public_key(&req.delivery_to).ok())
            .and_then(|k| self.inner.by_key.get(&k).copied())
            .ok_or_else(|| ServiceError::UnknownRecipient(req.delivery_to.clone()))?;
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
        if STANDARD.decode(req.payload.as_bytes()).is_err() {
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
        let id = event_id();
        let name: Arc<str> = Arc::from(req.event_name.as_str());
        let event = NewEvent {
            id: id.clone(),
            recipient: self.inner.apps[recipient].key_text.clone(),
            name: req.event_name,
            sender: publisher.key_text.clone(),
            payload: req.payload,
            metadata,
            payload_metadata,
            published_ms: now_ms(),
        };
        let enqueue = Some(((recipient, name), Arc::from(id.as_str())));
        self.inner.write(WriteOp::Publish(event), enqueue).await?;
        Ok(id)
    }

    /// `Subscribe`: opens a stream of the app's events named `event_name`. A second
    /// subscribe of the same session to the same name replaces the first stream.
    pub fn subscribe(
        &self,
        client_id: &str,
        event_name: &str,
    ) -> Result<EventStream, ServiceError> {
        validate::event_name(event_name).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let inner = &self.inner;
        let (rx, end_rx, stream, notify, multiplex) = {
            let mut st = lock(&inner.state);
            let app = touch(&mut st, client_id)?;
            let a = &inner.apps[app];
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
            let key: QueueKey = (app, name.clone());
            st.queues.entry(key.clone()).or_default().subs.push(stream);
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
        tokio::spawn(supervise_delivery(Arc::downgrade(inner), stream, notify));
        tracing::debug!(event_name, stream, "subscribed");
        Ok(EventStream {
            stream,
            rx,
            end: Some(end_rx),
            done: false,
            inner: Arc::downgrade(inner),
        })
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
        st.return_where(|f| f.stream == stream || f.sub == stream);
        Ok(())
    }

    /// `AcknowledgeEvent` / `AcknowledgeMessage`: the event is done; it is never delivered
    /// again (durably). `event_name` and `partition_block` are not needed to find it (the
    /// id is unique); [`NodeService::ack_at`] checks a given `partition_block`.
    pub async fn ack(&self, client_id: &str, event_idem: &str) -> Result<(), ServiceError> {
        self.finish(client_id, event_idem, None, "acknowledge")
            .await
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
        self.finish(client_id, event_idem, block, "acknowledge")
            .await
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
        self.finish(client_id, event_idem, None, "discard").await
    }

    async fn finish(
        &self,
        client_id: &str,
        idem: &str,
        given_block: Option<i64>,
        what: &str,
    ) -> Result<(), ServiceError> {
        let (key, block) = self
            .inner
            .take_in_flight(client_id, idem, given_block, what)?;
        let op = WriteOp::Remove {
            recipient: self.inner.apps[key.0].key_text.clone(),
            name: key.1.to_string(),
            block,
        };
        match self.inner.write(op, None).await {
            Ok(_) => Ok(()),
            Err(e) => {
                // Not durable: the event stays in its queue.
                let mut st = lock(&self.inner.state);
                st.enqueue(key, block, Arc::from(idem));
                Err(e)
            }
        }
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
        {
            let mut st = lock(&self.inner.state);
            touch(&mut st, client_id)?;
        }
        validate::defer_delay_ms(delay_ms).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let (key, block) = self
            .inner
            .take_in_flight(client_id, event_idem, None, "defer")?;
        let due_ms = now_ms() + delay_ms as u64;
        let op = WriteOp::SetDue {
            recipient: self.inner.apps[key.0].key_text.clone(),
            name: key.1.to_string(),
            block,
            due_ms,
        };
        let id: Arc<str> = Arc::from(event_idem);
        match self.inner.write(op, None).await {
            Ok(_) => {
                tracing::debug!(event_idem, delay_ms, reason, "deferred");
                let mut st = lock(&self.inner.state);
                let seq = st.next_seq();
                st.deferred.insert((due_ms, seq), (key, block, id));
                drop(st);
                self.inner.timers.notify_one();
                Ok(due_ms)
            }
            Err(e) => {
                let mut st = lock(&self.inner.state);
                st.enqueue(key, block, id);
                Err(e)
            }
        }
    }

    /// `ReplayEvent` / `ReplayMessage`: a stored event of this app by id (also after ack
    /// or discard) within the retention window. A non-empty `event_name` must match.
    pub fn replay(
        &self,
        client_id: &str,
        event_idem: &str,
        event_name: &str,
    ) -> Result<DeliveredEvent, ServiceError> {
        let app = {
            let mut st = lock(&self.inner.state);
            touch(&mut st, client_id)?
        };
        let a = &self.inner.apps[app];
        let not_found =
            || ServiceError::NotFound(format!("no stored event {event_idem:?} for this app"));
        if event_idem.is_empty() {
            return Err(ServiceError::Invalid("event id is empty".into()));
        }
        let store = self.inner.store()?;
        let stored = store
            .events(&[event_idem])?
            .pop()
            .flatten()
            .filter(|s| s.event.recipient == a.key_text)
            .ok_or_else(not_found)?;
        let ev = stored.event;
        if !event_name.is_empty() && ev.name != event_name {
            return Err(ServiceError::NotFound(format!(
                "event {event_idem:?} is named {:?}, not {event_name:?}",
                ev.name
            )));
        }
        if !a.receive.allows(&ev.name) {
            return Err(ServiceError::Forbidden(format!(
                "app {:?} may not receive {:?}",
                a.name, ev.name
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

    /// Counters (sessions, subscriptions, in-flight, ready and deferred events).
    pub fn stats(&self) -> NodeStats {
        let st = lock(&self.inner.state);
        NodeStats {
            sessions: st.sessions.len(),
            subscriptions: st.subs.len(),
            in_flight: st.in_flight.len(),
            ready: st.queues.values().map(|q| q.ready.len()).sum(),
            deferred: st.deferred.len(),
            commits: self.inner.commits.load(Ordering::Relaxed),
            committed_ops: self.inner.committed_ops.load(Ordering::Relaxed),
        }
    }
}

/// Constant-time equality of two byte strings (the length is not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Checks the session and records activity; returns its app.
fn touch(st: &mut State, client_id: &str) -> Result<usize, ServiceError> {
    if st.closed {
        return Err(ServiceError::ShuttingDown);
    }
    let s = st
        .sessions
        .get_mut(client_id)
        .ok_or(ServiceError::NotAuthenticated)?;
    s.last_seen = Instant::now();
    Ok(s.app)
}

impl State {
    fn next_seq(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn notify_queue(&self, key: &QueueKey) {
        if let Some(q) = self.queues.get(key) {
            for s in &q.subs {
                if let Some(sub) = self.subs.get(s) {
                    sub.notify.notify_one();
                }
            }
        }
    }

    /// Puts an event (back) into its queue and wakes its subscribers.
    fn enqueue(&mut self, key: QueueKey, block: u64, id: Arc<str>) {
        self.queues
            .entry(key.clone())
            .or_default()
            .ready
            .insert(block, QueuedId::new(&id));
        self.notify_queue(&key);
    }

    /// Returns every in-flight event matching `pred` to its queue.
    fn return_where(&mut self, pred: impl Fn(&InFlight) -> bool) {
        let ids: Vec<Arc<str>> = self
            .in_flight
            .iter()
            .filter(|(_, f)| pred(f))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            if let Some(f) = self.in_flight.remove(&id) {
                self.release_window(f.sub);
                self.enqueue(f.key, f.block, id);
            }
        }
    }

    fn release_window(&mut self, sub: u64) {
        if let Some(s) = self.subs.get_mut(&sub) {
            s.in_flight = s.in_flight.saturating_sub(1);
            s.notify.notify_one();
        }
    }

    /// Removes a subscription (ending its stream with `end`, if given).
    fn remove_sub(&mut self, stream: u64, end: Option<StreamEnd>) {
        let Some(mut sub) = self.subs.remove(&stream) else {
            return;
        };
        if let (Some(tx), Some(end)) = (sub.end.take(), end) {
            let _ = tx.send(end);
        }
        sub.notify.notify_one();
        if let Some(q) = self.queues.get_mut(&sub.key) {
            q.subs.retain(|s| *s != stream);
        }
        if let Some(s) = self.sessions.get_mut(&sub.session) {
            if s.subs.get(&sub.key.1) == Some(&stream) {
                s.subs.remove(&sub.key.1);
            }
            s.streams.retain(|s| *s != stream);
        }
    }
}

impl Inner {
    fn store(&self) -> Result<Arc<dyn Store>, ServiceError> {
        self.store
            .read()
            .ok()
            .and_then(|s| s.clone())
            .ok_or(ServiceError::ShuttingDown)
    }

    fn check_receive(&self, app: usize, name: &str) -> Result<(), ServiceError> {
        let a = &self.apps[app];
        if a.receive.allows(name) {
            Ok(())
        } else {
            Err(ServiceError::Forbidden(format!(
                "app {:?} may not receive {name:?}",
                a.name
            )))
        }
    }

    fn wake_session(&self, client_id: &str) {
        let st = lock(&self.state);
        if let Some(s) = st.sessions.get(client_id) {
            for stream in &s.streams {
                if let Some(sub) = st.subs.get(stream) {
                    sub.notify.notify_one();
                }
            }
        }
    }

    /// Hands a write to the writer thread and waits for its commit.
    async fn write(
        &self,
        op: WriteOp,
        enqueue: Option<(QueueKey, Arc<str>)>,
    ) -> Result<WriteOutcome, ServiceError> {
        let tx = lock(&self.writer)
            .clone()
            .ok_or(ServiceError::ShuttingDown)?;
        let (reply, rx) = oneshot::channel();
        tx.send(WriteReq { op, enqueue, reply })
            .await
            .map_err(|_| ServiceError::ShuttingDown)?;
        rx.await.map_err(|_| ServiceError::ShuttingDown)?
    }

    /// Takes an event out of flight for ack/defer/discard, checking it is this session's.
    fn take_in_flight(
        &self,
        client_id: &str,
        idem: &str,
        given_block: Option<i64>,
        what: &str,
    ) -> Result<(QueueKey, u64), ServiceError> {
        let mut st = lock(&self.state);
        let app = touch(&mut st, client_id)?;
        if idem.is_empty() {
            return Err(ServiceError::Invalid("event id is empty".into()));
        }
        match st.in_flight.get(idem) {
            Some(f) if &*f.session == client_id => {
                if let Some(given) = given_block {
                    if i64::try_from(f.block).ok() != Some(given) {
                        return Err(ServiceError::Invalid(format!(
                            "cannot {what} event {idem:?}: its partition_block is {}, not {given}",
                            f.block
                        )));
                    }
                }
            }
            Some(f) if f.key.0 == app => {
                return Err(ServiceError::NotInFlight(format!(
                    "cannot {what} event {idem:?}: it is in flight to another session of this app"
                )));
            }
            _ => {
                return Err(ServiceError::NotInFlight(format!(
                    "cannot {what} event {idem:?}: it is not in flight to this session"
                )));
            }
        }
        let Some(f) = st.in_flight.remove(idem) else {
            return Err(ServiceError::NotInFlight(format!(
                "cannot {what} event {idem:?}: it is not in flight to this session"
            )));
        };
        st.release_window(f.sub);
        Ok((f.key, f.block))
    }

    fn end_session(&self, client_id: &str, why: StreamEnd) {
        let mut st = lock(&self.state);
        let Some(session) = st.sessions.get(client_id) else {
            return;
        };
        let streams: Vec<u64> = session.streams.clone();
        let app = session.app;
        for s in streams {
            st.remove_sub(s, Some(why));
        }
        st.return_where(|f| &*f.session == client_id);
        st.sessions.remove(client_id);
        drop(st);
        tracing::info!(app = %self.apps[app].name, reason = %why, "session ended");
    }

    /// A subscription stream was dropped by its consumer (client gone or stream ended).
    fn stream_closed(&self, stream: u64) {
        let mut st = lock(&self.state);
        st.remove_sub(stream, None);
        st.return_where(|f| f.stream == stream);
    }
}

enum Take {
    Closed,
    Wait,
    Events(Vec<(Arc<str>, u64)>, mpsc::Sender<DeliveredEvent>),
}

impl Inner {
    fn take(&self, stream: u64) -> Take {
        let mut st = lock(&self.state);
        if st.closed {
            return Take::Closed;
        }
        let Some(sub) = st.subs.get(&stream) else {
            return Take::Closed;
        };
        let room = self.settings.window.saturating_sub(sub.in_flight);
        let key = sub.key.clone();
        let session_id = sub.session.clone();
        let Some(session) = st.sessions.get(&session_id) else {
            return Take::Closed;
        };
        if room == 0 || session.paused.contains(&key.1) {
            return Take::Wait;
        }
        let sink_stream = if session.multiplex {
            session.streams.first().copied().unwrap_or(stream)
        } else {
            stream
        };
        let Some(sink) = st.subs.get(&sink_stream).map(|s| s.tx.clone()) else {
            return Take::Wait;
        };
        let Some(q) = st.queues.get_mut(&key) else {
            return Take::Wait;
        };
        let mut taken = Vec::new();
        while taken.len() < room.min(TAKE_BATCH) {
            let Some((block, id)) = q.ready.pop_first() else {
                break;
            };
            taken.push((id.to_arc(), block));
        }
        if taken.is_empty() {
            return Take::Wait;
        }
        for (id, block) in &taken {
            st.in_flight.insert(
                id.clone(),
                InFlight {
                    key: key.clone(),
                    block: *block,
                    session: session_id.clone(),
                    sub: stream,
                    stream: sink_stream,
                },
            );
        }
        if let Some(sub) = st.subs.get_mut(&stream) {
            sub.in_flight += taken.len();
        }
        Take::Events(taken, sink)
    }

    /// An in-flight event whose record cannot be read: drop it from memory (it stays
    /// pending on disk and is retried after a restart).
    fn lost(&self, id: &str) {
        let mut st = lock(&self.state);
        if let Some(f) = st.in_flight.remove(id) {
            st.release_window(f.sub);
        }
    }
}

/// Runs the delivery task of one subscription; if it fails (a panic: a bug, or a store
/// implementation that panics), the stream ends with [`StreamEnd::DeliveryFailed`], so
/// the client sees an error and reconnects instead of waiting on a silent stream.
async fn supervise_delivery(inner: Weak<Inner>, stream: u64, notify: Arc<Notify>) {
    use futures::FutureExt as _;
    let run = std::panic::AssertUnwindSafe(deliver(inner.clone(), stream, notify));
    if let Err(panic) = run.catch_unwind().await {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(stream, panic = %msg, "delivery task failed; ending its stream");
        if let Some(node) = inner.upgrade() {
            node.fail_stream(stream);
        }
    }
}

impl Inner {
    /// Ends a subscription stream with [`StreamEnd::DeliveryFailed`]; what was in flight
    /// on it goes back to the queue.
    fn fail_stream(&self, stream: u64) {
        let mut st = lock(&self.state);
        st.remove_sub(stream, Some(StreamEnd::DeliveryFailed));
        st.return_where(|f| f.stream == stream || f.sub == stream);
    }

    /// Reads the records of `taken` for delivery. A record that cannot be decoded (or
    /// whose read trips the store's damage checks) is held back: logged, out of flight,
    /// still pending on disk (delivered after a restart once the store is repaired), and
    /// the others are delivered. Any other store failure is `Err`.
    fn read_for_delivery(
        &self,
        taken: &[(Arc<str>, u64)],
    ) -> Result<Vec<Option<StoredEvent>>, ServiceError> {
        let store = self.store()?;
        let ids: Vec<&str> = taken.iter().map(|(id, _)| &**id).collect();
        match store.events(&ids) {
            Ok(records) => return Ok(records),
            Err(StoreError::Corrupt(_) | StoreError::Damaged(_)) => {}
            Err(e) => return Err(e.into()),
        }
        // One of the batch is unreadable: find which, one by one.
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            match store.events(&[id]) {
                Ok(mut r) => out.push(r.pop().flatten()),
                Err(e @ (StoreError::Corrupt(_) | StoreError::Damaged(_))) => {
                    tracing::error!(event = %id, error = %e,
                        "stored record cannot be read; holding the event back");
                    self.lost(id);
                    out.push(None);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }
}

/// The delivery task of one subscription.
async fn deliver(inner: Weak<Inner>, stream: u64, notify: Arc<Notify>) {
    loop {
        let Some(node) = inner.upgrade() else { return };
        match node.take(stream) {
            Take::Closed => return,
            Take::Wait => {
                drop(node);
                notify.notified().await;
            }
            Take::Events(taken, sink) => {
                let records = match node.read_for_delivery(&taken) {
                    Ok(r) => r,
                    Err(ServiceError::ShuttingDown) => return,
                    Err(e) => {
                        tracing::error!(error = %e, stream,
                            "cannot read events for delivery; ending the stream");
                        node.fail_stream(stream);
                        return;
                    }
                };
                drop(node);
                for ((id, _), record) in taken.iter().zip(records) {
                    let Some(stored) = record else {
                        if let Some(node) = inner.upgrade() {
                            if lock(&node.state).in_flight.contains_key(id) {
                                tracing::error!(event = %id, "pending event has no stored record");
                                node.lost(id);
                            }
                        }
                        continue;
                    };
                    let item = DeliveredEvent::from(stored);
                    if sink.send(item).await.is_err() {
                        // The sink stream closed; its close returned these events.
                        break;
                    }
                }
            }
        }
    }
}

/// Ends sessions that missed their heartbeats.
async fn reaper(inner: Weak<Inner>) {
    let period = match inner.upgrade() {
        Some(i) => (i.settings.session_timeout / 6)
            .clamp(Duration::from_millis(20), Duration::from_secs(5)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(node) = inner.upgrade() else { return };
        let expired: Vec<Arc<str>> = {
            let st = lock(&node.state);
            if st.closed {
                return;
            }
            let now = Instant::now();
            st.sessions
                .iter()
                .filter(|(_, s)| now.duration_since(s.last_seen) > node.settings.session_timeout)
                .map(|(id, _)| id.clone())
                .collect()
        };
        for id in expired {
            node.end_session(&id, StreamEnd::SessionEnded);
        }
    }
}

/// Moves deferred events into their queues when they are due.
async fn scheduler(inner: Arc<Inner>) {
    loop {
        let next = {
            let mut st = lock(&inner.state);
            if st.closed {
                return;
            }
            let now = now_ms();
            while let Some(entry) = st.deferred.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let (key, block, id) = entry.remove();
                st.enqueue(key, block, id);
            }
            st.deferred
                .first_key_value()
                .map(|((due, _), _)| *due - now)
        };
        match next {
            Some(wait) => {
                let _ = tokio::time::timeout(Duration::from_millis(wait), inner.timers.notified())
                    .await;
            }
            None => inner.timers.notified().await,
        }
    }
}

/// Deletes records older than the retention window (pending events are kept).
async fn purger(inner: Weak<Inner>) {
    let period = match inner.upgrade() {
        Some(i) => Duration::from_millis(i.settings.retention_ms / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(3600)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(node) = inner.upgrade() else { return };
        let before_ms = now_ms().saturating_sub(node.settings.retention_ms);
        match node.write(WriteOp::Purge { before_ms }, None).await {
            Ok(WriteOutcome::Purged(n)) if n > 0 => tracing::debug!(purged = n, "retention purge"),
            Ok(_) => {}
            Err(ServiceError::ShuttingDown) => return,
            Err(e) => tracing::warn!(error = %e, "retention purge failed"),
        }
    }
}

/// The group-commit writer: commits everything waiting (up to `max_batch` writes) in one
/// transaction, enqueues the new events in block order, then answers each request.
/// `max_batch = 1` is one commit per write (`group_commit = false`).
fn writer_loop(
    mut rx: mpsc::Receiver<WriteReq>,
    store: Arc<dyn Store>,
    inner: Weak<Inner>,
    max_batch: usize,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let ops: Vec<WriteOp> = batch.iter().map(|r| r.op.clone()).collect();
        let t0 = Instant::now();
        let res = store.commit(&ops);
        tracing::trace!(ops = ops.len(), elapsed = ?t0.elapsed(), "group commit");
        match res {
            Ok(outcomes) => {
                if let Some(node) = inner.upgrade() {
                    node.commits.fetch_add(1, Ordering::Relaxed);
                    node.committed_ops
                        .fetch_add(outcomes.len() as u64, Ordering::Relaxed);
                    let mut st = lock(&node.state);
                    for (req, out) in batch.iter_mut().zip(&outcomes) {
                        if let (Some((key, id)), WriteOutcome::Published { block }) =
                            (req.enqueue.take(), out)
                        {
                            st.enqueue(key, *block, id);
                        }
                    }
                }
                for (req, out) in batch.into_iter().zip(outcomes) {
                    let _ = req.reply.send(Ok(out));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, ops = batch.len(), "commit failed");
                let err = ServiceError::from(e);
                for req in batch {
                    let _ = req.reply.send(Err(err.clone()));
                }
            }
        }
    }
}

/// A subscription's stream of events. Ends with `Err(end)` when the session ended or the
/// node shuts down (clients should reconnect), or with `None` after an unsubscribe.
/// Dropping it closes the stream: its unacknowledged events go back to the queue.
pub struct EventStream {
    stream: u64,
    rx: mpsc::Receiver<DeliveredEvent>,
    end: Option<oneshot::Receiver<StreamEnd>>,
    done: bool,
    inner: Weak<Inner>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl futures::Stream for EventStream {
    type Item = Result<DeliveredEvent, StreamEnd>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(end) = this.end.as_mut() {
            match Pin::new(end).poll(cx) {
                Poll::Ready(Ok(why)) => {
                    this.done = true;
                    return Poll::Ready(why.is_error().then_some(Err(why)));
                }
                Poll::Ready(Err(_)) => this.end = None,
                Poll::Pending => {}
            }
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(ev)) => Poll::Ready(Some(Ok(ev))),
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.stream_closed(self.stream);
        }
    }
}

use std::future::Future as _;

impl NodeService {
    /// The synchronous part of [`NodeService::close`]: refuses further calls, ends every
    /// session and lets the writer stop once its queue is drained (without waiting).
    pub fn close_now(&self) {
        let sessions: Vec<Arc<str>> = {
            let mut st = lock(&self.inner.state);
            st.closed = true;
            st.sessions.keys().cloned().collect()
        };
        for s in sessions {
            self.inner.end_session(&s, StreamEnd::ShuttingDown);
        }
        self.inner.timers.notify_one();
        lock(&self.inner.writer).take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_ids_give_back_the_same_text() {
        let own = event_id();
        for id in [
            own.as_str(),
            "00000000000000000000000000000000",
            "ffffffffffffffffffffffffffffffff",
            // Not the node's own form: kept as text, unchanged.
            "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "not-hex-at-all-but-thirty-two!!!",
            "",
            "é",
        ] {
            assert_eq!(&*QueuedId::new(id).to_arc(), id, "{id:?}");
        }
        assert!(matches!(QueuedId::new(&own), QueuedId::Hex(_)));
        assert!(matches!(
            QueuedId::new("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"),
            QueuedId::Text(_)
        ));
    }

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
