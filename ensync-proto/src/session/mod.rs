//! The session state machine: all protocol policy of an EnSync client, once.
//!
//! A [`Session`] holds authentication, heartbeats, reconnection with backoff, the set
//! of subscriptions to restore after a reconnect, ack bookkeeping (auto-ack after the
//! handler returns, manual ack, dropping duplicate redeliveries), the RPC generation
//! the node speaks, and the end-to-end encryption of payloads. It does no IO and reads
//! no clock: every runtime adapter (tokio/tonic, h2, blocking, WebSocket) is a small
//! loop around it.
//!
//! Its methods come in four kinds, after quinn-proto's `Connection` and str0m's `Rtc`:
//!
//! - **commands** from the application ([`Session::open`], [`Session::publish`],
//!   [`Session::subscribe`], [`Session::ack`], ...) return an [`OpId`]; the result comes
//!   later as [`SessionEvent::Completed`], exactly once per operation;
//! - **inputs**: transport facts ([`Session::handle_input`] with an [`Input`]) and
//!   timers ([`Session::handle_timeout`]);
//! - **outputs**: [`Session::poll_output`] says what to do next ([`Output`]: open or
//!   drop the transport, make an RPC, cancel a stream, or tell the application
//!   something); [`Session::poll_timeout`] says when to call `handle_timeout`;
//! - **getters**: [`Session::state`], [`Session::client_id`], [`Session::generation`], ...
//!
//! Time is always an argument (`now: Instant`), randomness is injectable
//! ([`SessionConfig::rng`]), so every run replays exactly in tests.
//!
//! # Policy in brief
//!
//! - `open` asks for the transport ([`Output::Connect`]), then sends `Connect`. If the
//!   *first* connection fails, the `open` operation fails and the session closes (no
//!   retry loop: creating a client must fail promptly; with several endpoints, once
//!   each was tried: see [Several endpoints](#several-endpoints)).
//! - A refused access key (`success = false` or `UNAUTHENTICATED` on `Connect`) closes
//!   the session with [`SessionError::Auth`], on the first open and on a reconnect alike.
//! - Once connected, a lost connection (transport loss, a failed heartbeat, a subscribe
//!   stream ending with `UNAVAILABLE`/`INTERNAL`/`UNAUTHENTICATED`, a unary call failing
//!   with `UNAVAILABLE`) leads to
//!   [`ConnectionState::Reconnecting`] with the delays of [`backoff_delay`]; after
//!   `max_reconnect_attempts` failed attempts the session closes with a connection error.
//!   A reconnect re-sends `Connect`, re-subscribes every subscription, re-pauses paused
//!   ones, then sends the queued operations with the new `client_id`.
//! - Operations issued while disconnected wait in a queue; every operation is bounded
//!   by `request_timeout` from when it was issued. When the connection drops, in-flight
//!   publishes, acks, defers and discards fail with a retryable
//!   [`SessionError::Connection`] (a publish may have been applied: it is never silently
//!   duplicated; an unacked event comes back from the node anyway); subscribe,
//!   unsubscribe, pause, resume and replay (a read) are re-sent after the reconnect. A
//!   subscribe waits for a pending unsubscribe of the same name (the node may handle
//!   concurrent calls in any order).
//! - A subscribe stream that ends cleanly, or with a status that does not mean
//!   connection loss, is reported as [`SessionEvent::StreamEnded`]; the subscription is
//!   kept and restored at the next reconnect.
//! - When the node refuses an operation (`success = false`), a heartbeat is sent at once
//!   (unless one is in flight): a node that restarted no longer knows the session and
//!   refuses every call, and the refused heartbeat starts the reconnect.
//! - Deliveries are routed by their own `event_name`. An event already handed to the
//!   application (its handler running or finished OK) is never handed over again; if
//!   it is redelivered after its handler finished OK on an auto-ack subscription, the
//!   session acknowledges it again silently. Metadata that is empty or not JSON is
//!   delivered as `{}`.
//! - Auto-ack (after [`HandlerOutcome::Ok`], when the event has an id and a non-zero
//!   block, as the published clients do) and the defer after [`HandlerOutcome::Failed`]
//!   are internal: their success is not reported; a refusal by the node is reported as
//!   [`SessionEvent::AutoAckFailed`].
//!
//! # Several endpoints
//!
//! An adapter may know several node endpoints ([`SessionConfig::endpoints`], e.g. the
//! nodes of one cluster given as several URLs); which one to try is the session's
//! choice, named by [`Output::Connect`]'s `endpoint` index:
//!
//! - the first attempt goes to endpoint 0; after a failure of the current endpoint (a
//!   connect attempt that fails or times out, or the loss of an established
//!   connection) the next attempt goes to the next endpoint, wrapping around;
//! - the first `open` tries every endpoint once, in order, without waiting; it fails
//!   (and the session closes) only when none could be reached;
//! - after a loss, attempts start at once while some endpoint has not failed yet in
//!   this run of failures; once every endpoint failed in a row (a full round, the lost
//!   one included) the next attempt waits the backoff delay of that round:
//!   [`backoff_delay`] of 1, 2, ... for the first, second, ... full round. So with
//!   endpoints 0 and 1 and a loss on 0: endpoint 1 at once, then (if it fails) wait
//!   `backoff_delay(1)`, endpoint 0, endpoint 1 at once, wait `backoff_delay(2)`, ...;
//! - [`ConnectionState::Reconnecting`] counts attempts one by one (`delay` zero for
//!   those that do not wait); the session gives up after `max_reconnect_attempts`
//!   full rounds (`max_reconnect_attempts` attempts per endpoint);
//! - a successful connection resets the count; the session stays on the endpoint it
//!   connected to until that one fails.
//!
//! With one endpoint this is the plain policy above: every attempt waits
//! `backoff_delay(attempt)`. A refused access key closes the session whichever
//! endpoint refused it (every node of one deployment knows the same apps).
//!
//! # Layout
//!
//! The [`Session`] struct, its state types and the four kinds of entry points are in this
//! file; the rest is split by concern, one `impl Session` block each: `link.rs` (the
//! connection's lifecycle: transport, `Connect`, generation, heartbeats, reconnect),
//! `ops.rs` (the operation table: commands to calls, replies to results), `timers.rs`
//! (every deadline: the connection's timers in one fixed table, operation deadlines
//! ordered, so the next one is found without a scan; `handle_timeout`'s dispatch),
//! `subscriptions.rs` (subscribe, pause, their streams), `deliveries.rs` (events to the
//! application, auto-ack, duplicates, ack/defer/discard/replay) and `close.rs` (the
//! close grace).
//!
//! # Exhaustive on purpose
//!
//! [`Input`], [`Output`], [`SessionEvent`], [`SessionError`], [`OpOutcome`] and
//! [`ConnectionState`] are *not* `#[non_exhaustive]`: an adapter matches every variant,
//! so a variant added here fails to compile in each adapter until it is handled, rather
//! than being dropped by a wildcard arm. (The SDK's public types in `ensync-client`,
//! which applications match on, stay `#[non_exhaustive]`.)
//!
//! # Drive loop
//!
//! ```no_run
//! use std::time::Instant;
//! use ensync_proto::session::{
//!     Call, CallId, ConnectionId, ConnectionState, HandlerOutcome, Input, Output, Session,
//!     SessionConfig, SessionEvent,
//! };
//!
//! /// Whatever IO the adapter does (sockets, HTTP/2 streams, a WebSocket).
//! trait Io {
//!     /// Start opening the transport to node endpoint `endpoint` (dropping any other);
//!     /// report `Input::Connected` or `Input::Disconnected` quoting `conn`, and
//!     /// `Input::Disconnected` if it is lost.
//!     fn open(&mut self, conn: ConnectionId, endpoint: usize);
//!     /// Drop the transport and every call on it.
//!     fn close(&mut self);
//!     /// Start an RPC; report `Input::Reply`, or `StreamOpened`/`StreamItem`/`StreamEnded`.
//!     fn call(&mut self, call: Call);
//!     /// Stop a subscribe stream.
//!     fn cancel(&mut self, call: CallId);
//!     /// Wait for the next transport fact, or until `deadline` (then `None`).
//!     fn wait(&mut self, deadline: Option<Instant>) -> Option<Input>;
//! }
//!
//! fn run(io: &mut impl Io, mut session: Session) {
//!     let _open = session.open(Instant::now());
//!     loop {
//!         let mut closed = false;
//!         while let Some(output) = session.poll_output() {
//!             match output {
//!                 Output::Connect { conn, endpoint } => io.open(conn, endpoint),
//!                 Output::Disconnect => io.close(),
//!                 Output::Call(call) => io.call(call),
//!                 Output::CancelStream(id) => io.cancel(id),
//!                 Output::Event(SessionEvent::Delivery(delivery)) => {
//!                     println!("{}: {}", delivery.event_name, delivery.payload);
//!                     session.handler_finished(delivery.token, HandlerOutcome::Ok, Instant::now());
//!                 }
//!                 Output::Event(SessionEvent::State(ConnectionState::Closed { .. })) => closed = true,
//!                 Output::Event(other) => println!("{other:?}"),
//!             }
//!         }
//!         if closed {
//!             return;
//!         }
//!         match io.wait(session.poll_timeout()) {
//!             Some(input) => session.handle_input(input, Instant::now()),
//!             None => session.handle_timeout(Instant::now()),
//!         }
//!     }
//! }
//! ```

mod close;
mod config;
mod deliveries;
mod error;
mod link;
mod ops;
mod subscriptions;
mod timers;
mod types;

use deliveries::{Dedup, decrypt_payload};
use ops::{
    defer_request, pause_request, reply_refused, survives_reconnect, with_client_id, with_published,
};
use timers::{Timer, TimerTable};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use config::{BoxedRng, SessionConfig, backoff_delay};
pub use error::{InvalidInput, SessionError};
pub use types::{
    Call, CallId, ConnectionId, ConnectionState, Delivery, DeliveryToken, Generation,
    GenerationChoice, HandlerOutcome, Input, OpId, OpOutcome, Output, PublishOptions, Reply,
    ReplyDecodeError, Request, RequestKind, RpcCode, RpcError, SessionEvent, SubscribeOptions,
};

use crate::keys::{PublicKey, RecipientCache, SecretKey};
use crate::{envelope, validate, wire};

/// The sans-IO EnSync client session. See the [module docs](self).
pub struct Session {
    config: SessionConfig,
    rng: BoxedRng,
    phase: Phase,
    public_state: ConnectionState,
    client_id: String,
    client_hash: String,
    /// Increments at every successful authentication.
    epoch: u64,
    /// The transport attempt the session last asked for ([`Output::Connect`]); facts
    /// about any other attempt are stale.
    transport: Option<ConnectionId>,
    /// The endpoint of the current (or last) transport attempt.
    endpoint: usize,
    /// The latest `now` seen: time only moves forward for the session.
    now: Instant,
    generation: Generation,
    generation_switched: bool,
    next_id: u64,
    ops: BTreeMap<OpId, Op>,
    /// The deadlines of `ops`, ordered (kept in step by `insert_op` / `finish_op`).
    op_deadlines: timers::OpDeadlines,
    /// The connection's timers (connect step, reconnect, heartbeats, close grace).
    timers: TimerTable,
    app_ops: usize,
    calls: HashMap<CallId, CallEntry>,
    queue: VecDeque<(OpId, usize)>,
    subs: BTreeMap<String, Sub>,
    dedup: Dedup,
    deliveries: HashMap<DeliveryToken, DeliveryInfo>,
    /// The heartbeat in flight (its reply deadline is [`Timer::HeartbeatReply`]).
    heartbeat_call: Option<CallId>,
    recipients: RecipientCache,
    outputs: VecDeque<Output>,
    /// Set by [`Session::close`] while automatic acknowledgements already sent are
    /// given time to finish.
    closing: Option<Closing>,
}

/// A close waiting for the automatic acknowledgements in flight (it gives up waiting at
/// [`Timer::CloseGrace`]).
#[derive(Debug)]
struct Closing {
    /// The `close` ops to complete when done.
    ops: Vec<OpId>,
}

/// The longest [`Session::close`] waits for automatic acknowledgements (and deferrals of
/// failed events) already under way before it drops the connection; never longer than
/// the request timeout.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("state", &self.public_state)
            .field("generation", &self.generation)
            .field("pending_ops", &self.ops.len())
            .field("subscriptions", &self.subs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Where the connection is. Its deadlines are in the [`TimerTable`]: `Opening` and
/// `Authenticating` run [`Timer::ConnectStep`], `Backoff` runs [`Timer::Reconnect`],
/// `Connected` the heartbeat timers; `Closed` none.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Idle,
    /// `Output::Connect` emitted; waiting for `Connected`/`Disconnected`.
    /// `attempt` 0 is the first open.
    Opening {
        attempt: u32,
    },
    /// Transport up, `Connect` sent.
    Authenticating {
        attempt: u32,
        call: CallId,
    },
    Connected,
    /// Waiting to start reconnect attempt `attempt`.
    Backoff {
        attempt: u32,
    },
    Closed,
}

#[derive(Debug)]
enum CallPurpose {
    Connect,
    Heartbeat,
    Op { op: OpId, part: usize },
    Stream { name: String },
    Repause { name: String },
}

#[derive(Debug)]
struct CallEntry {
    purpose: CallPurpose,
    generation: Generation,
}

#[derive(Debug)]
enum PartState {
    Queued,
    InFlight(CallId),
    Done(Result<String, SessionError>),
}

#[derive(Debug)]
struct Part {
    request: Request,
    state: PartState,
}

enum OpKind {
    Open,
    Publish,
    Subscribe,
    /// `cancel`: the subscribe stream to drop once the node answered (dropping it first
    /// could end the node's subscription before the `Unsubscribe` reaches it).
    Unsubscribe {
        name: String,
        cancel: Option<CallId>,
    },
    Ack,
    Defer,
    Discard,
    Replay {
        key: Option<Arc<SecretKey>>,
    },
    Pause {
        name: String,
    },
    Resume {
        name: String,
    },
}

/// For the internal ops (auto-ack, defer after a failed handler).
struct InternalInfo {
    event_name: String,
    idem: String,
}

struct Op {
    kind: OpKind,
    deadline: Option<Instant>,
    parts: Vec<Part>,
    internal: Option<InternalInfo>,
}

struct Sub {
    auto_ack: bool,
    key: Option<Arc<SecretKey>>,
    call: Option<CallId>,
    opened: bool,
    paused: bool,
    pending_op: Option<OpId>,
    /// An unsubscribe of the same name that must complete before the stream is opened.
    blocked_by: Option<OpId>,
}

struct DeliveryInfo {
    /// The application acked, deferred or discarded it itself: no automatic action.
    settled: bool,
    event_name: String,
    idem: String,
    block: i64,
    auto_ack: bool,
    epoch: u64,
}

fn deadline_after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

impl Session {
    /// A new idle session; nothing is sent until [`Session::open`].
    ///
    /// `now` starts the session's clock: an earlier instant given to a later call is
    /// taken as this latest one (time only moves forward).
    pub fn new(mut config: SessionConfig, now: Instant) -> Self {
        let rng = config
            .rng
            .take()
            .unwrap_or_else(|| Box::new(rand_core::OsRng));
        let generation = match config.generation {
            GenerationChoice::Auto(g) | GenerationChoice::Pinned(g) => g,
        };
        let dedup = Dedup::new(config.dedup_capacity);
        Session {
            config,
            rng,
            phase: Phase::Idle,
            public_state: ConnectionState::Idle,
            client_id: String::new(),
            client_hash: String::new(),
            epoch: 0,
            transport: None,
            endpoint: 0,
            now,
            generation,
            generation_switched: false,
            next_id: 1,
            ops: BTreeMap::new(),
            op_deadlines: timers::OpDeadlines::default(),
            timers: TimerTable::default(),
            app_ops: 0,
            calls: HashMap::new(),
            queue: VecDeque::new(),
            subs: BTreeMap::new(),
            dedup,
            deliveries: HashMap::new(),
            closing: None,
            heartbeat_call: None,
            recipients: RecipientCache::default(),
            outputs: VecDeque::new(),
        }
    }

    // ----------------------------------------------------------------- getters

    /// The current connection state.
    pub fn state(&self) -> &ConnectionState {
        &self.public_state
    }
    /// Whether the session is connected and authenticated.
    pub fn is_connected(&self) -> bool {
        matches!(self.phase, Phase::Connected)
    }
    /// Whether the session is closed for good.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }
    /// The session id of the current (or last) connection, once authenticated.
    pub fn client_id(&self) -> Option<&str> {
        (!self.client_id.is_empty()).then_some(self.client_id.as_str())
    }
    /// The app's public key (base64) as the node reported it, once authenticated.
    pub fn client_hash(&self) -> Option<&str> {
        (!self.client_hash.is_empty()).then_some(self.client_hash.as_str())
    }
    /// The endpoint (an index below [`SessionConfig::endpoints`]) of the current
    /// connection, or of the last attempt to open one.
    pub fn endpoint(&self) -> usize {
        self.endpoint
    }
    /// The RPC generation the session currently speaks.
    pub fn generation(&self) -> Generation {
        self.generation
    }
    /// The event names subscribed to (including those whose subscribe is pending).
    pub fn subscriptions(&self) -> impl Iterator<Item = &str> + '_ {
        self.subs.keys().map(String::as_str)
    }
    /// Whether `event_name` is subscribed to (or its subscribe is pending).
    pub fn is_subscribed(&self, event_name: &str) -> bool {
        self.subs.contains_key(event_name)
    }
    /// Whether `event_name` is subscribed and paused.
    pub fn is_paused(&self, event_name: &str) -> bool {
        self.subs.get(event_name).is_some_and(|s| s.paused)
    }
    /// How many application operations are pending (queued or in flight).
    pub fn in_flight(&self) -> usize {
        self.app_ops
    }
    /// How many deliveries were handed over and not yet given back with
    /// [`Session::handler_finished`].
    pub fn pending_deliveries(&self) -> usize {
        self.deliveries.len()
    }
    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    // ---------------------------------------------------------------- commands
    // `open` is in link.rs, `publish` in ops.rs, `subscribe` / `unsubscribe` / `pause` /
    // `resume` in subscriptions.rs, `ack` / `defer` / `discard` / `replay` /
    // `handler_finished` in deliveries.rs, `close` in close.rs.

    // ------------------------------------------------------------------ inputs

    /// Feeds a transport fact. Inputs that make no sense in the current state (replies
    /// for unknown calls, duplicates, anything after close) are ignored.
    pub fn handle_input(&mut self, input: Input, now: Instant) {
        let now = self.clock(now);
        if self.closing.is_some()
            && matches!(
                input,
                Input::StreamItem { .. } | Input::StreamOpened { .. } | Input::StreamEnded { .. }
            )
        {
            // Closing: nothing more is handed to the app, nothing is resubscribed.
            return;
        }
        self.handle_input_inner(input, now);
        self.settle_closing(now);
    }

    /// Handles every timer due at `now` (operation deadlines, heartbeats, reconnect
    /// attempts, connect-step deadlines).
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clock(now);
        self.settle_closing(now);
        self.handle_timeout_inner(now);
        self.settle_closing(now);
    }

    // ----------------------------------------------------------------- outputs

    /// The next thing to do. Drain until `None` after every command and input.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    // --------------------------------------------------------------- internals

    fn alloc_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    fn alloc_op(&mut self) -> OpId {
        OpId(self.alloc_id())
    }

    fn next_call(&mut self) -> CallId {
        CallId(self.alloc_id())
    }

    /// The session's clock: `now`, or the latest instant seen if `now` is earlier.
    fn clock(&mut self, now: Instant) -> Instant {
        self.now = self.now.max(now);
        self.now
    }

    fn emit(&mut self, event: SessionEvent) {
        self.outputs.push_back(Output::Event(event));
    }

    fn emit_state(&mut self, state: ConnectionState) {
        self.public_state = state.clone();
        self.emit(SessionEvent::State(state));
    }

    fn complete(&mut self, op: OpId, result: Result<OpOutcome, SessionError>) {
        self.emit(SessionEvent::Completed { op, result });
    }
}
