//! The worker thread: one std thread per client runs a small executor (async-executor
//! on async-io's reactor) that owns the connection and the session. Callers only wait
//! on channels.

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread::{JoinHandle, ThreadId};

use async_executor::Executor;
use async_io::{Async, Timer};
use ensync_h2::Runtime;
use futures::FutureExt;
use futures::channel::oneshot;
use tokio_util::compat::FuturesAsyncReadCompatExt;

/// Owns the thread; dropping it stops the executor and joins the thread.
pub(crate) struct Worker {
    executor: Arc<Executor<'static>>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    thread_id: ThreadId,
}

impl Worker {
    /// Starts the thread.
    pub(crate) fn start() -> io::Result<Worker> {
        let executor = Arc::new(Executor::new());
        let (stop, stopped) = oneshot::channel::<()>();
        let running = executor.clone();
        let thread = std::thread::Builder::new()
            .name("ensync-blocking".to_owned())
            .spawn(move || {
                async_io::block_on(running.run(async {
                    let _ = stopped.await;
                }));
            })?;
        Ok(Worker {
            executor,
            stop: Mutex::new(Some(stop)),
            thread_id: thread.thread().id(),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// ensync-h2's runtime on this worker: its executor, async-io's timer and TCP.
    pub(crate) fn runtime(&self) -> Runtime {
        // Weak: tasks hold the runtime, and must not keep the executor alive.
        let executor: Weak<Executor<'static>> = Arc::downgrade(&self.executor);
        Runtime::new(
            move |task| {
                if let Some(executor) = executor.upgrade() {
                    executor.spawn(task).detach();
                }
            },
            |delay| Timer::after(delay).map(|_| ()),
            |authority: String| async move {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                for addr in resolve(authority).await? {
                    match Async::<TcpStream>::connect(addr).await {
                        Ok(stream) => {
                            stream.get_ref().set_nodelay(true)?;
                            return Ok(stream.compat());
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            },
        )
    }
}

/// Resolves `host:port`; a name is looked up on a short-lived thread so the worker's
/// executor never blocks on DNS.
async fn resolve(authority: String) -> io::Result<Vec<SocketAddr>> {
    if let Ok(addr) = authority.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("ensync-resolve".to_owned())
        .spawn(move || {
            let _ = tx.send(
                authority
                    .to_socket_addrs()
                    .map(|addrs| addrs.collect::<Vec<_>>()),
            );
        })?;
    rx.await
        .map_err(|_| io::Error::other("name resolution stopped"))?
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(stop) = self
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = stop.send(());
        }
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // Never join from the worker thread itself (it stops on its own).
        if let Some(thread) = thread {
            if std::thread::current().id() != self.thread_id {
                let _ = thread.join();
            }
        }
    }
}
