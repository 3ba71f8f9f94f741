//! The embedded backend (the default, one machine): every queue in this process's
//! memory (ids and blocks only; payloads stay on disk) over a [`Store`], with a
//! group-commit writer thread, the defer timers and the retention purge.
//!
//! Held events are not written down: what a node held when it stopped or died is still
//! pending in the store, so it is ready again at the next start.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::{Notify, mpsc, oneshot};

use super::{Backend, BackendStats, Published, QueueCounts, QueueKey};
use crate::metrics::Metrics;
use crate::service::{ServiceError, now_ms};
use crate::store::{NewEvent, PendingEntry, Store, StoreError, StoredEvent, WriteOp, WriteOutcome};

/// Most operations committed in one transaction.
const MAX_BATCH: usize = 1024;
/// Bound of the queue of writes waiting for the writer.
const WRITE_QUEUE: usize = 8192;

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
    fn text(&self) -> String {
        match self {
            QueuedId::Hex(bytes) => hex::encode(bytes),
            QueuedId::Text(text) => text.to_string(),
        }
    }
}

#[derive(Default)]
struct Queue {
    /// block -> event id, ready now.
    ready: BTreeMap<u64, QueuedId>,
    /// Woken when events become ready (claimers wait on it).
    notify: Arc<Notify>,
    /// How many of the deferred events (in [`State::deferred`]) are this queue's.
    deferred: u64,
}

#[derive(Default)]
struct State {
    queues: HashMap<QueueKey, Queue>,
    /// (due ms, seq) -> (queue, block, id).
    deferred: BTreeMap<(u64, u64), (QueueKey, u64, Arc<str>)>,
    seq: u64,
    closed: bool,
}

impl State {
    /// Adds a deferred event, due at `due_ms`.
    fn defer(&mut self, key: QueueKey, block: u64, id: Arc<str>, due_ms: u64) {
        self.seq += 1;
        let seq = self.seq;
        self.queues.entry(key.clone()).or_default().deferred += 1;
        self.deferred.insert((due_ms, seq), (key, block, id));
    }

    /// Puts an event (back) into its queue and wakes its claimers.
    fn enqueue(&mut self, key: QueueKey, block: u64, id: &str) {
        let q = self.queues.entry(key).or_default();
        q.ready.insert(block, QueuedId::new(id));
        q.notify.notify_waiters();
    }
}

struct WriteReq {
    op: WriteOp,
    /// For a publish: where to enqueue it once committed.
    enqueue: Option<(QueueKey, Arc<str>)>,
    reply: oneshot::Sender<Result<WriteOutcome, ServiceError>>,
}

struct Inner {
    state: Mutex<State>,
    store: RwLock<Option<Arc<dyn Store>>>,
    writer: Mutex<Option<mpsc::Sender<WriteReq>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Woken when a deferred event is added (the scheduler's earliest time may change).
    timers: Notify,
    commits: AtomicU64,
    committed_ops: AtomicU64,
    retention_ms: u64,
}

/// The embedded [`Backend`]: queues in memory over a [`Store`] with group commit.
pub struct EmbeddedBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBackend").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl EmbeddedBackend {
    /// Loads what is pending in `store` into its queues (streamed: a backlog of millions
    /// is never held as a list) and starts the writer thread. `group_commit = false`
    /// commits every write on its own; `retention_ms` is how long settled events stay
    /// replayable.
    pub fn open(
        store: Arc<dyn Store>,
        group_commit: bool,
        retention_ms: u64,
    ) -> Result<Self, crate::NodeError> {
        Self::open_with_metrics(store, group_commit, retention_ms, Duration::ZERO, None)
    }

    /// [`EmbeddedBackend::open`], recording each commit's time and size in `metrics`.
    /// With group commit, a batch that holds only settlements (acks, discards, defers)
    /// waits up to `settle_delay` for a publish to commit with, so one `fsync` carries
    /// both (see [`NodeConfig::settle_delay_us`](crate::NodeConfig::settle_delay_us)).
    pub fn open_with_metrics(
        store: Arc<dyn Store>,
        group_commit: bool,
        retention_ms: u64,
        settle_delay: Duration,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self, crate::NodeError> {
        let mut state = State::default();
        let now = now_ms();
        // Entries come in (recipient, name, block) order: build each queue's key once.
        let mut last: Option<QueueKey> = None;
        store.for_each_pending(&mut |entry: PendingEntry| {
            let same = last
                .as_ref()
                .is_some_and(|k| *k.recipient == *entry.recipient && *k.name == *entry.name);
            if !same {
                last = Some(QueueKey::new(&entry.recipient, &entry.name));
            }
            let Some(key) = last.clone() else { return };
            if entry.due_ms > now {
                let id = Arc::from(entry.id.as_str());
                state.defer(key, entry.block, id, entry.due_ms);
            } else {
                let ready = &mut state.queues.entry(key).or_default().ready;
                ready.insert(entry.block, QueuedId::new(&entry.id));
            }
        })?;

        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let inner = Arc::new(Inner {
            state: Mutex::new(state),
            store: RwLock::new(Some(store.clone())),
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(None),
            timers: Notify::new(),
            commits: AtomicU64::new(0),
            committed_ops: AtomicU64::new(0),
            retention_ms,
        });
        let weak = Arc::downgrade(&inner);
        let max_batch = if group_commit { MAX_BATCH } else { 1 };
        let handle = std::thread::Builder::new()
            .name("ensync-writer".into())
            .spawn(move || writer_loop(rx, store, weak, max_batch, settle_delay, metrics))
            .map_err(|e| crate::NodeError::Io(e.to_string()))?;
        *lock(&inner.writer_thread) = Some(handle);
        Ok(Self { inner })
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

    /// Takes up to `max` ready events of `queue`; `None` when there are none.
    fn take(&self, queue: &QueueKey, max: usize) -> Vec<(String, u64)> {
        let mut st = lock(&self.state);
        let Some(q) = st.queues.get_mut(queue) else {
            return Vec::new();
        };
        let mut taken = Vec::new();
        while taken.len() < max {
            let Some((block, id)) = q.ready.pop_first() else {
                break;
            };
            taken.push((id.text(), block));
        }
        taken
    }

    /// Reads the records of `taken`. A record that cannot be decoded (or whose read trips
    /// the store's damage checks) is held back: logged, left out, still pending on disk
    /// (delivered after a restart once the store is repaired). Any other store failure is
    /// `Err`.
    fn read(&self, taken: &[(String, u64)]) -> Result<Vec<StoredEvent>, ServiceError> {
        let store = self.store()?;
        let ids: Vec<&str> = taken.iter().map(|(id, _)| id.as_str()).collect();
        let records = match store.events(&ids) {
            Ok(records) => records,
            Err(StoreError::Corrupt(_) | StoreError::Damaged(_)) => {
                // One of the batch is unreadable: find which, one by one.
                let mut out = Vec::with_capacity(ids.len());
                for id in &ids {
                    match store.events(&[id]) {
                        Ok(mut r) => out.push(r.pop().flatten()),
                        Err(e @ (StoreError::Corrupt(_) | StoreError::Damaged(_))) => {
                            tracing::error!(event = %id, error = %e,
                                "stored record cannot be read; holding the event back");
                            out.push(None);
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                out
            }
            Err(e) => return Err(e.into()),
        };
        let mut events = Vec::with_capacity(records.len());
        for ((id, _), record) in taken.iter().zip(records) {
            match record {
                Some(stored) => events.push(stored),
                None => tracing::error!(event = %id, "pending event has no readable record"),
            }
        }
        Ok(events)
    }

    fn put_back(&self, queue: &QueueKey, taken: Vec<(String, u64)>) {
        let mut st = lock(&self.state);
        for (id, block) in taken {
            st.enqueue(queue.clone(), block, &id);
        }
    }

    async fn settle(
        &self,
        queue: &QueueKey,
        id: &str,
        block: u64,
        op: WriteOp,
    ) -> Result<bool, ServiceError> {
        match self.write(op, None).await {
            Ok(WriteOutcome::Removed(existed) | WriteOutcome::DueSet(existed)) => Ok(existed),
            Ok(_) => Ok(true),
            Err(e) => {
                // Not durable: the event is ready again.
                lock(&self.state).enqueue(queue.clone(), block, id);
                Err(e)
            }
        }
    }
}

impl Backend for EmbeddedBackend {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn publish(&self, event: NewEvent) -> BoxFuture<'_, Result<Published, ServiceError>> {
        Box::pin(async move {
            let id = event.id.clone();
            let key = QueueKey::new(&event.recipient, &event.name);
            let enqueue = Some((key, Arc::from(id.as_str())));
            match self.inner.write(WriteOp::Publish(event), enqueue).await? {
                WriteOutcome::Published { block } => Ok(Published { id, block }),
                other => Err(ServiceError::Storage(format!(
                    "the store answered a publish with {other:?}"
                ))),
            }
        })
    }

    fn claim<'a>(
        &'a self,
        queue: &'a QueueKey,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<StoredEvent>, ServiceError>> {
        Box::pin(async move {
            loop {
                let notify = {
                    let mut st = lock(&self.inner.state);
                    if st.closed {
                        return Err(ServiceError::ShuttingDown);
                    }
                    st.queues.entry(queue.clone()).or_default().notify.clone()
                };
                let notified = notify.notified();
                tokio::pin!(notified);
                // Registered before looking, so an event enqueued after the look wakes us.
                notified.as_mut().enable();
                let taken = self.inner.take(queue, max.max(1));
                if !taken.is_empty() {
                    // No await between taking and returning: cancel-safe. A store that
                    // panics (a bug in it) must not lose what was taken: contained here,
                    // the events go back and the claim fails.
                    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.inner.read(&taken)
                    }));
                    match read {
                        Ok(Ok(events)) if events.is_empty() => continue,
                        Ok(Ok(events)) => return Ok(events),
                        Ok(Err(e)) => {
                            self.inner.put_back(queue, taken);
                            return Err(e);
                        }
                        Err(_) => {
                            self.inner.put_back(queue, taken);
                            return Err(ServiceError::Storage(
                                "the store failed while reading events for delivery".into(),
                            ));
                        }
                    }
                }
                notified.await;
            }
        })
    }

    fn ack<'a>(
        &'a self,
        queue: &'a QueueKey,
        id: &'a str,
        block: u64,
    ) -> BoxFuture<'a, Result<bool, ServiceError>> {
        Box::pin(async move {
            let op = WriteOp::Remove {
                recipient: queue.recipient.to_string(),
                name: queue.name.to_string(),
                block,
            };
            self.inner.settle(queue, id, block, op).await
        })
    }

    fn discard<'a>(
        &'a self,
        queue: &'a QueueKey,
        id: &'a str,
        block: u64,
    ) -> BoxFuture<'a, Result<bool, ServiceError>> {
        self.ack(queue, id, block)
    }

    fn defer<'a>(
        &'a self,
        queue: &'a QueueKey,
        id: &'a str,
        block: u64,
        due_ms: u64,
    ) -> BoxFuture<'a, Result<bool, ServiceError>> {
        Box::pin(async move {
            let op = WriteOp::SetDue {
                recipient: queue.recipient.to_string(),
                name: queue.name.to_string(),
                block,
                due_ms,
            };
            let existed = self.inner.settle(queue, id, block, op).await?;
            if existed {
                let mut st = lock(&self.inner.state);
                st.defer(queue.clone(), block, Arc::from(id), due_ms);
                drop(st);
                self.inner.timers.notify_one();
            }
            Ok(existed)
        })
    }

    fn release(&self, queue: &QueueKey, id: &str, block: u64) {
        lock(&self.inner.state).enqueue(queue.clone(), block, id);
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<StoredEvent>, ServiceError>> {
        Box::pin(async move {
            let store = self.inner.store()?;
            Ok(store.events(&[id])?.pop().flatten())
        })
    }

    fn records(&self) -> BoxFuture<'_, Result<super::Records, ServiceError>> {
        Box::pin(async move { Ok(self.inner.store()?.records()?) })
    }

    fn put_record<'a>(
        &'a self,
        key: &'a str,
        value: Option<Vec<u8>>,
    ) -> BoxFuture<'a, Result<super::Revision, ServiceError>> {
        Box::pin(async move {
            let op = WriteOp::PutRecord {
                key: key.to_owned(),
                value,
            };
            // No other node reads this store: no revisions to order changes by.
            self.inner.write(op, None).await.map(|_| 0)
        })
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            if self.inner.store().is_err() {
                return Err("the store is closed".to_owned());
            }
            let writer_alive = lock(&self.inner.writer)
                .as_ref()
                .is_some_and(|tx| !tx.is_closed());
            let thread_alive = lock(&self.inner.writer_thread)
                .as_ref()
                .is_some_and(|t| !t.is_finished());
            if writer_alive && thread_alive {
                Ok(())
            } else {
                Err("the store's writer has stopped".to_owned())
            }
        })
    }

    fn stats(&self) -> BackendStats {
        let st = lock(&self.inner.state);
        BackendStats {
            ready: Some(st.queues.values().map(|q| q.ready.len() as u64).sum()),
            deferred: Some(st.deferred.len() as u64),
            held: None,
            commits: self.inner.commits.load(Ordering::Relaxed),
            committed_ops: self.inner.committed_ops.load(Ordering::Relaxed),
            store_bytes: self.inner.store().ok().and_then(|s| s.size_bytes()),
        }
    }

    fn queue_counts(&self) -> Option<Vec<QueueCounts>> {
        let st = lock(&self.inner.state);
        Some(
            st.queues
                .iter()
                .map(|(key, q)| QueueCounts::new(key.clone(), q.ready.len() as u64, q.deferred))
                .collect(),
        )
    }

    fn spawn_background(&self) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            tokio::spawn(scheduler(Arc::downgrade(&self.inner))),
            tokio::spawn(purger(Arc::downgrade(&self.inner))),
        ]
    }

    fn close_now(&self) {
        {
            let mut st = lock(&self.inner.state);
            st.closed = true;
            for q in st.queues.values() {
                q.notify.notify_waiters();
            }
        }
        self.inner.timers.notify_one();
        lock(&self.inner.writer).take();
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.close_now();
            let handle = lock(&self.inner.writer_thread).take();
            if let Some(handle) = handle {
                let _ = tokio::task::spawn_blocking(move || handle.join()).await;
            }
            if let Ok(mut store) = self.inner.store.write() {
                store.take();
            }
        })
    }
}

/// Moves deferred events into their queues when they are due.
async fn scheduler(inner: Weak<Inner>) {
    loop {
        let Some(node) = inner.upgrade() else { return };
        let next = {
            let mut st = lock(&node.state);
            if st.closed {
                return;
            }
            let now = now_ms();
            while let Some(entry) = st.deferred.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let (key, block, id) = entry.remove();
                if let Some(q) = st.queues.get_mut(&key) {
                    q.deferred = q.deferred.saturating_sub(1);
                }
                st.enqueue(key, block, &id);
            }
            st.deferred
                .first_key_value()
                .map(|((due, _), _)| *due - now)
        };
        // Wait for the next due time, or for a new deferral; at most a minute, so the
        // task notices a backend that is gone.
        let wait = Duration::from_millis(next.unwrap_or(60_000).min(60_000));
        let _ = tokio::time::timeout(wait, node.timers.notified()).await;
    }
}

/// Deletes records older than the retention window (pending events are kept).
async fn purger(inner: Weak<Inner>) {
    let period = match inner.upgrade() {
        Some(i) => Duration::from_millis(i.retention_ms / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(3600)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(node) = inner.upgrade() else { return };
        let before_ms = now_ms().saturating_sub(node.retention_ms);
        match node.write(WriteOp::Purge { before_ms }, None).await {
            Ok(WriteOutcome::Purged(n)) if n > 0 => tracing::debug!(purged = n, "retention purge"),
            Ok(_) => {}
            Err(ServiceError::ShuttingDown) => return,
            Err(e) => tracing::warn!(error = %e, "retention purge failed"),
        }
    }
}

/// Whether a write only settles an event already stored (ack, discard, defer): such a
/// batch may wait a little for a publish to share its commit.
fn settles(op: &WriteOp) -> bool {
    matches!(op, WriteOp::Remove { .. } | WriteOp::SetDue { .. })
}

/// Moves every write already waiting into `batch`, up to `max_batch`.
fn drain(rx: &mut mpsc::Receiver<WriteReq>, batch: &mut Vec<WriteReq>, max_batch: usize) {
    while batch.len() < max_batch {
        match rx.try_recv() {
            Ok(r) => batch.push(r),
            Err(_) => break,
        }
    }
}

/// The group-commit writer: commits everything waiting (up to `max_batch` writes) in one
/// transaction, enqueues the new events in block order, then answers each request.
/// `max_batch = 1` is one commit per write (`group_commit = false`).
///
/// A batch of settlements only (acks, discards, defers) waits up to `settle_delay` for a
/// publish, and commits as soon as one arrives: at a steady rate each event's ack then
/// shares the next publish's `fsync` instead of taking one of its own, so a publish
/// rarely waits behind a commit of acks (the latency tail) and the disk does half the
/// flushes. The settlements are still answered only once committed.
fn writer_loop(
    mut rx: mpsc::Receiver<WriteReq>,
    store: Arc<dyn Store>,
    inner: Weak<Inner>,
    max_batch: usize,
    settle_delay: Duration,
    metrics: Option<Arc<Metrics>>,
) {
    // The wait for a publish needs a timer: a runtime of this thread's own (nothing else
    // runs on it; the commit blocks it, as the thread is there for).
    let timer = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            tracing::warn!(error = %e, "no timer for the writer: settlements commit at once");
            None
        }
    };
    let settle_delay = if max_batch > 1 && timer.is_some() {
        settle_delay
    } else {
        Duration::ZERO
    };
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        drain(&mut rx, &mut batch, max_batch);
        if let Some(rt) = timer.as_ref().filter(|_| !settle_delay.is_zero()) {
            if batch.iter().all(|r| settles(&r.op)) {
                let deadline = tokio::time::Instant::now() + settle_delay;
                rt.block_on(async {
                    while batch.len() < max_batch {
                        match tokio::time::timeout_at(deadline, rx.recv()).await {
                            Ok(Some(r)) => {
                                let from = batch.len();
                                batch.push(r);
                                drain(&mut rx, &mut batch, max_batch);
                                if batch[from..].iter().any(|r| !settles(&r.op)) {
                                    break;
                                }
                            }
                            // Closed (shutting down: commit what is here) or waited enough.
                            Ok(None) | Err(_) => break,
                        }
                    }
                });
            }
        }
        // The ops move into the commit (a publish's op holds its whole payload: no copy).
        let mut ops = Vec::with_capacity(batch.len());
        let mut batch: Vec<_> = batch
            .into_iter()
            .map(|r| {
                ops.push(r.op);
                (r.enqueue, r.reply)
            })
            .collect();
        let t0 = Instant::now();
        let res = store.commit(&ops);
        let elapsed = t0.elapsed();
        tracing::trace!(ops = ops.len(), ?elapsed, "group commit");
        if let (Some(m), Ok(_)) = (&metrics, &res) {
            m.commit_seconds.observe(elapsed.as_secs_f64());
            m.commit_batch.observe(ops.len() as f64);
        }
        match res {
            Ok(outcomes) => {
                if let Some(node) = inner.upgrade() {
                    node.commits.fetch_add(1, Ordering::Relaxed);
                    node.committed_ops
                        .fetch_add(outcomes.len() as u64, Ordering::Relaxed);
                    let mut st = lock(&node.state);
                    for ((enqueue, _), out) in batch.iter_mut().zip(&outcomes) {
                        if let (Some((key, id)), WriteOutcome::Published { block }) =
                            (enqueue.take(), out)
                        {
                            st.enqueue(key, *block, &id);
                        }
                    }
                }
                for ((_, reply), out) in batch.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(out));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, ops = batch.len(), "commit failed");
                let err = ServiceError::from(e);
                for (_, reply) in batch {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u64) -> NewEvent {
        NewEvent {
            id: crate::service::event_id(),
            recipient: "recipient-key".into(),
            name: "orders/created".into(),
            sender: "sender-key".into(),
            payload: format!("payload {n}"),
            metadata: "{}".into(),
            payload_metadata: None,
            published_ms: now_ms(),
        }
    }

    async fn claim_one(backend: &EmbeddedBackend, key: &QueueKey) -> StoredEvent {
        let mut taken = backend.claim(key, 1).await.unwrap();
        assert_eq!(taken.len(), 1);
        taken.remove(0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_ack_waits_for_a_publish_to_share_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(crate::store::RedbStore::open(dir.path()).unwrap());
        let delay = Duration::from_millis(600);
        let backend = EmbeddedBackend::open_with_metrics(store, true, 60_000, delay, None).unwrap();
        let key = QueueKey::new("recipient-key", "orders/created");

        backend.publish(event(1)).await.unwrap();
        let first = claim_one(&backend, &key).await;
        let commits = backend.stats().commits;
        // The ack waits; a publish arriving meanwhile commits with it, at once.
        let started = Instant::now();
        let (acked, published) =
            tokio::join!(backend.ack(&key, &first.event.id, first.block), async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                backend.publish(event(2)).await
            });
        assert!(acked.unwrap(), "the held event was acknowledged");
        published.unwrap();
        assert_eq!(
            backend.stats().commits,
            commits + 1,
            "one commit for the ack and the publish"
        );
        assert!(
            started.elapsed() < delay,
            "the publish ended the wait: {:?}",
            started.elapsed()
        );

        // With no publish coming, the ack commits alone once the delay is over.
        let second = claim_one(&backend, &key).await;
        let started = Instant::now();
        assert!(
            backend
                .ack(&key, &second.event.id, second.block)
                .await
                .unwrap()
        );
        assert!(started.elapsed() >= delay, "waited {:?}", started.elapsed());
        assert_eq!(backend.stats().commits, commits + 2);
        // Acknowledged: neither event is delivered again.
        assert_eq!(backend.stats().ready, Some(0));

        // No delay: a lone ack commits at once.
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(crate::store::RedbStore::open(dir.path()).unwrap());
        let backend = EmbeddedBackend::open(store, true, 60_000).unwrap();
        backend.publish(event(3)).await.unwrap();
        let third = claim_one(&backend, &key).await;
        let started = Instant::now();
        assert!(
            backend
                .ack(&key, &third.event.id, third.block)
                .await
                .unwrap()
        );
        assert!(started.elapsed() < delay, "waited {:?}", started.elapsed());
    }

    #[test]
    fn queued_ids_give_back_the_same_text() {
        let own = crate::service::event_id();
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
            assert_eq!(QueuedId::new(id).text(), id, "{id:?}");
        }
        assert!(matches!(QueuedId::new(&own), QueuedId::Hex(_)));
        assert!(matches!(
            QueuedId::new("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"),
            QueuedId::Text(_)
        ));
    }
}
