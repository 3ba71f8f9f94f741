//! Options for the engine, clients, subscriptions and publishes.
//!
//! Every option struct has sensible [`Default`]s (those of the published clients) and
//! chainable setters:
//!
//! ```
//! use std::time::Duration;
//! use ensync_client::EngineOptions;
//!
//! let options = EngineOptions::default()
//!     .enable_logging(true)
//!     .reconnect_interval(Duration::from_secs(2))
//!     .max_reconnect_attempts(20);
//! assert_eq!(options.get_max_reconnect_attempts(), 20);
//! ```

use std::fmt;
use std::time::Duration;

/// Which generation of RPC names to speak (PROTOCOL.md: generation 1 `PublishEvent`...,
/// generation 2 `PublishMessage`...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RpcGeneration {
    /// Try generation 2 first; on `UNIMPLEMENTED` switch to generation 1 once and remember.
    #[default]
    Auto,
    /// Only generation 1 ("event" names, ensync-sdk <= 0.4.2).
    Event,
    /// Only generation 2 ("message" names, ensync-sdk >= 0.4.3, the Node and Go SDKs).
    Message,
}

/// Options of an `EnSyncEngine` (the seed README's engine options,
/// plus the ones a Rust service needs).
#[derive(Clone)]
#[non_exhaustive]
pub struct EngineOptions {
    #[doc(hidden)]
    pub enable_logging: bool,
    #[doc(hidden)]
    pub disable_tls: bool,
    #[doc(hidden)]
    pub reconnect_interval: Duration,
    #[doc(hidden)]
    pub max_reconnect_attempts: u32,
    #[doc(hidden)]
    pub heartbeat_interval: Duration,
    #[doc(hidden)]
    pub request_timeout: Duration,
    #[doc(hidden)]
    pub connect_timeout: Duration,
    #[doc(hidden)]
    pub generation: RpcGeneration,
    #[doc(hidden)]
    pub ca_certificate_pem: Option<Vec<u8>>,
    #[doc(hidden)]
    pub tls_domain: Option<String>,
    #[doc(hidden)]
    pub max_in_flight: usize,
    #[doc(hidden)]
    pub subscription_buffer: usize,
    #[doc(hidden)]
    pub extra_urls: Vec<String>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            enable_logging: false,
            disable_tls: false,
            reconnect_interval: Duration::from_millis(5000),
            max_reconnect_attempts: 10,
            heartbeat_interval: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            generation: RpcGeneration::Auto,
            ca_certificate_pem: None,
            tls_domain: None,
            max_in_flight: 1024,
            subscription_buffer: 64,
            extra_urls: Vec::new(),
        }
    }
}

impl fmt::Debug for EngineOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineOptions")
            .field("enable_logging", &self.enable_logging)
            .field("disable_tls", &self.disable_tls)
            .field("reconnect_interval", &self.reconnect_interval)
            .field("max_reconnect_attempts", &self.max_reconnect_attempts)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("generation", &self.generation)
            .field("custom_ca", &self.ca_certificate_pem.is_some())
            .field("tls_domain", &self.tls_domain)
            .field("max_in_flight", &self.max_in_flight)
            .field("subscription_buffer", &self.subscription_buffer)
            .field("extra_urls", &self.extra_urls)
            .finish()
    }
}

macro_rules! setters {
    ($ty:ident { $($(#[$doc:meta])* $name:ident / $getter:ident : $t:ty),* $(,)? }) => {
        impl $ty {
            $(
                $(#[$doc])*
                #[must_use]
                pub fn $name(mut self, value: $t) -> Self {
                    self.$name = value;
                    self
                }
                #[doc = concat!("The current value of [`", stringify!($name), "`](Self::", stringify!($name), ").")]
                pub fn $getter(&self) -> $t {
                    self.$name.clone()
                }
            )*
        }
    };
}

setters!(EngineOptions {
    /// Emit the SDK's own `tracing` events (default `false`). The SDK never installs a
    /// subscriber: the application decides where events go.
    enable_logging / get_enable_logging: bool,
    /// Use plaintext even where the URL rules choose TLS (default `false`).
    disable_tls / get_disable_tls: bool,
    /// Base delay before the first reconnect attempt (default 5 s); attempt `n` waits
    /// `reconnect_interval * 1.5^(n-1)`.
    reconnect_interval / get_reconnect_interval: Duration,
    /// Reconnect attempts before the client gives up and closes (default 10).
    max_reconnect_attempts / get_max_reconnect_attempts: u32,
    /// Interval between heartbeats (default 30 s).
    heartbeat_interval / get_heartbeat_interval: Duration,
    /// How long a call may wait for its reply, including time spent waiting for a
    /// reconnect (default 30 s).
    request_timeout / get_request_timeout: Duration,
    /// How long opening a connection may take (default 10 s).
    connect_timeout / get_connect_timeout: Duration,
    /// Which RPC generation to speak (default [`RpcGeneration::Auto`]).
    generation / get_generation: RpcGeneration,
    /// Largest number of calls (publishes included) waiting for a reply at once; further
    /// calls wait for room (default 1024).
    max_in_flight / get_max_in_flight: usize,
    /// Events buffered per subscription before the SDK stops reading from the node
    /// (default 64). A slow handler slows delivery instead of growing memory.
    subscription_buffer / get_subscription_buffer: usize,
});

impl EngineOptions {
    /// Trust this PEM-encoded CA certificate (for example a node's self-signed
    /// certificate) in addition to the public web roots.
    #[must_use]
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_certificate_pem = Some(pem.into());
        self
    }

    /// Check the node's certificate against this name instead of the URL's host.
    #[must_use]
    pub fn tls_domain(mut self, domain: impl Into<String>) -> Self {
        self.tls_domain = Some(domain.into());
        self
    }

    /// More node URLs of the same deployment, after the engine's own (which may itself
    /// list several, separated by commas). The client connects to the first node that
    /// answers and moves on to the next one when the current one fails, so it rides out
    /// the loss of a node by itself; backoff applies only once every node failed in a
    /// row. All URLs use the engine's transport and the same TLS setting (a mix is a
    /// [`ErrorKind::Validation`](crate::ErrorKind::Validation) error when the engine is created).
    ///
    /// ```
    /// use ensync_client::EngineOptions;
    ///
    /// let options = EngineOptions::default().extra_urls(["grpc://node-b:50051", "grpc://node-c:50051"]);
    /// assert_eq!(options.get_extra_urls().len(), 2);
    /// ```
    #[must_use]
    pub fn extra_urls<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra_urls = urls.into_iter().map(Into::into).collect();
        self
    }

    /// The current value of [`extra_urls`](Self::extra_urls).
    pub fn get_extra_urls(&self) -> &[String] {
        &self.extra_urls
    }
}

/// Options of `EnSyncEngine::create_client`.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct ClientOptions {
    #[doc(hidden)]
    pub app_secret_key: Option<String>,
}

impl ClientOptions {
    /// The app's secret key (standard base64 of the 64-byte Ed25519 secret key, or of its
    /// 32-byte seed), used to decrypt events addressed to this app.
    #[must_use]
    pub fn app_secret_key(mut self, key: impl Into<String>) -> Self {
        self.app_secret_key = Some(key.into());
        self
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field(
                "app_secret_key",
                &self.app_secret_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Options of [`Client::subscribe_with`](crate::Client::subscribe_with).
#[derive(Clone)]
#[non_exhaustive]
pub struct SubscribeOptions {
    #[doc(hidden)]
    pub auto_ack: bool,
    #[doc(hidden)]
    pub app_secret_key: Option<String>,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            auto_ack: true,
            app_secret_key: None,
        }
    }
}

impl SubscribeOptions {
    /// Acknowledge each event automatically once it was handled successfully
    /// (default `true`). With `false`, call [`Event::ack`](crate::Event::ack) or
    /// [`Subscription::ack`](crate::Subscription::ack).
    #[must_use]
    pub fn auto_ack(mut self, auto_ack: bool) -> Self {
        self.auto_ack = auto_ack;
        self
    }

    /// Decrypt this subscription's events with this secret key instead of the client's.
    #[must_use]
    pub fn app_secret_key(mut self, key: impl Into<String>) -> Self {
        self.app_secret_key = Some(key.into());
        self
    }
}

impl fmt::Debug for SubscribeOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscribeOptions")
            .field("auto_ack", &self.auto_ack)
            .field(
                "app_secret_key",
                &self.app_secret_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Options of [`Client::publish_with`](crate::Client::publish_with).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PublishOptions {
    #[doc(hidden)]
    pub metadata: Option<serde_json::Value>,
    #[doc(hidden)]
    pub hybrid: bool,
}

impl PublishOptions {
    /// Metadata sent with the event (a JSON object; **not** encrypted).
    #[must_use]
    pub fn metadata(mut self, metadata: serde_json::Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Encrypt the payload once for all recipients (the "hybrid" envelope) instead of
    /// once per recipient (default `false`: every published client reads the single form).
    #[must_use]
    pub fn hybrid(mut self, hybrid: bool) -> Self {
        self.hybrid = hybrid;
        self
    }
}
