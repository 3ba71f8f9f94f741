//! The WebSocket endpoint (PROTOCOL.md section 3) over the same [`NodeService`] as gRPC.
//!
//! Clients connect to `ws[s]://host:port/message` and send text requests
//! (`VERB;KEY=:value…`, see [`ensync_proto::ws`]). Every request is answered, in request
//! order, with `+PASS:<text>`, `+REPLAY:<record json>` or `-FAIL:<reason>`; events of the
//! subscribed names are pushed as `+RECORD:<json>` (with `loggedAt`, the time the node
//! accepted the event, in epoch ms). Queues, permissions and storage are the node's, so
//! an event published over gRPC reaches a WebSocket subscriber and the reverse.
//!
//! Per connection:
//! - requests are handled as a pipeline: up to [`MAX_PIPELINE`] may be outstanding; their
//!   effects start in request order and their answers are written in request order; a
//!   client that sends more waits (the node stops reading its socket);
//! - outgoing frames go through a queue of [`OUT_QUEUE`] frames; when the client does not
//!   read, the queue fills, the node stops reading the client and stops taking its events
//!   from the queues (each subscription also holds at most `max_in_flight` unacknowledged
//!   events), so a slow client never makes the node buffer without bound;
//! - a connection that sends nothing for `ws_ping_interval_ms` gets a `PING` (answered by
//!   `PONG`; any frame counts as an answer); after `heartbeat_misses` unanswered `PING`s
//!   it is closed. Any frame also keeps the connection's sessions alive;
//! - a malformed frame gets `-FAIL:<reason>` and the connection goes on; nothing a client
//!   sends affects other connections;
//! - close codes: 1007 for a text frame that is not UTF-8, 1009 for a frame or message over
//!   the size limit, 1002 for another protocol error, 1008 after [`MAX_REFUSED_LOGINS`]
//!   refused logins (unknown access keys, or requests without a session while the
//!   connection holds none), 1001 for a silent connection or an ended session, 1012 when
//!   the node shuts down (also instead of answering a request, `CONN` included, that
//!   meets a node already shutting down: a `-FAIL` to `CONN` reads as a refused access
//!   key and clients stop, while a close is a lost connection they reconnect after);
//! - when the connection closes, its sessions end: their unacknowledged events go back to
//!   their queues for redelivery.
//!
//! Request texts: `CONN` answers `+PASS:{clientId=<id>,clientHash=<key>}`, `PUB` answers
//! `+PASS:<event id>`, `DEFER` answers `+PASS:{deliveryTime=<epoch ms>}`, `REPLAY`
//! answers `+REPLAY:<record>`; the others answer a short word (`+PASS:subscribed`, …).
//! `ROLLBACK` gives an event back for redelivery: it is deferred by the shortest delay the
//! node accepts (1 s). Requests must carry a `CLIENT_ID` obtained by `CONN` on the same
//! connection.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ensync_proto::ws::{WsRecord, WsRequest, WsServerFrame};
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt as _, SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::StreamMap;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::NodeError;
use crate::config::NodeConfig;
use crate::service::{DeliveredEvent, EventStream, NodeService, PublishRequest, ServiceError};

/// Most requests of one connection outstanding at once (read but not yet answered).
pub const MAX_PIPELINE: usize = 64;
/// Most frames queued for writing to one connection.
pub const OUT_QUEUE: usize = 64;
/// Most sessions (`CONN`s) one connection may open.
pub const MAX_SESSIONS_PER_CONNECTION: usize = 8;
/// Refused logins a connection may make: after this many `CONN`s with an unknown access
/// key, or requests refused as not authenticated while the connection holds no session,
/// with no successful `CONN` in between, the connection is closed with 1008 (policy
/// violation) once the last refusal is sent.
pub const MAX_REFUSED_LOGINS: usize = 16;
/// The delay `ROLLBACK` defers an event by (the shortest the node accepts).
const ROLLBACK_DELAY_MS: i64 = 1000;

/// Settings of every connection of one endpoint.
#[derive(Debug, Clone)]
struct Settings {
    ping_interval: Duration,
    misses: u32,
    max_message: usize,
    /// The TLS handshake and the WebSocket upgrade must each complete within it.
    handshake: Duration,
    connections: crate::limits::ConnLimit,
    /// Refusals of over-cap connections in progress.
    refusals: crate::limits::ConnLimit,
}

/// A bound, serving WebSocket endpoint.
pub(crate) struct WsEndpoint {
    pub(crate) addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl WsEndpoint {
    /// Binds `addr` and serves connections on the current tokio runtime.
    pub(crate) async fn start(
        addr: SocketAddr,
        config: &NodeConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
        service: NodeService,
    ) -> Result<Self, NodeError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| NodeError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|e| NodeError::Io(e.to_string()))?;
        let settings = Arc::new(Settings {
            ping_interval: Duration::from_millis(config.ws_ping_interval_ms),
            misses: config.heartbeat_misses.max(1),
            max_message: config
                .max_payload_bytes
                .saturating_add(config.max_metadata_bytes.saturating_mul(2))
                .saturating_add(64 * 1024),
            handshake: Duration::from_millis(config.handshake_timeout_ms),
            connections: crate::limits::ConnLimit::new(
                config.max_connections,
                config.max_connections_per_ip,
            ),
            refusals: crate::limits::ConnLimit::new(
                crate::limits::MAX_REFUSALS_IN_PROGRESS,
                usize::MAX,
            ),
        });
        let (stop, stop_rx) = watch::channel(false);
        let tls = tls.map(tokio_rustls::TlsAcceptor::from);
        let task = tokio::spawn(accept_loop(listener, tls, service, settings, stop_rx));
        tracing::info!(%addr, "WebSocket endpoint listening");
        Ok(Self {
            addr,
            stop,
            task: Some(task),
        })
    }

    /// Stops accepting and closes every connection (their sessions end).
    pub(crate) async fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for WsEndpoint {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Reads the PEM certificate chain and key into a rustls server configuration (the one
/// every TLS endpoint of the node serves). Errors name the field: `tls_cert` for a
/// certificate file that cannot be read or holds no certificate, `tls_key` for a key that
/// cannot be read or does not go with the certificate.
pub(crate) fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, NodeError> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let cert_err =
        |e: &dyn std::fmt::Display| NodeError::Tls(format!("tls_cert ({}): {e}", cert.display()));
    let key_err =
        |e: &dyn std::fmt::Display| NodeError::Tls(format!("tls_key ({}): {e}", key.display()));
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| cert_err(&e))?;
    if certs.is_empty() {
        return Err(cert_err(&"no PEM certificate found"));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| key_err(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| NodeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| key_err(&format_args!("cannot be used with tls_cert: {e}")))?;
    Ok(Arc::new(config))
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: NodeService,
    settings: Arc<Settings>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            // Reap finished connection tasks so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "WebSocket accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let tls = tls.clone();
                let permit = match settings.connections.try_acquire(Some(peer.ip())) {
                    Ok(permit) => permit,
                    Err(why) => {
                        crate::limits::log_refusal("WebSocket", Some(peer), why, &settings.connections);
                        // Beyond the refusals in progress: closed unanswered.
                        if let Ok(slot) = settings.refusals.try_acquire(None) {
                            let handshake = settings.handshake;
                            tokio::spawn(async move {
                                let _slot = slot;
                                match tls {
                                    Some(tls) => {
                                        if let Ok(Ok(s)) = tokio::time::timeout(handshake, tls.accept(tcp)).await {
                                            refuse(s, why.text(), handshake).await;
                                        }
                                    }
                                    None => refuse(tcp, why.text(), handshake).await,
                                }
                            });
                        }
                        continue;
                    }
                };
                let service = service.clone();
                let settings = settings.clone();
                let stop = stop.clone();
                conns.spawn(async move {
                    let _permit = permit;
                    match tls {
                        Some(tls) => {
                            let tls_stream = tokio::time::timeout(settings.handshake, tls.accept(tcp)).await;
                            match tls_stream {
                                Ok(Ok(s)) => handshake(s, peer, service, settings, stop).await,
                                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                            }
                        }
                        None => handshake(tcp, peer, service, settings, stop).await,
                    }
                });
            }
        }
    }
    // Closing: every connection observes `stop` and ends its sessions; give them a moment.
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(2), drain)
        .await
        .is_err()
    {
        conns.abort_all();
    }
}

/// Whether a request path names the endpoint: `/message` (extra leading slashes, a
/// trailing slash and a query string are tolerated).
fn is_message_path(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or("");
    path.trim_matches('/') == "message"
}

/// Answers a WebSocket upgrade over the connection cap with HTTP 503 (`Retry-After: 1`,
/// `text` as the body).
async fn refuse<S>(stream: S, text: &'static str, handshake: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    #[allow(clippy::result_large_err)]
    let check = |_: &Request, _: Response| -> Result<Response, ErrorResponse> {
        let mut refusal = ErrorResponse::new(Some(text.into()));
        *refusal.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        refusal.headers_mut().insert(
            "retry-after",
            tokio_tungstenite::tungstenite::http::HeaderValue::from_static("1"),
        );
        Err(refusal)
    };
    let _ = tokio::time::timeout(
        handshake,
        tokio_tungstenite::accept_hdr_async(stream, check),
    )
    .await;
}

async fn handshake<S>(
    stream: S,
    peer: SocketAddr,
    service: NodeService,
    settings: Arc<Settings>,
    stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(settings.max_message))
        .max_frame_size(Some(settings.max_message));
    // The signature is the library's callback type.
    #[allow(clippy::result_large_err)]
    let check = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        if is_message_path(request.uri().path()) {
            Ok(response)
        } else {
            let mut refusal = ErrorResponse::new(Some("no such endpoint; use /message".into()));
            *refusal.status_mut() = StatusCode::NOT_FOUND;
            Err(refusal)
        }
    };
    let accepted = tokio::time::timeout(
        settings.handshake,
        tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config)),
    )
    .await;
    match accepted {
        Ok(Ok(ws)) => {
            tracing::debug!(%peer, "WebSocket connection opened");
            Connection::new(service, settings).run(ws, stop).await;
            tracing::debug!(%peer, "WebSocket connection closed");
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "WebSocket handshake failed"),
        Err(_) => tracing::debug!(%peer, "WebSocket handshake timed out"),
    }
}

/// What a handled request produced: the reply frame, and a subscription to start
/// forwarding once the reply is on its way.
struct Answer {
    frame: String,
    subscribed: Option<((String, String), EventStream)>,
    auth: Auth,
    /// The node is shutting down: the connection closes (1012) instead of sending
    /// `frame`, so the client reconnects (as gRPC answers `UNAVAILABLE`) rather than read
    /// a `-FAIL` (to a `CONN`: as a refused access key, and stop).
    shutting_down: bool,
}

/// What an answer says about the connection's logins (for [`MAX_REFUSED_LOGINS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    /// Nothing.
    None,
    /// A `CONN` succeeded.
    LoggedIn,
    /// A `CONN` with an unknown access key.
    LoginRefused,
    /// A request refused as not authenticated (no session of this connection).
    NotAuthenticated,
}

impl Answer {
    fn pass(text: impl Into<String>) -> Self {
        Self {
            frame: WsServerFrame::Pass(text.into()).encode(),
            subscribed: None,
            auth: Auth::None,
            shutting_down: false,
        }
    }
    fn fail(reason: impl std::fmt::Display) -> Self {
        // A reason is one line: the client splits nothing, but keep frames tidy.
        let reason = reason.to_string().replace(['\r', '\n'], " ");
        Self {
            frame: WsServerFrame::Fail(reason).encode(),
            subscribed: None,
            auth: Auth::None,
            shutting_down: false,
        }
    }
    fn of(result: Result<Answer, ServiceError>) -> Self {
        result.unwrap_or_else(|e| {
            let auth = match e {
                ServiceError::InvalidAccessKey => Auth::LoginRefused,
                ServiceError::NotAuthenticated => Auth::NotAuthenticated,
                _ => Auth::None,
            };
            Self {
                auth,
                shutting_down: e == ServiceError::ShuttingDown,
                ..Self::fail(e)
            }
        })
    }
}

/// Why a connection ended, sent in the close frame.
enum End {
    ClientGone,
    Quiet,
    SessionEnded(String),
    ShuttingDown,
    WriteFailed,
    /// The client broke a rule of the protocol: closed with this code and reason.
    Violation(CloseCode, String),
}

/// The close frame for a frame the library refused to read: 1007 for text that is not
/// UTF-8, 1009 for a frame or message over the size limit, 1002 for a protocol error;
/// `None` when the connection itself failed (nothing can be sent).
fn violation(e: &tokio_tungstenite::tungstenite::Error) -> Option<End> {
    use tokio_tungstenite::tungstenite::Error as E;
    let (code, reason) = match e {
        E::Utf8(_) => (
            CloseCode::Invalid,
            "text frame is not valid UTF-8".to_owned(),
        ),
        E::Capacity(c) => (CloseCode::Size, format!("over the size limit: {c}")),
        E::Protocol(p) => (CloseCode::Protocol, p.to_string()),
        _ => return None,
    };
    Some(End::Violation(code, reason))
}

struct Connection {
    service: NodeService,
    settings: Arc<Settings>,
    /// Session ids opened by `CONN` on this connection.
    sessions: Arc<Mutex<HashSet<String>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn record_frame(ev: DeliveredEvent) -> String {
    let logged_at = i64::try_from(ev.published_ms).ok();
    WsServerFrame::Record(WsRecord {
        name: ev.name,
        idem: ev.idem,
        block: i64::try_from(ev.block).unwrap_or(i64::MAX),
        logged_at,
        payload: ev.payload,
        metadata: ev.metadata,
        sender: ev.sender,
    })
    .encode()
}

impl Connection {
    fn new(service: NodeService, settings: Arc<Settings>) -> Self {
        Self {
            service,
            settings,
            sessions: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    async fn run<S>(self, ws: WebSocketStream<S>, mut stop: watch::Receiver<bool>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sink, mut incoming) = ws.split();
        let (out, mut out_rx) = mpsc::channel::<Message>(OUT_QUEUE);
        let writer = tokio::spawn(async move {
            while let Some(message) = out_rx.recv().await {
                let closing = matches!(message, Message::Close(_));
                if sink.send(message).await.is_err() || closing {
                    break;
                }
            }
            let _ = sink.close().await;
        });

        let mut pending: FuturesOrdered<BoxFuture<'static, Answer>> = FuturesOrdered::new();
        let mut records: StreamMap<(String, String), EventStream> = StreamMap::new();
        let interval = self.settings.ping_interval;
        let mut last_heard = Instant::now();
        let mut pings: u32 = 0;
        let mut refused_logins = 0usize;
        let end = loop {
            let next_ping = last_heard + interval * (pings + 1);
            let sent = tokio::select! {
                _ = stop.changed() => break End::ShuttingDown,
                message = incoming.next(), if pending.len() < MAX_PIPELINE => {
                    let message = match message {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "WebSocket read failed");
                            break violation(&e).unwrap_or(End::ClientGone);
                        }
                        None => break End::ClientGone,
                    };
                    last_heard = Instant::now();
                    pings = 0;
                    self.keep_alive();
                    match message {
                        Message::Text(text) => {
                            if let Some(answer) = self.request(text.as_str()) {
                                pending.push_back(answer);
                            }
                        }
                        Message::Binary(_) => pending.push_back(
                            std::future::ready(Answer::fail("binary frames are not supported; send text"))
                                .boxed(),
                        ),
                        Message::Close(_) => break End::ClientGone,
                        // WebSocket-level pings are answered by the library.
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    }
                    Ok(())
                }
                Some(answer) = pending.next(), if !pending.is_empty() => {
                    if answer.shutting_down {
                        break End::ShuttingDown;
                    }
                    if let Some((key, stream)) = answer.subscribed {
                        records.insert(key, stream);
                    }
                    let over = self.count_login(answer.auth, &mut refused_logins);
                    let sent = out.send(Message::text(answer.frame)).await;
                    if over && sent.is_ok() {
                        break End::Violation(
                            CloseCode::Policy,
                            format!("{MAX_REFUSED_LOGINS} requests refused as not authenticated; log in with CONN first"),
                        );
                    }
                    sent
                }
                Some((_, item)) = records.next(), if !records.is_empty() => match item {
                    Ok(ev) => out.send(Message::text(record_frame(ev))).await,
                    Err(crate::service::StreamEnd::ShuttingDown) => break End::ShuttingDown,
                    Err(end) => break End::SessionEnded(end.to_string()),
                },
                () = tokio::time::sleep_until(next_ping) => {
                    if pings >= self.settings.misses {
                        break End::Quiet;
                    }
                    pings += 1;
                    out.send(Message::text(WsServerFrame::Ping.encode())).await
                }
            };
            if sent.is_err() {
                break End::WriteFailed;
            }
        };

        // The connection is over: its sessions end and their events go back to the queues.
        drop(records);
        let sessions: Vec<String> = lock(&self.sessions).drain().collect();
        for s in &sessions {
            self.service.end_session(s);
        }
        let close = match end {
            End::ClientGone | End::WriteFailed => None,
            End::Quiet => Some((CloseCode::Away, "no answer to PING".to_owned())),
            End::SessionEnded(why) => Some((CloseCode::Away, why)),
            End::ShuttingDown => Some((CloseCode::Restart, "node is shutting down".to_owned())),
            End::Violation(code, reason) => Some((code, reason)),
        };
        if let Some((code, reason)) = close {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from(reason),
            };
            let _ = out.try_send(Message::Close(Some(frame)));
        }
        drop(out);
        let abort = writer.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), writer)
            .await
            .is_err()
        {
            abort.abort();
        }
    }

    /// Counts refused logins (see [`MAX_REFUSED_LOGINS`]); `true` when the connection is
    /// to be closed.
    fn count_login(&self, auth: Auth, refused: &mut usize) -> bool {
        match auth {
            Auth::LoggedIn => *refused = 0,
            Auth::LoginRefused => *refused += 1,
            // A client with a session that names another id is wrong, not a stranger.
            Auth::NotAuthenticated if lock(&self.sessions).is_empty() => *refused += 1,
            Auth::NotAuthenticated | Auth::None => {}
        }
        *refused >= MAX_REFUSED_LOGINS
    }

    /// Any frame from the client keeps its sessions alive.
    fn keep_alive(&self) {
        let sessions = lock(&self.sessions);
        for s in sessions.iter() {
            let _ = self.service.heartbeat(s);
        }
    }

    /// The answer to one text frame (`None` for `PONG`, which is not answered). The work
    /// runs when the answer is first polled, in request order.
    fn request(&self, text: &str) -> Option<BoxFuture<'static, Answer>> {
        let request = match WsRequest::parse(text) {
            Ok(WsRequest::Pong) => return None,
            Ok(r) => r,
            Err(e) => return Some(std::future::ready(Answer::fail(e)).boxed()),
        };
        let service = self.service.clone();
        let sessions = self.sessions.clone();
        let own = move |client_id: &str| -> Result<(), ServiceError> {
            if lock(&sessions).contains(client_id) {
                Ok(())
            } else {
                Err(ServiceError::NotAuthenticated)
            }
        };
        let sessions = self.sessions.clone();
        Some(
            async move {
                match request {
                    WsRequest::Conn { access_key } => {
                        if lock(&sessions).len() >= MAX_SESSIONS_PER_CONNECTION {
                            return Answer::fail("too many sessions on this connection");
                        }
                        match service.connect(&access_key) {
                            Ok(c) => {
                                lock(&sessions).insert(c.client_id.clone());
                                Answer {
                                    frame: WsServerFrame::conn_pass(&c.client_id, &c.client_hash)
                                        .encode(),
                                    subscribed: None,
                                    auth: Auth::LoggedIn,
                                    shutting_down: false,
                                }
                            }
                            Err(e) => Answer::of(Err(e)),
                        }
                    }
                    WsRequest::Pub {
                        client_id,
                        event_name,
                        payload,
                        delivery_to,
                        metadata,
                        payload_metadata,
                    } => {
                        let published = async {
                            own(&client_id)?;
                            service
                                .publish(PublishRequest {
                                    client_id,
                                    event_name,
                                    payload,
                                    delivery_to,
                                    metadata,
                                    payload_metadata,
                                })
                                .await
                        };
                        Answer::of(published.await.map(Answer::pass))
                    }
                    WsRequest::Sub {
                        client_id,
                        event_name,
                    } => Answer::of((|| {
                        own(&client_id)?;
                        let stream = service.subscribe(&client_id, &event_name)?;
                        Ok(Answer {
                            frame: WsServerFrame::Pass("subscribed".into()).encode(),
                            subscribed: Some(((client_id, event_name), stream)),
                            auth: Auth::None,
                            shutting_down: false,
                        })
                    })()),
                    WsRequest::Unsub {
                        client_id,
                        event_name,
                    } => Answer::of(
                        own(&client_id)
                            .and_then(|()| service.unsubscribe(&client_id, &event_name))
                            .map(|()| Answer::pass("unsubscribed")),
                    ),
                    WsRequest::Ack {
                        client_id,
                        event_idem,
                        block,
                        ..
                    } => {
                        let acked = async {
                            own(&client_id)?;
                            service.ack_at(&client_id, &event_idem, block).await
                        };
                        Answer::of(acked.await.map(|()| Answer::pass("acknowledged")))
                    }
                    WsRequest::Rollback {
                        client_id,
                        event_idem,
                        ..
                    } => {
                        let rolled = async {
                            own(&client_id)?;
                            service
                                .defer(&client_id, &event_idem, ROLLBACK_DELAY_MS, "rollback")
                                .await
                        };
                        Answer::of(rolled.await.map(|_| Answer::pass("rolled back")))
                    }
                    WsRequest::Defer {
                        client_id,
                        event_idem,
                        delay_ms,
                        reason,
                        ..
                    } => {
                        let deferred = async {
                            own(&client_id)?;
                            service
                                .defer(&client_id, &event_idem, delay_ms, &reason)
                                .await
                        };
                        Answer::of(
                            deferred
                                .await
                                .map(|due| Answer::pass(format!("{{deliveryTime={due}}}"))),
                        )
                    }
                    WsRequest::Discard {
                        client_id,
                        event_idem,
                        reason,
                        ..
                    } => {
                        let discarded = async {
                            own(&client_id)?;
                            service.discard(&client_id, &event_idem, &reason).await
                        };
                        Answer::of(discarded.await.map(|()| Answer::pass("discarded")))
                    }
                    WsRequest::Pause {
                        client_id,
                        event_name,
                        reason,
                    } => Answer::of(
                        own(&client_id)
                            .and_then(|()| service.pause(&client_id, &event_name, &reason))
                            .map(|()| Answer::pass("paused")),
                    ),
                    WsRequest::Continue {
                        client_id,
                        event_name,
                    } => Answer::of(
                        own(&client_id)
                            .and_then(|()| service.resume(&client_id, &event_name))
                            .map(|()| Answer::pass("continued")),
                    ),
                    WsRequest::Replay {
                        client_id,
                        event_idem,
                        event_name,
                    } => {
                        let replayed = async {
                            own(&client_id)?;
                            service.replay(&client_id, &event_idem, &event_name).await
                        };
                        Answer::of(replayed.await.map(|ev| {
                            let logged_at = i64::try_from(ev.published_ms).ok();
                            let record = WsRecord {
                                name: ev.name,
                                idem: ev.idem,
                                block: i64::try_from(ev.block).unwrap_or(i64::MAX),
                                logged_at,
                                payload: ev.payload,
                                metadata: ev.metadata,
                                sender: ev.sender,
                            };
                            Answer {
                                frame: WsServerFrame::Replay(record.to_value()).encode(),
                                subscribed: None,
                                auth: Auth::None,
                                shutting_down: false,
                            }
                        }))
                    }
                    // Parsed above; never reaches here.
                    WsRequest::Pong => Answer::fail("PONG is not a request"),
                }
            }
            .boxed(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_path() {
        assert!(is_message_path("/message"));
        assert!(is_message_path("//message"));
        assert!(is_message_path("/message/"));
        assert!(is_message_path("/message?x=1"));
        assert!(!is_message_path("/"));
        assert!(!is_message_path("/messages"));
        assert!(!is_message_path("/api/message"));
    }
}
