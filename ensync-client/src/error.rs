//! The one error type of the SDK.

use std::fmt;

/// What kind of failure an [`EnSyncError`] is. The names follow the published
/// EnSync clients' error names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The node could not be reached, or the connection was lost.
    Connection,
    /// The node refused the access key.
    Auth,
    /// A publish was refused.
    Publish,
    /// A subscribe or unsubscribe was refused.
    Subscription,
    /// An acknowledgement was refused.
    Ack,
    /// A defer was refused.
    Defer,
    /// A discard was refused.
    Discard,
    /// A replay was refused.
    Replay,
    /// A pause was refused.
    Pause,
    /// A resume (continue) was refused.
    Continue,
    /// Bad input, rejected before anything was sent (event name, key, payload, URL, option).
    Validation,
    /// A payload could not be decrypted or parsed.
    Decryption,
    /// No answer in time.
    Timeout,
    /// The client was closed.
    Closed,
    /// The node does not implement the call in either RPC generation.
    Unimplemented,
    /// Too many calls are waiting for a reply
    /// ([`EngineOptions::max_in_flight`](crate::EngineOptions::max_in_flight)).
    /// Retryable once some complete.
    Overloaded,
    /// The node (or the transport) answered something that makes no sense for the
    /// request, e.g. a reply of the wrong type.
    Protocol,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ErrorKind::Connection => "connection error",
            ErrorKind::Auth => "authentication error",
            ErrorKind::Publish => "publish error",
            ErrorKind::Subscription => "subscription error",
            ErrorKind::Ack => "acknowledge error",
            ErrorKind::Defer => "defer error",
            ErrorKind::Discard => "discard error",
            ErrorKind::Replay => "replay error",
            ErrorKind::Pause => "pause error",
            ErrorKind::Continue => "continue error",
            ErrorKind::Validation => "validation error",
            ErrorKind::Decryption => "decryption error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Closed => "client closed",
            ErrorKind::Unimplemented => "not implemented by the node",
            ErrorKind::Overloaded => "too many pending calls",
            ErrorKind::Protocol => "protocol error",
        };
        f.write_str(name)
    }
}

/// An error from the EnSync SDK: a [`kind`](EnSyncError::kind), a message (the
/// node's own reason where it gave one) and, where there is one, the underlying
/// cause through [`std::error::Error::source`].
pub struct EnSyncError {
    kind: ErrorKind,
    message: String,
    retryable: bool,
    published_ids: Vec<String>,
    /// The message already names the failure (it came from the core's own error text),
    /// so `Display` shows it without the kind in front.
    self_describing: bool,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl EnSyncError {
    /// A new error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        EnSyncError {
            kind,
            message: message.into(),
            retryable: matches!(kind, ErrorKind::Connection | ErrorKind::Timeout),
            published_ids: Vec::new(),
            self_describing: false,
            source: None,
        }
    }

    /// An error whose message already names the failure (the core's error text).
    #[doc(hidden)]
    pub fn self_describing(kind: ErrorKind, message: impl Into<String>) -> Self {
        EnSyncError {
            self_describing: true,
            ..EnSyncError::new(kind, message)
        }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    #[doc(hidden)]
    pub fn retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    #[doc(hidden)]
    pub fn with_published_ids(mut self, ids: Vec<String>) -> Self {
        self.published_ids = ids;
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether trying the same call again may succeed (a lost connection, a
    /// timeout) as opposed to a final refusal.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// For a publish to several recipients that failed part-way: the event ids of
    /// the recipients that did receive it (empty otherwise).
    pub fn published_ids(&self) -> &[String] {
        &self.published_ids
    }
}

impl fmt::Debug for EnSyncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("EnSyncError");
        d.field("kind", &self.kind).field("message", &self.message);
        if self.retryable {
            d.field("retryable", &true);
        }
        if !self.published_ids.is_empty() {
            d.field("published_ids", &self.published_ids);
        }
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for EnSyncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.self_describing {
            f.write_str(&self.message)
        } else if self.message.is_empty() {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{}: {}", self.kind, self.message)
        }
    }
}

impl std::error::Error for EnSyncError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The SDK's result type.
pub type Result<T, E = EnSyncError> = std::result::Result<T, E>;
