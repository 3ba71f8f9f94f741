//! The queue-level backend: where the node keeps what several nodes must share.
//!
//! A node keeps per-session state itself (sessions, their subscriptions and delivery
//! windows, pause, which stream an event goes out on, which session holds which event).
//! Everything that must outlive a session or be shared by several nodes lives behind
//! [`Backend`]: the queues of events per (recipient app, event name), which events are
//! ready, held (handed to a session and not yet settled) or deferred, their durable
//! storage, replay by id and the retention window.
//!
//! Two implementations:
//! - [`embedded::EmbeddedBackend`]: the default, one machine: the queues in this
//!   process's memory over a [`crate::store::Store`] (redb) with group commit;
//! - the JetStream backend: several nodes sharing one NATS JetStream stream, one durable
//!   consumer per queue ([`jetstream::JetStreamBackend`]).
//!
//! # Contract
//! - [`Backend::publish`] answers only once the event is durable; the event is then ready
//!   in its queue.
//! - [`Backend::claim`] hands out ready events of one queue, oldest first, each to one
//!   claimer at a time (competing consumers: several sessions, on this node or on others,
//!   share a queue). A claimed event is *held* until the node settles it with
//!   [`Backend::ack`], [`Backend::discard`], [`Backend::defer`] or gives it back with
//!   [`Backend::release`]. What a node holds when it dies comes back to the queue by the
//!   backend's own means (the embedded backend: at the next start; JetStream: after
//!   `ack_wait`); a live backend keeps what it holds from being redelivered elsewhere.
//! - `claim` is cancel-safe: dropping its future before it completes loses no event
//!   (an event is taken only in the step that completes the future).
//! - Settling an event the backend does not hold (already settled, or never claimed) is
//!   not an error of the backend: it answers `Ok(false)`; the node checks ownership
//!   before it calls.
//! - An `Err` from `ack`, `discard` or `defer` leaves the event not settled: it will be
//!   delivered again (the embedded backend puts it back in its queue at once).

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::service::ServiceError;
use crate::store::{NewEvent, StoredEvent};

pub mod embedded;
pub mod jetstream;

/// A queue: the events of one event name for one recipient app.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueKey {
    /// The recipient app's public key, standard base64 (as in [`NewEvent::recipient`]).
    pub recipient: Arc<str>,
    /// The event name.
    pub name: Arc<str>,
}

impl QueueKey {
    /// The queue of `name` for `recipient`.
    pub fn new(recipient: &str, name: &str) -> Self {
        Self {
            recipient: Arc::from(recipient),
            name: Arc::from(name),
        }
    }
}

/// What [`Backend::publish`] stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The event's id (`event_idem`): the one proposed in [`NewEvent::id`], or one the
    /// backend assigned (the JetStream backend puts the stream sequence in it so that
    /// replay finds the event by id).
    pub id: String,
    /// Its `partition_block` in its queue (from 1, increasing per queue; not
    /// necessarily contiguous).
    pub block: u64,
}

/// Counts a backend reports (for [`crate::NodeStats`] and metrics). Fields a backend
/// cannot count cheaply are `None`.
///
/// The JetStream backend's `ready` and `deferred` are approximate and the same on every
/// node (do not sum them over nodes): read every 2 s from the stream's queue consumers,
/// `ready` is what they have not yet delivered (an event released by a session and not
/// yet delivered again, or sent to a queue nobody has subscribed to yet, is not counted),
/// `deferred` is what they handed out and have no ack for, less what this node holds:
/// the deferred events and those the other nodes hold. `None` while they cannot be read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendStats {
    /// Events ready for delivery in every queue.
    pub ready: Option<u64>,
    /// Deferred events waiting for their time.
    pub deferred: Option<u64>,
    /// Events held by this node (claimed, not yet settled).
    pub held: Option<u64>,
    /// Durable commits since start (the embedded backend's transactions).
    pub commits: u64,
    /// Write operations in those commits (`committed_ops / commits` is the mean batch).
    pub committed_ops: u64,
    /// Bytes the backend's storage takes on this machine (the embedded store file).
    pub store_bytes: Option<u64>,
}

/// The counts of one queue at one moment ([`Backend::queue_counts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueCounts {
    /// The queue.
    pub key: QueueKey,
    /// Its events ready for delivery.
    pub ready: u64,
    /// Its deferred events waiting for their time.
    pub deferred: u64,
}

impl QueueCounts {
    /// The counts of `key`.
    pub fn new(key: QueueKey, ready: u64, deferred: u64) -> Self {
        Self {
            key,
            ready,
            deferred,
        }
    }
}

/// The node's own records (key, value), in key order: see [`Backend::records`].
pub type Records = Vec<(String, Vec<u8>)>;

/// The position of a record change in the order every node of a deployment sees
/// (the JetStream key-value bucket's sequence): a later change of a key has a higher
/// revision.
pub type Revision = u64;

/// One record written or deleted, as [`Backend::watch_records`] reports it.
#[derive(Clone, PartialEq, Eq)]
pub struct RecordChange {
    /// The record's key (as given to [`Backend::put_record`]).
    pub key: String,
    /// Its new value; `None`: deleted.
    pub value: Option<Vec<u8>>,
    /// Where the change is in the deployment's order.
    pub revision: Revision,
}

impl std::fmt::Debug for RecordChange {
    // The value may hold an access key: never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordChange")
            .field("key", &self.key)
            .field("deleted", &self.value.is_none())
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

/// The shared queue state behind a node. See the [module docs](self) for the contract.
pub trait Backend: Send + Sync + 'static {
    /// A short name for logs (`"embedded"`, `"jetstream"`).
    fn kind(&self) -> &'static str;

    /// Stores `event` durably at the end of its queue and makes it ready; answers once it
    /// is durable.
    fn publish(&self, event: NewEvent) -> BoxFuture<'_, Result<Published, ServiceError>>;

    /// Takes up to `max` (>= 1) ready events of `queue`, oldest first, waiting until there
    /// is at least one. Cancel-safe. A record that cannot be read is held back by the
    /// backend (logged, not delivered, kept for a later start) and left out; any other
    /// failure is `Err` (the node ends the stream with an error; what was taken is back in
    /// the queue).
    fn claim<'a>(
        &'a self,
        queue: &'a QueueKey,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<StoredEvent>, ServiceError>>;

    /// Acknowledges a held event: it is never delivered again (durably when this returns
    /// `Ok`); it stays replayable within the retention window. `Ok(false)`: not held.
    fn ack<'a>(
        &'a self,
        queue: &'a QueueKey,
        id: &'a str,
        block: u64,
    ) -> BoxFuture<'a, Result<bool, ServiceError>>;

    /// Discards a held event: like [`Backend::ack`] (never delivered again, replayable).
    fn discard<'a>(
        &'a self,
        queue: &'a QueueKey,
        id: &'a str,
        block: u64,
    ) -> BoxFuture<'a, Result<bool, ServiceError>>;

    /// Defers a held event: ready again at `due_ms` (epoch ms), durably when `Ok`.
    fn defer<'a>(
        &'a self,
        queue: &'a QueueKey,
        id: &'a str,
        block: u64,
        due_ms: u64,
    ) -> BoxFuture<'a, Result<bool, ServiceError>>;

    /// Gives a held event back to its queue now (its session or stream ended before it
    /// was settled). Never fails: a backend that cannot reach its store lets the event
    /// come back by its own means (JetStream: `ack_wait`).
    fn release(&self, queue: &QueueKey, id: &str, block: u64);

    /// A stored event by id (also after ack or discard) while the backend keeps it;
    /// `None` for an unknown or purged id. The node checks recipient, name and age.
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<StoredEvent>, ServiceError>>;

    /// Every one of the node's own records (apps made through the admin API), in key
    /// order, as written by [`Backend::put_record`]. Every node of a deployment reads the
    /// same ones. The default: none.
    fn records(&self) -> BoxFuture<'_, Result<Records, ServiceError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Writes (`Some`) or deletes (`None`) one record, durably when `Ok`; answers the
    /// change's [`Revision`] (what [`Backend::watch_records`] reports for it; `0` from a
    /// backend without a watch). The default refuses: a backend that keeps no records has
    /// no run-time administration.
    fn put_record<'a>(
        &'a self,
        key: &'a str,
        value: Option<Vec<u8>>,
    ) -> BoxFuture<'a, Result<Revision, ServiceError>> {
        let _ = (key, value);
        Box::pin(async move {
            Err(ServiceError::Storage(format!(
                "the {} backend keeps no records",
                self.kind()
            )))
        })
    }

    /// The record changes every node of the deployment makes (this node's own writes
    /// included), from the moment the last [`Backend::records`] began, for as long as the
    /// backend is open; `None` when the records are this node's alone (the default, and
    /// the embedded backend). Call once, after [`Backend::records`].
    ///
    /// Per key, revisions only increase; a change may repeat what `records` already
    /// answered, so applying one must be harmless when its revision is not newer than
    /// what is already applied. While the backend cannot reach its store the stream
    /// waits; once it can again, it reports what changed meanwhile (the latest state of
    /// each key changed), then goes on.
    fn watch_records(&self) -> Option<BoxStream<'static, RecordChange>> {
        None
    }

    /// Whether the backend can reach its store now (for `/readyz`); `Err` says why not,
    /// in a few words.
    fn ready(&self) -> BoxFuture<'_, Result<(), String>>;

    /// Current counts.
    fn stats(&self) -> BackendStats;

    /// The counts of every queue the backend knows now, in no particular order, for the
    /// per-queue gauges of `/metrics` (called at each scrape: no IO, no waiting).
    /// The default: `None`, this backend does not count per queue (the node then shows
    /// no per-queue gauges).
    fn queue_counts(&self) -> Option<Vec<QueueCounts>> {
        None
    }

    /// Starts the backend's background work (defer timers, retention purge, keep-alive
    /// of held events) on the current tokio runtime. Called once, by
    /// [`crate::NodeService::spawn_background`].
    fn spawn_background(&self) -> Vec<tokio::task::JoinHandle<()>>;

    /// Stops accepting writes (they fail with [`ServiceError::ShuttingDown`]); writes
    /// already accepted still complete. Returns at once.
    fn close_now(&self);

    /// [`Backend::close_now`], then waits until accepted writes are durable and releases
    /// the store.
    fn close(&self) -> BoxFuture<'_, ()>;
}
