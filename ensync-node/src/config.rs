//! Node configuration: the TOML file of `ensync node --config FILE`, or built in code.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::perm::Pattern;

/// Default listen address of the gRPC endpoint.
pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:50051";
/// Default heartbeat interval (the published clients send one every 30 s).
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 30_000;
/// Default number of missed heartbeat intervals after which a session ends.
pub const DEFAULT_HEARTBEAT_MISSES: u32 = 3;
/// Default payload size limit (the base64 text of the envelope), 1 MiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Default metadata size limit, 16 KiB.
pub const DEFAULT_MAX_METADATA_BYTES: usize = 16 * 1024;
/// Default bound on unacknowledged events handed to one subscription.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;
/// Default interval of the WebSocket endpoint's `PING` to a silent connection.
pub const DEFAULT_WS_PING_INTERVAL_MS: u64 = 30_000;
/// Default retention of stored events for replay: 7 days.
pub const DEFAULT_RETENTION_SECS: u64 = 7 * 24 * 3600;
/// Smallest accepted `store_cache_bytes`, 1 MiB.
pub const MIN_STORE_CACHE_BYTES: usize = 1024 * 1024;
/// Default cap on open connections, per endpoint (gRPC, WebSocket).
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Default cap on open connections from one IP address, per endpoint.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;
/// Default HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` the gRPC endpoint advertises.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 256;
/// Default number of gRPC requests of one connection whose request message is being
/// received and handled at a time.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 32;
/// Default time a new connection has to send the first bytes of its handshake, in ms.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Default time a gRPC request has to arrive in full and be answered, in ms.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Default interval of HTTP/2 keep-alive pings, in ms (a peer that does not answer one
/// within the same time is disconnected).
pub const DEFAULT_KEEPALIVE_INTERVAL_MS: u64 = 20_000;
/// Bytes a gRPC `PublishEvent` may carry beyond its payload and metadata (session id,
/// event name, recipients, protobuf and gRPC framing); see [`NodeConfig::max_grpc_message`].
pub const GRPC_FRAMING_ALLOWANCE: usize = 64 * 1024;
/// Default size of the store's page cache, 32 MiB (redb's own default is 1 GiB).
pub const DEFAULT_STORE_CACHE_BYTES: usize = 32 * 1024 * 1024;
/// Default number of queues `/metrics` shows one by one (`metrics_queue_limit`).
pub const DEFAULT_METRICS_QUEUE_LIMIT: usize = 100;

pub use crate::backend::jetstream::config::{
    DEFAULT_JETSTREAM_ACK_WAIT_MS, DEFAULT_JETSTREAM_REPLICAS, DEFAULT_JETSTREAM_STREAM,
    JetStreamConfig,
};

/// Where a node keeps its queues (`store` in the config file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The embedded redb store in `data_dir` (the default): one machine.
    #[default]
    Embedded,
    /// A NATS JetStream cluster shared by several nodes (the `[jetstream]` table).
    Jetstream,
}

/// The longest [`NodeConfig::settle_delay_us`] accepted: 100 ms.
pub const MAX_SETTLE_DELAY_US: u64 = 100_000;

/// The whole node configuration.
///
/// Read from TOML with [`NodeConfig::from_toml_str`] / [`NodeConfig::from_file`], or
/// built in code from [`NodeConfig::default`] (or [`NodeConfig::new`]) by setting fields.
/// Every field but `apps` has a default, so a minimal file is:
///
/// ```toml
/// grpc_listen = "127.0.0.1:50051"
/// data_dir = "./ensync-data"
/// [[apps]]
/// name = "orders"
/// access_key = "a-long-random-secret"
/// public_key = "<base64 Ed25519 public key>"
/// send = ["orders/*"]
/// receive = ["*"]
/// ```
///
/// [`NodeConfig::validate`] checks it (also done by `Node::start`); its errors name the
/// offending field.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Where the queues live: `"embedded"` (the default: the redb store in `data_dir`,
    /// one machine) or `"jetstream"` (a NATS JetStream cluster that several nodes share,
    /// configured by the `[jetstream]` table).
    pub store: StoreKind,
    /// Address of the gRPC endpoint (`"127.0.0.1:0"` picks a free port).
    pub grpc_listen: SocketAddr,
    /// Directory of the durable store (created if missing). Its `events.redb` is created
    /// only where none exists; an existing one that is empty or damaged is refused.
    pub data_dir: PathBuf,
    /// Address of the WebSocket endpoint (path `/message`, PROTOCOL.md section 3); none
    /// when unset. Serves TLS (`wss://`) when `tls_cert`/`tls_key` are set.
    pub ws_listen: Option<SocketAddr>,
    /// The WebSocket endpoint sends `PING` to a connection that sent nothing for this
    /// long, in ms; after `heartbeat_misses` unanswered `PING`s the connection is closed
    /// and its sessions end.
    pub ws_ping_interval_ms: u64,
    /// PEM certificate chain; with `tls_key`, the endpoints serve TLS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key matching `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Expected interval between a client's heartbeats, in ms.
    pub heartbeat_interval_ms: u64,
    /// A session with no heartbeat nor any call for this many intervals ends.
    pub heartbeat_misses: u32,
    /// Which subscribe stream of a session carries its events. Unset (the default): by
    /// client, from the gRPC `user-agent` of its `Connect`: every event on the session's
    /// first open stream for the Node.js gRPC SDK (`grpc-node-js/…`, it reads only that
    /// stream), each event on the stream opened for its name for every other client (the
    /// Python clients need that). `true`: the first stream for every client; `false`: the
    /// stream of its name for every client (what `false`, the former default, always
    /// meant; the Node.js gRPC SDK's second subscription on one client then gets nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multiplex: Option<bool>,
    /// Largest accepted `payload` (bytes of its base64 text).
    pub max_payload_bytes: usize,
    /// Largest accepted `metadata` (and `payload_metadata`), in bytes.
    pub max_metadata_bytes: usize,
    /// Most unacknowledged events handed to one subscription at a time.
    pub max_in_flight: usize,
    /// How long stored events stay replayable, in seconds.
    pub retention_secs: u64,
    /// Group commit (the default): the store's writer commits every write waiting for it
    /// (publishes, acks, defers) in one durable transaction, one `fsync` for up to 1024
    /// of them. `false` commits each write in its own transaction (one `fsync` per event):
    /// equally durable, far fewer writes per second under concurrency; kept to measure
    /// the difference. Either way a publish is answered only once its commit is on disk.
    pub group_commit: bool,
    /// With group commit: how long (microseconds) a commit of settlements only (acks,
    /// discards, defers) waits for a publish to share it; it commits as soon as one
    /// arrives. Default 1000. At a steady rate each ack then rides on the next publish's
    /// `fsync` instead of taking one of its own that the next publish would wait behind;
    /// settlements are still answered only once committed. 0: commit them at once.
    pub settle_delay_us: u64,
    /// Size of the store's page cache in bytes (read and write cache together). The
    /// queued events live on disk; this bounds how much of the file is kept in memory.
    /// Larger helps replay and delivery of old backlogs at the price of resident memory.
    pub store_cache_bytes: usize,
    /// Most open connections per endpoint (gRPC and WebSocket each). Beyond it a new
    /// gRPC connection gets an HTTP/2 `GOAWAY` (`ENHANCE_YOUR_CALM`, debug text
    /// "connection limit reached") and is closed (over TLS after the TLS handshake); a
    /// WebSocket upgrade gets HTTP 503. Each refusal is logged.
    pub max_connections: usize,
    /// Most open connections from one IP address per endpoint (IPv4-mapped IPv6
    /// addresses count as their IPv4 address), so one peer cannot take every place of
    /// `max_connections`. Refused as beyond `max_connections`. Raise it when many clients
    /// share an address (a proxy, a NAT).
    pub max_connections_per_ip: usize,
    /// The HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` of the gRPC endpoint: most open
    /// streams (calls, subscriptions included) per connection.
    pub max_concurrent_streams: u32,
    /// Most gRPC requests of one connection being received and handled at a time (a
    /// subscription counts only until its stream is open); further requests wait, their
    /// bytes held back by HTTP/2 flow control. With `max_grpc_message` this bounds the
    /// memory one connection can make the node hold (see the node README).
    pub max_concurrent_requests: usize,
    /// A new connection must send the first bytes of its handshake (the HTTP/2 preface,
    /// or the TLS ClientHello) within this many ms, and complete a TLS handshake within
    /// it, or it is closed.
    pub handshake_timeout_ms: u64,
    /// A gRPC request must arrive in full and be answered within this many ms, or it
    /// fails with `CANCELLED`/`DEADLINE_EXCEEDED` (a subscription: until its stream is open).
    pub request_timeout_ms: u64,
    /// Interval of the HTTP/2 keep-alive pings the gRPC endpoint sends, in ms; a peer
    /// that does not answer one within the same time is disconnected.
    pub keepalive_interval_ms: u64,
    /// Address of the admin HTTP endpoint (the EnSync config manager's API under
    /// `/api/v1/ensync`, `/healthz`, `/readyz`); off when unset. Requires `admin_key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<SocketAddr>,
    /// The secret every admin request carries in its `X-ACCESS-KEY` header. Never logged
    /// nor shown by `Debug`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_key: Option<SecretString>,
    /// Whether the admin endpoint serves HTTPS. Unset (the default): it follows the node,
    /// HTTPS with `tls_cert`/`tls_key` when they are set (as gRPC and WebSocket serve
    /// TLS), plain HTTP when they are not. `false`: plain HTTP even when the node has TLS;
    /// with `tls_cert` set this is allowed only on a loopback `admin_listen` (elsewhere
    /// the admin key would cross a network in clear text). `true`: HTTPS, and an error
    /// unless `tls_cert`/`tls_key` are set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_tls: Option<bool>,
    /// Most queues (recipient app, event name) `/metrics` shows one by one: their ready,
    /// held (in flight on this node) and deferred events. With more queues, the ones with
    /// the most ready events are shown and `ensync_queues_left_out` counts the others.
    /// `0` turns the per-queue gauges off.
    pub metrics_queue_limit: usize,
    /// The NATS JetStream cluster of `store = "jetstream"` (the `[jetstream]` table);
    /// must be unset with the embedded store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jetstream: Option<JetStreamConfig>,
    /// The apps allowed to connect (the bootstrap: apps made through the admin API are
    /// kept in the store and come on top of these).
    pub apps: Vec<AppConfig>,
    /// Open the store even when it is older than its commit record says (completed
    /// commits missing), its record is unreadable, or its file is missing while its record
    /// exists (see [`crate::store::StoreOptions::accept_rollback`]). Never read from nor
    /// written to the config file: a one-time decision, `ensync node
    /// --accept-store-rollback`. Default `false`.
    #[serde(skip)]
    pub accept_store_rollback: bool,
}

/// A secret string of the configuration: `Debug` shows `<redacted>`, zeroized on drop.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps `secret`.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Drop for SecretString {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            store: StoreKind::Embedded,
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: PathBuf::from("./ensync-data"),
            ws_listen: None,
            ws_ping_interval_ms: DEFAULT_WS_PING_INTERVAL_MS,
            tls_cert: None,
            tls_key: None,
            heartbeat_interval_ms: DEFAULT_HEARTBEAT_INTERVAL_MS,
            heartbeat_misses: DEFAULT_HEARTBEAT_MISSES,
            multiplex: None,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_metadata_bytes: DEFAULT_MAX_METADATA_BYTES,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            retention_secs: DEFAULT_RETENTION_SECS,
            group_commit: true,
            settle_delay_us: 1000,
            store_cache_bytes: DEFAULT_STORE_CACHE_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            keepalive_interval_ms: DEFAULT_KEEPALIVE_INTERVAL_MS,
            jetstream: None,
            admin_listen: None,
            admin_key: None,
            admin_tls: None,
            metrics_queue_limit: DEFAULT_METRICS_QUEUE_LIMIT,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            apps: Vec::new(),
            accept_store_rollback: false,
        }
    }
}

/// One app: who may connect with which access key, under which identity, and which
/// event names it may send and receive.
///
/// `Debug` shows the access key as `<redacted>`; the key is zeroized on drop.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// A name for logs and the config file (unique).
    pub name: String,
    /// The secret a client presents in `Connect` (unique).
    pub access_key: String,
    /// The app's Ed25519 public key, standard base64: its identity (`client_hash`), the
    /// recipient key others publish to, and the `sender` of what it publishes.
    pub public_key: String,
    /// Event-name patterns it may publish: exact names, `*` for all, `prefix/*` for a subtree.
    #[serde(default)]
    pub send: Vec<String>,
    /// Event-name patterns it may subscribe to (same forms as `send`).
    #[serde(default)]
    pub receive: Vec<String>,
}

impl AppConfig {
    /// An app with no permissions; push patterns onto `send` / `receive`.
    pub fn new(
        name: impl Into<String>,
        access_key: impl Into<String>,
        public_key: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            access_key: access_key.into(),
            public_key: public_key.into(),
            send: Vec::new(),
            receive: Vec::new(),
        }
    }

    /// Sets the send patterns (builder style).
    pub fn with_send<S: Into<String>>(mut self, patterns: impl IntoIterator<Item = S>) -> Self {
        self.send = patterns.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the receive patterns (builder style).
    pub fn with_receive<S: Into<String>>(mut self, patterns: impl IntoIterator<Item = S>) -> Self {
        self.receive = patterns.into_iter().map(Into::into).collect();
        self
    }
}

impl fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppConfig")
            .field("name", &self.name)
            .field("access_key", &"<redacted>")
            .field("public_key", &self.public_key)
            .field("send", &self.send)
            .field("receive", &self.receive)
            .finish()
    }
}

impl Drop for AppConfig {
    fn drop(&mut self) {
        self.access_key.zeroize();
    }
}

/// A configuration that cannot be used. The message names the field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or a field has the wrong type (the text names it).
    #[error("invalid config: {0}")]
    Parse(String),
    /// A field has an unusable value.
    #[error("invalid config field `{field}`: {reason}")]
    Field {
        /// The field, e.g. `apps[1].public_key`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

pub(crate) fn field_err(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

impl NodeConfig {
    /// The defaults with the given data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            ..Self::default()
        }
    }

    /// The largest gRPC message the node decodes: `max_payload_bytes` + 2 x
    /// `max_metadata_bytes` (metadata and payload metadata) + [`GRPC_FRAMING_ALLOWANCE`]
    /// (1 MiB + 32 KiB + 64 KiB = 1 146 880 bytes with the defaults). A request message
    /// declaring more is refused (`OUT_OF_RANGE`) before its body is read; one a little
    /// over the payload limit reaches the node's own check and gets a reason.
    pub fn max_grpc_message(&self) -> usize {
        self.max_payload_bytes
            .saturating_add(self.max_metadata_bytes.saturating_mul(2))
            .saturating_add(GRPC_FRAMING_ALLOWANCE)
    }

    /// Parses TOML text and validates it.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// Serializes to TOML (access keys included: it is a config file).
    pub fn to_toml_string(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(field_err("data_dir", "must not be empty"));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(field_err("tls_key", "tls_cert is set but tls_key is not"));
            }
            (None, Some(_)) => {
                return Err(field_err("tls_cert", "tls_key is set but tls_cert is not"));
            }
            _ => {}
        }
        match (&self.admin_listen, &self.admin_key) {
            (Some(_), None) => {
                return Err(field_err(
                    "admin_key",
                    "admin_listen is set but admin_key is not",
                ));
            }
            (None, Some(_)) => {
                return Err(field_err(
                    "admin_listen",
                    "admin_key is set but admin_listen is not",
                ));
            }
            (Some(_), Some(key)) if key.expose().len() < 16 => {
                return Err(field_err(
                    "admin_key",
                    "must be at least 16 characters (a long random secret)",
                ));
            }
            _ => {}
        }
        match (self.admin_tls, &self.tls_cert, self.admin_listen) {
            (Some(true), None, _) => {
                return Err(field_err(
                    "admin_tls",
                    "admin_tls = true needs tls_cert and tls_key (the admin endpoint serves the node's certificate)",
                ));
            }
            (Some(false), Some(_), Some(addr)) if !addr.ip().to_canonical().is_loopback() => {
                return Err(field_err(
                    "admin_tls",
                    format!(
                        "admin_tls = false (plain HTTP while the node has TLS) is allowed only on a loopback admin_listen, not {addr}: the admin key would cross the network in clear text"
                    ),
                ));
            }
            _ => {}
        }
        if self.heartbeat_interval_ms == 0 {
            return Err(field_err("heartbeat_interval_ms", "must be greater than 0"));
        }
        if self.ws_ping_interval_ms == 0 {
            return Err(field_err("ws_ping_interval_ms", "must be greater than 0"));
        }
        if self.heartbeat_misses == 0 {
            return Err(field_err("heartbeat_misses", "must be greater than 0"));
        }
        if self.max_payload_bytes == 0 {
            return Err(field_err("max_payload_bytes", "must be greater than 0"));
        }
        if self.max_metadata_bytes < 2 {
            return Err(field_err(
                "max_metadata_bytes",
                "must be at least 2 (\"{}\")",
            ));
        }
        if self.max_in_flight == 0 {
            return Err(field_err("max_in_flight", "must be greater than 0"));
        }
        if self.retention_secs == 0 {
            return Err(field_err("retention_secs", "must be greater than 0"));
        }
        if self.settle_delay_us > MAX_SETTLE_DELAY_US {
            return Err(field_err(
                "settle_delay_us",
                format!(
                    "must be at most {MAX_SETTLE_DELAY_US} (microseconds: acks wait this long at most for a publish to commit with)"
                ),
            ));
        }
        for (field, value) in [
            ("max_connections", self.max_connections as u64),
            ("max_connections_per_ip", self.max_connections_per_ip as u64),
            (
                "max_concurrent_streams",
                u64::from(self.max_concurrent_streams),
            ),
            (
                "max_concurrent_requests",
                self.max_concurrent_requests as u64,
            ),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("keepalive_interval_ms", self.keepalive_interval_ms),
        ] {
            if value == 0 {
                return Err(field_err(field, "must be greater than 0"));
            }
        }
        match (self.store, &self.jetstream) {
            (StoreKind::Embedded, Some(_)) => {
                return Err(field_err(
                    "jetstream",
                    "the [jetstream] table is set but store is \"embedded\" (set store = \"jetstream\", or remove the table)",
                ));
            }
            (StoreKind::Jetstream, None) => {
                return Err(field_err(
                    "jetstream",
                    "store = \"jetstream\" needs a [jetstream] table with `servers`",
                ));
            }
            (StoreKind::Jetstream, Some(js)) => js.validate()?,
            (StoreKind::Embedded, None) => {}
        }
        if self.store_cache_bytes < MIN_STORE_CACHE_BYTES {
            return Err(field_err(
                "store_cache_bytes",
                format!("must be at least {MIN_STORE_CACHE_BYTES} (1 MiB)"),
            ));
        }
        let mut names = HashSet::new();
        let mut access = HashSet::new();
        let mut keys = HashSet::new();
        for (i, app) in self.apps.iter().enumerate() {
            let at = |f: &str| format!("apps[{i}].{f}");
            if app.name.trim().is_empty() {
                return Err(field_err(at("name"), "must not be empty"));
            }
            if !names.insert(app.name.as_str()) {
                return Err(field_err(
                    at("name"),
                    format!("duplicate app name {:?}", app.name),
                ));
            }
            if app.access_key.is_empty() {
                return Err(field_err(at("access_key"), "must not be empty"));
            }
            if !access.insert(app.access_key.as_str()) {
                return Err(field_err(
                    at("access_key"),
                    "the same access key is used by another app",
                ));
            }
            let key = crate::keys::parse_public_key(&app.public_key)
                .map_err(|e| field_err(at("public_key"), e))?;
            if !keys.insert(key) {
                return Err(field_err(
                    at("public_key"),
                    "the same public key is used by another app",
                ));
            }
            for (list, patterns) in [("send", &app.send), ("receive", &app.receive)] {
                for (j, p) in patterns.iter().enumerate() {
                    Pattern::parse(p)
                        .map_err(|e| field_err(format!("apps[{i}].{list}[{j}]"), e))?;
                }
            }
        }
        Ok(())
    }

    /// Whether the admin endpoint serves HTTPS (see [`NodeConfig::admin_tls`]).
    pub fn admin_uses_tls(&self) -> bool {
        self.admin_tls.unwrap_or(true) && self.tls_cert.is_some() && self.tls_key.is_some()
    }

    /// How long a session may stay silent before it ends.
    pub fn session_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.heartbeat_interval_ms
                .saturating_mul(u64::from(self.heartbeat_misses)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> String {
        crate::keys::generate().public_key
    }

    #[test]
    fn debug_redacts_access_key() {
        let app = AppConfig::new("a", "super-secret-key", key());
        let text = format!("{app:?}");
        assert!(!text.contains("super-secret-key"), "{text}");
        assert!(text.contains("<redacted>"));
    }

    #[test]
    fn debug_redacts_the_admin_key() {
        let mut c = NodeConfig::new("/tmp/x");
        c.admin_listen = Some(SocketAddr::from(([127, 0, 0, 1], 9000)));
        c.admin_key = Some(SecretString::new("the-admin-secret-0123"));
        assert!(c.validate().is_ok());
        assert!(!format!("{c:?}").contains("the-admin-secret-0123"));
    }

    #[test]
    fn parse_errors_name_the_field() {
        let err = NodeConfig::from_toml_str("grpc_listen = \"nope\"").unwrap_err();
        assert!(err.to_string().contains("grpc_listen"), "{err}");
        let err = NodeConfig::from_toml_str("bogus = 1").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = NodeConfig::from_toml_str("ws_ping_interval_ms = 0").unwrap_err();
        assert!(err.to_string().contains("ws_ping_interval_ms"), "{err}");
        let err = NodeConfig::from_toml_str("ws_listen = \"x\"").unwrap_err();
        assert!(err.to_string().contains("ws_listen"), "{err}");
        let err = NodeConfig::from_toml_str("bogus = 1").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = NodeConfig::from_toml_str("heartbeat_interval_ms = 0").unwrap_err();
        assert!(err.to_string().contains("heartbeat_interval_ms"), "{err}");
        let err = NodeConfig::from_toml_str(
            "[[apps]]\nname = \"a\"\naccess_key = \"k\"\npublic_key = \"x\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("apps[0].public_key"), "{err}");
        let err = NodeConfig::from_toml_str(&format!(
            "[[apps]]\nname = \"a\"\naccess_key = \"k\"\npublic_key = \"{}\"\nsend = [\"a/*/b\"]\n",
            key()
        ))
        .unwrap_err();
        assert!(err.to_string().contains("apps[0].send[0]"), "{err}");
    }

    #[test]
    fn multiplex_unset_differs_from_an_explicit_false() {
        // Unset: decided per session by client kind; written back unset.
        let c = NodeConfig::from_toml_str("data_dir = \"/tmp/x\"").unwrap();
        assert_eq!(c.multiplex, None);
        assert!(!c.to_toml_string().unwrap().contains("multiplex"));
        // Today's files keep their meaning: an explicit value applies to every client.
        for (text, want) in [
            ("multiplex = false", Some(false)),
            ("multiplex = true", Some(true)),
        ] {
            let c = NodeConfig::from_toml_str(text).unwrap();
            assert_eq!(c.multiplex, want, "{text}");
            let back = NodeConfig::from_toml_str(&c.to_toml_string().unwrap()).unwrap();
            assert_eq!(back.multiplex, want, "{text} round trip");
        }
    }

    #[test]
    fn toml_round_trip() {
        let mut c = NodeConfig::new("/tmp/x");
        c.apps.push(
            AppConfig::new("a", "k", key())
                .with_send(["x/*"])
                .with_receive(["*"]),
        );
        let text = c.to_toml_string().unwrap();
        let back = NodeConfig::from_toml_str(&text).unwrap();
        assert_eq!(back.data_dir, c.data_dir);
        assert_eq!(back.ws_listen, None);
        let c = NodeConfig::from_toml_str("ws_listen = \"127.0.0.1:8082\"").unwrap();
        assert_eq!(c.ws_listen, Some(SocketAddr::from(([127, 0, 0, 1], 8082))));
        assert_eq!(back.apps[0].send, vec!["x/*".to_owned()]);
        assert_eq!(back.apps[0].access_key, "k");
    }

    #[test]
    fn commit_mode_and_cache_size() {
        // A config written before these knobs existed keeps group commit and gets the
        // bounded cache.
        let c = NodeConfig::from_toml_str("data_dir = \"/tmp/x\"").unwrap();
        assert!(c.group_commit);
        assert_eq!(c.store_cache_bytes, DEFAULT_STORE_CACHE_BYTES);
        let c =
            NodeConfig::from_toml_str("group_commit = false\nstore_cache_bytes = 8388608").unwrap();
        assert!(!c.group_commit);
        assert_eq!(c.store_cache_bytes, 8 * 1024 * 1024);
        let back = NodeConfig::from_toml_str(&c.to_toml_string().unwrap()).unwrap();
        assert!(!back.group_commit);
        assert_eq!(back.store_cache_bytes, 8 * 1024 * 1024);
        assert_eq!(c.settle_delay_us, 1000);
        let c = NodeConfig::from_toml_str("settle_delay_us = 0").unwrap();
        assert_eq!(c.settle_delay_us, 0);
        let err = NodeConfig::from_toml_str("settle_delay_us = 100001").unwrap_err();
        assert!(err.to_string().contains("settle_delay_us"), "{err}");
        let err = NodeConfig::from_toml_str("store_cache_bytes = 1000").unwrap_err();
        assert!(err.to_string().contains("store_cache_bytes"), "{err}");
    }

    #[test]
    fn the_rollback_flag_is_never_read_from_the_file() {
        let c = NodeConfig::from_toml_str("data_dir = \"/tmp/x\"").unwrap();
        assert!(!c.accept_store_rollback);
        // Set in code (or by `ensync node --accept-store-rollback`), never in the file.
        let mut c = NodeConfig::new("/tmp/x");
        c.accept_store_rollback = true;
        let text = c.to_toml_string().unwrap();
        assert!(!text.contains("accept_store_rollback"), "{text}");
        let err = NodeConfig::from_toml_str("accept_store_rollback = true").unwrap_err();
        assert!(err.to_string().contains("accept_store_rollback"), "{err}");
    }

    #[test]
    fn per_ip_cap() {
        let c = NodeConfig::from_toml_str("data_dir = \"/tmp/x\"").unwrap();
        assert_eq!(c.max_connections_per_ip, DEFAULT_MAX_CONNECTIONS_PER_IP);
        let c = NodeConfig::from_toml_str("max_connections_per_ip = 3").unwrap();
        assert_eq!(c.max_connections_per_ip, 3);
        let back = NodeConfig::from_toml_str(&c.to_toml_string().unwrap()).unwrap();
        assert_eq!(back.max_connections_per_ip, 3);
        let err = NodeConfig::from_toml_str("max_connections_per_ip = 0").unwrap_err();
        assert!(err.to_string().contains("max_connections_per_ip"), "{err}");
    }

    #[test]
    fn admin_tls_follows_the_node_unless_told() {
        let tls = "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n";
        let admin = "admin_key = \"0123456789abcdef0123\"\n";
        let on = |text: &str| NodeConfig::from_toml_str(text).map(|c| c.admin_uses_tls());
        // Unset: as the node.
        assert!(on(&format!("{tls}admin_listen = \"0.0.0.0:9000\"\n{admin}")).unwrap());
        assert!(!on(&format!("admin_listen = \"0.0.0.0:9000\"\n{admin}")).unwrap());
        // false: plain HTTP beside a TLS node, on loopback only.
        for addr in ["127.0.0.1:9000", "[::1]:9000", "[::ffff:127.0.0.1]:9000"] {
            let text = format!("{tls}admin_listen = \"{addr}\"\n{admin}admin_tls = false\n");
            assert!(!on(&text).unwrap(), "{addr}");
        }
        let err = on(&format!(
            "{tls}admin_listen = \"0.0.0.0:9000\"\n{admin}admin_tls = false\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("admin_tls"), "{err}");
        // true: needs the certificate.
        assert!(
            on(&format!(
                "{tls}admin_listen = \"127.0.0.1:9000\"\n{admin}admin_tls = true\n"
            ))
            .unwrap()
        );
        let err = on(&format!(
            "admin_listen = \"127.0.0.1:9000\"\n{admin}admin_tls = true\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("admin_tls"), "{err}");
        let c = NodeConfig::from_toml_str(&format!(
            "{tls}admin_listen = \"127.0.0.1:9000\"\n{admin}admin_tls = false\n"
        ))
        .unwrap();
        let back = NodeConfig::from_toml_str(&c.to_toml_string().unwrap()).unwrap();
        assert_eq!(back.admin_tls, Some(false));
    }

    #[test]
    fn metrics_queue_limit() {
        let c = NodeConfig::from_toml_str("data_dir = \"/tmp/x\"").unwrap();
        assert_eq!(c.metrics_queue_limit, DEFAULT_METRICS_QUEUE_LIMIT);
        let c = NodeConfig::from_toml_str("metrics_queue_limit = 0").unwrap();
        assert_eq!(c.metrics_queue_limit, 0);
        let back = NodeConfig::from_toml_str(&c.to_toml_string().unwrap()).unwrap();
        assert_eq!(back.metrics_queue_limit, 0);
    }
}
