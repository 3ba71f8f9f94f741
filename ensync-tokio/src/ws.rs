//! The WebSocket transport (PROTOCOL.md section 3) on tokio-tungstenite: socket and TLS
//! code only. Every protocol decision (requests as text frames, matching answers to
//! requests first in first out, routing `+RECORD` pushes, answering `PING`, liveness)
//! is the sans-IO [`WsClient`] of `ensync-proto`; this file moves its frames to and
//! from the socket and hands its inputs to the waiting calls and streams.
//!
//! One task per connection owns the socket's reading half and the [`WsClient`]; writing
//! is a separate task, so reading never waits on a write (a node blocked on writing to
//! us is always drained). Buffering is bounded: each subscribe stream holds at most
//! [`STREAM_BUFFER`] (or four times the subscription buffer) events not yet taken by
//! the driver; a node that pushes more than that is dropped and reconnected (it
//! delivers the unacknowledged events again).

use std::collections::HashMap;
use std::time::Duration;

use ensync_proto::session::{Call, CallId, Input, Reply, RpcCode, RpcError};
use ensync_proto::url::WsEndpoint;
use ensync_proto::ws_client::{WsClient, WsTransmit};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt as _, SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use ensync_client::EngineOptions;
use ensync_client::Result;
use ensync_client::{StreamItem, Transport};

/// The least number of events one subscribe stream buffers before the connection is
/// considered overrun.
pub(crate) const STREAM_BUFFER: usize = 1024;
/// Largest frame accepted from the node.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// A TLS connector and the name to check a node's certificate against.
type TlsTarget = (
    tokio_rustls::TlsConnector,
    tokio_rustls::rustls::pki_types::ServerName<'static>,
);

/// Opens WebSocket connections to the engine's nodes (in the engine's order).
pub(crate) struct WsTransport {
    nodes: Vec<(WsEndpoint, Option<TlsTarget>)>,
    connect_timeout: Duration,
    ping_interval: Duration,
    stream_buffer: usize,
    logging: bool,
}

impl WsTransport {
    pub(crate) fn new(endpoints: &[WsEndpoint], options: &EngineOptions) -> Result<Self> {
        let mut nodes = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let tls = if endpoint.tls {
                let config = ensync_client::tls::client_config(options, b"http/1.1")?;
                let name = ensync_client::tls::server_name(options, &endpoint.host)?;
                Some((tokio_rustls::TlsConnector::from(config), name))
            } else {
                None
            };
            nodes.push((endpoint.clone(), tls));
        }
        Ok(WsTransport {
            nodes,
            connect_timeout: options.connect_timeout,
            ping_interval: options.heartbeat_interval.max(Duration::from_millis(10)),
            stream_buffer: options
                .subscription_buffer
                .saturating_mul(4)
                .max(STREAM_BUFFER),
            logging: options.enable_logging,
        })
    }
}

/// An open WebSocket connection: where to send calls, and whether it was lost.
#[derive(Clone)]
pub(crate) struct WsConn {
    commands: mpsc::UnboundedSender<Command>,
    lost: watch::Receiver<Option<String>>,
}

type Sink = mpsc::Sender<std::result::Result<StreamItem, RpcError>>;
type Events = BoxStream<'static, std::result::Result<StreamItem, RpcError>>;

/// What the driver's futures ask of the connection's task.
enum Command {
    Call(Call, Waiter),
}

/// Who waits for what the node says about a call.
enum Waiter {
    Unary(oneshot::Sender<std::result::Result<Reply, RpcError>>),
    /// A subscribe call until the node accepts it, with its stream's capacity.
    Subscribe(
        oneshot::Sender<std::result::Result<Events, RpcError>>,
        usize,
    ),
    /// An open subscribe stream.
    Stream(Sink),
}

fn lost_error(message: impl Into<String>) -> RpcError {
    RpcError::new(RpcCode::Unavailable, message)
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl WsConn {
    fn send(&self, command: Command) -> std::result::Result<(), RpcError> {
        self.commands
            .send(command)
            .map_err(|_| lost_error("the WebSocket connection is closed"))
    }
}

impl Transport for WsTransport {
    type Conn = WsConn;

    fn endpoints(&self) -> usize {
        self.nodes.len()
    }

    fn connect(&self, endpoint: usize) -> BoxFuture<'static, std::result::Result<WsConn, String>> {
        let Some((endpoint, tls)) = self.nodes.get(endpoint) else {
            return futures::future::ready(Err(format!("no node endpoint {endpoint}"))).boxed();
        };
        let url = endpoint.url();
        let host = endpoint.host.clone();
        let port = endpoint.port;
        let tls = tls.clone();
        let timeout = self.connect_timeout;
        let settings = ConnSettings {
            ping_interval: self.ping_interval,
            logging: self.logging,
        };
        async move {
            let opening = async {
                let tcp = TcpStream::connect((host.as_str(), port))
                    .await
                    .map_err(|e| format!("cannot connect to {url}: {e}"))?;
                let _ = tcp.set_nodelay(true);
                match tls {
                    Some((connector, name)) => {
                        let stream = connector
                            .connect(name, tcp)
                            .await
                            .map_err(|e| format!("TLS handshake with {url} failed: {e}"))?;
                        open(stream, &url, settings).await
                    }
                    None => open(tcp, &url, settings).await,
                }
            };
            match tokio::time::timeout(timeout, opening).await {
                Ok(result) => result,
                Err(_) => Err(format!("connecting to {url} timed out after {timeout:?}")),
            }
        }
        .boxed()
    }

    fn unary(
        &self,
        conn: &WsConn,
        call: Call,
    ) -> BoxFuture<'static, std::result::Result<Reply, RpcError>> {
        let conn = conn.clone();
        async move {
            let (tx, rx) = oneshot::channel();
            conn.send(Command::Call(call, Waiter::Unary(tx)))?;
            rx.await
                .map_err(|_| lost_error("the WebSocket connection was lost"))?
        }
        .boxed()
    }

    fn subscribe(
        &self,
        conn: &WsConn,
        call: Call,
    ) -> BoxFuture<
        'static,
        std::result::Result<
            BoxStream<'static, std::result::Result<StreamItem, RpcError>>,
            RpcError,
        >,
    > {
        let conn = conn.clone();
        let capacity = self.stream_buffer;
        async move {
            let (tx, rx) = oneshot::channel();
            conn.send(Command::Call(call, Waiter::Subscribe(tx, capacity)))?;
            rx.await
                .map_err(|_| lost_error("the WebSocket connection was lost"))?
        }
        .boxed()
    }

    fn closed(&self, conn: &WsConn) -> BoxFuture<'static, String> {
        let mut lost = conn.lost.clone();
        async move {
            match lost.wait_for(Option::is_some).await {
                Ok(reason) => reason.clone().unwrap_or_default(),
                Err(_) => "the WebSocket connection ended".to_owned(),
            }
        }
        .boxed()
    }

    fn heartbeats(&self) -> bool {
        false
    }
}

#[derive(Clone, Copy)]
struct ConnSettings {
    ping_interval: Duration,
    logging: bool,
}

/// The WebSocket handshake; then the connection's task runs until the connection ends
/// or every [`WsConn`] is dropped.
async fn open<S>(
    stream: S,
    url: &str,
    settings: ConnSettings,
) -> std::result::Result<WsConn, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|e| format!("WebSocket handshake with {url} failed: {e}"))?;
    let (commands, commands_rx) = mpsc::unbounded_channel();
    let (lost_tx, lost) = watch::channel(None);
    let client = WsClient::new(settings.ping_interval, std::time::Instant::now());
    tokio::spawn(async move {
        let reason = run(ws, client, commands_rx, settings.logging).await;
        if settings.logging {
            tracing::info!(%reason, "ensync: WebSocket connection ended");
        }
        let _ = lost_tx.send(Some(reason));
    });
    Ok(WsConn { commands, lost })
}

/// The connection's task: socket frames in and out of the [`WsClient`], its inputs to
/// the waiting calls and streams. Returns why the connection ended.
async fn run<S>(
    ws: WebSocketStream<S>,
    mut client: WsClient,
    mut commands: mpsc::UnboundedReceiver<Command>,
    logging: bool,
) -> String
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut incoming) = ws.split();
    let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
    let (write_failed_tx, mut write_failed) = oneshot::channel::<String>();
    let writer = tokio::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            if let Err(e) = sink.send(message).await {
                let _ = write_failed_tx.send(e.to_string());
                return;
            }
        }
        let _ = sink.close().await;
    });

    let mut waiters: HashMap<CallId, Waiter> = HashMap::new();
    let mut client_gone = false;
    let mut ignored_logged = 0;
    while client.lost().is_none() {
        let wake = client
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Call(call, waiter)) => {
                    waiters.insert(call.id, waiter);
                    client.call(call);
                }
                None => {
                    client_gone = true;
                    client.connection_lost("closed by the client");
                }
            },
            message = incoming.next() => match message {
                None => client.connection_lost("the node closed the connection"),
                Some(Err(e)) => client.connection_lost(format!("WebSocket error: {e}")),
                Some(Ok(Message::Close(frame))) => client.connection_lost(match frame {
                    Some(f) if !f.reason.is_empty() => {
                        format!("the node closed the connection: {}", f.reason)
                    }
                    _ => "the node closed the connection".to_owned(),
                }),
                Some(Ok(Message::Text(text))) => {
                    client.handle_text(text.as_str(), std::time::Instant::now(), unix_ms());
                }
                Some(Ok(_)) => client.handle_other_frame(std::time::Instant::now()),
            },
            Ok(reason) = &mut write_failed => {
                client.connection_lost(format!("WebSocket write failed: {reason}"));
            }
            _ = tokio::time::sleep_until(wake) => client.handle_timeout(std::time::Instant::now()),
        }
        while let Some(transmit) = client.poll_transmit() {
            let message = match transmit {
                WsTransmit::Text(text) => Message::text(text),
                WsTransmit::Ping => Message::Ping(Default::default()),
            };
            if out.send(message).is_err() {
                client.connection_lost("the WebSocket writer stopped");
            }
        }
        while let Some(input) = client.poll_input() {
            match dispatch(&mut waiters, input) {
                Dispatched::Done => {}
                // The driver dropped the stream (unsubscribed): stop routing to it.
                Dispatched::StreamDropped(call) => client.cancel_stream(call),
                Dispatched::Overrun(reason) => client.connection_lost(reason),
            }
        }
        let ignored = client.ignored_frames();
        if logging && ignored > ignored_logged {
            tracing::warn!(
                ignored,
                "ensync: unreadable or unexpected WebSocket frames ignored"
            );
            ignored_logged = ignored;
        }
    }
    // What the loss failed: calls still waiting, open streams (UNAVAILABLE).
    while let Some(input) = client.poll_input() {
        let _ = dispatch(&mut waiters, input);
    }
    let reason = client.lost().unwrap_or_default().to_owned();
    drop(out);
    if !client_gone
        && tokio::time::timeout(Duration::from_secs(1), writer)
            .await
            .is_err()
    {
        // The writer is stuck on a dead socket; dropping it is all that is left.
    }
    reason
}

/// What became of an input handed to its waiter.
enum Dispatched {
    Done,
    /// The stream's receiver is gone.
    StreamDropped(CallId),
    /// The stream's buffer is full: the connection must end (the reason).
    Overrun(String),
}

/// Hands one of the client's inputs to whoever waits for it.
fn dispatch(waiters: &mut HashMap<CallId, Waiter>, input: Input) -> Dispatched {
    match input {
        Input::Reply { call, result } => {
            if let Some(Waiter::Unary(tx)) = waiters.remove(&call) {
                let _ = tx.send(result);
            }
        }
        Input::StreamOpened { call } => {
            if let Some(Waiter::Subscribe(tx, capacity)) = waiters.remove(&call) {
                let (sink, rx) = mpsc::channel(capacity);
                if tx.send(Ok(ReceiverStream::new(rx).boxed())).is_ok() {
                    waiters.insert(call, Waiter::Stream(sink));
                }
            }
        }
        Input::StreamItem {
            call,
            event,
            logged_at,
        } => {
            let Some(Waiter::Stream(sink)) = waiters.get(&call) else {
                return Dispatched::StreamDropped(call);
            };
            let name = event.event_name.clone();
            match sink.try_send(Ok((event, logged_at))) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    waiters.remove(&call);
                    return Dispatched::StreamDropped(call);
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Dispatched::Overrun(format!(
                        "the subscriber of {name:?} fell {} events behind",
                        sink.max_capacity()
                    ));
                }
            }
        }
        Input::StreamEnded { call, error } => match waiters.remove(&call) {
            Some(Waiter::Subscribe(tx, _)) => {
                let _ = tx.send(Err(
                    error.unwrap_or_else(|| lost_error("the subscribe stream ended"))
                ));
            }
            Some(Waiter::Stream(sink)) => {
                if let Some(error) = error {
                    let _ = sink.try_send(Err(error));
                }
            }
            _ => {}
        },
        // The client reports no transport attempts (the driver does).
        Input::Connected { .. } | Input::Disconnected { .. } => {}
    }
    Dispatched::Done
}
