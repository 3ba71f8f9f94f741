//! The WebSocket transport (PROTOCOL.md section 3) on tokio-tungstenite: the same driver
//! and session as gRPC, with the session's calls written as text requests.
//!
//! One task per connection owns the socket's reading half and a queue of the requests
//! sent and not yet answered: the node answers in request order, so each `+PASS`,
//! `+REPLAY` or `-FAIL` completes the oldest request (first in, first out). `+RECORD`
//! pushes are routed by their own event name to the subscribe stream of that name;
//! `PING` is answered with `PONG`. Writing is a separate task, so reading never waits on
//! a write (a node blocked on writing to us is always drained).
//!
//! Liveness: the client sends a WebSocket ping every `heartbeat_interval` and counts the
//! connection lost when nothing at all arrived for two intervals; the session then
//! reconnects and resubscribes as over gRPC. Buffering is bounded: each subscribe stream
//! holds at most [`STREAM_BUFFER`] (or four times the subscription buffer) events not
//! yet taken by the driver; a node that pushes more than that is dropped and reconnected
//! (it delivers the unacknowledged events again).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ensync_proto::session::{Call, Reply, Request, RpcCode, RpcError};
use ensync_proto::url::WsEndpoint;
use ensync_proto::wire;
use ensync_proto::ws::{WsRecord, WsRequest, WsServerFrame, parse_conn_pass};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt as _, SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use ensync_client::EngineOptions;
use ensync_client::{EnSyncError, ErrorKind, Result};
use ensync_client::{StreamItem, Transport};

/// The least number of events one subscribe stream buffers before the connection is
/// considered overrun.
pub(crate) const STREAM_BUFFER: usize = 1024;
/// Largest frame accepted from the node.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Opens WebSocket connections to one node.
pub(crate) struct WsTransport {
    endpoint: WsEndpoint,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    connect_timeout: Duration,
    ping_interval: Duration,
    stream_buffer: usize,
    logging: bool,
}

impl WsTransport {
    pub(crate) fn new(endpoint: &WsEndpoint, options: &EngineOptions) -> Result<Self> {
        let tls = if endpoint.tls {
            let bad = |what: String| EnSyncError::new(ErrorKind::Validation, what);
            let mut roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            if let Some(pem) = &options.ca_certificate_pem {
                use rustls_pki_types::pem::PemObject as _;
                for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| bad(format!("bad CA certificate: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| bad(format!("bad CA certificate: {e}")))?;
                }
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| bad(format!("TLS: {e}")))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let domain = options
                .tls_domain
                .clone()
                .unwrap_or_else(|| endpoint.host.clone());
            let name = rustls_pki_types::ServerName::try_from(domain.clone())
                .map_err(|e| bad(format!("bad TLS server name {domain:?}: {e}")))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(WsTransport {
            endpoint: endpoint.clone(),
            tls,
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

/// An open WebSocket connection: where to send requests, and whether it was lost.
#[derive(Clone)]
pub(crate) struct WsConn {
    requests: mpsc::UnboundedSender<Pending>,
    lost: watch::Receiver<Option<String>>,
}

type Sink = mpsc::Sender<std::result::Result<StreamItem, RpcError>>;

/// A request on its way, and who waits for its answer.
struct Pending {
    frame: String,
    answer: oneshot::Sender<WsServerFrame>,
    /// For `SUB`: where this name's records go once the node said `+PASS`.
    subscribe: Option<(String, Sink)>,
}

fn lost_error(message: impl Into<String>) -> RpcError {
    RpcError::new(RpcCode::Unavailable, message)
}

impl WsConn {
    /// Sends a request and waits for its answer.
    async fn request(
        &self,
        frame: String,
        subscribe: Option<(String, Sink)>,
    ) -> std::result::Result<WsServerFrame, RpcError> {
        let (answer, rx) = oneshot::channel();
        self.requests
            .send(Pending {
                frame,
                answer,
                subscribe,
            })
            .map_err(|_| lost_error("the WebSocket connection is closed"))?;
        rx.await
            .map_err(|_| lost_error("the WebSocket connection was lost"))
    }
}

/// The text request for a session call.
fn to_ws(request: Request) -> std::result::Result<WsRequest, RpcError> {
    Ok(match request {
        Request::Connect(r) => WsRequest::Conn {
            access_key: r.access_key,
        },
        Request::Publish(r) => WsRequest::Pub {
            client_id: r.client_id,
            event_name: r.event_name,
            payload: r.payload,
            delivery_to: r.delivery_to,
            metadata: if r.metadata.is_empty() {
                "{}".to_owned()
            } else {
                r.metadata
            },
            // Not sent: the published WebSocket clients (Python, npm) never send it, so
            // every node reads a frame without it.
            payload_metadata: None,
        },
        Request::Subscribe(r) => WsRequest::Sub {
            client_id: r.client_id,
            event_name: r.event_name,
        },
        Request::Unsubscribe(r) => WsRequest::Unsub {
            client_id: r.client_id,
            event_name: r.event_name,
        },
        Request::Ack(r) => WsRequest::Ack {
            client_id: r.client_id,
            event_idem: r.event_idem,
            block: r.partition_block,
            event_name: r.event_name,
        },
        Request::Defer(r) => WsRequest::Defer {
            client_id: r.client_id,
            event_idem: r.event_idem,
            event_name: r.event_name,
            delay_ms: r.delay_ms,
            reason: r.reason,
        },
        Request::Discard(r) => WsRequest::Discard {
            client_id: r.client_id,
            event_idem: r.event_idem,
            event_name: r.event_name,
            reason: r.reason,
        },
        Request::Replay(r) => WsRequest::Replay {
            client_id: r.client_id,
            event_idem: r.event_idem,
            event_name: r.event_name,
        },
        Request::Pause(r) => WsRequest::Pause {
            client_id: r.client_id,
            event_name: r.event_name,
            reason: r.reason,
        },
        Request::Continue(r) => WsRequest::Continue {
            client_id: r.client_id,
            event_name: r.event_name,
        },
        other => {
            return Err(RpcError::new(
                RpcCode::Unimplemented,
                format!("{:?} has no WebSocket request", other.kind()),
            ));
        }
    })
}

fn encode(request: &WsRequest) -> std::result::Result<String, RpcError> {
    // Never send a frame the node would read differently (RpcCode 3: INVALID_ARGUMENT).
    request
        .try_encode()
        .map_err(|e| RpcError::new(RpcCode::Other(3), e.to_string()))
}

/// Reads `deliveryTime` from a `DEFER` answer (`{deliveryTime=<ms>}`, JSON, or a bare
/// number).
fn delivery_time(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(n) = text.parse() {
        return Some(n);
    }
    let at = text.find("deliveryTime")? + "deliveryTime".len();
    let rest = text[at..].trim_start_matches(['"', '=', ':', ' ']);
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The typed reply for an answer frame.
fn to_reply(request: &WsRequest, frame: WsServerFrame) -> std::result::Result<Reply, RpcError> {
    let (ok, text) = match frame {
        WsServerFrame::Pass(text) => (true, text),
        WsServerFrame::Fail(reason) => (false, reason),
        WsServerFrame::Replay(value) => {
            return match request {
                WsRequest::Replay { .. } => match WsRecord::from_value(&value) {
                    Ok(record) => Ok(Reply::Replay(wire::ReplayResponse {
                        success: true,
                        message: String::new(),
                        event_data: record.payload,
                    })),
                    Err(e) => Ok(Reply::Replay(wire::ReplayResponse {
                        success: false,
                        message: format!("unreadable +REPLAY answer: {e}"),
                        event_data: String::new(),
                    })),
                },
                other => Err(RpcError::new(
                    RpcCode::Internal,
                    format!("+REPLAY answer to {}", other.verb()),
                )),
            };
        }
        other => {
            return Err(RpcError::new(
                RpcCode::Internal,
                format!("unexpected answer {other:?}"),
            ));
        }
    };
    let message = |ok: bool, text: String| if ok { String::new() } else { text };
    Ok(match request {
        WsRequest::Conn { .. } => {
            let parsed = if ok {
                parse_conn_pass(&text).map_err(|e| format!("unreadable CONN answer: {e}"))
            } else {
                Err(text)
            };
            match parsed {
                Ok((client_id, client_hash)) => Reply::Connect(wire::ConnectResponse {
                    success: true,
                    client_id,
                    client_hash,
                    ..Default::default()
                }),
                Err(error_message) => Reply::Connect(wire::ConnectResponse {
                    success: false,
                    error_message,
                    ..Default::default()
                }),
            }
        }
        WsRequest::Pub { .. } => Reply::Publish(wire::PublishEventResponse {
            success: ok,
            event_idem: if ok {
                text.trim().to_owned()
            } else {
                String::new()
            },
            error_message: message(ok, text),
        }),
        WsRequest::Unsub { .. } => Reply::Unsubscribe(wire::UnsubscribeResponse {
            success: ok,
            message: message(ok, text),
        }),
        WsRequest::Ack { .. } => Reply::Ack(wire::AcknowledgeResponse {
            success: ok,
            message: message(ok, text),
        }),
        WsRequest::Defer { delay_ms, .. } => Reply::Defer(wire::DeferResponse {
            success: ok,
            delivery_time: if ok {
                delivery_time(&text).unwrap_or_else(|| now_ms().saturating_add(*delay_ms))
            } else {
                0
            },
            message: message(ok, text),
        }),
        WsRequest::Discard { .. } => Reply::Discard(wire::DiscardResponse {
            success: ok,
            message: message(ok, text),
        }),
        WsRequest::Replay { .. } => {
            // Some nodes may answer a replay with `+PASS:<record json>`.
            match WsRecord::from_json(&text) {
                Ok(record) if ok => Reply::Replay(wire::ReplayResponse {
                    success: true,
                    message: String::new(),
                    event_data: record.payload,
                }),
                _ => Reply::Replay(wire::ReplayResponse {
                    success: false,
                    message: if ok {
                        "unreadable replay answer".to_owned()
                    } else {
                        text
                    },
                    event_data: String::new(),
                }),
            }
        }
        WsRequest::Pause { .. } => Reply::Pause(wire::PauseResponse {
            success: ok,
            message: message(ok, text),
        }),
        WsRequest::Continue { .. } => Reply::Continue(wire::ContinueResponse {
            success: ok,
            message: message(ok, text),
        }),
        other => {
            return Err(RpcError::new(
                RpcCode::Internal,
                format!("no reply type for {}", other.verb()),
            ));
        }
    })
}

impl Transport for WsTransport {
    type Conn = WsConn;

    fn connect(&self) -> BoxFuture<'static, std::result::Result<WsConn, String>> {
        let url = self.endpoint.url();
        let host = self.endpoint.host.clone();
        let port = self.endpoint.port;
        let tls = self.tls.clone();
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
            if let Request::Heartbeat(_) = call.request {
                // The node pings a WebSocket client; there is nothing to send.
                return Ok(Reply::Heartbeat(wire::HeartbeatResponse { success: true }));
            }
            let request = to_ws(call.request)?;
            let frame = encode(&request)?;
            let answer = conn.request(frame, None).await?;
            to_reply(&request, answer)
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
            let request = to_ws(call.request)?;
            let WsRequest::Sub { event_name, .. } = &request else {
                return Err(RpcError::new(RpcCode::Internal, "not a subscribe call"));
            };
            let frame = encode(&request)?;
            let (sink, rx) = mpsc::channel(capacity);
            match conn
                .request(frame, Some((event_name.clone(), sink)))
                .await?
            {
                WsServerFrame::Pass(_) => Ok(ReceiverStream::new(rx).boxed()),
                WsServerFrame::Fail(reason) => {
                    // A session the node no longer knows: reconnect, as over gRPC.
                    let code = if reason.trim() == "not authenticated" {
                        RpcCode::Unauthenticated
                    } else {
                        RpcCode::Other(9)
                    };
                    Err(RpcError::new(code, reason))
                }
                other => Err(RpcError::new(
                    RpcCode::Internal,
                    format!("unexpected answer to SUB: {other:?}"),
                )),
            }
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
    let (requests, requests_rx) = mpsc::unbounded_channel();
    let (lost_tx, lost) = watch::channel(None);
    tokio::spawn(async move {
        let reason = run(ws, requests_rx, settings).await;
        if settings.logging {
            tracing::info!(%reason, "ensync: WebSocket connection ended");
        }
        let _ = lost_tx.send(Some(reason));
    });
    Ok(WsConn { requests, lost })
}

/// The connection's task; returns why it ended.
async fn run<S>(
    ws: WebSocketStream<S>,
    mut requests: mpsc::UnboundedReceiver<Pending>,
    settings: ConnSettings,
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

    let mut waiting: VecDeque<Pending> = VecDeque::new();
    let mut sinks: HashMap<String, Sink> = HashMap::new();
    let mut last_heard = Instant::now();
    let mut ping = tokio::time::interval_at(
        Instant::now() + settings.ping_interval,
        settings.ping_interval,
    );
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reason = loop {
        tokio::select! {
            request = requests.recv() => {
                let Some(request) = request else {
                    break "closed by the client".to_owned();
                };
                if out.send(Message::text(request.frame.clone())).is_err() {
                    break "the WebSocket writer stopped".to_owned();
                }
                waiting.push_back(request);
            }
            message = incoming.next() => {
                let text = match message {
                    None => break "the node closed the connection".to_owned(),
                    Some(Err(e)) => break format!("WebSocket error: {e}"),
                    Some(Ok(Message::Close(frame))) => {
                        break match frame {
                            Some(f) if !f.reason.is_empty() => {
                                format!("the node closed the connection: {}", f.reason)
                            }
                            _ => "the node closed the connection".to_owned(),
                        };
                    }
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(_)) => {
                        last_heard = Instant::now();
                        continue;
                    }
                };
                last_heard = Instant::now();
                let frame = match WsServerFrame::parse(text.as_str()) {
                    Ok(frame) => frame,
                    Err(e) => {
                        if settings.logging {
                            tracing::warn!(error = %e, "ensync: unreadable WebSocket frame ignored");
                        }
                        continue;
                    }
                };
                match frame {
                    WsServerFrame::Ping => {
                        let _ = out.send(Message::text(WsRequest::Pong.encode()));
                    }
                    WsServerFrame::Record(record) => {
                        if let Err(reason) = route(&mut sinks, record) {
                            break reason;
                        }
                    }
                    answer => match waiting.pop_front() {
                        Some(pending) => {
                            if let (WsServerFrame::Pass(_), Some((name, sink))) =
                                (&answer, pending.subscribe)
                            {
                                sinks.insert(name, sink);
                            }
                            let _ = pending.answer.send(answer);
                        }
                        None => {
                            if settings.logging {
                                tracing::warn!("ensync: WebSocket answer with no request waiting");
                            }
                        }
                    },
                }
            }
            Ok(reason) = &mut write_failed => break format!("WebSocket write failed: {reason}"),
            _ = ping.tick() => {
                if last_heard.elapsed() > settings.ping_interval * 2 {
                    break format!(
                        "nothing heard from the node for {:?}",
                        last_heard.elapsed()
                    );
                }
                let _ = out.send(Message::Ping(Default::default()));
            }
        }
    };
    // Open streams end with `UNAVAILABLE`: the session reconnects and resubscribes.
    for (_, sink) in sinks.drain() {
        let _ = sink.try_send(Err(lost_error(reason.clone())));
    }
    drop(waiting);
    drop(out);
    if tokio::time::timeout(Duration::from_secs(1), writer)
        .await
        .is_err()
    {
        // The writer is stuck on a dead socket; dropping it is all that is left.
    }
    reason
}

/// Hands a record to the stream of its name. An overrun stream ends the connection.
fn route(sinks: &mut HashMap<String, Sink>, record: WsRecord) -> std::result::Result<(), String> {
    let Some(sink) = sinks.get(&record.name) else {
        // Nobody subscribes to it (any more): the node delivers it again elsewhere.
        return Ok(());
    };
    let logged_at = record.logged_at;
    let name = record.name.clone();
    match sink.try_send(Ok((record.into_stream_event(), logged_at))) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Closed(_)) => {
            sinks.remove(&name);
            Ok(())
        }
        Err(mpsc::error::TrySendError::Full(_)) => Err(format!(
            "the subscriber of {name:?} fell {} events behind",
            sink.max_capacity()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_delivery_times() {
        assert_eq!(
            delivery_time("{deliveryTime=1700000000123}"),
            Some(1_700_000_000_123)
        );
        assert_eq!(delivery_time("{\"deliveryTime\": 42}"), Some(42));
        assert_eq!(delivery_time(" 77 "), Some(77));
        assert_eq!(delivery_time("deferred"), None);
    }

    #[test]
    fn answers_map_to_replies() {
        let conn = WsRequest::Conn {
            access_key: "k".into(),
        };
        let r = to_reply(
            &conn,
            WsServerFrame::Pass("{clientId=abc,clientHash=KEY=}".into()),
        )
        .unwrap();
        let Reply::Connect(c) = r else { panic!() };
        assert!(c.success);
        assert_eq!(
            (c.client_id.as_str(), c.client_hash.as_str()),
            ("abc", "KEY=")
        );
        let Reply::Connect(c) =
            to_reply(&conn, WsServerFrame::Fail("invalid access key".into())).unwrap()
        else {
            panic!()
        };
        assert!(!c.success);
        assert_eq!(c.error_message, "invalid access key");

        let publish = to_ws(Request::Publish(wire::PublishEventRequest::default())).unwrap();
        let Reply::Publish(p) = to_reply(&publish, WsServerFrame::Pass("id-1".into())).unwrap()
        else {
            panic!()
        };
        assert!(p.success);
        assert_eq!(p.event_idem, "id-1");
        let Reply::Publish(p) = to_reply(&publish, WsServerFrame::Fail("nope".into())).unwrap()
        else {
            panic!()
        };
        assert!(!p.success);
        assert_eq!(p.error_message, "nope");

        let replay = WsRequest::Replay {
            client_id: "c".into(),
            event_idem: "e".into(),
            event_name: "n".into(),
        };
        let value = serde_json::json!({"name": "n", "idem": "e", "block": 3, "payload": "UA=="});
        let Reply::Replay(r) = to_reply(&replay, WsServerFrame::Replay(value)).unwrap() else {
            panic!()
        };
        assert!(r.success);
        assert_eq!(r.event_data, "UA==");
        // A +REPLAY for anything else is a protocol error.
        assert!(to_reply(&publish, WsServerFrame::Replay(serde_json::json!({}))).is_err());
    }

    #[test]
    fn refuses_to_send_ambiguous_frames() {
        let request = to_ws(Request::Publish(wire::PublishEventRequest {
            client_id: "c".into(),
            event_name: "x;PAYLOAD=:y".into(),
            ..Default::default()
        }))
        .unwrap();
        let e = encode(&request).unwrap_err();
        assert_eq!(e.code, RpcCode::Other(3));
    }
}
