//! A runtime-free "watch" of the connection state: the current value plus a stream of
//! changes for each observer.

use std::sync::{Arc, Mutex, PoisonError};

use futures::Stream;
use futures::channel::mpsc;

use crate::client::ConnectionState;

struct Inner {
    current: ConnectionState,
    observers: Vec<mpsc::UnboundedSender<ConnectionState>>,
}

/// Shared between the driver (which sets) and the clients (which read and observe).
#[derive(Clone)]
pub(crate) struct StateWatch {
    inner: Arc<Mutex<Inner>>,
}

impl StateWatch {
    pub(crate) fn new(initial: ConnectionState) -> Self {
        StateWatch {
            inner: Arc::new(Mutex::new(Inner {
                current: initial,
                observers: Vec::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current state.
    pub(crate) fn get(&self) -> ConnectionState {
        self.lock().current.clone()
    }

    /// Sets the state and tells every observer.
    pub(crate) fn set(&self, state: ConnectionState) {
        let mut inner = self.lock();
        inner
            .observers
            .retain(|o| o.unbounded_send(state.clone()).is_ok());
        inner.current = state;
    }

    /// Ends every observer's stream (the driver stopped).
    pub(crate) fn finish(&self) {
        self.lock().observers.clear();
    }

    /// The current state, then every change; ends when the client stops for good.
    pub(crate) fn changes(&self) -> impl Stream<Item = ConnectionState> + Send + use<> {
        let (tx, rx) = mpsc::unbounded();
        let mut inner = self.lock();
        let closed = matches!(inner.current, ConnectionState::Closed { .. });
        let _ = tx.unbounded_send(inner.current.clone());
        if !closed {
            inner.observers.push(tx);
        }
        rx
    }
}
