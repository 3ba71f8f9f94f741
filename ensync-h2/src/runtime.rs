//! What the caller's executor provides: spawning, sleeping and opening connections.
//!
//! `ensync-h2` starts no runtime and assumes none. A [`Runtime`] bundles three
//! caller-provided functions; plain closures work for each:
//!
//! ```no_run
//! // async-std, with tokio_util::compat::FuturesAsyncReadCompatExt for the IO traits:
//! use tokio_util::compat::FuturesAsyncReadCompatExt;
//!
//! let runtime = ensync_h2::Runtime::new(
//!     |task| {
//!         async_std::task::spawn(task);
//!     },
//!     async_std::task::sleep,
//!     |authority: String| async move {
//!         let stream = async_std::net::TcpStream::connect(authority).await?;
//!         stream.set_nodelay(true)?;
//!         Ok(stream.compat())
//!     },
//! );
//! ```

use std::fmt;
use std::future::Future;
use std::io;
use std::sync::Arc;

use ensync_client::Executor;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio_io::io::{AsyncRead, AsyncWrite};

/// A connection the client can speak HTTP/2 over: tokio's IO traits (the ones `h2`
/// uses). Wrap a `futures`-style stream (async-std, smol) with
/// `tokio_util::compat::FuturesAsyncReadCompatExt::compat`.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A type-erased [`Io`].
pub type BoxIo = Box<dyn Io>;

pub use ensync_client::{Sleep, Spawn};

/// Opens a new connection to the node at `authority` (`host:port`): called for the
/// first connection and again for each reconnect attempt.
pub trait Connect: Send + Sync + 'static {
    /// Opens a connection (plain TCP; TLS, if any, is layered on top by the client).
    fn connect(&self, authority: String) -> BoxFuture<'static, io::Result<BoxIo>>;
}

impl<F, Fut, T> Connect for F
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<T>> + Send + 'static,
    T: Io,
{
    fn connect(&self, authority: String) -> BoxFuture<'static, io::Result<BoxIo>> {
        self(authority)
            .map(|result| result.map(|io| Box::new(io) as BoxIo))
            .boxed()
    }
}

/// The executor services the client uses: [`Spawn`], [`Sleep`] and [`Connect`].
/// Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    executor: Executor,
    connect: Arc<dyn Connect>,
}

impl Runtime {
    /// Bundles a spawner, a timer and a connector (closures work for each).
    pub fn new(spawn: impl Spawn, sleep: impl Sleep, connect: impl Connect) -> Self {
        Runtime {
            executor: Executor::new(spawn, sleep),
            connect: Arc::new(connect),
        }
    }

    pub(crate) fn executor(&self) -> &Executor {
        &self.executor
    }

    pub(crate) fn connect(&self, authority: String) -> BoxFuture<'static, io::Result<BoxIo>> {
        self.connect.connect(authority)
    }
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}
