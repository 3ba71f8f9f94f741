//! The JetStream backend: several nodes share one NATS JetStream stream, so any of them
//! can serve any client and any of them can die.
//!
//! Mapping (the design and the checks behind it are in the node README, "Past one
//! machine"):
//! - one stream (`[jetstream] stream`, Limits retention, `max_age` = `retention_secs`,
//!   `allow_direct`, `replicas` copies), every queue a subject of it
//!   (`<stream>.<recipient hex>.<escaped name>`, see `codec`);
//! - one durable pull consumer per queue, shared by every node: explicit ack,
//!   `max_deliver = -1`, `ack_wait` from the config, a large `max_ack_pending`;
//! - publish waits for the stream's ack (a majority of replicas) before it answers, with
//!   `Nats-Msg-Id` = the node's event id, so a retry during a leader change is
//!   deduplicated; the event id is then the stream sequence plus a tag (replay is a
//!   direct get by sequence, the tag checked);
//! - ack = `+ACK`, discard = `+TERM`, defer = `-NAK` with a delay, each confirmed by the
//!   server (a request to the ack subject); release = `-NAK` without delay, not waited for;
//! - what this node holds (claimed, or fetched and waiting for a claimer) gets `+WPI`
//!   (progress) every third of `ack_wait`; what a dead node held comes back after
//!   `ack_wait`;
//! - pause, windows and sessions stay in the node;
//! - the admin API's records (access keys, event definitions) are in a key-value bucket
//!   beside the stream, `<stream>_RECORDS`, watched by every node, so a change made
//!   through any node's admin API applies on all of them (`records`);
//! - readiness: connected to NATS, and the stream and the bucket answer (cached 1 s);
//!   the ready and deferred counts come from the queues' consumers every 2 s
//!   (approximate, see [`BackendStats`]).
//!
//! Claiming is cancel-safe: per queue, a puller task fetches from the consumer into a
//! small local buffer only while some claimer waits, and [`Backend::claim`] takes from
//! that buffer without awaiting in between. Fetched events nobody claims within
//! [`LINGER`] are given back (`-NAK`) for other nodes.

pub(crate) mod codec;
pub mod config;
mod records;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use async_nats::{Subject, jetstream::context::PublishErrorKind};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

use super::{
    Backend, BackendStats, Published, QueueCounts, QueueKey, RecordChange, Records, Revision,
};
use crate::config::{ConfigError, NodeConfig};
use crate::service::{ServiceError, now_ms};
use crate::store::{NewEvent, StoredEvent};
use config::JetStreamConfig;

/// How long fetched events wait in a queue's buffer with no claimer before they are
/// given back to the stream.
pub const LINGER: Duration = Duration::from_secs(1);
/// A queue with no claimer, nothing buffered and nothing held for this long stops its
/// puller (and is forgotten until it is claimed again).
const IDLE_EXIT: Duration = Duration::from_secs(30);
/// Most events one fetch asks for.
const MAX_PULL: usize = 64;
/// How long one fetch waits on the server for events.
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// A fetch the server has not ended this long after [`PULL_EXPIRES`] is taken as lost
/// and made again. The consumer's leader holds the fetch: when that server dies (or the
/// leadership moves), nobody answers it, and async-nats itself gives up only 5 s after
/// the expiry, so the queue stood still for 7-10 s after its leader was killed.
const PULL_GRACE: Duration = Duration::from_secs(1);
/// Longest pause between fetch attempts while they fail (no leader yet, no responders).
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Publishes waiting for the stream's ack at a time (async-nats stalls when thousands of
/// acks wait unread).
const PUBLISH_SLOTS: usize = 512;
/// How long a publish keeps retrying (the same `Nats-Msg-Id`) while the stream has no
/// leader, before it fails.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(15);
/// One publish attempt, and one API call.
const ATTEMPT: Duration = Duration::from_secs(5);
/// How long an ack, discard or defer waits for the server's confirmation.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`JetStreamBackend::connect`] keeps trying to reach the cluster and set up
/// the stream.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// `max_ack_pending` of every queue's consumer: events handed out (and deferred ones,
/// which count until due) per queue across every node.
const MAX_ACK_PENDING: i64 = 100_000;
/// Bytes a record may take beyond its payload and metadata (keys, name, framing, the
/// `Nats-Msg-Id` header).
const RECORD_ALLOWANCE: usize = 4096;
/// A record that cannot be read is held back this long before JetStream offers it again.
const UNREADABLE_DELAY: Duration = Duration::from_secs(3600);
/// How long one answer of [`Backend::ready`] is reused.
const READY_CACHE: Duration = Duration::from_secs(1);
/// How long [`Backend::ready`] waits for the stream and the bucket to answer (a
/// readiness probe's own timeout is often 1 s).
const READY_TIMEOUT: Duration = Duration::from_millis(900);
/// How often the ready and deferred counts are read from the stream's consumers.
const COUNT_PERIOD: Duration = Duration::from_secs(2);

/// An event fetched by the puller, not yet claimed.
struct Buffered {
    event: StoredEvent,
    reply: Subject,
}

/// An event claimed by the node, not yet settled.
struct Held {
    id: Box<str>,
    reply: Subject,
}

/// What this node keeps for one queue.
struct Slot {
    buffer: VecDeque<Buffered>,
    /// Stream sequence -> held event.
    held: HashMap<u64, Held>,
    /// Claims waiting, and how many events they want together.
    waiters: usize,
    wanted: usize,
    /// When `waiters` last became 0.
    idle_since: Instant,
    /// Woken when events arrive in `buffer` (claimers wait on it).
    arrived: Arc<Notify>,
    /// Woken when claimers come or go (the puller waits on it).
    pull: Arc<Notify>,
    puller: Option<JoinHandle<()>>,
}

impl Slot {
    fn new() -> Self {
        Self {
            buffer: VecDeque::new(),
            held: HashMap::new(),
            waiters: 0,
            wanted: 0,
            idle_since: Instant::now(),
            arrived: Arc::new(Notify::new()),
            pull: Arc::new(Notify::new()),
            puller: None,
        }
    }

    /// Whether fetched events should go back to the stream rather than wait here.
    fn unwanted(&self) -> bool {
        self.waiters == 0 && self.idle_since.elapsed() >= LINGER
    }
}

#[derive(Default)]
struct State {
    queues: HashMap<QueueKey, Slot>,
    closed: bool,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    stream_name: String,
    ack_wait: Duration,
    state: Mutex<State>,
    publishes: Semaphore,
    published: AtomicU64,
    /// Ack-subject messages spawned by [`Inner::send_later`] and not yet sent.
    outgoing: Arc<AtomicUsize>,
    /// The admin API's records, shared by every node on the stream.
    records: records::Records,
    /// The last answer of [`Backend::ready`] and when it was made.
    ready: Mutex<Option<(Instant, Result<(), String>)>>,
    /// Not yet delivered and handed out (or deferred) events summed over every queue's
    /// consumer, as [`counter`] last read them; `None` when that failed.
    counted: Mutex<Option<(u64, u64)>>,
    /// The same per queue: (queue, not yet delivered, handed out or deferred).
    counted_queues: Mutex<Option<Vec<(QueueKey, u64, u64)>>>,
}

/// The JetStream [`Backend`]. See the [module docs](self).
pub struct JetStreamBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for JetStreamBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamBackend")
            .field("stream", &self.inner.stream_name)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

const ACK: &[u8] = b"+ACK";
const TERM: &[u8] = b"+TERM";
const NAK: &[u8] = b"-NAK";
const PROGRESS: &[u8] = b"+WPI";

fn nak_after(delay: Duration) -> Bytes {
    Bytes::from(format!("-NAK {{\"delay\":{}}}", delay.as_nanos()))
}

impl Inner {
    /// Publishes `payload` to an ack subject without waiting (from any thread; nothing
    /// when there is no tokio runtime: JetStream then redelivers after `ack_wait`).
    /// [`Backend::close`] waits for these.
    fn send_later(&self, reply: Subject, payload: Bytes) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            let outgoing = self.outgoing.clone();
            outgoing.fetch_add(1, Ordering::AcqRel);
            rt.spawn(async move {
                if let Err(e) = client.publish(reply, payload).await {
                    tracing::debug!(error = %e, "could not send an ack-subject message");
                }
                outgoing.fetch_sub(1, Ordering::AcqRel);
            });
        }
    }
}

fn startup_error(what: &str, e: impl std::fmt::Display) -> crate::NodeError {
    crate::NodeError::Io(format!("JetStream: {what}: {e}"))
}

impl JetStreamBackend {
    /// Connects to the `[jetstream]` servers of `config`, checks that their
    /// `max_payload` fits the node's largest event, and creates the stream (or updates
    /// its retention and replicas to the config's). Keeps trying for 30 s while the
    /// cluster is unreachable or has no JetStream leader yet.
    pub async fn connect(config: &NodeConfig) -> Result<Self, crate::NodeError> {
        let js_cfg = config.jetstream.as_ref().ok_or_else(|| {
            crate::NodeError::Config(crate::config::field_err(
                "jetstream",
                "store = \"jetstream\" needs a [jetstream] table",
            ))
        })?;
        js_cfg.validate()?;
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let client = connect_client(js_cfg, deadline).await?;

        let needed = config
            .max_payload_bytes
            .saturating_add(config.max_metadata_bytes.saturating_mul(2))
            .saturating_add(RECORD_ALLOWANCE);
        let max_payload = client.server_info().max_payload;
        if max_payload < needed {
            return Err(ConfigError::Field {
                field: "max_payload_bytes".into(),
                reason: format!(
                    "the NATS server accepts messages of at most {max_payload} bytes (its \
                     max_payload); events of max_payload_bytes {} with metadata need {needed}: \
                     raise max_payload in the NATS server config (e.g. 2MB) or lower \
                     max_payload_bytes",
                    config.max_payload_bytes
                ),
            }
            .into());
        }

        let js = jetstream::ContextBuilder::new()
            .timeout(ATTEMPT)
            .ack_timeout(ATTEMPT)
            .max_ack_inflight(PUBLISH_SLOTS)
            .backpressure_on_inflight(true)
            .build(client.clone());
        let retention = Duration::from_secs(config.retention_secs);
        let stream = ensure_stream(&js, js_cfg, retention, deadline).await?;
        let records = records::Records::open(
            client.clone(),
            js.clone(),
            &js_cfg.stream,
            js_cfg.replicas,
            deadline,
        )
        .await
        .map_err(|e| startup_error("records", e))?;
        tracing::info!(stream = %js_cfg.stream, replicas = js_cfg.replicas,
            servers = ?js_cfg.servers, "JetStream backend ready");
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                js,
                stream,
                stream_name: js_cfg.stream.clone(),
                ack_wait: Duration::from_millis(js_cfg.ack_wait_ms),
                state: Mutex::new(State::default()),
                publishes: Semaphore::new(PUBLISH_SLOTS),
                published: AtomicU64::new(0),
                outgoing: Arc::new(AtomicUsize::new(0)),
                records,
                ready: Mutex::new(None),
                counted: Mutex::new(None),
                counted_queues: Mutex::new(None),
            }),
        })
    }
}

/// The pause before reconnect attempt `attempts`: none for the first, then 100 ms
/// doubling up to 1 s.
fn reconnect_delay(attempts: usize) -> Duration {
    match attempts {
        0 | 1 => Duration::ZERO,
        n => Duration::from_millis(100u64 << (n - 2).min(4)).min(Duration::from_secs(1)),
    }
}

async fn connect_client(
    cfg: &JetStreamConfig,
    deadline: Instant,
) -> Result<async_nats::Client, crate::NodeError> {
    let mut opts = async_nats::ConnectOptions::new()
        .name("ensync-node")
        .connection_timeout(ATTEMPT)
        .request_timeout(Some(ATTEMPT))
        // Reconnect for ever: the cluster may be away for a while; try at least every
        // second, so a node is ready again soon after the cluster is back.
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay);
    if let Some(path) = &cfg.credentials {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|e| startup_error(&format!("credentials {}", path.display()), e))?;
    }
    if let (Some(user), Some(password)) = (&cfg.user, &cfg.password) {
        opts = opts.user_and_password(user.clone(), password.expose().to_owned());
    }
    if let Some(token) = &cfg.token {
        opts = opts.token(token.expose().to_owned());
    }
    for path in [&cfg.tls_ca, &cfg.tls_cert, &cfg.tls_key]
        .into_iter()
        .flatten()
    {
        if let Err(e) = std::fs::metadata(path) {
            return Err(startup_error(&format!("{}", path.display()), e));
        }
    }
    if let Some(ca) = &cfg.tls_ca {
        opts = opts.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    if cfg.tls() {
        opts = opts.require_tls(true);
    }
    let servers: Vec<async_nats::ServerAddr> = cfg
        .servers
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| startup_error("servers", e))?;
    loop {
        match opts.clone().connect(servers.as_slice()).await {
            Ok(client) => return Ok(client),
            Err(e) => {
                use async_nats::ConnectErrorKind as K;
                let fatal = matches!(
                    e.kind(),
                    K::Authentication | K::AuthorizationViolation | K::Tls | K::ServerParse
                );
                if fatal || Instant::now() >= deadline {
                    return Err(startup_error("cannot connect", e));
                }
                tracing::warn!(error = %e, "JetStream: cannot connect yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The stream as the config wants it.
fn stream_config(cfg: &JetStreamConfig, retention: Duration) -> stream::Config {
    stream::Config {
        name: cfg.stream.clone(),
        subjects: vec![format!("{}.>", cfg.stream)],
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        max_age: retention,
        num_replicas: cfg.replicas,
        allow_direct: true,
        // JetStream's default window, but never longer than the retention (it refuses that).
        duplicate_window: Duration::from_secs(120).min(retention),
        description: Some("EnSync queues (ensync node, store = \"jetstream\")".into()),
        ..Default::default()
    }
}

async fn ensure_stream(
    js: &jetstream::Context,
    cfg: &JetStreamConfig,
    retention: Duration,
    deadline: Instant,
) -> Result<stream::Stream, crate::NodeError> {
    let want = stream_config(cfg, retention);
    loop {
        let err = match js.get_stream(&cfg.stream).await {
            Ok(mut s) => match s.info().await {
                Ok(info) => {
                    let have = &info.config;
                    if have.max_age == want.max_age
                        && have.num_replicas == want.num_replicas
                        && have.allow_direct
                        && have.subjects == want.subjects
                    {
                        return Ok(s);
                    }
                    let mut update = have.clone();
                    update.max_age = want.max_age;
                    update.num_replicas = want.num_replicas;
                    update.allow_direct = true;
                    update.subjects = want.subjects.clone();
                    match js.update_stream(&update).await {
                        Ok(_) => {
                            tracing::info!(stream = %cfg.stream,
                                "JetStream: updated the stream's retention/replicas to the config's");
                            continue;
                        }
                        Err(e) => format!("cannot update the stream: {e}"),
                    }
                }
                Err(e) => format!("cannot read the stream: {e}"),
            },
            Err(e) => {
                let missing = matches!(e.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND);
                if missing {
                    match js.create_stream(&want).await {
                        Ok(s) => return Ok(s),
                        // Another node may have created it meanwhile: look again.
                        Err(e) => format!("cannot create the stream: {e}"),
                    }
                } else {
                    format!("cannot look up the stream: {e}")
                }
            }
        };
        if Instant::now() >= deadline {
            return Err(startup_error(&format!("stream {:?}", cfg.stream), err));
        }
        tracing::warn!(stream = %cfg.stream, error = %err, "JetStream not ready; retrying");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

impl Inner {
    fn subject(&self, queue: &QueueKey) -> Option<String> {
        codec::subject(&self.stream_name, &queue.recipient, &queue.name)
    }

    /// Takes up to `max` buffered events of `queue`; they are held from then on.
    fn take(&self, queue: &QueueKey, max: usize) -> Result<Vec<StoredEvent>, ServiceError> {
        let mut st = lock(&self.state);
        if st.closed {
            return Err(ServiceError::ShuttingDown);
        }
        let Some(slot) = st.queues.get_mut(queue) else {
            return Ok(Vec::new());
        };
        let mut taken = Vec::new();
        while taken.len() < max {
            let Some(b) = slot.buffer.pop_front() else {
                break;
            };
            slot.held.insert(
                b.event.block,
                Held {
                    id: b.event.event.id.as_str().into(),
                    reply: b.reply,
                },
            );
            taken.push(b.event);
        }
        Ok(taken)
    }

    /// A message the puller fetched for `queue`.
    fn arrived(&self, queue: &QueueKey, msg: jetstream::Message) {
        let (seq, delivered) = match msg.info() {
            Ok(info) => (info.stream_sequence, info.delivered),
            Err(e) => {
                tracing::warn!(error = %e, "JetStream: a fetched message has no ack subject");
                return;
            }
        };
        let Some(reply) = msg.message.reply.clone() else {
            return;
        };
        let event = match codec::decode(seq, &msg.message.payload) {
            Ok((ev, _))
                if *ev.event.recipient == *queue.recipient && *ev.event.name == *queue.name =>
            {
                ev
            }
            Ok(_) => {
                self.hold_back(
                    seq,
                    "its record names another queue than its subject",
                    reply,
                );
                return;
            }
            Err(why) => {
                self.hold_back(seq, why, reply);
                return;
            }
        };
        let mut st = lock(&self.state);
        let closed = st.closed;
        let Some(slot) = st.queues.get_mut(queue) else {
            drop(st);
            self.send_later(reply, Bytes::from_static(NAK));
            return;
        };
        // Delivered again while this node still has it (its progress reports came too
        // late): keep one copy, acked through the newest delivery.
        if let Some(h) = slot.held.get_mut(&seq) {
            h.reply = reply;
            return;
        }
        if let Some(b) = slot.buffer.iter_mut().find(|b| b.event.block == seq) {
            b.reply = reply;
            return;
        }
        if slot.unwanted() || closed {
            drop(st);
            self.send_later(reply, Bytes::from_static(NAK));
            return;
        }
        tracing::trace!(seq, delivered, "fetched");
        slot.buffer.push_back(Buffered { event, reply });
        slot.arrived.notify_waiters();
    }

    fn hold_back(&self, seq: u64, why: &str, reply: Subject) {
        tracing::error!(stream = %self.stream_name, seq, error = why,
            "stored record cannot be read; holding the event back");
        self.send_later(reply, nak_after(UNREADABLE_DELAY));
    }

    /// Takes a held event out of `held` (checking its id) for settling.
    fn unhold(&self, queue: &QueueKey, id: &str, block: u64) -> Option<Subject> {
        let mut st = lock(&self.state);
        let slot = st.queues.get_mut(queue)?;
        match slot.held.get(&block) {
            Some(h) if *h.id == *id => {}
            _ => return None,
        }
        let h = slot.held.remove(&block)?;
        slot.pull.notify_one();
        Some(h.reply)
    }

    /// Settles a held event with `payload` and waits for the server's confirmation. On
    /// failure the event is given back (`-NAK`): it will be delivered again.
    async fn settle(
        &self,
        queue: &QueueKey,
        id: &str,
        block: u64,
        payload: Bytes,
        what: &str,
    ) -> Result<bool, ServiceError> {
        let Some(reply) = self.unhold(queue, id, block) else {
            return Ok(false);
        };
        let res =
            tokio::time::timeout(SETTLE_TIMEOUT, self.client.request(reply.clone(), payload)).await;
        let why = match res {
            Ok(Ok(_)) => return Ok(true),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer in time".to_owned(),
        };
        self.send_later(reply, Bytes::from_static(NAK));
        Err(ServiceError::Storage(format!(
            "JetStream did not confirm the {what} of {id:?}: {why}"
        )))
    }

    async fn consumer(&self, subject: &str) -> Result<consumer::PullConsumer, String> {
        let cfg = consumer::pull::Config {
            durable_name: Some(codec::consumer_name(subject)),
            description: Some(format!("ensync queue {subject}")),
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: -1,
            filter_subject: subject.to_owned(),
            max_ack_pending: MAX_ACK_PENDING,
            ..Default::default()
        };
        self.stream
            .create_consumer(cfg)
            .await
            .map_err(|e| e.to_string())
    }
}

/// A claim waiting on a queue: counted in the queue's slot while it lives.
struct Waiter<'a> {
    inner: &'a Arc<Inner>,
    queue: &'a QueueKey,
    max: usize,
}

impl<'a> Waiter<'a> {
    fn register(
        inner: &'a Arc<Inner>,
        queue: &'a QueueKey,
        max: usize,
    ) -> Result<Self, ServiceError> {
        let mut st = lock(&inner.state);
        if st.closed {
            return Err(ServiceError::ShuttingDown);
        }
        let slot = st.queues.entry(queue.clone()).or_insert_with(Slot::new);
        slot.waiters += 1;
        slot.wanted += max;
        if slot.puller.as_ref().is_none_or(JoinHandle::is_finished) {
            slot.puller = Some(tokio::spawn(puller(Arc::downgrade(inner), queue.clone())));
        }
        slot.pull.notify_one();
        Ok(Self { inner, queue, max })
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut st = lock(&self.inner.state);
        if let Some(slot) = st.queues.get_mut(self.queue) {
            slot.waiters = slot.waiters.saturating_sub(1);
            slot.wanted = slot.wanted.saturating_sub(self.max);
            if slot.waiters == 0 {
                slot.idle_since = Instant::now();
            }
            slot.pull.notify_one();
        }
    }
}

/// The puller of one queue: fetches from its consumer while claimers want events, gives
/// back what nobody claims, and ends when the queue has been idle for [`IDLE_EXIT`].
async fn puller(inner: Weak<Inner>, key: QueueKey) {
    let Some(subject) = inner.upgrade().and_then(|i| i.subject(&key)) else {
        tracing::error!(recipient = %key.recipient, "JetStream: not a queue key");
        return;
    };
    let mut consumer: Option<consumer::PullConsumer> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(node) = inner.upgrade() else { return };
        let (want, pull, give_back) = {
            let mut st = lock(&node.state);
            if st.closed {
                return;
            }
            let Some(slot) = st.queues.get_mut(&key) else {
                return;
            };
            let mut give_back = Vec::new();
            if slot.unwanted() && !slot.buffer.is_empty() {
                give_back = slot.buffer.drain(..).map(|b| b.reply).collect();
            }
            if slot.waiters == 0
                && slot.buffer.is_empty()
                && slot.held.is_empty()
                && slot.idle_since.elapsed() >= IDLE_EXIT
            {
                st.queues.remove(&key);
                return;
            }
            let want = slot.wanted.saturating_sub(slot.buffer.len()).min(MAX_PULL);
            (want, slot.pull.clone(), give_back)
        };
        for reply in give_back {
            let _ = node.client.publish(reply, Bytes::from_static(NAK)).await;
        }
        if want == 0 {
            drop(node);
            let _ = tokio::time::timeout(LINGER, pull.notified()).await;
            continue;
        }
        let c = match &consumer {
            Some(c) => c.clone(),
            None => match node.consumer(&subject).await {
                Ok(c) => {
                    consumer = Some(c.clone());
                    c
                }
                Err(e) => {
                    tracing::warn!(subject, error = %e, "JetStream: cannot set up the queue's consumer; retrying");
                    drop(node);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        drop(node);
        let batch = c
            .batch()
            .max_messages(want)
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(subject, error = %e, "JetStream: fetch failed; retrying");
                // The consumer may be gone (deleted by an operator): set it up again.
                consumer = None;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let mut failed = false;
        let answer_by = tokio::time::Instant::now() + PULL_EXPIRES + PULL_GRACE;
        loop {
            match tokio::time::timeout_at(answer_by, batch.next()).await {
                Ok(Some(Ok(m))) => {
                    let Some(node) = inner.upgrade() else { return };
                    node.arrived(&key, m);
                }
                Ok(Some(Err(e))) => {
                    tracing::debug!(subject, error = %e, "JetStream: fetch ended with an error");
                    failed = true;
                    break;
                }
                Ok(None) => break,
                Err(_) => {
                    // Whatever the server sends for this fetch from now on is redelivered
                    // after ack_wait.
                    tracing::debug!(
                        subject,
                        "JetStream: fetch not answered in time; fetching again"
                    );
                    break;
                }
            }
        }
        if failed {
            // No responders, a leader change, a deleted consumer: wait a little, then
            // set the consumer up again (idempotent when it exists).
            consumer = None;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        } else {
            backoff = Duration::from_millis(100);
        }
    }
}

/// Reports progress on everything this node holds or has buffered, every third of
/// `ack_wait`, so JetStream does not hand it to another node.
async fn keepalive(inner: Weak<Inner>) {
    let period = match inner.upgrade() {
        Some(i) => (i.ack_wait / 3).max(Duration::from_millis(100)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(node) = inner.upgrade() else { return };
        let replies: Vec<Subject> = {
            let st = lock(&node.state);
            if st.closed {
                return;
            }
            st.queues
                .values()
                .flat_map(|s| {
                    s.held
                        .values()
                        .map(|h| h.reply.clone())
                        .chain(s.buffer.iter().map(|b| b.reply.clone()))
                })
                .collect()
        };
        for reply in replies {
            if let Err(e) = node
                .client
                .publish(reply, Bytes::from_static(PROGRESS))
                .await
            {
                tracing::debug!(error = %e, "JetStream: progress report failed");
            }
        }
    }
}

/// Reads, every [`COUNT_PERIOD`], how many events every queue's consumer has not yet
/// delivered (`num_pending`) and has handed out without an ack (`num_ack_pending`:
/// held by some node, or deferred), into [`Inner::counted`].
async fn counter(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(COUNT_PERIOD).await;
        let Some(node) = inner.upgrade() else { return };
        if lock(&node.state).closed {
            return;
        }
        let sum = async {
            let mut consumers = node.stream.consumers();
            let (mut pending, mut out) = (0u64, 0u64);
            let mut queues = Vec::new();
            while let Some(info) = consumers.next().await {
                let info = info.map_err(|e| e.to_string())?;
                pending = pending.saturating_add(info.num_pending);
                out = out.saturating_add(info.num_ack_pending as u64);
                if let Some((recipient, name)) =
                    codec::parse_subject(&node.stream_name, &info.config.filter_subject)
                {
                    queues.push((
                        QueueKey::new(&recipient, &name),
                        info.num_pending,
                        info.num_ack_pending as u64,
                    ));
                }
            }
            Ok::<_, String>(((pending, out), queues))
        };
        let (counted, queues) = match tokio::time::timeout(ATTEMPT, sum).await {
            Ok(Ok((c, q))) => (Some(c), Some(q)),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "JetStream: cannot count the queues' events");
                (None, None)
            }
            Err(_) => (None, None),
        };
        *lock(&node.counted) = counted;
        *lock(&node.counted_queues) = queues;
    }
}

fn retryable(kind: PublishErrorKind) -> bool {
    matches!(
        kind,
        PublishErrorKind::TimedOut
            | PublishErrorKind::StreamNotFound
            | PublishErrorKind::BrokenPipe
            | PublishErrorKind::MaxAckPending
            | PublishErrorKind::Other
    )
}

impl Backend for JetStreamBackend {
    fn kind(&self) -> &'static str {
        "jetstream"
    }

    fn publish(&self, event: NewEvent) -> BoxFuture<'_, Result<Published, ServiceError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let _slot = inner
                .publishes
                .acquire()
                .await
                .map_err(|_| ServiceError::ShuttingDown)?;
            if lock(&inner.state).closed {
                return Err(ServiceError::ShuttingDown);
            }
            let subject = codec::subject(&inner.stream_name, &event.recipient, &event.name)
                .ok_or_else(|| {
                    ServiceError::Invalid(format!("unknown recipient {:?}", event.recipient))
                })?;
            let tag = codec::tag_of(&event.id);
            let body = Bytes::from(codec::encode(&event, tag));
            let deadline = Instant::now() + PUBLISH_DEADLINE;
            let mut pause = Duration::from_millis(100);
            loop {
                let attempt = async {
                    let msg = jetstream::message::PublishMessage::build()
                        .message_id(&event.id)
                        .payload(body.clone());
                    inner.js.send_publish(subject.clone(), msg).await?.await
                };
                let why = match tokio::time::timeout(ATTEMPT, attempt).await {
                    Ok(Ok(ack)) if ack.stream == inner.stream_name => {
                        inner.published.fetch_add(1, Ordering::Relaxed);
                        return Ok(Published {
                            id: codec::event_id(ack.sequence, tag),
                            block: ack.sequence,
                        });
                    }
                    Ok(Ok(ack)) => {
                        return Err(ServiceError::Storage(format!(
                            "JetStream stored the event in stream {:?}, not {:?}",
                            ack.stream, inner.stream_name
                        )));
                    }
                    Ok(Err(e)) if !retryable(e.kind()) => {
                        return Err(ServiceError::Storage(format!(
                            "JetStream refused the event: {e}"
                        )));
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "no ack in time".to_owned(),
                };
                if Instant::now() + pause >= deadline {
                    return Err(ServiceError::Storage(format!(
                        "JetStream did not store the event: {why}"
                    )));
                }
                tracing::debug!(error = %why, "JetStream publish not acknowledged; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        })
    }

    fn claim<'a>(
        &'a self,
        queue: &'a QueueKey,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<StoredEvent>, ServiceError>> {
        Box::pin(async move {
            let max = max.max(1);
            let inner = &self.inner;
            let _waiter = Waiter::register(inner, queue, max)?;
            loop {
                let arrived = {
                    let st = lock(&inner.state);
                    if st.closed {
                        return Err(ServiceError::ShuttingDown);
                    }
                    match st.queues.get(queue) {
                        Some(slot) => slot.arrived.clone(),
                        None => return Err(ServiceError::ShuttingDown),
                    }
                };
                let notified = arrived.notified();
                tokio::pin!(notified);
                // Registered before looking, so an arrival after the look wakes us.
                notified.as_mut().enable();
                // No await between taking and returning: cancel-safe.
                let taken = inner.take(queue, max)?;
                if !taken.is_empty() {
                    return Ok(taken);
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
        Box::pin(
            self.inner
                .settle(queue, id, block, Bytes::from_static(ACK), "ack"),
        )
    }

    fn discard<'a>(
        &'a self,
        queue: &'a QueueKey,
        id: &'a str,
        block: u64,
    ) -> BoxFuture<'a, Result<bool, ServiceError>> {
        Box::pin(
            self.inner
                .settle(queue, id, block, Bytes::from_static(TERM), "discard"),
        )
    }

    fn defer<'a>(
        &'a self,
        queue: &'a QueueKey,
        id: &'a str,
        block: u64,
        due_ms: u64,
    ) -> BoxFuture<'a, Result<bool, ServiceError>> {
        let delay = Duration::from_millis(due_ms.saturating_sub(now_ms()));
        Box::pin(
            self.inner
                .settle(queue, id, block, nak_after(delay), "defer"),
        )
    }

    fn release(&self, queue: &QueueKey, id: &str, block: u64) {
        if let Some(reply) = self.inner.unhold(queue, id, block) {
            self.inner.send_later(reply, Bytes::from_static(NAK));
        }
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<StoredEvent>, ServiceError>> {
        Box::pin(async move {
            let Some((seq, tag)) = codec::parse_id(id) else {
                return Ok(None);
            };
            use jetstream::stream::DirectGetErrorKind as D;
            let msg = match self.inner.stream.direct_get(seq).await {
                Ok(m) => m,
                // A replica may lag behind the leader just after the publish: ask the
                // leader before saying it is not there.
                Err(e) if matches!(e.kind(), D::NotFound) => {
                    match self.inner.stream.get_raw_message(seq).await {
                        Ok(m) => m,
                        Err(e)
                            if matches!(
                                e.kind(),
                                jetstream::stream::RawMessageErrorKind::NoMessageFound
                            ) =>
                        {
                            return Ok(None);
                        }
                        Err(e) => {
                            return Err(ServiceError::Storage(format!(
                                "JetStream: cannot read event {id:?}: {e}"
                            )));
                        }
                    }
                }
                Err(e) => {
                    return Err(ServiceError::Storage(format!(
                        "JetStream: cannot read event {id:?}: {e}"
                    )));
                }
            };
            match codec::decode(seq, &msg.payload) {
                Ok((stored, stored_tag)) if stored_tag == tag => Ok(Some(stored)),
                Ok(_) => Ok(None),
                Err(why) => {
                    tracing::error!(seq, error = why, "stored record cannot be read");
                    Ok(None)
                }
            }
        })
    }

    fn stats(&self) -> BackendStats {
        let st = lock(&self.inner.state);
        let held = st
            .queues
            .values()
            .map(|s| (s.held.len() + s.buffer.len()) as u64)
            .sum();
        drop(st);
        let counted = *lock(&self.inner.counted);
        let published = self.inner.published.load(Ordering::Relaxed);
        BackendStats {
            ready: counted.map(|(pending, _)| pending),
            deferred: counted.map(|(_, out)| out.saturating_sub(held)),
            held: Some(held),
            commits: published,
            committed_ops: published,
            // The stream's bytes are on the servers, not here.
            store_bytes: None,
        }
    }

    /// Per queue as [`Backend::stats`] counts in total: approximate and deployment-wide,
    /// from the last read of the queues' consumers (every 2 s): ready = not yet delivered
    /// by the consumer; deferred = handed out without an ack less what this node holds
    /// (so it includes what other nodes hold). Queues without a consumer (no session
    /// subscribed yet) are not listed. `None` until the first read succeeds.
    fn queue_counts(&self) -> Option<Vec<QueueCounts>> {
        let counted = lock(&self.inner.counted_queues).clone()?;
        let st = lock(&self.inner.state);
        Some(
            counted
                .into_iter()
                .map(|(key, pending, out)| {
                    let here = st
                        .queues
                        .get(&key)
                        .map_or(0, |s| (s.held.len() + s.buffer.len()) as u64);
                    QueueCounts::new(key, pending, out.saturating_sub(here))
                })
                .collect(),
        )
    }

    fn spawn_background(&self) -> Vec<JoinHandle<()>> {
        vec![
            tokio::spawn(keepalive(Arc::downgrade(&self.inner))),
            tokio::spawn(counter(Arc::downgrade(&self.inner))),
        ]
    }

    fn records(&self) -> BoxFuture<'_, Result<Records, ServiceError>> {
        Box::pin(self.inner.records.snapshot())
    }

    fn put_record<'a>(
        &'a self,
        key: &'a str,
        value: Option<Vec<u8>>,
    ) -> BoxFuture<'a, Result<Revision, ServiceError>> {
        Box::pin(async move {
            if lock(&self.inner.state).closed {
                return Err(ServiceError::ShuttingDown);
            }
            self.inner.records.put(key, value).await
        })
    }

    fn watch_records(&self) -> Option<BoxStream<'static, RecordChange>> {
        self.inner.records.watch()
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let inner = &self.inner;
            if lock(&inner.state).closed {
                return Err("the backend is closed".to_owned());
            }
            let state = inner.client.connection_state();
            if state != async_nats::connection::State::Connected {
                return Err(format!("not connected to NATS ({state:?})"));
            }
            if let Some((at, answer)) = lock(&inner.ready).as_ref() {
                if at.elapsed() < READY_CACHE {
                    return answer.clone();
                }
            }
            let stream = async {
                match inner.stream.get_info().await {
                    Ok(_) => Ok(()),
                    Err(e) => Err(format!(
                        "stream {:?} does not answer: {e}",
                        inner.stream_name
                    )),
                }
            };
            let answer = match tokio::time::timeout(READY_TIMEOUT, stream).await {
                Ok(Ok(())) => inner.records.answers(READY_TIMEOUT).await,
                Ok(Err(e)) => Err(e),
                Err(_) => Err(format!(
                    "stream {:?} does not answer in time",
                    inner.stream_name
                )),
            };
            *lock(&inner.ready) = Some((Instant::now(), answer.clone()));
            answer
        })
    }

    fn close_now(&self) {
        let give_back: Vec<Subject> = {
            let mut st = lock(&self.inner.state);
            st.closed = true;
            let mut out = Vec::new();
            for slot in st.queues.values_mut() {
                slot.arrived.notify_waiters();
                if let Some(p) = slot.puller.take() {
                    p.abort();
                }
                out.extend(slot.buffer.drain(..).map(|b| b.reply));
                out.extend(slot.held.drain().map(|(_, h)| h.reply));
            }
            out
        };
        self.inner.publishes.close();
        self.inner.records.stop();
        for reply in give_back {
            self.inner.send_later(reply, Bytes::from_static(NAK));
        }
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.close_now();
            // Publishes already accepted finish (their slots come back to the semaphore).
            let _ = tokio::time::timeout(PUBLISH_DEADLINE, async {
                while self.inner.publishes.available_permits() < PUBLISH_SLOTS {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
            // The give-backs reach the connection, then are pushed out.
            let _ = tokio::time::timeout(ATTEMPT, async {
                while self.inner.outgoing.load(Ordering::Acquire) > 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await;
            let _ = tokio::time::timeout(ATTEMPT, self.inner.client.flush()).await;
        })
    }
}
