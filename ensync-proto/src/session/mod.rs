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
//!   retry loop: creating a client must fail promptly).
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
//!     /// Start opening the transport (dropping any other); report `Input::Connected` or
//!     /// `Input::Disconnected` quoting `conn`, and `Input::Disconnected` if it is lost.
//!     fn open(&mut self, conn: ConnectionId);
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
//!                 Output::Connect { conn } => io.open(conn),
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

mod config;
mod error;
mod types;

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
    /// The latest `now` seen: time only moves forward for the session.
    now: Instant,
    generation: Generation,
    generation_switched: bool,
    next_id: u64,
    ops: BTreeMap<OpId, Op>,
    app_ops: usize,
    calls: HashMap<CallId, CallEntry>,
    queue: VecDeque<(OpId, usize)>,
    subs: BTreeMap<String, Sub>,
    dedup: Dedup,
    deliveries: HashMap<DeliveryToken, DeliveryInfo>,
    next_heartbeat: Option<Instant>,
    heartbeat_call: Option<(CallId, Instant)>,
    recipients: RecipientCache,
    outputs: VecDeque<Output>,
    /// Set by [`Session::close`] while automatic acknowledgements already sent are
    /// given time to finish.
    closing: Option<Closing>,
}

/// A close waiting for the automatic acknowledgements in flight.
#[derive(Debug)]
struct Closing {
    /// The `close` ops to complete when done.
    ops: Vec<OpId>,
    /// Give up waiting at this time.
    deadline: Instant,
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

#[derive(Debug, Clone, Copy)]
enum Phase {
    Idle,
    /// `Output::Connect` emitted; waiting for `Connected`/`Disconnected`.
    /// `attempt` 0 is the first open.
    Opening {
        attempt: u32,
        deadline: Instant,
    },
    /// Transport up, `Connect` sent.
    Authenticating {
        attempt: u32,
        call: CallId,
        deadline: Instant,
    },
    Connected,
    /// Waiting to start reconnect attempt `attempt`.
    Backoff {
        attempt: u32,
        at: Instant,
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

/// What a lost in-flight request does.
fn survives_reconnect(kind: &OpKind) -> bool {
    matches!(
        kind,
        OpKind::Unsubscribe { .. }
            | OpKind::Replay { .. }
            | OpKind::Pause { .. }
            | OpKind::Resume { .. }
    )
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
            now,
            generation,
            generation_switched: false,
            next_id: 1,
            ops: BTreeMap::new(),
            app_ops: 0,
            calls: HashMap::new(),
            queue: VecDeque::new(),
            subs: BTreeMap::new(),
            dedup,
            deliveries: HashMap::new(),
            closing: None,
            next_heartbeat: None,
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

    /// Connects and authenticates. Completes with [`OpOutcome::Opened`]; if the first
    /// connection cannot be made the operation fails and the session closes.
    pub fn open(&mut self, now: Instant) -> OpId {
        let now = self.clock(now);
        let op = self.alloc_op();
        match self.phase {
            Phase::Closed => self.complete(op, Err(SessionError::Closed)),
            Phase::Connected => {
                let outcome = OpOutcome::Opened {
                    client_id: self.client_id.clone(),
                    client_hash: self.client_hash.clone(),
                };
                self.complete(op, Ok(outcome));
            }
            Phase::Idle => {
                self.insert_op(op, OpKind::Open, None, Vec::new(), None);
                self.emit_state(ConnectionState::Connecting);
                self.start_transport(0, now);
            }
            _ => self.insert_op(op, OpKind::Open, None, Vec::new(), None),
        }
        op
    }

    /// Publishes `payload` (a JSON object) to each recipient (base64 public keys): one
    /// request per recipient. Completes with [`OpOutcome::Published`] (ids in
    /// recipient order) once every reply is in.
    pub fn publish(
        &mut self,
        event_name: &str,
        recipients: &[impl AsRef<str>],
        payload: &serde_json::Value,
        metadata: Option<&serde_json::Value>,
        opts: PublishOptions,
        now: Instant,
    ) -> Result<OpId, SessionError> {
        let now = self.clock(now);
        self.check_command()?;
        validate::event_name(event_name)?;
        if recipients.is_empty() {
            return Err(validate::ValidationError::NoRecipients.into());
        }
        if !payload.is_object() {
            return Err(validate::ValidationError::PayloadNotObject.into());
        }
        let metadata = match metadata {
            None => "{}".to_owned(),
            Some(m) if m.is_object() => m.to_string(),
            Some(_) => return Err(validate::ValidationError::MetadataNotObject.into()),
        };
        let keys = recipients
            .iter()
            .enumerate()
            .map(|(index, r)| {
                self.recipients
                    .get_or_parse(r.as_ref())
                    .map_err(|source| InvalidInput::RecipientKey { index, source })
            })
            .collect::<Result<Vec<PublicKey>, _>>()?;
        let plaintext = serde_json::to_vec(payload)
            .map_err(|e| SessionError::Validation(InvalidInput::Payload(e.to_string())))?;
        let payload_metadata = Some(
            crate::payload_meta::payload_metadata(&plaintext)
                .map_err(|e| SessionError::Validation(InvalidInput::Payload(e.to_string())))?,
        );
        let mut rng = &mut *self.rng;
        let shared = opts
            .hybrid
            .then(|| envelope::encrypt_hybrid(&plaintext, &keys, &mut rng));
        let parts = recipients
            .iter()
            .zip(&keys)
            .map(|(recipient, key)| {
                let payload = match &shared {
                    Some(p) => p.clone(),
                    None => envelope::encrypt_single(&plaintext, key, &mut rng),
                };
                Part {
                    request: Request::Publish(wire::PublishEventRequest {
                        client_id: String::new(),
                        event_name: event_name.to_owned(),
                        payload,
                        delivery_to: recipient.as_ref().to_owned(),
                        metadata: metadata.clone(),
                        payload_metadata: payload_metadata.clone(),
                    }),
                    state: PartState::Queued,
                }
            })
            .collect();
        Ok(self.submit(OpKind::Publish, parts, None, now))
    }

    /// Subscribes to `event_name`: one `Subscribe` stream. Completes with
    /// [`OpOutcome::Subscribed`] when the stream is open.
    pub fn subscribe(
        &mut self,
        event_name: &str,
        opts: SubscribeOptions,
        now: Instant,
    ) -> Result<OpId, SessionError> {
        let now = self.clock(now);
        self.check_command()?;
        validate::event_name(event_name)?;
        if self.subs.contains_key(event_name) {
            return Err(SessionError::Subscription {
                message: format!("already subscribed to {event_name}"),
            });
        }
        // A pending unsubscribe of this name goes first: the node may handle concurrent
        // calls in any order.
        let blocked_by = self
            .ops
            .iter()
            .filter(
                |(_, o)| matches!(&o.kind, OpKind::Unsubscribe { name, .. } if name == event_name),
            )
            .map(|(id, _)| *id)
            .next_back();
        let op = self.alloc_op();
        let deadline = Some(deadline_after(now, self.config.request_timeout));
        self.insert_op(op, OpKind::Subscribe, deadline, Vec::new(), None);
        self.subs.insert(
            event_name.to_owned(),
            Sub {
                auto_ack: opts.auto_ack,
                key: opts.secret_key,
                call: None,
                opened: false,
                paused: false,
                pending_op: Some(op),
                blocked_by,
            },
        );
        if self.is_connected() {
            self.send_subscribe(event_name);
        }
        Ok(op)
    }

    /// Unsubscribes from `event_name`: its events are no longer handed over, its stream
    /// is cancelled and it is not restored after a reconnect.
    pub fn unsubscribe(&mut self, event_name: &str, now: Instant) -> Result<OpId, SessionError> {
        let now = self.clock(now);
        self.check_command()?;
        validate::event_name(event_name)?;
        let Some(sub) = self.subs.remove(event_name) else {
            return Err(SessionError::Subscription {
                message: format!("not subscribed to {event_name}"),
            });
        };
        // Items and the end of the old stream are ignored from now on; the stream itself
        // is dropped when the node has answered the `Unsubscribe`.
        if let Some(call) = sub.call {
            self.calls.remove(&call);
        }
        if let Some(op) = sub.pending_op {
            self.finish_op(
                op,
                Err(SessionError::Subscription {
                    message: "unsubscribed before the stream opened".to_owned(),
                }),
            );
        }
        let request = Request::Unsubscribe(wire::UnsubscribeRequest {
            client_id: String::new(),
            event_name: event_name.to_owned(),
        });
        let kind = OpKind::Unsubscribe {
            name: event_name.to_owned(),
            cancel: sub.call,
        };
        Ok(self.submit_one(kind, request, now))
    }

    /// Acknowledges an event (manual ack).
    pub fn ack(
        &mut self,
        event_name: &str,
        idem: &str,
        block: i64,
        now: Instant,
    ) -> Result<OpId, SessionError> {
        let now = self.clock(now);
        self.check_event_command(event_name, idem)?;
        self.settle(event_name, idem, false);
        let request = Request::Ack(wire::AcknowledgeRequest {
            client_id: String::new(),
            event_idem: idem.to_owned(),
            event_name: event_name.to_owned(),
            partition_block: block,
        });
        Ok(self.submit_one(OpKind::Ack, request, now))
    }

    /// Defers an event: the node delivers it again after `delay` (1 s ..= 24 h).
    pub fn defer(
        &mut self,
        event_name: &str,
        idem: &str,
        delay: Duration,
        reason: &str,
        now: Instant,
    ) -> Result<OpId, SessionError> {
        let now = self.clock(now);
        self.check_event_command(event_name, idem)?;
        let delay_ms = validate::defer_delay(delay)?;
        self.settle(event_name, idem, true);
        let request = defer_request(event_name, idem, delay_ms, reason);
        Ok(self.submit_one(OpKind::Defer, request, now))
    }

    /// Discards an event: it is never delivered again.
    pub fn discard(
        &mut self,
        event_name: &str,
        idem: &str,
        reason: &str,
        now: Instant,
    ) -> Result<OpId, SessionError> {
        let now = self.clock(now);
        self.check_event_command(event_name, idem)?;
        self.settle(event_name, idem, false);
        let request = Request::Discard(wire::DiscardRequest {
            client_id: String::new(),
            event_idem: idem.to_owned(),
            event_name: event_name.to_owned(),
            reason: reason.to_owned(),
        });
        Ok(self.submit_one(OpKind::Discard, request, now))
    }

    /// Fetches a stored event again; completes with [`OpOutcome::Replayed`] holding the
    /// payload decrypted with the subscription's key (or the session's key).
    pub fn replay(
        &mut self,
        event_name: &str,
        idem: &str,
        now: Instant,
    ) -> Result<OpId, SessionError> {
        let now = self.clock(now);
        self.check_event_command(event_name, idem)?;
        let key = self
            .subs
            .get(event_name)
            .and_then(|s| s.key.clone())
            .or_else(|| self.config.secret_key.clone());
        let request = Request::Replay(wire::ReplayRequest {
            client_id: String::new(),
            event_idem: idem.to_owned(),
            event_name: event_name.to_owned(),
        });
        Ok(self.submit_one(OpKind::Replay { key }, request, now))
    }

    /// Pauses delivery of `event_name`; a paused subscription is paused again after a
    /// reconnect.
    pub fn pause(
        &mut self,
        event_name: &str,
        reason: &str,
        now: Instant,
    ) -> Result<OpId, SessionError> {
        let now = self.clock(now);
        self.check_command()?;
        validate::event_name(event_name)?;
        let request = pause_request(event_name, reason);
        let kind = OpKind::Pause {
            name: event_name.to_owned(),
        };
        Ok(self.submit_one(kind, request, now))
    }

    /// Resumes delivery of `event_name`.
    pub fn resume(&mut self, event_name: &str, now: Instant) -> Result<OpId, SessionError> {
        let now = self.clock(now);
        self.check_command()?;
        validate::event_name(event_name)?;
        let request = Request::Continue(wire::ContinueRequest {
            client_id: String::new(),
            event_name: event_name.to_owned(),
        });
        let kind = OpKind::Resume {
            name: event_name.to_owned(),
        };
        Ok(self.submit_one(kind, request, now))
    }

    /// Reports that the application's handler of a delivery finished.
    ///
    /// `Ok` on an auto-ack subscription acknowledges the event (when it has an id and a
    /// non-zero block). `Failed` never acknowledges; the event is forgotten by the
    /// duplicate filter (so a redelivery is handed over again) and, on an auto-ack
    /// subscription, deferred by `handler_failure_redelivery_delay` so the node
    /// delivers it again soon. If the connection was lost since the delivery, nothing
    /// is sent: the node delivers the event again, and a redelivery of an event whose
    /// handler finished OK is acknowledged silently. If the application acked, deferred
    /// or discarded the event itself (through [`Session::ack`], [`Session::defer`],
    /// [`Session::discard`]) nothing automatic happens; after a defer the node's
    /// redelivery is handed over again. Unknown tokens are ignored.
    pub fn handler_finished(
        &mut self,
        delivery: DeliveryToken,
        outcome: HandlerOutcome,
        now: Instant,
    ) {
        let now = self.clock(now);
        self.handler_finished_inner(delivery, outcome, now);
        self.settle_closing(now);
    }

    fn handler_finished_inner(
        &mut self,
        delivery: DeliveryToken,
        outcome: HandlerOutcome,
        now: Instant,
    ) {
        let Some(info) = self.deliveries.remove(&delivery) else {
            return;
        };
        let key = (info.event_name.clone(), info.idem.clone());
        let (seen_epoch, block) = match self.dedup.get(&key) {
            Some(e) if e.running == Some(delivery) => (e.seen_epoch, e.block),
            _ => (info.epoch, info.block),
        };
        let live = self.is_connected() && seen_epoch == self.epoch && !info.settled;
        match outcome {
            HandlerOutcome::Ok => {
                if let Some(e) = self.dedup.get_mut(&key) {
                    if e.running == Some(delivery) {
                        e.running = None;
                        e.done_ok = true;
                    }
                }
                let acked_here = self
                    .dedup
                    .get(&key)
                    .is_some_and(|e| e.acked_epoch == Some(self.epoch));
                if live && info.auto_ack && !info.idem.is_empty() && block != 0 && !acked_here {
                    if let Some(e) = self.dedup.get_mut(&key) {
                        e.acked_epoch = Some(self.epoch);
                    }
                    self.internal_ack(&info.event_name, &info.idem, block, now);
                }
            }
            HandlerOutcome::Failed => {
                if self
                    .dedup
                    .get(&key)
                    .is_some_and(|e| e.running == Some(delivery))
                {
                    self.dedup.remove(&key);
                }
                if live && info.auto_ack && !info.idem.is_empty() {
                    let delay = validate::defer_delay(self.config.handler_failure_redelivery_delay)
                        .unwrap_or(1000);
                    let request =
                        defer_request(&info.event_name, &info.idem, delay, "handler failed");
                    let internal = InternalInfo {
                        event_name: info.event_name,
                        idem: info.idem,
                    };
                    self.submit(
                        OpKind::Defer,
                        vec![Part {
                            request,
                            state: PartState::Queued,
                        }],
                        Some(internal),
                        now,
                    );
                }
            }
        }
    }

    /// Closes the session: every pending operation of the app fails with
    /// [`SessionError::Closed`], no more events are handed over, and every later command
    /// fails with `Closed`. Automatic acknowledgements (and deferrals of failed events)
    /// already under way are given up to [`CLOSE_GRACE`] to finish, so the events the app
    /// handled are not redelivered to its next session; then streams are cancelled, the
    /// transport dropped, and the returned op completes with [`OpOutcome::Closed`].
    pub fn close(&mut self, now: Instant) -> OpId {
        let now = self.clock(now);
        let op = self.alloc_op();
        if self.is_closed() {
            self.complete(op, Err(SessionError::Closed));
            return op;
        }
        if let Some(closing) = &mut self.closing {
            closing.ops.push(op);
            return op;
        }
        if !(self.is_connected() && self.closing_has_work()) {
            self.finish_close(vec![op]);
            return op;
        }
        let app: Vec<OpId> = self
            .ops
            .iter()
            .filter(|(_, o)| o.internal.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in app {
            let published = self.published_ids(id);
            self.finish_op(id, Err(with_published(SessionError::Closed, published)));
        }
        let grace = CLOSE_GRACE.min(self.config.request_timeout);
        self.closing = Some(Closing {
            ops: vec![op],
            deadline: deadline_after(now, grace),
        });
        op
    }

    /// What a close waits for: internal ops (automatic acks, deferrals of failed events)
    /// under way, and events of auto-ack subscriptions still in the app's hands (their
    /// handlers are running: their acks are about to come).
    fn closing_has_work(&self) -> bool {
        self.ops.values().any(|o| o.internal.is_some())
            || self.deliveries.values().any(|d| d.auto_ack && !d.settled)
    }

    /// Whether [`close`](Session::close) is waiting for automatic acknowledgements.
    pub fn is_closing(&self) -> bool {
        self.closing.is_some()
    }

    /// Ends a close: fails what is left, cancels the streams, drops the transport.
    fn finish_close(&mut self, ops: Vec<OpId>) {
        self.fail_all(&SessionError::Closed);
        let streams: Vec<CallId> = self.subs.values().filter_map(|s| s.call).collect();
        for call in streams {
            self.outputs.push_back(Output::CancelStream(call));
        }
        if matches!(
            self.phase,
            Phase::Opening { .. } | Phase::Authenticating { .. } | Phase::Connected
        ) {
            self.transport = None;
            self.outputs.push_back(Output::Disconnect);
        }
        self.enter_closed();
        self.emit_state(ConnectionState::Closed { error: None });
        for op in ops {
            self.complete(op, Ok(OpOutcome::Closed));
        }
    }

    /// Finishes a waiting close once nothing internal is pending or its time is up.
    fn settle_closing(&mut self, now: Instant) {
        let Some(closing) = &self.closing else {
            return;
        };
        let done = closing.deadline <= now || !self.is_connected() || !self.closing_has_work();
        if done {
            if let Some(closing) = self.closing.take() {
                self.finish_close(closing.ops);
            }
        }
    }

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

    fn handle_input_inner(&mut self, input: Input, now: Instant) {
        match input {
            Input::Connected { conn } if self.transport == Some(conn) => {
                if let Phase::Opening { attempt, .. } = self.phase {
                    let call = self.next_call();
                    let request = Request::Connect(wire::ConnectRequest {
                        access_key: self.config.access_key.as_str().to_owned(),
                    });
                    self.calls.insert(
                        call,
                        CallEntry {
                            purpose: CallPurpose::Connect,
                            generation: self.generation,
                        },
                    );
                    self.outputs.push_back(Output::Call(Call {
                        id: call,
                        generation: self.generation,
                        request,
                    }));
                    self.phase = Phase::Authenticating {
                        attempt,
                        call,
                        deadline: deadline_after(now, self.config.request_timeout),
                    };
                }
            }
            Input::Disconnected { conn, reason } if self.transport == Some(conn) => {
                match self.phase {
                    Phase::Opening { .. } | Phase::Authenticating { .. } => {
                        self.attempt_failed(reason, false, now)
                    }
                    Phase::Connected => self.connection_lost(reason, now),
                    Phase::Idle | Phase::Backoff { .. } | Phase::Closed => {}
                }
            }
            // A fact about a transport attempt the session has moved past.
            Input::Connected { .. } | Input::Disconnected { .. } => {}
            Input::Reply { call, result } => self.handle_reply(call, result, now),
            Input::StreamOpened { call } => self.handle_stream_opened(call),
            Input::StreamItem {
                call,
                event,
                logged_at,
            } => {
                let open_stream = matches!(
                    self.calls.get(&call),
                    Some(CallEntry {
                        purpose: CallPurpose::Stream { .. },
                        ..
                    })
                );
                if open_stream {
                    self.handle_item(event, logged_at, now);
                }
            }
            Input::StreamEnded { call, error } => self.handle_stream_ended(call, error, now),
        }
    }

    /// Handles every timer due at `now` (operation deadlines, heartbeats, reconnect
    /// attempts, connect-step deadlines).
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clock(now);
        self.settle_closing(now);
        self.handle_timeout_inner(now);
        self.settle_closing(now);
    }

    fn handle_timeout_inner(&mut self, now: Instant) {
        if self.is_closed() {
            return;
        }
        let expired: Vec<OpId> = self
            .ops
            .iter()
            .filter(|(_, op)| op.deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for op in expired {
            let published = self.published_ids(op);
            self.finish_op(op, Err(SessionError::Timeout { published }));
        }
        match self.phase {
            Phase::Opening { deadline, .. } | Phase::Authenticating { deadline, .. }
                if deadline <= now =>
            {
                self.attempt_failed("timed out while connecting".to_owned(), true, now);
            }
            Phase::Backoff { attempt, at } if at <= now => {
                self.start_transport(attempt, now);
            }
            Phase::Connected => {
                if self.heartbeat_call.is_some_and(|(_, d)| d <= now) {
                    self.connection_lost("heartbeat timed out".to_owned(), now);
                    return;
                }
                if let (Some(interval), Some(at)) =
                    (self.config.heartbeat_interval, self.next_heartbeat)
                {
                    if at <= now {
                        self.next_heartbeat = Some(deadline_after(now, interval));
                        if self.heartbeat_call.is_none() {
                            self.send_heartbeat(now);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    // ----------------------------------------------------------------- outputs

    /// The next thing to do. Drain until `None` after every command and input.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Session::handle_timeout`] must be called next (`None`: no timer).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        match self.phase {
            Phase::Closed => return None,
            Phase::Opening { deadline, .. } | Phase::Authenticating { deadline, .. } => {
                consider(Some(deadline))
            }
            Phase::Backoff { at, .. } => consider(Some(at)),
            Phase::Connected => {
                consider(self.heartbeat_call.map(|(_, d)| d));
                if self.config.heartbeat_interval.is_some() {
                    consider(self.next_heartbeat);
                }
            }
            Phase::Idle => {}
        }
        for op in self.ops.values() {
            consider(op.deadline);
        }
        if let Some(closing) = &self.closing {
            consider(Some(closing.deadline));
        }
        t
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

    fn check_command(&self) -> Result<(), SessionError> {
        if self.is_closed() || self.closing.is_some() {
            return Err(SessionError::Closed);
        }
        if self.app_ops >= self.config.max_in_flight {
            return Err(SessionError::Overloaded {
                limit: self.config.max_in_flight,
            });
        }
        Ok(())
    }

    fn check_event_command(&self, event_name: &str, idem: &str) -> Result<(), SessionError> {
        self.check_command()?;
        validate::event_name(event_name)?;
        if idem.is_empty() {
            return Err(SessionError::Validation(InvalidInput::EmptyIdem));
        }
        Ok(())
    }

    fn insert_op(
        &mut self,
        id: OpId,
        kind: OpKind,
        deadline: Option<Instant>,
        parts: Vec<Part>,
        internal: Option<InternalInfo>,
    ) {
        if internal.is_none() {
            self.app_ops += 1;
        }
        self.ops.insert(
            id,
            Op {
                kind,
                deadline,
                parts,
                internal,
            },
        );
    }

    fn submit_one(&mut self, kind: OpKind, request: Request, now: Instant) -> OpId {
        let parts = vec![Part {
            request,
            state: PartState::Queued,
        }];
        self.submit(kind, parts, None, now)
    }

    fn submit(
        &mut self,
        kind: OpKind,
        parts: Vec<Part>,
        internal: Option<InternalInfo>,
        now: Instant,
    ) -> OpId {
        let id = self.alloc_op();
        let n = parts.len();
        let deadline = Some(deadline_after(now, self.config.request_timeout));
        self.insert_op(id, kind, deadline, parts, internal);
        for part in 0..n {
            self.queue.push_back((id, part));
        }
        if self.is_connected() {
            self.flush_queue();
        }
        id
    }

    /// The application acts on an event itself: its running deliveries get no automatic
    /// ack or defer; a defer also forgets it in the duplicate filter, so the node's
    /// redelivery is handed over again.
    fn settle(&mut self, event_name: &str, idem: &str, forget: bool) {
        for info in self.deliveries.values_mut() {
            if info.event_name == event_name && info.idem == idem {
                info.settled = true;
            }
        }
        let key = (event_name.to_owned(), idem.to_owned());
        if forget {
            self.dedup.remove(&key);
        } else if self.is_connected() {
            let epoch = self.epoch;
            if let Some(e) = self.dedup.get_mut(&key) {
                e.acked_epoch = Some(epoch);
            }
        }
    }

    fn internal_ack(&mut self, event_name: &str, idem: &str, block: i64, now: Instant) {
        let request = Request::Ack(wire::AcknowledgeRequest {
            client_id: String::new(),
            event_idem: idem.to_owned(),
            event_name: event_name.to_owned(),
            partition_block: block,
        });
        let internal = InternalInfo {
            event_name: event_name.to_owned(),
            idem: idem.to_owned(),
        };
        let parts = vec![Part {
            request,
            state: PartState::Queued,
        }];
        self.submit(OpKind::Ack, parts, Some(internal), now);
    }

    /// Sends every queued part (only while connected).
    fn flush_queue(&mut self) {
        while let Some((op, part)) = self.queue.pop_front() {
            self.send_part(op, part);
        }
    }

    fn send_part(&mut self, op_id: OpId, part: usize) {
        let call = self.next_call();
        let generation = self.generation;
        let client_id = self.client_id.clone();
        let Some(op) = self.ops.get_mut(&op_id) else {
            return;
        };
        let Some(p) = op.parts.get_mut(part) else {
            return;
        };
        if !matches!(p.state, PartState::Queued) {
            return;
        }
        p.state = PartState::InFlight(call);
        let request = with_client_id(&p.request, client_id);
        self.calls.insert(
            call,
            CallEntry {
                purpose: CallPurpose::Op { op: op_id, part },
                generation,
            },
        );
        self.outputs.push_back(Output::Call(Call {
            id: call,
            generation,
            request,
        }));
    }

    fn send_subscribe(&mut self, name: &str) {
        let call = self.next_call();
        let Some(sub) = self.subs.get_mut(name) else {
            return;
        };
        if sub.blocked_by.is_some() {
            return;
        }
        sub.call = Some(call);
        sub.opened = false;
        self.calls.insert(
            call,
            CallEntry {
                purpose: CallPurpose::Stream {
                    name: name.to_owned(),
                },
                generation: self.generation,
            },
        );
        self.outputs.push_back(Output::Call(Call {
            id: call,
            generation: self.generation,
            request: Request::Subscribe(wire::SubscribeRequest {
                client_id: self.client_id.clone(),
                event_name: name.to_owned(),
            }),
        }));
    }

    fn send_repause(&mut self, name: &str) {
        let call = self.next_call();
        self.calls.insert(
            call,
            CallEntry {
                purpose: CallPurpose::Repause {
                    name: name.to_owned(),
                },
                generation: self.generation,
            },
        );
        let request = with_client_id(&pause_request(name, ""), self.client_id.clone());
        self.outputs.push_back(Output::Call(Call {
            id: call,
            generation: self.generation,
            request,
        }));
    }

    fn send_heartbeat(&mut self, now: Instant) {
        let call = self.next_call();
        self.calls.insert(
            call,
            CallEntry {
                purpose: CallPurpose::Heartbeat,
                generation: self.generation,
            },
        );
        self.heartbeat_call = Some((call, deadline_after(now, self.config.request_timeout)));
        self.outputs.push_back(Output::Call(Call {
            id: call,
            generation: self.generation,
            request: Request::Heartbeat(wire::HeartbeatRequest {
                client_id: self.client_id.clone(),
            }),
        }));
    }

    fn start_transport(&mut self, attempt: u32, now: Instant) {
        self.phase = Phase::Opening {
            attempt,
            deadline: deadline_after(now, self.config.request_timeout),
        };
        let conn = ConnectionId(self.alloc_id());
        self.transport = Some(conn);
        self.outputs.push_back(Output::Connect { conn });
    }

    /// A connect attempt (transport or `Connect` call) failed.
    fn attempt_failed(&mut self, reason: String, drop_transport: bool, now: Instant) {
        let attempt = match self.phase {
            Phase::Opening { attempt, .. } => attempt,
            Phase::Authenticating { attempt, .. } => {
                self.calls.clear();
                attempt
            }
            _ => return,
        };
        let drop_transport = drop_transport || matches!(self.phase, Phase::Authenticating { .. });
        if drop_transport {
            self.transport = None;
            self.outputs.push_back(Output::Disconnect);
        }
        if attempt == 0 {
            self.close_with_error(SessionError::connection(reason));
        } else {
            self.schedule_reconnect(attempt.saturating_add(1), &reason, now);
        }
    }

    fn schedule_reconnect(&mut self, attempt: u32, reason: &str, now: Instant) {
        if attempt > self.config.max_reconnect_attempts {
            let max = self.config.max_reconnect_attempts;
            self.close_with_error(SessionError::connection(format!(
                "gave up after {max} reconnect attempts: {reason}"
            )));
            return;
        }
        let delay = backoff_delay(&self.config, attempt);
        self.phase = Phase::Backoff {
            attempt,
            at: deadline_after(now, delay),
        };
        self.emit_state(ConnectionState::Reconnecting { attempt, delay });
    }

    /// The established connection is gone.
    fn connection_lost(&mut self, reason: String, now: Instant) {
        if !self.is_connected() {
            return;
        }
        if let Some(closing) = self.closing.take() {
            // Closing: no reconnect; what was still in flight is given up.
            self.finish_close(closing.ops);
            return;
        }
        self.transport = None;
        self.outputs.push_back(Output::Disconnect);
        self.heartbeat_call = None;
        self.next_heartbeat = None;
        let mut requeue: Vec<(OpId, usize)> = Vec::new();
        let mut failed: Vec<OpId> = Vec::new();
        let calls = std::mem::take(&mut self.calls);
        for (_, entry) in calls {
            if let CallPurpose::Op { op, part } = entry.purpose {
                let Some(o) = self.ops.get_mut(&op) else {
                    continue;
                };
                if survives_reconnect(&o.kind) {
                    if let Some(p) = o.parts.get_mut(part) {
                        p.state = PartState::Queued;
                        requeue.push((op, part));
                    }
                } else {
                    failed.push(op);
                }
            }
        }
        for sub in self.subs.values_mut() {
            sub.call = None;
            sub.opened = false;
        }
        failed.sort();
        failed.dedup();
        for op in failed {
            let published = self.published_ids(op);
            self.finish_op(
                op,
                Err(SessionError::Connection {
                    message: format!("connection lost: {reason}"),
                    published,
                }),
            );
        }
        requeue.sort();
        for item in requeue.into_iter().rev() {
            self.queue.push_front(item);
        }
        self.schedule_reconnect(1, &reason, now);
    }

    fn enter_closed(&mut self) {
        self.phase = Phase::Closed;
        self.calls.clear();
        self.queue.clear();
        self.subs.clear();
        self.deliveries.clear();
        self.heartbeat_call = None;
        self.next_heartbeat = None;
    }

    fn close_with_error(&mut self, error: SessionError) {
        self.fail_all(&error);
        self.enter_closed();
        self.emit_state(ConnectionState::Closed { error: Some(error) });
        if let Some(closing) = self.closing.take() {
            for op in closing.ops {
                self.complete(op, Ok(OpOutcome::Closed));
            }
        }
    }

    /// Fails every pending op with `error` (ids in order).
    fn fail_all(&mut self, error: &SessionError) {
        let ids: Vec<OpId> = self.ops.keys().copied().collect();
        for op in ids {
            let published = self.published_ids(op);
            self.finish_op(op, Err(with_published(error.clone(), published)));
        }
    }

    fn published_ids(&self, op: OpId) -> Vec<String> {
        let Some(o) = self.ops.get(&op) else {
            return Vec::new();
        };
        if !matches!(o.kind, OpKind::Publish) {
            return Vec::new();
        }
        o.parts
            .iter()
            .filter_map(|p| match &p.state {
                PartState::Done(Ok(id)) => Some(id.clone()),
                _ => None,
            })
            .collect()
    }

    /// Removes an op and reports its result (internal ops: only refusals, as
    /// `AutoAckFailed`). Forgets its calls; a pending subscribe forgets its subscription.
    fn finish_op(&mut self, op_id: OpId, result: Result<OpOutcome, SessionError>) {
        let Some(op) = self.ops.remove(&op_id) else {
            return;
        };
        for p in &op.parts {
            if let PartState::InFlight(call) = p.state {
                self.calls.remove(&call);
            }
        }
        if let OpKind::Subscribe = op.kind {
            if result.is_err() {
                let name = self
                    .subs
                    .iter()
                    .find(|(_, s)| s.pending_op == Some(op_id))
                    .map(|(n, _)| n.clone());
                if let Some(name) = name {
                    if let Some(sub) = self.subs.remove(&name) {
                        if let Some(call) = sub.call {
                            if self.calls.remove(&call).is_some() {
                                self.outputs.push_back(Output::CancelStream(call));
                            }
                        }
                    }
                }
            } else {
                for sub in self.subs.values_mut() {
                    if sub.pending_op == Some(op_id) {
                        sub.pending_op = None;
                    }
                }
            }
        }
        if let OpKind::Unsubscribe { name, cancel } = &op.kind {
            if let Some(call) = cancel {
                self.outputs.push_back(Output::CancelStream(*call));
            }
            let unblocked = self
                .subs
                .get_mut(name)
                .is_some_and(|s| s.blocked_by == Some(op_id));
            if unblocked {
                if let Some(sub) = self.subs.get_mut(name) {
                    sub.blocked_by = None;
                }
            }
            let name = name.clone();
            if op.internal.is_none() {
                self.app_ops = self.app_ops.saturating_sub(1);
                self.complete(op_id, result);
            }
            if unblocked && self.is_connected() {
                self.send_subscribe(&name);
            }
            return;
        }
        match op.internal {
            None => {
                self.app_ops = self.app_ops.saturating_sub(1);
                self.complete(op_id, result);
            }
            Some(info) => {
                if let Err(error) = result {
                    if let SessionError::Ack { .. } = error {
                        // The node refused the automatic ack (for instance the event was
                        // deferred meanwhile and is no longer in flight): it has not been
                        // acked in this connection, so its next delivery here is acked.
                        let key = (info.event_name.clone(), info.idem.clone());
                        let epoch = self.epoch;
                        if let Some(e) = self.dedup.get_mut(&key) {
                            if e.acked_epoch == Some(epoch) {
                                e.acked_epoch = None;
                            }
                        }
                    }
                    if !matches!(
                        error,
                        SessionError::Connection { .. } | SessionError::Closed
                    ) {
                        self.emit(SessionEvent::AutoAckFailed {
                            event_name: info.event_name,
                            idem: info.idem,
                            error,
                        });
                    }
                }
            }
        }
    }

    /// Whether a call that got `UNIMPLEMENTED` under `call_gen` should be re-sent
    /// (switching generation if allowed).
    fn retry_generation(&mut self, call_gen: Generation) -> bool {
        if call_gen != self.generation {
            return true;
        }
        match self.config.generation {
            GenerationChoice::Auto(_) if !self.generation_switched => {
                self.generation = self.generation.other();
                self.generation_switched = true;
                true
            }
            _ => false,
        }
    }

    fn handle_reply(&mut self, call: CallId, result: Result<Reply, RpcError>, now: Instant) {
        let Some(entry) = self.calls.remove(&call) else {
            return;
        };
        match entry.purpose {
            CallPurpose::Connect => self.handle_connect_reply(call, result, now),
            CallPurpose::Heartbeat => {
                if self.heartbeat_call.map(|(c, _)| c) != Some(call) {
                    return;
                }
                self.heartbeat_call = None;
                match result {
                    Ok(Reply::Heartbeat(r)) if r.success => {}
                    Ok(Reply::Heartbeat(_)) => {
                        self.connection_lost("heartbeat refused".to_owned(), now)
                    }
                    Ok(_) => self.connection_lost(
                        "heartbeat answered with a reply of the wrong type".to_owned(),
                        now,
                    ),
                    Err(e) => self.connection_lost(format!("heartbeat failed: {}", e.message), now),
                }
            }
            CallPurpose::Stream { name } => {
                // A unary reply to a stream: protocol error, as if the stream ended.
                self.calls.insert(
                    call,
                    CallEntry {
                        purpose: CallPurpose::Stream { name },
                        generation: entry.generation,
                    },
                );
                let error = match result {
                    Err(e) => e,
                    Ok(_) => RpcError::new(RpcCode::Other(2), "unary reply to a subscribe stream"),
                };
                self.handle_stream_ended(call, Some(error), now);
            }
            CallPurpose::Repause { name } => match result {
                Err(e) if e.code == RpcCode::Unimplemented => {
                    if self.retry_generation(entry.generation)
                        && self.is_connected()
                        && self.subs.get(&name).is_some_and(|s| s.paused)
                    {
                        self.send_repause(&name);
                    }
                }
                Ok(Reply::Pause(r)) if r.success => {}
                Ok(Reply::Pause(r)) => self.emit(SessionEvent::AutoAckFailed {
                    event_name: name,
                    idem: String::new(),
                    error: SessionError::Pause { message: r.message },
                }),
                Ok(_) => {}
                Err(e) => self.emit(SessionEvent::AutoAckFailed {
                    event_name: name,
                    idem: String::new(),
                    error: SessionError::Pause { message: e.message },
                }),
            },
            CallPurpose::Op { op, part } => {
                if let Err(e) = &result {
                    if e.code == RpcCode::Unavailable && self.is_connected() {
                        // The transport failed under this call: the connection is gone,
                        // whether or not a stream or a heartbeat noticed yet. Handle this
                        // call like every other one in flight (fail or re-queue).
                        let reason = format!("call failed: {}", e.message);
                        self.calls.insert(call, entry);
                        self.connection_lost(reason, now);
                        return;
                    }
                }
                let refused = matches!(&result, Ok(reply) if reply_refused(reply));
                self.handle_op_reply(op, part, entry.generation, result);
                if refused && self.is_connected() && self.heartbeat_call.is_none() {
                    // A node that restarted no longer knows this session and refuses
                    // every call; a heartbeat finds out now instead of at its next tick.
                    self.send_heartbeat(now);
                }
            }
        }
    }

    fn handle_connect_reply(
        &mut self,
        call: CallId,
        result: Result<Reply, RpcError>,
        now: Instant,
    ) {
        let Phase::Authenticating {
            attempt,
            call: expected,
            ..
        } = self.phase
        else {
            return;
        };
        if call != expected {
            return;
        }
        match result {
            Ok(Reply::Connect(r)) if r.success => self.authenticated(r, now),
            Ok(Reply::Connect(r)) => {
                self.transport = None;
                self.outputs.push_back(Output::Disconnect);
                let _ = attempt;
                self.close_with_error(SessionError::Auth {
                    message: r.error_message,
                });
            }
            Ok(_) => self.attempt_failed(
                "connect answered with a reply of the wrong type".to_owned(),
                true,
                now,
            ),
            Err(e) if e.code == RpcCode::Unauthenticated => {
                self.transport = None;
                self.outputs.push_back(Output::Disconnect);
                self.close_with_error(SessionError::Auth { message: e.message });
            }
            Err(e) => self.attempt_failed(format!("connect failed: {}", e.message), true, now),
        }
    }

    fn authenticated(&mut self, r: wire::ConnectResponse, now: Instant) {
        self.client_id = r.client_id;
        self.client_hash = r.client_hash;
        self.epoch += 1;
        self.phase = Phase::Connected;
        self.heartbeat_call = None;
        self.next_heartbeat = self
            .config
            .heartbeat_interval
            .map(|i| deadline_after(now, i));
        self.emit_state(ConnectionState::Connected {
            client_id: self.client_id.clone(),
            client_hash: self.client_hash.clone(),
        });
        let opens: Vec<OpId> = self
            .ops
            .iter()
            .filter(|(_, o)| matches!(o.kind, OpKind::Open))
            .map(|(id, _)| *id)
            .collect();
        for op in opens {
            let outcome = OpOutcome::Opened {
                client_id: self.client_id.clone(),
                client_hash: self.client_hash.clone(),
            };
            self.finish_op(op, Ok(outcome));
        }
        let names: Vec<(String, bool)> = self
            .subs
            .iter()
            .map(|(n, s)| (n.clone(), s.paused))
            .collect();
        for (name, paused) in names {
            self.send_subscribe(&name);
            if paused {
                self.send_repause(&name);
            }
        }
        self.flush_queue();
    }

    fn handle_op_reply(
        &mut self,
        op_id: OpId,
        part: usize,
        call_gen: Generation,
        result: Result<Reply, RpcError>,
    ) {
        let Some(op) = self.ops.get(&op_id) else {
            return;
        };
        let rpc = op
            .parts
            .get(part)
            .map_or("?", |p| p.request.rpc_name(call_gen));
        let kind_error = |message: String| kind_error(&op.kind, message);
        let part_result: Result<Reply, SessionError> = match result {
            Ok(reply) => Ok(reply),
            Err(e) => match e.code {
                RpcCode::Unimplemented => {
                    if self.retry_generation(call_gen) {
                        if let Some(p) =
                            self.ops.get_mut(&op_id).and_then(|o| o.parts.get_mut(part))
                        {
                            p.state = PartState::Queued;
                        }
                        if self.is_connected() {
                            self.send_part(op_id, part);
                        } else {
                            self.queue.push_front((op_id, part));
                        }
                        return;
                    }
                    Err(SessionError::Unimplemented { rpc })
                }
                RpcCode::DeadlineExceeded => Err(SessionError::Timeout {
                    published: Vec::new(),
                }),
                RpcCode::Unavailable | RpcCode::Cancelled => {
                    Err(SessionError::connection(e.message))
                }
                RpcCode::Unauthenticated => Err(SessionError::Auth { message: e.message }),
                _ => Err(kind_error(e.message)),
            },
        };
        let Some(op) = self.ops.get_mut(&op_id) else {
            return;
        };
        if let OpKind::Publish = op.kind {
            let done = match part_result {
                Ok(Reply::Publish(r)) if r.success => Ok(r.event_idem),
                Ok(Reply::Publish(r)) => Err(SessionError::Publish {
                    message: r.error_message,
                    published: Vec::new(),
                }),
                Ok(_) => Err(wrong_type()),
                Err(e) => Err(e),
            };
            if let Some(p) = op.parts.get_mut(part) {
                p.state = PartState::Done(done);
            }
            if op
                .parts
                .iter()
                .all(|p| matches!(p.state, PartState::Done(_)))
            {
                let mut ids = Vec::new();
                let mut first_err = None;
                for p in &op.parts {
                    match &p.state {
                        PartState::Done(Ok(id)) => ids.push(id.clone()),
                        PartState::Done(Err(e)) if first_err.is_none() => {
                            first_err = Some(e.clone())
                        }
                        _ => {}
                    }
                }
                let result = match first_err {
                    None => Ok(OpOutcome::Published { ids }),
                    Some(e) => Err(with_published(e, ids)),
                };
                self.finish_op(op_id, result);
            }
            return;
        }
        let outcome = match part_result {
            Err(e) => Err(e),
            Ok(reply) => self.op_outcome(op_id, reply),
        };
        self.finish_op(op_id, outcome);
    }

    /// Maps a typed reply to the op's outcome (single-request ops).
    fn op_outcome(&mut self, op_id: OpId, reply: Reply) -> Result<OpOutcome, SessionError> {
        let Some(op) = self.ops.get(&op_id) else {
            return Err(wrong_type());
        };
        match (&op.kind, reply) {
            (OpKind::Unsubscribe { .. }, Reply::Unsubscribe(r)) => {
                ok_or(r.success, r.message, |m| SessionError::Subscription {
                    message: m,
                })
                .map(|()| OpOutcome::Unsubscribed)
            }
            (OpKind::Ack, Reply::Ack(r)) => {
                ok_or(r.success, r.message, |m| SessionError::Ack { message: m })
                    .map(|()| OpOutcome::Acked)
            }
            (OpKind::Defer, Reply::Defer(r)) => {
                let time = r.delivery_time;
                ok_or(r.success, r.message, |m| SessionError::Defer { message: m }).map(|()| {
                    OpOutcome::Deferred {
                        delivery_time_ms: time,
                    }
                })
            }
            (OpKind::Discard, Reply::Discard(r)) => ok_or(r.success, r.message, |m| {
                SessionError::Discard { message: m }
            })
            .map(|()| OpOutcome::Discarded),
            (OpKind::Replay { key }, Reply::Replay(r)) => {
                ok_or(r.success, r.message, |m| SessionError::Replay {
                    message: m,
                })?;
                let key = key.clone();
                // Any node's answer form (bare envelope or stream-message JSON).
                let replayed = crate::clients::decode_replay(&r.event_data).map_err(|e| {
                    SessionError::Replay {
                        message: e.to_string(),
                    }
                })?;
                let payload = decrypt_payload(&replayed.payload, key.as_deref())?;
                Ok(OpOutcome::Replayed { payload })
            }
            (OpKind::Pause { name }, Reply::Pause(r)) => {
                let name = name.clone();
                ok_or(r.success, r.message, |m| SessionError::Pause { message: m })?;
                if let Some(sub) = self.subs.get_mut(&name) {
                    sub.paused = true;
                }
                Ok(OpOutcome::Paused)
            }
            (OpKind::Resume { name }, Reply::Continue(r)) => {
                let name = name.clone();
                ok_or(r.success, r.message, |m| SessionError::Continue {
                    message: m,
                })?;
                if let Some(sub) = self.subs.get_mut(&name) {
                    sub.paused = false;
                }
                Ok(OpOutcome::Resumed)
            }
            _ => Err(wrong_type()),
        }
    }

    fn handle_stream_opened(&mut self, call: CallId) {
        let Some(CallEntry {
            purpose: CallPurpose::Stream { name },
            ..
        }) = self.calls.get(&call)
        else {
            return;
        };
        let Some(sub) = self.subs.get_mut(name.as_str()) else {
            return;
        };
        if sub.call != Some(call) || sub.opened {
            return;
        }
        sub.opened = true;
        if let Some(op) = sub.pending_op.take() {
            self.finish_op(op, Ok(OpOutcome::Subscribed));
        }
    }

    fn handle_stream_ended(&mut self, call: CallId, error: Option<RpcError>, now: Instant) {
        let Some(entry) = self.calls.remove(&call) else {
            return;
        };
        let CallPurpose::Stream { name } = entry.purpose else {
            // Not a stream: put it back, it is still waiting for its reply.
            self.calls.insert(call, entry);
            return;
        };
        if error.as_ref().is_some_and(|e| e.code.is_connection_loss()) {
            let message = error.map(|e| e.message).unwrap_or_default();
            self.connection_lost(format!("subscribe stream failed: {message}"), now);
            return;
        }
        let Some(sub) = self.subs.get_mut(&name) else {
            return;
        };
        if sub.call != Some(call) {
            return;
        }
        sub.call = None;
        let opened = std::mem::replace(&mut sub.opened, false);
        if !opened {
            if let Some(op) = sub.pending_op {
                let message = error
                    .map(|e| e.message)
                    .unwrap_or_else(|| "subscribe stream ended before it opened".to_owned());
                // finish_op removes the subscription.
                self.finish_op(op, Err(SessionError::Subscription { message }));
                return;
            }
        }
        self.emit(SessionEvent::StreamEnded {
            event_name: name,
            error,
        });
    }

    fn handle_item(
        &mut self,
        event: wire::EventStreamResponse,
        timestamp: Option<i64>,
        now: Instant,
    ) {
        if !self.is_connected() {
            return;
        }
        let Some(sub) = self.subs.get(&event.event_name) else {
            return;
        };
        let auto_ack = sub.auto_ack;
        let eligible = auto_ack && !event.event_idem.is_empty() && event.partition_block != 0;
        let key = (event.event_name.clone(), event.event_idem.clone());
        if !event.event_idem.is_empty() {
            if let Some(entry) = self.dedup.get_mut(&key) {
                entry.seen_epoch = self.epoch;
                entry.block = event.partition_block;
                // At most one ack per event per connection: a second delivery of it in
                // this connection (a defer racing a redelivery) is not acked again.
                if entry.done_ok && eligible && entry.acked_epoch != Some(self.epoch) {
                    entry.acked_epoch = Some(self.epoch);
                    self.internal_ack(
                        &event.event_name,
                        &event.event_idem,
                        event.partition_block,
                        now,
                    );
                }
                return;
            }
        }
        let key_ref = sub.key.clone().or_else(|| self.config.secret_key.clone());
        let payload = match decrypt_payload(&event.payload, key_ref.as_deref()) {
            Ok(p) => p,
            Err(error) => {
                self.emit(SessionEvent::DeliveryFailed {
                    event_name: event.event_name,
                    idem: event.event_idem,
                    error,
                });
                return;
            }
        };
        let metadata = if event.metadata.is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_json::from_str(&event.metadata)
                .unwrap_or_else(|_| serde_json::Value::Object(Default::default()))
        };
        let token = DeliveryToken(self.alloc_id());
        if !event.event_idem.is_empty() {
            self.dedup.insert(
                key,
                DedupEntry {
                    running: Some(token),
                    done_ok: false,
                    seen_epoch: self.epoch,
                    block: event.partition_block,
                    acked_epoch: None,
                    seq: 0,
                },
            );
        }
        self.deliveries.insert(
            token,
            DeliveryInfo {
                settled: false,
                event_name: event.event_name.clone(),
                idem: event.event_idem.clone(),
                block: event.partition_block,
                auto_ack,
                epoch: self.epoch,
            },
        );
        self.emit(SessionEvent::Delivery(Delivery {
            token,
            event_name: event.event_name,
            idem: event.event_idem,
            block: event.partition_block,
            payload,
            sender: event.sender,
            metadata,
            timestamp,
            auto_ack,
        }));
    }
}

/// Whether the node answered `success = false`.
fn reply_refused(reply: &Reply) -> bool {
    match reply {
        Reply::Connect(r) => !r.success,
        Reply::Heartbeat(r) => !r.success,
        Reply::Publish(r) => !r.success,
        Reply::Unsubscribe(r) => !r.success,
        Reply::Ack(r) => !r.success,
        Reply::Defer(r) => !r.success,
        Reply::Discard(r) => !r.success,
        Reply::Replay(r) => !r.success,
        Reply::Pause(r) => !r.success,
        Reply::Continue(r) => !r.success,
    }
}

fn wrong_type() -> SessionError {
    SessionError::Protocol {
        message: "reply of the wrong type for the request".to_owned(),
    }
}

fn ok_or(
    success: bool,
    message: String,
    err: impl FnOnce(String) -> SessionError,
) -> Result<(), SessionError> {
    if success { Ok(()) } else { Err(err(message)) }
}

fn kind_error(kind: &OpKind, message: String) -> SessionError {
    match kind {
        OpKind::Open => SessionError::connection(message),
        OpKind::Publish => SessionError::Publish {
            message,
            published: Vec::new(),
        },
        OpKind::Subscribe | OpKind::Unsubscribe { .. } => SessionError::Subscription { message },
        OpKind::Ack => SessionError::Ack { message },
        OpKind::Defer => SessionError::Defer { message },
        OpKind::Discard => SessionError::Discard { message },
        OpKind::Replay { .. } => SessionError::Replay { message },
        OpKind::Pause { .. } => SessionError::Pause { message },
        OpKind::Resume { .. } => SessionError::Continue { message },
    }
}

fn with_published(error: SessionError, ids: Vec<String>) -> SessionError {
    match error {
        SessionError::Connection { message, .. } => SessionError::Connection {
            message,
            published: ids,
        },
        SessionError::Publish { message, .. } => SessionError::Publish {
            message,
            published: ids,
        },
        SessionError::Timeout { .. } => SessionError::Timeout { published: ids },
        other => other,
    }
}

fn defer_request(event_name: &str, idem: &str, delay_ms: i64, reason: &str) -> Request {
    Request::Defer(wire::DeferRequest {
        client_id: String::new(),
        event_idem: idem.to_owned(),
        event_name: event_name.to_owned(),
        delay_ms,
        priority: 0,
        reason: reason.to_owned(),
    })
}

fn pause_request(event_name: &str, reason: &str) -> Request {
    Request::Pause(wire::PauseRequest {
        client_id: String::new(),
        event_name: event_name.to_owned(),
        reason: reason.to_owned(),
    })
}

fn with_client_id(request: &Request, client_id: String) -> Request {
    let mut r = request.clone();
    match &mut r {
        Request::Connect(_) => {}
        Request::Heartbeat(m) => m.client_id = client_id,
        Request::Publish(m) => m.client_id = client_id,
        Request::Subscribe(m) => m.client_id = client_id,
        Request::Unsubscribe(m) => m.client_id = client_id,
        Request::Ack(m) => m.client_id = client_id,
        Request::Defer(m) => m.client_id = client_id,
        Request::Discard(m) => m.client_id = client_id,
        Request::Replay(m) => m.client_id = client_id,
        Request::Pause(m) => m.client_id = client_id,
        Request::Continue(m) => m.client_id = client_id,
    }
    r
}

/// Decrypts an envelope and parses the plaintext as JSON.
fn decrypt_payload(
    payload: &str,
    key: Option<&SecretKey>,
) -> Result<serde_json::Value, SessionError> {
    let Some(key) = key else {
        return Err(SessionError::Decryption {
            message: "no secret key to decrypt with".to_owned(),
        });
    };
    let plaintext = envelope::decrypt(payload, key).map_err(|e| SessionError::Decryption {
        message: e.to_string(),
    })?;
    serde_json::from_slice(&plaintext).map_err(|e| SessionError::Decryption {
        message: format!("payload is not JSON: {e}"),
    })
}

struct DedupEntry {
    /// The delivery whose handler is running, if any.
    running: Option<DeliveryToken>,
    /// A handler finished OK.
    done_ok: bool,
    /// The connection epoch in which the node last delivered it.
    seen_epoch: u64,
    /// Its partition block in that delivery.
    block: i64,
    /// The connection epoch in which the session last acknowledged it.
    acked_epoch: Option<u64>,
    seq: u64,
}

/// Events handed to the application, bounded: the oldest are forgotten first.
struct Dedup {
    capacity: usize,
    map: HashMap<(String, String), DedupEntry>,
    order: VecDeque<((String, String), u64)>,
    seq: u64,
}

impl Dedup {
    fn new(capacity: usize) -> Self {
        Dedup {
            capacity,
            map: HashMap::new(),
            order: VecDeque::new(),
            seq: 0,
        }
    }

    fn get(&self, key: &(String, String)) -> Option<&DedupEntry> {
        self.map.get(key)
    }

    fn get_mut(&mut self, key: &(String, String)) -> Option<&mut DedupEntry> {
        self.map.get_mut(key)
    }

    fn remove(&mut self, key: &(String, String)) {
        self.map.remove(key);
    }

    fn insert(&mut self, key: (String, String), mut entry: DedupEntry) {
        if self.capacity == 0 {
            return;
        }
        self.seq += 1;
        entry.seq = self.seq;
        self.order.push_back((key.clone(), self.seq));
        self.map.insert(key, entry);
        while self.map.len() > self.capacity || self.order.len() > 2 * self.capacity + 16 {
            let Some((old, seq)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&old).is_some_and(|e| e.seq == seq) {
                self.map.remove(&old);
            }
        }
    }
}
