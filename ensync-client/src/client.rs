//! The client: publish, subscribe, state, close.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_lock::Semaphore;
use futures::Stream;
use futures::channel::{mpsc, oneshot};
use serde::Serialize;

use crate::error::{EnSyncError, ErrorKind, Result};
use crate::event::Event;
use crate::options::{PublishOptions, SubscribeOptions};
use crate::runtime::Executor;
use crate::state::StateWatch;
use crate::subscription::Subscription;

/// The state of a client's connection, observable through [`Client::state`] and
/// [`Client::state_changes`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Connecting and authenticating.
    Connecting,
    /// Connected and authenticated.
    Connected,
    /// The connection was lost; reconnect attempt `attempt` starts after `delay`.
    Reconnecting {
        /// The attempt number, from 1.
        attempt: u32,
        /// The wait before this attempt.
        delay: Duration,
    },
    /// Closed for good: by [`Client::close`] (`reason` is `None`) or because every
    /// reconnect attempt failed or the node refused the access key (`reason` says).
    Closed {
        /// Why the client closed, if not on request.
        reason: Option<String>,
    },
}

/// A request from the API side to the driver task.
pub(crate) enum Command {
    Op(Op, oneshot::Sender<Result<Outcome>>),
    Subscribe {
        event_name: String,
        options: SubscribeOptions,
        sink: mpsc::UnboundedSender<Event>,
        reply: oneshot::Sender<Result<Outcome>>,
    },
    HandlerFinished {
        token: ensync_proto::session::DeliveryToken,
        ok: bool,
    },
    Close(oneshot::Sender<Result<Outcome>>),
}

/// An application command with one result.
pub(crate) enum Op {
    Publish {
        event_name: String,
        recipients: Vec<String>,
        payload: serde_json::Value,
        options: PublishOptions,
    },
    Unsubscribe {
        event_name: String,
    },
    Ack {
        event_name: String,
        idem: String,
        block: i64,
    },
    Defer {
        event_name: String,
        idem: String,
        delay: Duration,
        reason: String,
    },
    Discard {
        event_name: String,
        idem: String,
        reason: String,
    },
    Replay {
        event_name: String,
        idem: String,
    },
    Pause {
        event_name: String,
        reason: String,
    },
    Resume {
        event_name: String,
    },
}

/// The successful result of an operation.
#[derive(Debug)]
pub(crate) enum Outcome {
    Done,
    Opened {
        client_id: String,
        client_hash: String,
    },
    Published(Vec<String>),
    Deferred(i64),
    Replayed(serde_json::Value),
}

impl Outcome {
    pub(crate) fn delivery_time_ms(&self) -> i64 {
        match self {
            Outcome::Deferred(at) => *at,
            _ => 0,
        }
    }

    pub(crate) fn into_replayed(self) -> Option<serde_json::Value> {
        match self {
            Outcome::Replayed(value) => Some(value),
            _ => None,
        }
    }
}

fn closed() -> EnSyncError {
    EnSyncError::new(ErrorKind::Closed, "the client is closed")
}

/// What every API-side handle shares. The driver holds it weakly: once the last client,
/// subscription and event is gone, the command channel closes and the driver stops.
pub(crate) struct Shared {
    pub(crate) tx: mpsc::UnboundedSender<Command>,
    pub(crate) in_flight: Arc<Semaphore>,
    pub(crate) logging: bool,
    pub(crate) runtime: Executor,
}

/// The API side's handle on the driver task.
#[derive(Clone)]
pub(crate) struct Control {
    shared: Arc<Shared>,
}

impl Control {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Control { shared }
    }

    pub(crate) fn logging(&self) -> bool {
        self.shared.logging
    }

    pub(crate) fn runtime(&self) -> &Executor {
        &self.shared.runtime
    }

    /// Sends a command and waits for its result, holding an in-flight permit meanwhile.
    async fn request(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<Outcome>>) -> Command,
    ) -> Result<Outcome> {
        let _permit = self.shared.in_flight.acquire().await;
        let (reply, result) = oneshot::channel();
        self.shared
            .tx
            .unbounded_send(make(reply))
            .map_err(|_| closed())?;
        result.await.map_err(|_| closed())?
    }

    pub(crate) async fn op(&self, op: Op) -> Result<Outcome> {
        self.request(|reply| Command::Op(op, reply)).await
    }

    pub(crate) fn handler_finished(&self, token: ensync_proto::session::DeliveryToken, ok: bool) {
        // The driver being gone means the client is closed: nothing left to report to.
        let _ = self
            .shared
            .tx
            .unbounded_send(Command::HandlerFinished { token, ok });
    }
}

struct ClientInner {
    control: Control,
    state: StateWatch,
    client_id: String,
    client_hash: String,
}

/// An authenticated EnSync client, from
/// `EnSyncEngine::create_client`.
///
/// Cheap to clone (`Clone + Send + Sync`); all clones share one connection, and many
/// calls may be in flight on it at once. The connection closes with
/// [`close`](Client::close), or when the last clone, subscription and event are dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

impl Client {
    pub(crate) fn new(
        control: Control,
        state: StateWatch,
        client_id: String,
        client_hash: String,
    ) -> Self {
        Client {
            inner: Arc::new(ClientInner {
                control,
                state,
                client_id,
                client_hash,
            }),
        }
    }

    /// This app's public key (standard base64), as the node reported it at
    /// authentication: other apps publish to it.
    pub fn public_key(&self) -> &str {
        &self.inner.client_hash
    }

    /// The session id the node assigned at the first authentication.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// The connection's current state.
    pub fn state(&self) -> ConnectionState {
        self.inner.state.get()
    }

    /// The connection's state now and at every change (connected, reconnecting with
    /// the attempt number, closed with the cause).
    pub fn state_changes(&self) -> impl Stream<Item = ConnectionState> + Send + use<> {
        self.inner.state.changes()
    }

    /// Publishes `payload` (any `Serialize` value that is a JSON object) under
    /// `event_name` to each of `recipients` (their public keys, standard base64),
    /// encrypted for each. Returns the event ids, one per recipient, in order.
    ///
    /// ```no_run
    /// # async fn f(client: ensync_client::Client, app_id: &str) -> ensync_client::Result<()> {
    /// let ids = client
    ///     .publish(
    ///         "orders/status/updated",
    ///         &[app_id],
    ///         &serde_json::json!({"order_id": "order-123", "status": "completed"}),
    ///     )
    ///     .await?;
    /// println!("published {ids:?}");
    /// # Ok(()) }
    /// ```
    pub async fn publish<P: Serialize + ?Sized>(
        &self,
        event_name: &str,
        recipients: &[impl AsRef<str>],
        payload: &P,
    ) -> Result<Vec<String>> {
        self.publish_with(event_name, recipients, payload, PublishOptions::default())
            .await
    }

    /// [`publish`](Client::publish) with metadata (a `Serialize` JSON object, sent
    /// unencrypted).
    pub async fn publish_with_metadata<P: Serialize + ?Sized, M: Serialize + ?Sized>(
        &self,
        event_name: &str,
        recipients: &[impl AsRef<str>],
        payload: &P,
        metadata: &M,
    ) -> Result<Vec<String>> {
        let metadata = to_json(metadata, "metadata")?;
        self.publish_with(
            event_name,
            recipients,
            payload,
            PublishOptions::default().metadata(metadata),
        )
        .await
    }

    /// [`publish`](Client::publish) with [`PublishOptions`] (metadata, hybrid encryption).
    pub async fn publish_with<P: Serialize + ?Sized>(
        &self,
        event_name: &str,
        recipients: &[impl AsRef<str>],
        payload: &P,
        options: PublishOptions,
    ) -> Result<Vec<String>> {
        let payload = to_json(payload, "payload")?;
        let op = Op::Publish {
            event_name: event_name.to_owned(),
            recipients: recipients.iter().map(|r| r.as_ref().to_owned()).collect(),
            payload,
            options,
        };
        match self.inner.control.op(op).await? {
            Outcome::Published(ids) => Ok(ids),
            other => Err(EnSyncError::new(
                ErrorKind::Publish,
                format!("unexpected result {other:?}"),
            )),
        }
    }

    /// Subscribes to `event_name` with the default options (auto-ack, the client's key).
    pub async fn subscribe(&self, event_name: &str) -> Result<Subscription> {
        self.subscribe_with(event_name, SubscribeOptions::default())
            .await
    }

    /// Subscribes to `event_name` with [`SubscribeOptions`].
    pub async fn subscribe_with(
        &self,
        event_name: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        let (sink, events) = mpsc::unbounded();
        let event_name = event_name.to_owned();
        self.inner
            .control
            .request(|reply| Command::Subscribe {
                event_name: event_name.clone(),
                options,
                sink,
                reply,
            })
            .await?;
        Ok(Subscription::new(
            event_name,
            self.inner.control.clone(),
            events,
        ))
    }

    /// Closes the connection. Calls still waiting fail with [`ErrorKind::Closed`], and
    /// no more events are handed to handlers or streams. Automatic acknowledgements
    /// already on their way (the events whose handlers returned) are given up to
    /// [`CLOSE_GRACE`](ensync_proto::session::CLOSE_GRACE) (2 s) to reach the node first,
    /// so those events are not delivered again to the app's next session.
    pub async fn close(&self) -> Result<()> {
        let (reply, result) = oneshot::channel();
        if self
            .inner
            .control
            .shared
            .tx
            .unbounded_send(Command::Close(reply))
            .is_err()
        {
            return Ok(()); // already closed
        }
        match result.await {
            Ok(result) => result.map(|_| ()),
            Err(_) => Ok(()),
        }
    }
}

fn to_json<T: Serialize + ?Sized>(value: &T, what: &str) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| {
        EnSyncError::new(
            ErrorKind::Validation,
            format!("{what} is not serializable as JSON"),
        )
        .with_source(e)
    })
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("public_key", &self.inner.client_hash)
            .field("state", &self.inner.state.get())
            .finish_non_exhaustive()
    }
}
