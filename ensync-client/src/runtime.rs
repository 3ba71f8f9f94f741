//! What the caller's executor provides to the driver: spawning and sleeping.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::{AbortHandle, Abortable, BoxFuture};

/// Runs a future to completion in the background on the caller's executor.
pub trait Spawn: Send + Sync + 'static {
    /// Starts `task`; it must be polled until it completes.
    fn spawn(&self, task: BoxFuture<'static, ()>);
}

impl<F: Fn(BoxFuture<'static, ()>) + Send + Sync + 'static> Spawn for F {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self(task)
    }
}

/// The caller's timer.
pub trait Sleep: Send + Sync + 'static {
    /// A future that completes after `delay`.
    fn sleep(&self, delay: Duration) -> BoxFuture<'static, ()>;
}

impl<F, Fut> Sleep for F
where
    F: Fn(Duration) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn sleep(&self, delay: Duration) -> BoxFuture<'static, ()> {
        self(delay).boxed()
    }
}

/// A [`Spawn`] and a [`Sleep`]: the executor services the driver and the subscription
/// handlers use. Cheap to clone.
#[derive(Clone)]
pub struct Executor {
    spawn: Arc<dyn Spawn>,
    sleep: Arc<dyn Sleep>,
}

impl Executor {
    /// Bundles a spawner and a timer (closures work for each).
    pub fn new(spawn: impl Spawn, sleep: impl Sleep) -> Self {
        Executor {
            spawn: Arc::new(spawn),
            sleep: Arc::new(sleep),
        }
    }

    /// Starts `task` in the background.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.spawn.spawn(task.boxed());
    }

    /// Starts `task` in the background; the handle stops it.
    pub fn spawn_abortable(&self, task: impl Future<Output = ()> + Send + 'static) -> AbortHandle {
        let (handle, registration) = AbortHandle::new_pair();
        self.spawn(Abortable::new(task, registration).map(|_| ()));
        handle
    }

    /// A future that completes after `delay`.
    pub fn sleep(&self, delay: Duration) -> BoxFuture<'static, ()> {
        self.sleep.sleep(delay)
    }
}

impl fmt::Debug for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Executor").finish_non_exhaustive()
    }
}
