//! Limits on accepted sockets: a cap on open connections, in total and per peer IP
//! address, for both endpoints (a refused gRPC connection gets an HTTP/2 `GOAWAY`, over
//! TLS after the TLS handshake; a refused WebSocket upgrade an HTTP 503), and a deadline
//! for a gRPC connection's first bytes.
//!
//! hyper's HTTP/2 server has no handshake timeout (a socket that never sends the preface
//! stays open), so each accepted socket is wrapped in [`GuardedIo`], whose reads fail
//! with `TimedOut` when the first [`PREFACE_LEN`] bytes have not arrived by the deadline;
//! hyper then closes the connection.

use std::collections::HashMap;
use std::future::Future as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;

/// Length of the HTTP/2 client connection preface (`PRI * HTTP/2.0...`).
pub const PREFACE_LEN: usize = 24;

/// Counts open connections against a cap, in total and per peer IP address.
#[derive(Debug, Clone)]
pub(crate) struct ConnLimit {
    state: Arc<Mutex<Counts>>,
    max: usize,
    max_per_ip: usize,
}

#[derive(Debug, Default)]
struct Counts {
    open: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// Why [`ConnLimit::try_acquire`] refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_connections` are open.
    Total,
    /// `max_connections_per_ip` are open from the peer's address.
    PerIp,
}

impl Refusal {
    /// The text sent to the refused peer ([`CONNECTION_LIMIT_TEXT`] or
    /// [`PER_IP_LIMIT_TEXT`]).
    pub(crate) fn text(self) -> &'static str {
        match self {
            Refusal::Total => CONNECTION_LIMIT_TEXT,
            Refusal::PerIp => PER_IP_LIMIT_TEXT,
        }
    }
}

/// One open connection of a [`ConnLimit`]; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct ConnPermit {
    state: Arc<Mutex<Counts>>,
    ip: Option<IpAddr>,
}

fn lock(m: &Mutex<Counts>) -> std::sync::MutexGuard<'_, Counts> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut c = lock(&self.state);
        c.open = c.open.saturating_sub(1);
        if let Some(ip) = self.ip {
            if let Some(n) = c.by_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    c.by_ip.remove(&ip);
                }
            }
        }
    }
}

impl ConnLimit {
    /// A cap of `max` connections, at most `max_per_ip` of them from one address.
    pub(crate) fn new(max: usize, max_per_ip: usize) -> Self {
        Self {
            state: Arc::new(Mutex::new(Counts::default())),
            max,
            max_per_ip,
        }
    }

    /// A place for a new connection from `peer` (`None`: counted in the total only), or
    /// why not.
    pub(crate) fn try_acquire(&self, peer: Option<IpAddr>) -> Result<ConnPermit, Refusal> {
        // One address, however it arrives: an IPv4 peer on a dual-stack socket is
        // `::ffff:a.b.c.d`.
        let ip = peer.map(|ip| ip.to_canonical());
        let mut c = lock(&self.state);
        if c.open >= self.max {
            return Err(Refusal::Total);
        }
        if let Some(ip) = ip {
            let n = c.by_ip.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                return Err(Refusal::PerIp);
            }
            *n += 1;
        }
        c.open += 1;
        Ok(ConnPermit {
            state: self.state.clone(),
            ip,
        })
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    pub(crate) fn max_per_ip(&self) -> usize {
        self.max_per_ip
    }
}

/// Most refusals (an over-cap connection being answered and closed) in progress at once
/// per endpoint; beyond, an over-cap connection is closed without an answer, so a flood
/// of refused connections costs a bounded amount of work (a refusal over TLS includes a
/// TLS handshake).
pub const MAX_REFUSALS_IN_PROGRESS: usize = 64;

/// Logs a refused connection (`endpoint`: "gRPC" or "WebSocket").
pub(crate) fn log_refusal(
    endpoint: &str,
    peer: Option<SocketAddr>,
    why: Refusal,
    limit: &ConnLimit,
) {
    match why {
        Refusal::Total => tracing::warn!(
            ?peer,
            max_connections = limit.max(),
            "{endpoint} connection refused: connection limit reached"
        ),
        Refusal::PerIp => tracing::warn!(
            ?peer,
            max_connections_per_ip = limit.max_per_ip(),
            "{endpoint} connection refused: connection limit per IP address reached"
        ),
    }
}

/// An accepted gRPC socket: holds its place under the connection cap, and fails its
/// reads once the handshake deadline passes before the first [`PREFACE_LEN`] bytes came.
#[derive(Debug)]
pub struct GuardedIo {
    inner: TcpStream,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    preface_left: usize,
    _permit: ConnPermit,
}

impl GuardedIo {
    pub(crate) fn new(inner: TcpStream, handshake: Duration, permit: ConnPermit) -> Self {
        Self {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(handshake))),
            preface_left: PREFACE_LEN,
            _permit: permit,
        }
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some(deadline) = this.deadline.as_mut() {
            match &read {
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len() - before;
                    this.preface_left = this.preface_left.saturating_sub(n);
                    if this.preface_left == 0 {
                        this.deadline = None;
                    }
                }
                Poll::Pending => {
                    if deadline.as_mut().poll(cx).is_ready() {
                        tracing::debug!("connection sent no handshake in time; closing it");
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no HTTP/2 preface within the handshake timeout",
                        )));
                    }
                }
                Poll::Ready(Err(_)) => {}
            }
        }
        read
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for GuardedIo {
    type ConnectInfo = <TcpStream as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// The debug text of the `GOAWAY` a connection over `max_connections` gets (and the body
/// of a WebSocket upgrade's 503).
pub const CONNECTION_LIMIT_TEXT: &str = "connection limit reached; retry later";

/// The same for a connection over `max_connections_per_ip`.
pub const PER_IP_LIMIT_TEXT: &str = "connection limit per IP address reached; retry later";

/// Refuses a gRPC connection over the cap: sends an HTTP/2 `SETTINGS` frame and a
/// `GOAWAY` (last stream 0, `ENHANCE_YOUR_CALM`, debug text `text`), reads what the
/// client sent for up to a second (closing a socket with unread data would reset it and
/// could discard the `GOAWAY` before the client reads it), and closes. Over TLS, `io` is
/// the TLS stream after its handshake.
pub(crate) async fn refuse_h2<S>(mut io: S, text: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    let mut frames = Vec::with_capacity(32 + text.len());
    // SETTINGS, empty: the server's preface.
    frames.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    let len = 8 + text.len();
    frames.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    frames.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]);
    frames.extend_from_slice(&0u32.to_be_bytes());
    frames.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
    frames.extend_from_slice(text.as_bytes());
    let close = async {
        io.write_all(&frames).await?;
        io.flush().await?;
        io.shutdown().await?;
        let mut sink = [0u8; 4096];
        while io.read(&mut sink).await? > 0 {}
        Ok::<(), io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
}
