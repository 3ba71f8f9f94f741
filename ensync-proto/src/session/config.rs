//! Session configuration.

use std::sync::Arc;
use std::time::Duration;

use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use super::types::GenerationChoice;
use crate::keys::SecretKey;

/// A cryptographic random number generator the session encrypts with.
pub type BoxedRng = Box<dyn CryptoRngCore + Send>;

/// The configuration of a [`Session`](super::Session): private fields, [`Default`],
/// builder-style setters. `Debug` never shows the access key or the secret key.
pub struct SessionConfig {
    pub(crate) access_key: Zeroizing<String>,
    pub(crate) secret_key: Option<Arc<SecretKey>>,
    pub(crate) heartbeat_interval: Option<Duration>,
    pub(crate) reconnect_interval: Duration,
    pub(crate) max_reconnect_attempts: u32,
    pub(crate) endpoints: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) generation: GenerationChoice,
    pub(crate) dedup_capacity: usize,
    pub(crate) handler_failure_redelivery_delay: Duration,
    pub(crate) max_in_flight: usize,
    pub(crate) rng: Option<BoxedRng>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            access_key: Zeroizing::new(String::new()),
            secret_key: None,
            heartbeat_interval: Some(Duration::from_secs(30)),
            reconnect_interval: Duration::from_secs(5),
            max_reconnect_attempts: 10,
            endpoints: 1,
            request_timeout: Duration::from_secs(30),
            generation: GenerationChoice::default(),
            dedup_capacity: 10_000,
            handler_failure_redelivery_delay: Duration::from_secs(1),
            max_in_flight: 1024,
            rng: None,
        }
    }
}

impl std::fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionConfig")
            .field("access_key", &"<redacted>")
            .field(
                "secret_key",
                &self.secret_key.as_ref().map(|_| "<redacted>"),
            )
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("reconnect_interval", &self.reconnect_interval)
            .field("max_reconnect_attempts", &self.max_reconnect_attempts)
            .field("endpoints", &self.endpoints)
            .field("request_timeout", &self.request_timeout)
            .field("generation", &self.generation)
            .field("dedup_capacity", &self.dedup_capacity)
            .field(
                "handler_failure_redelivery_delay",
                &self.handler_failure_redelivery_delay,
            )
            .field("max_in_flight", &self.max_in_flight)
            .field("rng", &self.rng.as_ref().map_or("OsRng", |_| "injected"))
            .finish()
    }
}

impl SessionConfig {
    /// A default configuration with this access key.
    pub fn new(access_key: impl Into<String>) -> Self {
        SessionConfig::default().access_key(access_key)
    }
    /// The app's access key, sent in `Connect`.
    pub fn access_key(mut self, access_key: impl Into<String>) -> Self {
        self.access_key = Zeroizing::new(access_key.into());
        self
    }
    /// The default key to decrypt deliveries and replays with (a subscription may
    /// bring its own).
    pub fn secret_key(mut self, key: Arc<SecretKey>) -> Self {
        self.secret_key = Some(key);
        self
    }
    /// Heartbeat period while connected (default 30 s); `None` disables heartbeats
    /// (the WebSocket transport, where the node pings).
    pub fn heartbeat_interval(mut self, interval: Option<Duration>) -> Self {
        self.heartbeat_interval = interval.filter(|d| !d.is_zero());
        self
    }
    /// The first reconnect delay (default 5 s); attempt `n` waits
    /// `reconnect_interval * 1.5^(n-1)` ([`backoff_delay`](super::backoff_delay)).
    pub fn reconnect_interval(mut self, interval: Duration) -> Self {
        self.reconnect_interval = interval;
        self
    }
    /// How many reconnect attempts after a connection loss before the session closes
    /// (default 10; 0 closes on the first loss). With several [`endpoints`](Self::endpoints)
    /// it counts per endpoint: the session gives up after `attempts` full rounds.
    pub fn max_reconnect_attempts(mut self, attempts: u32) -> Self {
        self.max_reconnect_attempts = attempts;
        self
    }
    /// How many node endpoints the adapter can connect to (default 1; 0 is taken as 1).
    /// [`Output::Connect`](super::Output::Connect) names the one to use; the rotation
    /// rule is in the [session docs](crate::session#several-endpoints).
    pub fn endpoints(mut self, count: usize) -> Self {
        self.endpoints = count.max(1);
        self
    }
    /// How long an operation may take from when it was issued (queued while
    /// disconnected included), and how long a connect step or heartbeat may take
    /// (default 30 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
    /// Which RPC generation to speak (default: try generation 2, fall back to 1).
    pub fn generation(mut self, choice: GenerationChoice) -> Self {
        self.generation = choice;
        self
    }
    /// How many handled events are remembered to drop duplicate redeliveries (default
    /// 10 000; the oldest are forgotten first).
    pub fn dedup_capacity(mut self, capacity: usize) -> Self {
        self.dedup_capacity = capacity;
        self
    }
    /// The defer delay sent when a handler of an auto-ack subscription fails (default
    /// 1 s; clamped to the node's accepted range 1 s ..= 24 h).
    pub fn handler_failure_redelivery_delay(mut self, delay: Duration) -> Self {
        self.handler_failure_redelivery_delay = delay.clamp(
            crate::validate::MIN_DEFER_DELAY,
            crate::validate::MAX_DEFER_DELAY,
        );
        self
    }
    /// The most operations the application may have pending at once (default 1024);
    /// more fail with [`SessionError::Overloaded`](super::SessionError::Overloaded).
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max.max(1);
        self
    }
    /// The random number generator for envelopes (default: the operating system's).
    /// Tests pass a seeded `rand_chacha::ChaCha20Rng` to replay exactly.
    pub fn rng(mut self, rng: BoxedRng) -> Self {
        self.rng = Some(rng);
        self
    }

    /// The configured heartbeat interval.
    pub fn get_heartbeat_interval(&self) -> Option<Duration> {
        self.heartbeat_interval
    }
    /// The configured first reconnect delay.
    pub fn get_reconnect_interval(&self) -> Duration {
        self.reconnect_interval
    }
    /// The configured maximum number of reconnect attempts.
    pub fn get_max_reconnect_attempts(&self) -> u32 {
        self.max_reconnect_attempts
    }
    /// The configured number of endpoints.
    pub fn get_endpoints(&self) -> usize {
        self.endpoints
    }
    /// The configured request timeout.
    pub fn get_request_timeout(&self) -> Duration {
        self.request_timeout
    }
}

/// The delay before reconnect attempt `attempt` (1-based): `reconnect_interval *
/// 1.5^(attempt-1)`, the published clients' schedule, capped at 24 hours. Attempt 0 is
/// treated as 1.
pub fn backoff_delay(config: &SessionConfig, attempt: u32) -> Duration {
    const CAP: Duration = Duration::from_secs(24 * 3600);
    let exp = attempt.saturating_sub(1).min(1000) as i32;
    let secs = config.reconnect_interval.as_secs_f64() * 1.5f64.powi(exp);
    Duration::try_from_secs_f64(secs).map_or(CAP, |d| d.min(CAP))
}
