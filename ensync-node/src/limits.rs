//! Limits on the gRPC endpoint's accepted sockets: a cap on open connections (with an
//! HTTP/2 `GOAWAY` to the refused ones) and a deadline for a connection's first bytes.
//!
//! hyper's HTTP/2 server has no handshake timeout (a socket that never sends the preface
//! stays open), so each accepted socket is wrapped in [`GuardedIo`], whose reads fail
//! with `TimedOut` when the first [`PREFACE_LEN`] bytes have not arrived by the deadline;
//! hyper then closes the connection.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;

/// Length of the HTTP/2 client connection preface (`PRI * HTTP/2.0...`).
pub const PREFACE_LEN: usize = 24;

/// Counts open connections against a cap.
#[derive(Debug, Clone)]
pub(crate) struct ConnLimit {
    open: Arc<AtomicUsize>,
    max: usize,
}

/// One open connection of a [`ConnLimit`]; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct ConnPermit(Arc<AtomicUsize>);

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnLimit {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            open: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// A place for a new connection, or `None` when `max` are open.
    pub(crate) fn try_acquire(&self) -> Option<ConnPermit> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnPermit(self.open.clone()))
    }

    pub(crate) fn max(&self) -> usize {
        self.max
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

/// The debug text of the `GOAWAY` a connection over the cap gets.
pub const CONNECTION_LIMIT_TEXT: &str = "connection limit reached; retry later";

/// Refuses a gRPC connection over the cap: sends an HTTP/2 `SETTINGS` frame and a
/// `GOAWAY` (last stream 0, `ENHANCE_YOUR_CALM`, debug text [`CONNECTION_LIMIT_TEXT`]),
/// reads what the client sent for up to a second (closing a socket with unread data
/// would reset it and could discard the `GOAWAY` before the client reads it), and closes.
pub(crate) async fn refuse_h2(mut tcp: TcpStream) {
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    let mut frames = Vec::with_capacity(32 + CONNECTION_LIMIT_TEXT.len());
    // SETTINGS, empty: the server's preface.
    frames.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    let len = 8 + CONNECTION_LIMIT_TEXT.len();
    frames.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    frames.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]);
    frames.extend_from_slice(&0u32.to_be_bytes());
    frames.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
    frames.extend_from_slice(CONNECTION_LIMIT_TEXT.as_bytes());
    let close = async {
        tcp.write_all(&frames).await?;
        tcp.flush().await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 4096];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<(), io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
}
