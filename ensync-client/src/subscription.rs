//! Subscriptions: a stream of events, a handler, and the seed README's controls.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::channel::mpsc;
use futures::future::{AbortHandle, Abortable};
use futures::{FutureExt, Stream, StreamExt};

use crate::client::{Control, Op};
use crate::error::{EnSyncError, ErrorKind, Result};
use crate::event::Event;

/// A subscription to one event name, from [`Client::subscribe`](crate::Client::subscribe).
///
/// It is a [`Stream`] of [`Event`]s:
///
/// ```no_run
/// # async fn f(client: ensync_client::Client) -> ensync_client::Result<()> {
/// use futures::StreamExt;
/// let mut subscription = client.subscribe("orders/status/updated").await?;
/// while let Some(event) = subscription.next().await {
///     println!("order update: {}", event.payload["order_id"]);
///     // auto-ack: acknowledged when `event` is dropped here
/// }
/// # Ok(()) }
/// ```
///
/// or runs a handler for each event, as in the seed README:
///
/// ```no_run
/// # async fn f(client: ensync_client::Client) -> ensync_client::Result<()> {
/// let mut subscription = client.subscribe("orders/status/updated").await?;
/// subscription.on(|event| async move {
///     println!("order update: {}", event.payload["order_id"]);
/// });
/// # Ok(()) }
/// ```
///
/// The subscription lives as long as its events can be received: dropping the
/// `Subscription` (and any handler started with [`on`](Subscription::on)) unsubscribes.
pub struct Subscription {
    event_name: String,
    control: Control,
    events: Option<mpsc::UnboundedReceiver<Event>>,
    handler: Option<AbortHandle>,
}

/// What a handler given to [`Subscription::on`] may return: `()` (always a success) or a
/// `Result` whose `Err` marks the handling as failed (no ack; delivered again).
pub trait HandlerResult {
    /// `Err(reason)` when the handling failed.
    fn into_outcome(self) -> std::result::Result<(), String>;
}

impl HandlerResult for () {
    fn into_outcome(self) -> std::result::Result<(), String> {
        Ok(())
    }
}

impl<E: fmt::Display> HandlerResult for std::result::Result<(), E> {
    fn into_outcome(self) -> std::result::Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

impl Subscription {
    pub(crate) fn new(
        event_name: String,
        control: Control,
        events: mpsc::UnboundedReceiver<Event>,
    ) -> Self {
        Subscription {
            event_name,
            control,
            events: Some(events),
            handler: None,
        }
    }

    /// The subscribed event name.
    pub fn event_name(&self) -> &str {
        &self.event_name
    }

    /// Runs `handler` for each event, one at a time in delivery order, on a task of its
    /// own (started with the [`Executor`](crate::Executor)'s spawner). The handler may return `()` or a `Result<(), E>`; on an auto-ack subscription
    /// the event is acknowledged after it returns successfully. An `Err` or a panic leaves
    /// the event unacknowledged (it is delivered again) and the next event is handled.
    ///
    /// After `on`, the subscription no longer yields events as a stream. Calling `on`
    /// again replaces nothing: the second handler gets no events.
    pub fn on<F, Fut>(&mut self, mut handler: F)
    where
        F: FnMut(Event) -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerResult,
    {
        let Some(mut events) = self.events.take() else {
            return;
        };
        let log = self.control.logging();
        let name = self.event_name.clone();
        let (abort, registration) = AbortHandle::new_pair();
        self.handler = Some(abort);
        let task = async move {
            while let Some(mut event) = events.next().await {
                let guard = event.take_guard();
                let idem = event.idem.clone();
                let result = AssertUnwindSafe(handler(event)).catch_unwind().await;
                let ok = match result {
                    Ok(output) => match output.into_outcome() {
                        Ok(()) => true,
                        Err(reason) => {
                            if log {
                                tracing::warn!(event = %name, %idem, %reason, "ensync: handler failed");
                            }
                            false
                        }
                    },
                    Err(_) => {
                        if log {
                            tracing::warn!(event = %name, %idem, "ensync: handler panicked");
                        }
                        false
                    }
                };
                if let Some(guard) = guard {
                    guard.finish(ok);
                }
            }
        };
        self.control
            .runtime()
            .spawn(Abortable::new(task, registration).map(|_| ()));
    }

    async fn op(&self, op: Op) -> Result<crate::client::Outcome> {
        self.control.op(op).await
    }

    /// Acknowledges the event `idem` at `block` (for `auto_ack(false)` subscriptions).
    pub async fn ack(&self, idem: &str, block: i64) -> Result<()> {
        self.op(Op::Ack {
            event_name: self.event_name.clone(),
            idem: idem.to_owned(),
            block,
        })
        .await
        .map(|_| ())
    }

    /// Pauses delivery of this event name; events wait on the node until
    /// [`resume`](Subscription::resume).
    pub async fn pause(&self, reason: &str) -> Result<()> {
        self.op(Op::Pause {
            event_name: self.event_name.clone(),
            reason: reason.to_owned(),
        })
        .await
        .map(|_| ())
    }

    /// Resumes delivery after [`pause`](Subscription::pause); held events follow in order.
    pub async fn resume(&self) -> Result<()> {
        self.op(Op::Resume {
            event_name: self.event_name.clone(),
        })
        .await
        .map(|_| ())
    }

    /// Defers the event `idem`: the node delivers it again after `delay` (1 s ..= 24 h).
    /// Returns the planned delivery time in epoch milliseconds.
    pub async fn defer(&self, idem: &str, delay: Duration, reason: &str) -> Result<i64> {
        let outcome = self
            .op(Op::Defer {
                event_name: self.event_name.clone(),
                idem: idem.to_owned(),
                delay,
                reason: reason.to_owned(),
            })
            .await?;
        Ok(outcome.delivery_time_ms())
    }

    /// Discards the event `idem`: it is never delivered again.
    pub async fn discard(&self, idem: &str, reason: &str) -> Result<()> {
        self.op(Op::Discard {
            event_name: self.event_name.clone(),
            idem: idem.to_owned(),
            reason: reason.to_owned(),
        })
        .await
        .map(|_| ())
    }

    /// Fetches a stored event by id (also after it was acknowledged) and returns its
    /// decrypted payload.
    pub async fn replay(&self, idem: &str) -> Result<serde_json::Value> {
        let outcome = self
            .op(Op::Replay {
                event_name: self.event_name.clone(),
                idem: idem.to_owned(),
            })
            .await?;
        outcome
            .into_replayed()
            .ok_or_else(|| EnSyncError::new(ErrorKind::Replay, "the node's reply carried no event"))
    }

    /// Unsubscribes: no more events of this name are delivered to this client, and a
    /// handler started with [`on`](Subscription::on) stops.
    pub async fn unsubscribe(mut self) -> Result<()> {
        let result = self
            .op(Op::Unsubscribe {
                event_name: self.event_name.clone(),
            })
            .await
            .map(|_| ());
        if let Some(handler) = self.handler.take() {
            handler.abort();
        }
        result
    }
}

impl Stream for Subscription {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        match self.events.as_mut() {
            Some(events) => events.poll_next_unpin(cx),
            None => Poll::Ready(None),
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("event_name", &self.event_name)
            .field("handler", &self.handler.is_some())
            .finish_non_exhaustive()
    }
}
