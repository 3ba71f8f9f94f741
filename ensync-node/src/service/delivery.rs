//! Delivery: the task of each subscription that claims events from the backend and
//! sends them on the session's stream, the [`EventStream`] it feeds, and the expiry of
//! sessions that missed their heartbeats.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, oneshot};

use super::state::InFlight;
use super::{DeliveredEvent, Inner, ServiceError, StreamEnd, lock};
use crate::backend::QueueKey;
use crate::store::StoredEvent;

/// Most events a subscription claims from its queue at once.
const TAKE_BATCH: usize = 16;

/// What a subscription may do now.
enum Room {
    /// The subscription (or the node) is gone.
    Closed,
    /// Nothing to do until woken (window full, paused, no sink stream yet).
    Wait,
    /// It may claim this many events of this queue.
    Claim(QueueKey, usize),
}

impl Inner {
    fn room(&self, stream: u64) -> Room {
        let st = lock(&self.state);
        if st.closed {
            return Room::Closed;
        }
        let Some(sub) = st.subs.get(&stream) else {
            return Room::Closed;
        };
        let Some(session) = st.sessions.get(&sub.session) else {
            return Room::Closed;
        };
        let room = self.settings.window.saturating_sub(sub.in_flight);
        if room == 0 || session.paused.contains(&sub.key.name) {
            return Room::Wait;
        }
        Room::Claim(sub.key.clone(), room.min(TAKE_BATCH))
    }

    /// Records `events`, just claimed by subscription `stream`, as held by its session and
    /// returns the stream they go out on (the session's first stream when it
    /// multiplexes). `None`: the subscription is gone, paused or has no sink any more;
    /// the caller gives the events back.
    fn hold(&self, stream: u64, events: &[StoredEvent]) -> Option<mpsc::Sender<DeliveredEvent>> {
        let mut st = lock(&self.state);
        if st.closed {
            return None;
        }
        let sub = st.subs.get(&stream)?;
        let key = sub.key.clone();
        let session_id = sub.session.clone();
        let session = st.sessions.get(&session_id)?;
        if session.paused.contains(&key.name) {
            return None;
        }
        let sink_stream = if session.multiplex {
            session.streams.first().copied().unwrap_or(stream)
        } else {
            stream
        };
        let sink = st.subs.get(&sink_stream)?.tx.clone();
        for ev in events {
            st.in_flight.insert(
                Arc::from(ev.event.id.as_str()),
                InFlight {
                    key: key.clone(),
                    block: ev.block,
                    session: session_id.clone(),
                    sub: stream,
                    stream: sink_stream,
                },
            );
        }
        if let Some(sub) = st.subs.get_mut(&stream) {
            sub.in_flight += events.len();
        }
        Some(sink)
    }
}

/// Runs the delivery task of one subscription; if it fails (a panic: a bug, or a backend
/// implementation that panics), the stream ends with [`StreamEnd::DeliveryFailed`], so
/// the client sees an error and reconnects instead of waiting on a silent stream.
pub(super) async fn supervise(inner: Weak<Inner>, stream: u64, notify: Arc<Notify>) {
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

/// The delivery task of one subscription.
async fn deliver(inner: Weak<Inner>, stream: u64, notify: Arc<Notify>) {
    loop {
        let Some(node) = inner.upgrade() else { return };
        let key = match node.room(stream) {
            Room::Closed => return,
            Room::Wait => {
                drop(node);
                notify.notified().await;
                continue;
            }
            Room::Claim(key, max) => (key, max),
        };
        let backend = node.backend.clone();
        let metrics = node.metrics.clone();
        drop(node);
        let (key, max) = key;
        // Claiming is cancel-safe: a wake-up (window, pause, session end) interrupts it.
        let claimed = tokio::select! {
            claimed = backend.claim(&key, max) => claimed,
            () = notify.notified() => continue,
        };
        let events = match claimed {
            Ok(events) => events,
            Err(ServiceError::ShuttingDown) => return,
            Err(e) => {
                tracing::error!(error = %e, stream,
                    "cannot read events for delivery; ending the stream");
                if let Some(node) = inner.upgrade() {
                    node.fail_stream(stream);
                }
                return;
            }
        };
        let sink = inner.upgrade().and_then(|node| node.hold(stream, &events));
        let Some(sink) = sink else {
            for ev in &events {
                backend.release(&key, &ev.event.id, ev.block);
            }
            continue;
        };
        for stored in events {
            if sink.send(DeliveredEvent::from(stored)).await.is_err() {
                // The sink stream closed; its close returned these events.
                break;
            }
            metrics.deliveries.inc();
        }
    }
}

/// Ends sessions that missed their heartbeats.
pub(super) async fn reaper(inner: Weak<Inner>) {
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

impl EventStream {
    pub(super) fn new(
        stream: u64,
        rx: mpsc::Receiver<DeliveredEvent>,
        end: oneshot::Receiver<StreamEnd>,
        inner: Weak<Inner>,
    ) -> Self {
        Self {
            stream,
            rx,
            end: Some(end),
            done: false,
            inner,
        }
    }
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
