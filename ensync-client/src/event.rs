//! Received events and their acknowledgement handles.

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::client::{Control, Op};
use crate::error::{EnSyncError, ErrorKind, Result};

/// An event delivered to a subscription, already decrypted.
///
/// The fields mirror the seed README's event structure (`idem`, `eventName`, `block`,
/// `timestamp`, `payload`, `sender`, `metadata`).
///
/// ## Acknowledgement
/// On an auto-ack subscription (the default) the event is acknowledged once it has been
/// handled: when the handler given to [`Subscription::on`](crate::Subscription::on)
/// returns `Ok`, or, for events taken from the subscription as a
/// [`Stream`](futures::Stream), when the `Event` is dropped (not while unwinding from a
/// panic). A handler that fails (returns `Err`, panics, or calls [`Event::fail`]) leaves
/// it unacknowledged and the node delivers it again shortly.
///
/// [`ack`](Event::ack), [`defer`](Event::defer) and [`discard`](Event::discard) settle
/// the event explicitly; they consume it, so an event cannot be settled twice.
pub struct Event {
    /// The event's unique id (`idem`).
    pub idem: String,
    /// The event name (`eventName`).
    pub event_name: String,
    /// The partition block of the event in its queue (`block`).
    pub block: i64,
    /// When the node logged the event, in epoch milliseconds, if the transport says.
    pub timestamp: Option<i64>,
    /// The decrypted payload (a JSON object).
    pub payload: serde_json::Value,
    /// The sender's public key (standard base64): publish to it to reply.
    pub sender: String,
    /// The unencrypted metadata (a JSON object).
    pub metadata: serde_json::Value,
    pub(crate) handle: Option<EventHandle>,
}

/// What ties an event to its subscription: settles it through the client, and reports
/// to the session when its handling ended.
pub(crate) struct EventHandle {
    pub(crate) control: Control,
    pub(crate) guard: Option<HandlingGuard>,
}

/// Reports the end of an event's handling to the session exactly once (on drop, unless
/// finished explicitly), and holds the subscription's buffer permit until then.
pub(crate) struct HandlingGuard {
    pub(crate) control: Control,
    pub(crate) token: ensync_proto::session::DeliveryToken,
    pub(crate) done: bool,
    pub(crate) _permit: Option<async_lock::SemaphoreGuardArc>,
}

impl HandlingGuard {
    /// Reports the outcome of the handling now.
    pub(crate) fn finish(mut self, ok: bool) {
        self.report(ok);
    }

    fn report(&mut self, ok: bool) {
        if self.done {
            return;
        }
        self.done = true;
        self.control.handler_finished(self.token, ok);
    }
}

impl Drop for HandlingGuard {
    fn drop(&mut self) {
        let ok = !std::thread::panicking();
        self.report(ok);
    }
}

impl Event {
    /// Deserializes the payload into `T`.
    ///
    /// ```
    /// # fn f(event: ensync_client::Event) -> Result<(), serde_json::Error> {
    /// #[derive(serde::Deserialize)]
    /// struct OrderUpdate { order_id: String, status: String }
    /// let update: OrderUpdate = event.payload_as()?;
    /// println!("{} is {}", update.order_id, update.status);
    /// # Ok(()) }
    /// ```
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.payload)
    }

    /// Deserializes the metadata into `T`.
    pub fn metadata_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.metadata)
    }

    fn take_handle(&mut self) -> Result<EventHandle> {
        self.handle.take().ok_or_else(|| {
            EnSyncError::new(
                ErrorKind::Validation,
                "this event is not attached to a subscription",
            )
        })
    }

    /// Acknowledges the event: the node will not deliver it again. If this fails (for
    /// instance because the connection was lost and the node now serving the client
    /// does not hold the event), the node delivers it again later and the subscription
    /// hands it over again.
    pub async fn ack(mut self) -> Result<()> {
        let handle = self.take_handle()?;
        let op = Op::Ack {
            event_name: self.event_name.clone(),
            idem: self.idem.clone(),
            block: self.block,
        };
        let result = handle.control.op(op).await.map(|_| ());
        drop(handle);
        result
    }

    /// Defers the event: the node delivers it again after `delay` (1 s ..= 24 h).
    /// Returns when the node expects to deliver it, in epoch milliseconds.
    pub async fn defer(mut self, delay: Duration, reason: &str) -> Result<i64> {
        let handle = self.take_handle()?;
        let op = Op::Defer {
            event_name: self.event_name.clone(),
            idem: self.idem.clone(),
            delay,
            reason: reason.to_owned(),
        };
        let outcome = handle.control.op(op).await;
        drop(handle);
        outcome.map(|o| o.delivery_time_ms())
    }

    /// Discards the event: the node never delivers it again.
    pub async fn discard(mut self, reason: &str) -> Result<()> {
        let handle = self.take_handle()?;
        let op = Op::Discard {
            event_name: self.event_name.clone(),
            idem: self.idem.clone(),
            reason: reason.to_owned(),
        };
        let result = handle.control.op(op).await.map(|_| ());
        drop(handle);
        result
    }

    /// Marks the handling as failed: the event is not acknowledged, and on an auto-ack
    /// subscription the node is asked to deliver it again shortly.
    pub fn fail(mut self) {
        if let Some(mut handle) = self.handle.take() {
            if let Some(guard) = handle.guard.take() {
                guard.finish(false);
            }
        }
    }

    /// Detaches the handling guard so a dispatcher can report the handler's result.
    pub(crate) fn take_guard(&mut self) -> Option<HandlingGuard> {
        self.handle.as_mut().and_then(|h| h.guard.take())
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("idem", &self.idem)
            .field("event_name", &self.event_name)
            .field("block", &self.block)
            .field("timestamp", &self.timestamp)
            .field("payload", &self.payload)
            .field("sender", &self.sender)
            .field("metadata", &self.metadata)
            .finish_non_exhaustive()
    }
}
