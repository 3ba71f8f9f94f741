//! What the node keeps per session: sessions, their subscriptions (stream, delivery
//! window, wake-up), and which session holds which event. The queues themselves are the
//! backend's.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Notify, mpsc, oneshot};

use super::{DeliveredEvent, Inner, ServiceError, StreamEnd, lock, read};
use crate::backend::{Backend, QueueKey};

pub(super) struct Session {
    pub(super) app: usize,
    pub(super) last_seen: Instant,
    /// Subscribed name -> stream id.
    pub(super) subs: HashMap<Arc<str>, u64>,
    /// Open streams in the order they were opened (the first one is the multiplex sink).
    pub(super) streams: Vec<u64>,
    /// Every event on the first open stream (else each on the stream of its name).
    pub(super) multiplex: bool,
    pub(super) paused: HashSet<Arc<str>>,
}

pub(super) struct Sub {
    pub(super) session: Arc<str>,
    pub(super) key: QueueKey,
    pub(super) tx: mpsc::Sender<DeliveredEvent>,
    pub(super) end: Option<oneshot::Sender<StreamEnd>>,
    /// Wakes the subscription's delivery task (window, pause, session or stream changed).
    pub(super) notify: Arc<Notify>,
    pub(super) in_flight: usize,
}

/// An event held by a session (claimed from the backend, not yet settled).
pub(super) struct InFlight {
    pub(super) key: QueueKey,
    pub(super) block: u64,
    pub(super) session: Arc<str>,
    /// The subscription whose window it counts against.
    pub(super) sub: u64,
    /// The stream it was sent on.
    pub(super) stream: u64,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) sessions: HashMap<Arc<str>, Session>,
    pub(super) subs: HashMap<u64, Sub>,
    /// Event id -> who holds it.
    pub(super) in_flight: HashMap<Arc<str>, InFlight>,
    pub(super) next_id: u64,
    pub(super) closed: bool,
}

/// Checks the session and records activity; returns its app.
pub(super) fn touch(st: &mut State, client_id: &str) -> Result<usize, ServiceError> {
    if st.closed {
        return Err(ServiceError::ShuttingDown);
    }
    let s = st
        .sessions
        .get_mut(client_id)
        .ok_or(ServiceError::NotAuthenticated)?;
    s.last_seen = Instant::now();
    Ok(s.app)
}

impl State {
    pub(super) fn next_seq(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Gives every in-flight event matching `pred` back to its queue.
    pub(super) fn return_where(&mut self, backend: &dyn Backend, pred: impl Fn(&InFlight) -> bool) {
        let ids: Vec<Arc<str>> = self
            .in_flight
            .iter()
            .filter(|(_, f)| pred(f))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            if let Some(f) = self.in_flight.remove(&id) {
                self.release_window(f.sub);
                backend.release(&f.key, &id, f.block);
            }
        }
    }

    pub(super) fn release_window(&mut self, sub: u64) {
        if let Some(s) = self.subs.get_mut(&sub) {
            s.in_flight = s.in_flight.saturating_sub(1);
            s.notify.notify_one();
        }
    }

    /// Removes a subscription (ending its stream with `end`, if given).
    pub(super) fn remove_sub(&mut self, stream: u64, end: Option<StreamEnd>) {
        let Some(mut sub) = self.subs.remove(&stream) else {
            return;
        };
        if let (Some(tx), Some(end)) = (sub.end.take(), end) {
            let _ = tx.send(end);
        }
        sub.notify.notify_one();
        if let Some(s) = self.sessions.get_mut(&sub.session) {
            if s.subs.get(&sub.key.name) == Some(&stream) {
                s.subs.remove(&sub.key.name);
            }
            s.streams.retain(|s| *s != stream);
        }
    }
}

impl Inner {
    pub(super) fn check_receive(&self, app: usize, name: &str) -> Result<(), ServiceError> {
        let apps = read(&self.apps);
        match apps.get(app) {
            Some(a) if a.receive.allows(name) => Ok(()),
            Some(a) => Err(ServiceError::Forbidden(format!(
                "app {:?} may not receive {name:?}",
                a.name
            ))),
            None => Err(ServiceError::NotAuthenticated),
        }
    }

    pub(super) fn wake_session(&self, client_id: &str) {
        let st = lock(&self.state);
        if let Some(s) = st.sessions.get(client_id) {
            for stream in &s.streams {
                if let Some(sub) = st.subs.get(stream) {
                    sub.notify.notify_one();
                }
            }
        }
    }

    /// Takes an event out of flight for ack/defer/discard, checking it is this session's.
    pub(super) fn take_in_flight(
        &self,
        client_id: &str,
        idem: &str,
        given_block: Option<i64>,
        what: &str,
    ) -> Result<(QueueKey, u64), ServiceError> {
        let mut st = lock(&self.state);
        let app = touch(&mut st, client_id)?;
        if idem.is_empty() {
            return Err(ServiceError::Invalid("event id is empty".into()));
        }
        match st.in_flight.get(idem) {
            Some(f) if &*f.session == client_id => {
                if let Some(given) = given_block {
                    if i64::try_from(f.block).ok() != Some(given) {
                        return Err(ServiceError::Invalid(format!(
                            "cannot {what} event {idem:?}: its partition_block is {}, not {given}",
                            f.block
                        )));
                    }
                }
            }
            Some(f)
                if read(&self.apps)
                    .get(app)
                    .is_some_and(|a| *f.key.recipient == *a.key_text) =>
            {
                return Err(ServiceError::NotInFlight(format!(
                    "cannot {what} event {idem:?}: it is in flight to another session of this app"
                )));
            }
            _ => {
                return Err(ServiceError::NotInFlight(format!(
                    "cannot {what} event {idem:?}: it is not in flight to this session"
                )));
            }
        }
        let Some(f) = st.in_flight.remove(idem) else {
            return Err(ServiceError::NotInFlight(format!(
                "cannot {what} event {idem:?}: it is not in flight to this session"
            )));
        };
        st.release_window(f.sub);
        Ok((f.key, f.block))
    }

    pub(super) fn end_session(&self, client_id: &str, why: StreamEnd) {
        let mut st = lock(&self.state);
        let Some(session) = st.sessions.get(client_id) else {
            return;
        };
        let streams: Vec<u64> = session.streams.clone();
        let app = session.app;
        for s in streams {
            st.remove_sub(s, Some(why));
        }
        st.return_where(&*self.backend, |f| &*f.session == client_id);
        st.sessions.remove(client_id);
        drop(st);
        let name = read(&self.apps).get(app).map(|a| a.name.clone());
        tracing::info!(app = name.as_deref().unwrap_or("(deleted)"), reason = %why, "session ended");
    }

    /// A subscription stream was dropped by its consumer (client gone or stream ended).
    pub(super) fn stream_closed(&self, stream: u64) {
        let mut st = lock(&self.state);
        st.remove_sub(stream, None);
        st.return_where(&*self.backend, |f| f.stream == stream);
    }

    /// Ends a subscription stream with [`StreamEnd::DeliveryFailed`]; what was in flight
    /// on it goes back to the queue.
    pub(super) fn fail_stream(&self, stream: u64) {
        let mut st = lock(&self.state);
        st.remove_sub(stream, Some(StreamEnd::DeliveryFailed));
        st.return_where(&*self.backend, |f| f.stream == stream || f.sub == stream);
    }
}
