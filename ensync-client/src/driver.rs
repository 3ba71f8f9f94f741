//! The driver: one task per client that owns the core's [`Session`], feeds it what
//! the transport reports, and does what it asks. All protocol policy (reconnect,
//! backoff, heartbeats, acks, dialect) is the session's; this loop only does IO, through
//! a [`Transport`] and on an [`Executor`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Instant;

use async_lock::{Semaphore, SemaphoreGuardArc};
use ensync_proto::keys::SecretKey;
use ensync_proto::session::{
    self, Call, CallId, ConnectionId, Input, OpId, OpOutcome, Output, Reply, RpcError, Session,
    SessionConfig, SessionError, SessionEvent,
};
use ensync_proto::wire;
use futures::channel::{mpsc, oneshot};
use futures::future::{AbortHandle, BoxFuture, Fuse, Shared as SharedFuture};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};

use crate::client::{Client, Command, ConnectionState, Control, Op, Outcome, Shared};
use crate::error::{EnSyncError, ErrorKind, Result};
use crate::event::{Event, EventHandle, HandlingGuard};
use crate::options::{ClientOptions, EngineOptions, RpcGeneration};
use crate::runtime::Executor;
use crate::state::StateWatch;

/// One event from a subscribe stream, with the node's log time (epoch ms) when the
/// transport carries it (WebSocket `loggedAt`).
pub type StreamItem = (wire::EventStreamResponse, Option<i64>);

/// A subscribe stream as a transport opens it.
pub type EventStream = BoxStream<'static, std::result::Result<StreamItem, RpcError>>;

/// How the driver reaches a node (gRPC on tonic or h2, or WebSocket).
pub trait Transport: Send + Sync + 'static {
    /// An open connection; cheap to clone.
    type Conn: Clone + Send + Sync + 'static;
    /// How many node endpoints the transport can reach (the engine's URLs); the
    /// session chooses among them.
    fn endpoints(&self) -> usize {
        1
    }
    /// Opens a connection to endpoint `endpoint` (an index below
    /// [`endpoints`](Self::endpoints), as the session's `Output::Connect` names it),
    /// within the engine's connect timeout.
    fn connect(
        &self,
        endpoint: usize,
    ) -> BoxFuture<'static, std::result::Result<Self::Conn, String>>;
    /// Makes a unary call.
    fn unary(
        &self,
        conn: &Self::Conn,
        call: Call,
    ) -> BoxFuture<'static, std::result::Result<Reply, RpcError>>;
    /// Opens a subscribe stream.
    fn subscribe(
        &self,
        conn: &Self::Conn,
        call: Call,
    ) -> BoxFuture<'static, std::result::Result<EventStream, RpcError>>;
    /// Resolves (with the reason) when an open connection is lost. The driver polls it
    /// from the moment the connection is reported open until it drops the connection,
    /// so a transport may drive the connection in it (h2). The default never resolves
    /// (tonic channels reconnect by themselves; losses show on streams and heartbeats).
    fn closed(&self, _conn: &Self::Conn) -> BoxFuture<'static, String> {
        Box::pin(std::future::pending())
    }
    /// Whether the session sends `Heartbeat` calls (gRPC); the WebSocket node pings instead.
    fn heartbeats(&self) -> bool {
        true
    }
}

enum Step<C> {
    Io(Option<Io<C>>),
    Command(Option<Command>),
    Timer,
}

/// What IO tasks report back to the driver, named as the session named them: a
/// connection attempt by its [`ConnectionId`], a call by its [`CallId`]. The session
/// itself ignores facts about attempts and calls it has moved past.
enum Io<C> {
    Connected(ConnectionId, std::result::Result<C, String>),
    Lost(ConnectionId, String),
    Reply(CallId, std::result::Result<Reply, RpcError>),
    StreamOpened(CallId),
    StreamItem(CallId, StreamItem, SemaphoreGuardArc),
    StreamEnded(CallId, Option<RpcError>),
}

struct Sink {
    events: mpsc::UnboundedSender<Event>,
}

struct Driver<T: Transport> {
    session: Session,
    executor: Executor,
    transport: Arc<T>,
    conn: Option<T::Conn>,
    /// The attempt of the last [`Output::Connect`], while its transport is wanted.
    current: Option<ConnectionId>,
    /// Dropped (which stops every task of the current connection) on disconnect.
    stop: oneshot::Sender<()>,
    stopped: SharedFuture<oneshot::Receiver<()>>,
    streams: HashMap<CallId, AbortHandle>,
    io_tx: mpsc::UnboundedSender<Io<T::Conn>>,
    io_rx: mpsc::UnboundedReceiver<Io<T::Conn>>,
    commands: mpsc::UnboundedReceiver<Command>,
    shared: Weak<Shared>,
    ops: HashMap<OpId, oneshot::Sender<Result<Outcome>>>,
    subscribes: HashMap<OpId, (String, Sink)>,
    sinks: HashMap<String, Sink>,
    state: StateWatch,
    permit: Option<SemaphoreGuardArc>,
    buffer: usize,
    logging: bool,
    closed: bool,
}

/// Builds the session, starts the driver task on `executor`, waits for authentication,
/// and returns the client.
pub async fn start<T: Transport>(
    executor: Executor,
    transport: T,
    app_key: &str,
    client_options: ClientOptions,
    options: &EngineOptions,
) -> Result<Client> {
    let secret = match &client_options.app_secret_key {
        Some(text) => Some(Arc::new(parse_secret(text)?)),
        None => None,
    };
    let generation = match options.generation {
        RpcGeneration::Auto => session::GenerationChoice::Auto(session::Generation::Message),
        RpcGeneration::Event => session::GenerationChoice::Pinned(session::Generation::Event),
        RpcGeneration::Message => session::GenerationChoice::Pinned(session::Generation::Message),
    };
    let mut config = SessionConfig::new(app_key)
        .reconnect_interval(options.reconnect_interval)
        .max_reconnect_attempts(options.max_reconnect_attempts)
        .endpoints(transport.endpoints())
        .heartbeat_interval(transport.heartbeats().then_some(options.heartbeat_interval))
        .request_timeout(options.request_timeout)
        .max_in_flight(options.max_in_flight)
        .generation(generation);
    if let Some(secret) = secret {
        config = config.secret_key(secret);
    }
    let now = Instant::now();
    let mut session = Session::new(config, now);
    let open = session.open(now);

    let (tx, commands) = mpsc::unbounded();
    let (io_tx, io_rx) = mpsc::unbounded();
    let state = StateWatch::new(ConnectionState::Connecting);
    let (opened_tx, opened_rx) = oneshot::channel();
    let shared = Arc::new(Shared {
        tx,
        in_flight: Arc::new(Semaphore::new(options.max_in_flight.max(1))),
        logging: options.enable_logging,
        runtime: executor.clone(),
    });
    let (stop, stopped) = oneshot::channel();
    let mut driver = Driver {
        session,
        executor: executor.clone(),
        transport: Arc::new(transport),
        conn: None,
        current: None,
        stop,
        stopped: stopped.shared(),
        streams: HashMap::new(),
        io_tx,
        io_rx,
        commands,
        shared: Arc::downgrade(&shared),
        ops: HashMap::new(),
        subscribes: HashMap::new(),
        sinks: HashMap::new(),
        state: state.clone(),
        permit: None,
        buffer: options.subscription_buffer.max(1),
        logging: options.enable_logging,
        closed: false,
    };
    driver.ops.insert(open, opened_tx);
    executor.spawn(driver.run());

    let control = Control::new(shared);
    match opened_rx.await {
        Ok(Ok(Outcome::Opened {
            client_id,
            client_hash,
        })) => Ok(Client::new(control, state, client_id, client_hash)),
        Ok(Ok(other)) => Err(EnSyncError::new(
            ErrorKind::Connection,
            format!("unexpected result {other:?}"),
        )),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(EnSyncError::new(
            ErrorKind::Connection,
            "the client stopped",
        )),
    }
}

/// The URLs of an engine: its own (possibly a comma-separated list), then the options'
/// [`extra_urls`](EngineOptions::extra_urls).
fn engine_urls<'a>(url: &'a str, options: &'a EngineOptions) -> impl Iterator<Item = &'a str> {
    std::iter::once(url).chain(options.extra_urls.iter().map(String::as_str))
}

fn bad_urls(e: ensync_proto::url::UrlListError) -> EnSyncError {
    EnSyncError::new(ErrorKind::Validation, e.to_string()).with_source(e)
}

/// The gRPC endpoints an engine connects to, in order: `url` (one URL or several
/// separated by commas) and the options' extra URLs, by the gRPC URL rules, plaintext
/// when the options disable TLS. A malformed URL, a WebSocket URL among them or a mix
/// of TLS and plaintext is an [`ErrorKind::Validation`] error.
pub fn grpc_endpoints(
    url: &str,
    options: &EngineOptions,
) -> Result<Vec<ensync_proto::url::Endpoint>> {
    ensync_proto::url::parse_grpc_urls(engine_urls(url, options), options.disable_tls)
        .map_err(bad_urls)
}

/// The WebSocket endpoints an engine connects to, like [`grpc_endpoints`] by the
/// WebSocket URL rules.
pub fn ws_endpoints(
    url: &str,
    options: &EngineOptions,
) -> Result<Vec<ensync_proto::url::WsEndpoint>> {
    ensync_proto::url::parse_ws_urls(engine_urls(url, options), options.disable_tls)
        .map_err(bad_urls)
}

fn parse_secret(text: &str) -> Result<SecretKey> {
    SecretKey::from_base64(text).map_err(|e| {
        EnSyncError::new(ErrorKind::Validation, format!("bad app secret key: {e}")).with_source(e)
    })
}

impl<T: Transport> Driver<T> {
    async fn run(mut self) {
        let mut timer: Fuse<BoxFuture<'static, ()>> = Fuse::terminated();
        let mut armed = None;
        loop {
            self.drain();
            if self.closed {
                break;
            }
            let deadline = self.session.poll_timeout();
            if deadline != armed {
                armed = deadline;
                timer = match deadline {
                    Some(at) => self
                        .executor
                        .sleep(at.saturating_duration_since(Instant::now()))
                        .fuse(),
                    None => Fuse::terminated(),
                };
            }
            let step = futures::select_biased! {
                io = self.io_rx.next() => Step::Io(io),
                command = self.commands.next() => Step::Command(command),
                () = timer => Step::Timer,
            };
            match step {
                Step::Io(Some(io)) => self.io(io),
                Step::Io(None) => {}
                Step::Command(Some(command)) => self.command(command),
                // Every client, subscription and event handle is gone.
                Step::Command(None) => {
                    let _ = self.session.close(Instant::now());
                }
                Step::Timer => {
                    armed = None;
                    self.session.handle_timeout(Instant::now());
                }
            }
        }
        self.disconnect();
        self.state.finish();
        for (_, reply) in self.ops.drain() {
            let _ = reply.send(Err(EnSyncError::new(
                ErrorKind::Closed,
                "the client closed",
            )));
        }
    }

    fn command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Op(op, reply) => {
                let started = self.op(op, now);
                match started {
                    Ok(id) => {
                        self.ops.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(map_error(e)));
                    }
                }
            }
            Command::Subscribe {
                event_name,
                options,
                sink,
                reply,
            } => {
                let secret = match options.app_secret_key.as_deref().map(parse_secret) {
                    Some(Ok(key)) => Some(Arc::new(key)),
                    Some(Err(e)) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                    None => None,
                };
                let mut opts = session::SubscribeOptions::default().auto_ack(options.auto_ack);
                if let Some(secret) = secret {
                    opts = opts.secret_key(secret);
                }
                match self.session.subscribe(&event_name, opts, now) {
                    Ok(id) => {
                        self.ops.insert(id, reply);
                        self.subscribes
                            .insert(id, (event_name, Sink { events: sink }));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(map_error(e)));
                    }
                }
            }
            Command::HandlerFinished { token, ok } => {
                // The session knows which events the app settled itself
                // (ack/defer/discard) and takes no automatic action on them.
                let outcome = if ok {
                    session::HandlerOutcome::Ok
                } else {
                    session::HandlerOutcome::Failed
                };
                self.session.handler_finished(token, outcome, now);
            }
            Command::Close(reply) => {
                let id = self.session.close(now);
                self.ops.insert(id, reply);
            }
        }
    }

    fn op(&mut self, op: Op, now: Instant) -> std::result::Result<OpId, SessionError> {
        let s = &mut self.session;
        match op {
            Op::Publish {
                event_name,
                recipients,
                payload,
                options,
            } => s.publish(
                &event_name,
                &recipients,
                &payload,
                options.metadata.as_ref(),
                session::PublishOptions::default().hybrid(options.hybrid),
                now,
            ),
            Op::Unsubscribe { event_name } => {
                self.sinks.remove(&event_name);
                s.unsubscribe(&event_name, now)
            }
            Op::Ack {
                event_name,
                idem,
                block,
            } => s.ack(&event_name, &idem, block, now),
            Op::Defer {
                event_name,
                idem,
                delay,
                reason,
            } => s.defer(&event_name, &idem, delay, &reason, now),
            Op::Discard {
                event_name,
                idem,
                reason,
            } => s.discard(&event_name, &idem, &reason, now),
            Op::Replay { event_name, idem } => s.replay(&event_name, &idem, now),
            Op::Pause { event_name, reason } => s.pause(&event_name, &reason, now),
            Op::Resume { event_name } => s.resume(&event_name, now),
        }
    }

    fn io(&mut self, io: Io<T::Conn>) {
        let now = Instant::now();
        let input = match io {
            Io::Connected(conn, Ok(transport)) => {
                // A late connect of an attempt given up is dropped here (the session
                // ignores the fact too).
                if self.current == Some(conn) {
                    let lost = self.transport.closed(&transport);
                    let io = self.io_tx.clone();
                    self.spawn_for_connection(async move {
                        let _ = io.unbounded_send(Io::Lost(conn, lost.await));
                    });
                    self.conn = Some(transport);
                }
                Input::Connected { conn }
            }
            Io::Connected(conn, Err(reason)) => Input::Disconnected { conn, reason },
            Io::Lost(conn, reason) => {
                if self.current == Some(conn) {
                    self.disconnect();
                }
                Input::Disconnected { conn, reason }
            }
            Io::Reply(call, result) => Input::Reply { call, result },
            Io::StreamOpened(call) => Input::StreamOpened { call },
            Io::StreamItem(call, (event, logged_at), permit) => {
                self.permit = Some(permit);
                Input::StreamItem {
                    call,
                    event,
                    logged_at,
                }
            }
            Io::StreamEnded(call, error) => {
                self.streams.remove(&call);
                Input::StreamEnded { call, error }
            }
        };
        self.session.handle_input(input, now);
    }

    /// Does everything the session asks for, until it asks for nothing.
    fn drain(&mut self) {
        while let Some(output) = self.session.poll_output() {
            match output {
                Output::Connect { conn, endpoint } => self.connect(conn, endpoint),
                Output::Disconnect => self.disconnect(),
                Output::Call(call) => self.call(call),
                Output::CancelStream(id) => {
                    if let Some(task) = self.streams.remove(&id) {
                        task.abort();
                    }
                }
                Output::Event(event) => self.event(event),
            }
        }
        // A stream item that produced no delivery (a duplicate, or a name nobody
        // subscribes to) gives its buffer slot back.
        self.permit = None;
    }

    /// Spawns `task`, stopped when the current connection is dropped (or by the handle).
    fn spawn_for_connection(&self, task: impl Future<Output = ()> + Send + 'static) -> AbortHandle {
        let stopped = self.stopped.clone();
        self.executor.spawn_abortable(async move {
            let task = std::pin::pin!(task);
            futures::future::select(task, stopped).await;
        })
    }

    fn connect(&mut self, conn: ConnectionId, endpoint: usize) {
        self.disconnect();
        self.current = Some(conn);
        let io = self.io_tx.clone();
        let connecting = self.transport.connect(endpoint);
        self.spawn_for_connection(async move {
            let _ = io.unbounded_send(Io::Connected(conn, connecting.await));
        });
    }

    fn disconnect(&mut self) {
        self.current = None;
        self.conn = None;
        let (stop, stopped) = oneshot::channel();
        // Dropping the old sender stops every task of the old connection.
        self.stop = stop;
        self.stopped = stopped.shared();
        self.streams.clear();
    }

    fn call(&mut self, call: Call) {
        let io = self.io_tx.clone();
        let id = call.id;
        let Some(conn) = self.conn.clone() else {
            let _ = io.unbounded_send(Io::Reply(
                id,
                Err(RpcError::new(
                    session::RpcCode::Unavailable,
                    "not connected",
                )),
            ));
            return;
        };
        if call.request.is_streaming() {
            let opening = self.transport.subscribe(&conn, call);
            let buffer = Arc::new(Semaphore::new(self.buffer));
            let handle = self.spawn_for_connection(async move {
                let mut stream = match opening.await {
                    Ok(stream) => stream,
                    Err(e) => {
                        let _ = io.unbounded_send(Io::StreamEnded(id, Some(e)));
                        return;
                    }
                };
                let _ = io.unbounded_send(Io::StreamOpened(id));
                loop {
                    // Take a buffer slot before reading: a slow consumer stops the
                    // reading, and flow control pushes back on the node.
                    let permit = buffer.acquire_arc().await;
                    match stream.next().await {
                        Some(Ok(item)) => {
                            let _ = io.unbounded_send(Io::StreamItem(id, item, permit));
                        }
                        Some(Err(e)) => {
                            let _ = io.unbounded_send(Io::StreamEnded(id, Some(e)));
                            return;
                        }
                        None => {
                            let _ = io.unbounded_send(Io::StreamEnded(id, None));
                            return;
                        }
                    }
                }
            });
            self.streams.insert(id, handle);
        } else {
            let calling = self.transport.unary(&conn, call);
            self.spawn_for_connection(async move {
                let _ = io.unbounded_send(Io::Reply(id, calling.await));
            });
        }
    }

    fn event(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::State(state) => self.state_changed(state),
            SessionEvent::Completed { op, result } => {
                let subscribed = self.subscribes.remove(&op);
                if let (Some((name, sink)), Ok(_)) = (subscribed, &result) {
                    self.sinks.insert(name, sink);
                }
                if let Some(reply) = self.ops.remove(&op) {
                    let _ = reply.send(result.map(outcome).map_err(map_error));
                }
            }
            SessionEvent::Delivery(delivery) => self.deliver(delivery),
            SessionEvent::DeliveryFailed {
                event_name,
                idem,
                error,
            } => {
                if self.logging {
                    tracing::warn!(event = %event_name, %idem, %error, "ensync: event could not be read");
                }
            }
            SessionEvent::AutoAckFailed {
                event_name,
                idem,
                error,
            } => {
                // Informational: the node delivers the event again unless it was acked.
                if self.logging {
                    tracing::warn!(event = %event_name, %idem, %error, "ensync: automatic acknowledgement refused");
                }
            }
            SessionEvent::StreamEnded { event_name, error } => {
                // The subscription is kept (the session restores it at the next reconnect).
                if self.logging {
                    tracing::info!(event = %event_name, status = ?error, "ensync: subscribe stream ended");
                }
            }
        }
    }

    fn deliver(&mut self, delivery: session::Delivery) {
        let now = Instant::now();
        let permit = self.permit.take();
        let Some(shared) = self.shared.upgrade() else {
            // No client handle is left: nobody can handle the event.
            self.session
                .handler_finished(delivery.token, session::HandlerOutcome::Ok, now);
            return;
        };
        let control = Control::new(shared);
        let guard = HandlingGuard {
            control: control.clone(),
            token: delivery.token,
            done: false,
            _permit: permit,
        };
        let event = Event {
            idem: delivery.idem,
            event_name: delivery.event_name,
            block: delivery.block,
            timestamp: delivery.timestamp,
            payload: delivery.payload,
            sender: delivery.sender,
            metadata: delivery.metadata,
            handle: Some(EventHandle {
                control,
                guard: Some(guard),
            }),
        };
        let name = event.event_name.clone();
        let Some(sink) = self.sinks.get(&name) else {
            drop(event);
            return;
        };
        if let Err(error) = sink.events.unbounded_send(event) {
            let event = error.into_inner();
            // Nobody receives this subscription's events any more: unsubscribe, and
            // leave the event unacknowledged for the node to deliver elsewhere.
            drop(event);
            self.sinks.remove(&name);
            let _ = self.session.unsubscribe(&name, now);
        }
    }

    fn state_changed(&mut self, state: session::ConnectionState) {
        let (public, closed) = match state {
            session::ConnectionState::Connecting => (ConnectionState::Connecting, false),
            session::ConnectionState::Connected { .. } => (ConnectionState::Connected, false),
            session::ConnectionState::Reconnecting { attempt, delay } => {
                (ConnectionState::Reconnecting { attempt, delay }, false)
            }
            session::ConnectionState::Closed { error } => (
                ConnectionState::Closed {
                    reason: error.map(|e| e.to_string()),
                },
                true,
            ),
            // Only before `open`: the driver opens the session before it runs.
            session::ConnectionState::Idle => return,
        };
        if self.logging {
            tracing::info!(state = ?public, "ensync: connection state");
        }
        self.state.set(public);
        if closed {
            // The session completes every op itself; whatever is left when the loop
            // stops is failed there.
            self.closed = true;
        }
    }
}

fn outcome(outcome: OpOutcome) -> Outcome {
    match outcome {
        OpOutcome::Opened {
            client_id,
            client_hash,
        } => Outcome::Opened {
            client_id,
            client_hash,
        },
        OpOutcome::Published { ids } => Outcome::Published(ids),
        OpOutcome::Deferred { delivery_time_ms } => Outcome::Deferred(delivery_time_ms),
        OpOutcome::Replayed { payload } => Outcome::Replayed(payload),
        OpOutcome::Subscribed
        | OpOutcome::Unsubscribed
        | OpOutcome::Acked
        | OpOutcome::Discarded
        | OpOutcome::Paused
        | OpOutcome::Resumed
        | OpOutcome::Closed => Outcome::Done,
    }
}

/// Maps the core's error onto the SDK's error kinds.
fn map_error(error: SessionError) -> EnSyncError {
    let kind = match &error {
        SessionError::Connection { .. } => ErrorKind::Connection,
        SessionError::Auth { .. } => ErrorKind::Auth,
        SessionError::Publish { .. } => ErrorKind::Publish,
        SessionError::Subscription { .. } => ErrorKind::Subscription,
        SessionError::Ack { .. } => ErrorKind::Ack,
        SessionError::Defer { .. } => ErrorKind::Defer,
        SessionError::Discard { .. } => ErrorKind::Discard,
        SessionError::Replay { .. } => ErrorKind::Replay,
        SessionError::Pause { .. } => ErrorKind::Pause,
        SessionError::Continue { .. } => ErrorKind::Continue,
        SessionError::Validation { .. } => ErrorKind::Validation,
        SessionError::Decryption { .. } => ErrorKind::Decryption,
        SessionError::Timeout { .. } => ErrorKind::Timeout,
        SessionError::Closed => ErrorKind::Closed,
        SessionError::Unimplemented { .. } => ErrorKind::Unimplemented,
        SessionError::Overloaded { .. } => ErrorKind::Overloaded,
        SessionError::Protocol { .. } => ErrorKind::Protocol,
    };
    let retryable = error.is_retryable();
    let ids = error.published_ids().to_vec();
    // The core's text already names the failure; it is the message, not a source, so
    // error reports do not print it twice.
    EnSyncError::self_describing(kind, error.to_string())
        .retryable(retryable)
        .with_published_ids(ids)
}
