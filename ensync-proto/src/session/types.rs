//! The vocabulary of the session: ids, requests and replies, inputs, outputs and events.

use std::time::Duration;

use prost::Message;

use super::error::SessionError;
use crate::wire;

/// Identifies one application operation (`open`, `publish`, `subscribe`, ...); its
/// result arrives later as [`SessionEvent::Completed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub(crate) u64);

impl OpId {
    /// The raw number (unique within one session, increasing).
    pub fn get(self) -> u64 {
        self.0
    }
}

/// Identifies one RPC the session asked the adapter to make ([`Output::Call`]). The
/// adapter quotes it back in [`Input::Reply`], [`Input::StreamOpened`] and
/// [`Input::StreamEnded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallId(pub(crate) u64);

impl CallId {
    /// Builds a call id from its raw number (for adapters that keep ids in their own
    /// tables, and for tests). Ids the session did not hand out are ignored.
    pub fn from_raw(raw: u64) -> Self {
        CallId(raw)
    }
    /// The raw number (unique within one session, increasing).
    pub fn get(self) -> u64 {
        self.0
    }
}

/// Identifies one attempt to open the transport ([`Output::Connect`]). The adapter
/// quotes it back in [`Input::Connected`] and [`Input::Disconnected`], so a fact about
/// an attempt the session has already given up (a late connect, the loss of a
/// connection that was replaced) is recognised and ignored by the session itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId(pub(crate) u64);

impl ConnectionId {
    /// Builds a connection id from its raw number (for tests). Ids other than the
    /// session's current attempt are ignored.
    pub fn from_raw(raw: u64) -> Self {
        ConnectionId(raw)
    }
    /// The raw number (unique within one session, increasing).
    pub fn get(self) -> u64 {
        self.0
    }
}

/// Identifies one event handed to the application ([`SessionEvent::Delivery`]); give it
/// back to [`Session::handler_finished`](super::Session::handler_finished).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeliveryToken(pub(crate) u64);

impl DeliveryToken {
    /// The raw number (unique within one session, increasing).
    pub fn get(self) -> u64 {
        self.0
    }
}

/// The RPC naming generation a node speaks (PROTOCOL.md section 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Generation {
    /// Generation 1: `PublishEvent`, `AcknowledgeEvent`, `PauseEvents`, `ContinueEvents`, ...
    Event,
    /// Generation 2: `PublishMessage`, `AcknowledgeMessage`, `PauseMessages`, `ContinueMessages`, ...
    Message,
}

impl Generation {
    /// The other generation.
    pub fn other(self) -> Generation {
        match self {
            Generation::Event => Generation::Message,
            Generation::Message => Generation::Event,
        }
    }
}

/// Which generation the session speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerationChoice {
    /// Start with this generation; on an `UNIMPLEMENTED` reply switch to the other one
    /// once and remember it.
    Auto(Generation),
    /// Always this generation; `UNIMPLEMENTED` fails the operation.
    Pinned(Generation),
}

impl Default for GenerationChoice {
    fn default() -> Self {
        GenerationChoice::Auto(Generation::Message)
    }
}

/// The kind of a [`Request`] (and of the [`Reply`] it expects).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RequestKind {
    /// `Connect`.
    Connect,
    /// `Heartbeat`.
    Heartbeat,
    /// `PublishEvent` / `PublishMessage`.
    Publish,
    /// `Subscribe` (server streaming).
    Subscribe,
    /// `Unsubscribe`.
    Unsubscribe,
    /// `AcknowledgeEvent` / `AcknowledgeMessage`.
    Ack,
    /// `DeferEvent` / `DeferMessage`.
    Defer,
    /// `DiscardEvent` / `DiscardMessage`.
    Discard,
    /// `ReplayEvent` / `ReplayMessage`.
    Replay,
    /// `PauseEvents` / `PauseMessages`.
    Pause,
    /// `ContinueEvents` / `ContinueMessages`.
    Continue,
}

macro_rules! paths {
    ($($kind:ident => $g1:literal, $g2:literal;)*) => {
        impl RequestKind {
            /// The RPC name under `generation`.
            pub fn rpc_name(self, generation: Generation) -> &'static str {
                match (self, generation) {
                    $((RequestKind::$kind, Generation::Event) => $g1,
                      (RequestKind::$kind, Generation::Message) => $g2,)*
                }
            }
            /// The gRPC path `/ensync.EnSyncService/<Rpc>` under `generation`.
            pub fn path(self, generation: Generation) -> &'static str {
                match (self, generation) {
                    $((RequestKind::$kind, Generation::Event) => concat!("/ensync.EnSyncService/", $g1),
                      (RequestKind::$kind, Generation::Message) => concat!("/ensync.EnSyncService/", $g2),)*
                }
            }
        }
    };
}

paths! {
    Connect => "Connect", "Connect";
    Heartbeat => "Heartbeat", "Heartbeat";
    Publish => "PublishEvent", "PublishMessage";
    Subscribe => "Subscribe", "Subscribe";
    Unsubscribe => "Unsubscribe", "Unsubscribe";
    Ack => "AcknowledgeEvent", "AcknowledgeMessage";
    Defer => "DeferEvent", "DeferMessage";
    Discard => "DiscardEvent", "DiscardMessage";
    Replay => "ReplayEvent", "ReplayMessage";
    Pause => "PauseEvents", "PauseMessages";
    Continue => "ContinueEvents", "ContinueMessages";
}

impl RequestKind {
    /// Whether the RPC name differs between the generations.
    pub fn is_generation_specific(self) -> bool {
        !matches!(
            self,
            RequestKind::Connect
                | RequestKind::Heartbeat
                | RequestKind::Subscribe
                | RequestKind::Unsubscribe
        )
    }
    /// Whether the RPC is server streaming (only `Subscribe`).
    pub fn is_streaming(self) -> bool {
        self == RequestKind::Subscribe
    }
}

/// A typed, transport-neutral RPC request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Authenticate with the access key.
    Connect(wire::ConnectRequest),
    /// Keep-alive.
    Heartbeat(wire::HeartbeatRequest),
    /// Publish to one recipient.
    Publish(wire::PublishEventRequest),
    /// Open the event stream of one event name.
    Subscribe(wire::SubscribeRequest),
    /// Stop receiving an event name.
    Unsubscribe(wire::UnsubscribeRequest),
    /// Acknowledge an event.
    Ack(wire::AcknowledgeRequest),
    /// Defer an event.
    Defer(wire::DeferRequest),
    /// Discard an event.
    Discard(wire::DiscardRequest),
    /// Fetch a stored event again.
    Replay(wire::ReplayRequest),
    /// Pause delivery of an event name.
    Pause(wire::PauseRequest),
    /// Resume delivery of an event name.
    Continue(wire::ContinueRequest),
}

impl Request {
    /// The kind of this request.
    pub fn kind(&self) -> RequestKind {
        match self {
            Request::Connect(_) => RequestKind::Connect,
            Request::Heartbeat(_) => RequestKind::Heartbeat,
            Request::Publish(_) => RequestKind::Publish,
            Request::Subscribe(_) => RequestKind::Subscribe,
            Request::Unsubscribe(_) => RequestKind::Unsubscribe,
            Request::Ack(_) => RequestKind::Ack,
            Request::Defer(_) => RequestKind::Defer,
            Request::Discard(_) => RequestKind::Discard,
            Request::Replay(_) => RequestKind::Replay,
            Request::Pause(_) => RequestKind::Pause,
            Request::Continue(_) => RequestKind::Continue,
        }
    }
    /// The RPC name under `generation`.
    pub fn rpc_name(&self, generation: Generation) -> &'static str {
        self.kind().rpc_name(generation)
    }
    /// Whether the RPC is server streaming (only `Subscribe`).
    pub fn is_streaming(&self) -> bool {
        self.kind().is_streaming()
    }
    /// The protobuf encoding of the message (without gRPC framing).
    pub fn encode_to_vec(&self) -> Vec<u8> {
        match self {
            Request::Connect(m) => m.encode_to_vec(),
            Request::Heartbeat(m) => m.encode_to_vec(),
            Request::Publish(m) => m.encode_to_vec(),
            Request::Subscribe(m) => m.encode_to_vec(),
            Request::Unsubscribe(m) => m.encode_to_vec(),
            Request::Ack(m) => m.encode_to_vec(),
            Request::Defer(m) => m.encode_to_vec(),
            Request::Discard(m) => m.encode_to_vec(),
            Request::Replay(m) => m.encode_to_vec(),
            Request::Pause(m) => m.encode_to_vec(),
            Request::Continue(m) => m.encode_to_vec(),
        }
    }
}

/// One RPC the adapter must make: send `request` on the path for `generation`, then
/// report the outcome with this `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// Quote this in the inputs about the call.
    pub id: CallId,
    /// The RPC generation to name the call with.
    pub generation: Generation,
    /// The request message.
    pub request: Request,
}

impl Call {
    /// The gRPC path, `/ensync.EnSyncService/<Rpc>`.
    pub fn path(&self) -> &'static str {
        self.request.kind().path(self.generation)
    }
    /// The RPC name (`Connect`, `PublishMessage`, ...).
    pub fn rpc_name(&self) -> &'static str {
        self.request.rpc_name(self.generation)
    }
    /// Whether the call is server streaming (answer with [`Input::StreamOpened`],
    /// [`Input::StreamItem`] and [`Input::StreamEnded`] instead of [`Input::Reply`]).
    pub fn is_streaming(&self) -> bool {
        self.request.is_streaming()
    }
}

/// A typed unary reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Reply to `Connect`.
    Connect(wire::ConnectResponse),
    /// Reply to `Heartbeat`.
    Heartbeat(wire::HeartbeatResponse),
    /// Reply to a publish.
    Publish(wire::PublishEventResponse),
    /// Reply to `Unsubscribe`.
    Unsubscribe(wire::UnsubscribeResponse),
    /// Reply to an acknowledge.
    Ack(wire::AcknowledgeResponse),
    /// Reply to a defer.
    Defer(wire::DeferResponse),
    /// Reply to a discard.
    Discard(wire::DiscardResponse),
    /// Reply to a replay.
    Replay(wire::ReplayResponse),
    /// Reply to a pause.
    Pause(wire::PauseResponse),
    /// Reply to a continue.
    Continue(wire::ContinueResponse),
}

/// Why [`Reply::decode`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyDecodeError {
    /// The bytes are not a valid protobuf message of the expected type.
    #[error("invalid reply message: {0}")]
    Decode(#[from] prost::DecodeError),
    /// `Subscribe` has no unary reply: decode its items with
    /// [`Reply::decode_stream_item`].
    #[error("subscribe is streaming; it has no unary reply")]
    Streaming,
}

impl Reply {
    /// Decodes the protobuf bytes of the reply to a request of `kind` (for adapters
    /// that speak raw HTTP/2; the gRPC framing already removed).
    pub fn decode(kind: RequestKind, bytes: &[u8]) -> Result<Reply, ReplyDecodeError> {
        Ok(match kind {
            RequestKind::Connect => Reply::Connect(wire::ConnectResponse::decode(bytes)?),
            RequestKind::Heartbeat => Reply::Heartbeat(wire::HeartbeatResponse::decode(bytes)?),
            RequestKind::Publish => Reply::Publish(wire::PublishEventResponse::decode(bytes)?),
            RequestKind::Subscribe => return Err(ReplyDecodeError::Streaming),
            RequestKind::Unsubscribe => {
                Reply::Unsubscribe(wire::UnsubscribeResponse::decode(bytes)?)
            }
            RequestKind::Ack => Reply::Ack(wire::AcknowledgeResponse::decode(bytes)?),
            RequestKind::Defer => Reply::Defer(wire::DeferResponse::decode(bytes)?),
            RequestKind::Discard => Reply::Discard(wire::DiscardResponse::decode(bytes)?),
            RequestKind::Replay => Reply::Replay(wire::ReplayResponse::decode(bytes)?),
            RequestKind::Pause => Reply::Pause(wire::PauseResponse::decode(bytes)?),
            RequestKind::Continue => Reply::Continue(wire::ContinueResponse::decode(bytes)?),
        })
    }

    /// Decodes one item of a `Subscribe` stream.
    pub fn decode_stream_item(
        bytes: &[u8],
    ) -> Result<wire::EventStreamResponse, prost::DecodeError> {
        wire::EventStreamResponse::decode(bytes)
    }

    /// The kind of request this reply answers.
    pub fn kind(&self) -> RequestKind {
        match self {
            Reply::Connect(_) => RequestKind::Connect,
            Reply::Heartbeat(_) => RequestKind::Heartbeat,
            Reply::Publish(_) => RequestKind::Publish,
            Reply::Unsubscribe(_) => RequestKind::Unsubscribe,
            Reply::Ack(_) => RequestKind::Ack,
            Reply::Defer(_) => RequestKind::Defer,
            Reply::Discard(_) => RequestKind::Discard,
            Reply::Replay(_) => RequestKind::Replay,
            Reply::Pause(_) => RequestKind::Pause,
            Reply::Continue(_) => RequestKind::Continue,
        }
    }
}

/// A gRPC status code, as far as the session cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RpcCode {
    /// `CANCELLED` (1).
    Cancelled,
    /// `DEADLINE_EXCEEDED` (4).
    DeadlineExceeded,
    /// `UNIMPLEMENTED` (12): the node lacks this RPC (name).
    Unimplemented,
    /// `INTERNAL` (13).
    Internal,
    /// `UNAVAILABLE` (14).
    Unavailable,
    /// `UNAUTHENTICATED` (16).
    Unauthenticated,
    /// Any other code.
    Other(i32),
}

impl RpcCode {
    /// Maps a numeric gRPC status code.
    pub fn from_i32(code: i32) -> RpcCode {
        match code {
            1 => RpcCode::Cancelled,
            4 => RpcCode::DeadlineExceeded,
            12 => RpcCode::Unimplemented,
            13 => RpcCode::Internal,
            14 => RpcCode::Unavailable,
            16 => RpcCode::Unauthenticated,
            other => RpcCode::Other(other),
        }
    }
    /// The numeric gRPC status code.
    pub fn as_i32(self) -> i32 {
        match self {
            RpcCode::Cancelled => 1,
            RpcCode::DeadlineExceeded => 4,
            RpcCode::Unimplemented => 12,
            RpcCode::Internal => 13,
            RpcCode::Unavailable => 14,
            RpcCode::Unauthenticated => 16,
            RpcCode::Other(c) => c,
        }
    }
    /// Whether a subscribe stream ending with this code means the connection is lost
    /// (`UNAVAILABLE`, `INTERNAL`, `UNAUTHENTICATED`).
    pub fn is_connection_loss(self) -> bool {
        matches!(
            self,
            RpcCode::Unavailable | RpcCode::Internal | RpcCode::Unauthenticated
        )
    }
}

/// A call that failed with a gRPC status (rather than with `success = false`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// The status code.
    pub code: RpcCode,
    /// The status message.
    pub message: String,
}

impl RpcError {
    /// Builds an error.
    pub fn new(code: RpcCode, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }
}

/// A transport fact the adapter reports to the session.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The transport asked for by [`Output::Connect`] is up.
    Connected {
        /// The attempt, as [`Output::Connect`] named it.
        conn: ConnectionId,
    },
    /// Opening the transport failed, or an open transport was lost.
    Disconnected {
        /// The attempt, as [`Output::Connect`] named it.
        conn: ConnectionId,
        /// What happened (for the error the application sees).
        reason: String,
    },
    /// The reply of a unary call.
    Reply {
        /// The call.
        call: CallId,
        /// The typed reply, or the gRPC status it failed with.
        result: Result<Reply, RpcError>,
    },
    /// A `Subscribe` call was accepted (its response headers arrived).
    StreamOpened {
        /// The call.
        call: CallId,
    },
    /// An event arrived on the subscribe stream of `call`. It is routed by its own
    /// `event_name`, never by the stream it came on (a node may send every event of a
    /// client on its first stream); items of a stream the session no longer has open
    /// (cancelled, ended, or of a lost connection) are ignored.
    StreamItem {
        /// The subscribe call whose stream carried it.
        call: CallId,
        /// The event.
        event: wire::EventStreamResponse,
        /// When the node logged it (epoch milliseconds), if the transport says (the
        /// WebSocket `+RECORD` carries `loggedAt`; gRPC does not).
        logged_at: Option<i64>,
    },
    /// A subscribe stream ended (`error: None` for a clean end).
    StreamEnded {
        /// The call.
        call: CallId,
        /// The status it ended with, unless it ended cleanly.
        error: Option<RpcError>,
    },
}

/// What the adapter must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Open the transport to endpoint `endpoint` (dropping any other); answer with
    /// [`Input::Connected`] or [`Input::Disconnected`] quoting `conn`, and later
    /// [`Input::Disconnected`] with `conn` if this transport is lost.
    Connect {
        /// Names this attempt.
        conn: ConnectionId,
        /// Which of the adapter's node endpoints to connect to: an index below
        /// [`SessionConfig::endpoints`](super::SessionConfig::endpoints) (always 0 with
        /// one endpoint).
        endpoint: usize,
    },
    /// Drop the transport: every call on it is gone (report nothing more about them).
    Disconnect,
    /// Make an RPC.
    Call(Call),
    /// Stop a subscribe stream (after an unsubscribe, a timeout or close).
    CancelStream(CallId),
    /// Something for the application.
    Event(SessionEvent),
}

/// The connection state, as the application sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Created; `open` not called yet.
    Idle,
    /// The first connection is being opened.
    Connecting,
    /// Authenticated.
    Connected {
        /// The session id the node assigned.
        client_id: String,
        /// The app's public key (base64).
        client_hash: String,
    },
    /// The connection was lost; attempt `attempt` starts after `delay`. With several
    /// endpoints, an attempt waits only once every endpoint failed in a row (a full
    /// round); the others start at once, `delay` zero (see the
    /// [session docs](crate::session#several-endpoints)).
    Reconnecting {
        /// 1-based attempt number (one attempt is one endpoint tried).
        attempt: u32,
        /// How long the session waits before the attempt.
        delay: Duration,
    },
    /// Closed for good: by `close` (`error: None`) or because it could not connect.
    Closed {
        /// Why, unless closed by the application.
        error: Option<SessionError>,
    },
}

/// The successful result of an operation.
#[derive(Debug, Clone, PartialEq)]
pub enum OpOutcome {
    /// `open`: authenticated.
    Opened {
        /// The session id.
        client_id: String,
        /// The app's public key (base64).
        client_hash: String,
    },
    /// `publish`: one event id per recipient, in recipient order.
    Published {
        /// The event ids.
        ids: Vec<String>,
    },
    /// `subscribe`: the stream is open.
    Subscribed,
    /// `unsubscribe`.
    Unsubscribed,
    /// `ack`.
    Acked,
    /// `defer`: when the node will deliver it again (epoch milliseconds).
    Deferred {
        /// Epoch milliseconds of the next delivery, as the node reported it.
        delivery_time_ms: i64,
    },
    /// `discard`.
    Discarded,
    /// `replay`: the decrypted stored payload.
    Replayed {
        /// The payload.
        payload: serde_json::Value,
    },
    /// `pause`.
    Paused,
    /// `resume`.
    Resumed,
    /// `close`.
    Closed,
}

/// A decrypted event handed to the application.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Give it back to [`Session::handler_finished`](super::Session::handler_finished).
    pub token: DeliveryToken,
    /// The event name.
    pub event_name: String,
    /// The event id.
    pub idem: String,
    /// The partition block (needed to acknowledge).
    pub block: i64,
    /// The decrypted payload.
    pub payload: serde_json::Value,
    /// The publisher's public key (base64): reply to it.
    pub sender: String,
    /// The unencrypted metadata (`{}` when absent or not JSON).
    pub metadata: serde_json::Value,
    /// When the node logged it (epoch ms), if the transport says (WebSocket does, gRPC does not).
    pub timestamp: Option<i64>,
    /// Whether the session acknowledges it when the handler finishes OK.
    pub auto_ack: bool,
}

/// Something the application should know.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// The connection state changed.
    State(ConnectionState),
    /// An operation finished (exactly once per [`OpId`]).
    Completed {
        /// The operation.
        op: OpId,
        /// Its result.
        result: Result<OpOutcome, SessionError>,
    },
    /// A decrypted event for the application. Call
    /// [`Session::handler_finished`](super::Session::handler_finished) when done.
    Delivery(Delivery),
    /// An event could not be decrypted or parsed: it is neither handed over nor acked.
    DeliveryFailed {
        /// The event name.
        event_name: String,
        /// The event id.
        idem: String,
        /// Why.
        error: SessionError,
    },
    /// An automatic acknowledgement or defer (after a handler) was refused by the node.
    /// Informational: the node delivers the event again if it was not acked.
    AutoAckFailed {
        /// The event name.
        event_name: String,
        /// The event id.
        idem: String,
        /// Why.
        error: SessionError,
    },
    /// An open subscribe stream ended without the connection being lost (a clean end,
    /// or a status that does not mean connection loss). The subscription is kept: its
    /// events still arrive if the node multiplexes them onto another stream, and it is
    /// re-established after the next reconnect.
    StreamEnded {
        /// The event name of the stream.
        event_name: String,
        /// The status it ended with, if any.
        error: Option<RpcError>,
    },
}

/// How the application's handler of a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerOutcome {
    /// Handled: auto-ack subscriptions acknowledge it.
    Ok,
    /// Failed: never acked; auto-ack subscriptions defer it for a prompt redelivery.
    Failed,
}

/// Options of [`Session::publish`](super::Session::publish).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishOptions {
    /// Encrypt once with the hybrid envelope shared by every recipient (default: one
    /// single-recipient envelope per recipient, which every published client reads).
    pub hybrid: bool,
}

impl PublishOptions {
    /// Sets [`PublishOptions::hybrid`].
    pub fn hybrid(mut self, hybrid: bool) -> Self {
        self.hybrid = hybrid;
        self
    }
}

/// Options of [`Session::subscribe`](super::Session::subscribe).
#[derive(Clone)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// Acknowledge each event after the handler finished OK (default `true`).
    pub auto_ack: bool,
    /// The key to decrypt this subscription's events with (default: the session's key).
    pub secret_key: Option<std::sync::Arc<crate::keys::SecretKey>>,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            auto_ack: true,
            secret_key: None,
        }
    }
}

impl SubscribeOptions {
    /// Sets [`SubscribeOptions::auto_ack`].
    pub fn auto_ack(mut self, auto_ack: bool) -> Self {
        self.auto_ack = auto_ack;
        self
    }
    /// Sets [`SubscribeOptions::secret_key`].
    pub fn secret_key(mut self, key: std::sync::Arc<crate::keys::SecretKey>) -> Self {
        self.secret_key = Some(key);
        self
    }
}

impl std::fmt::Debug for SubscribeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscribeOptions")
            .field("auto_ack", &self.auto_ack)
            .field(
                "secret_key",
                &self.secret_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}
