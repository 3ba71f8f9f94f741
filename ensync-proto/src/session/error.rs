//! Errors of session operations.

use crate::keys::KeyError;
use crate::validate::ValidationError;

/// Why an operation of the [`Session`](super::Session) failed, or why it closed.
///
/// The kinds match the error names of the published clients (`EnSyncConnectionError`,
/// `EnSyncAuthError`, `EnSyncPublishError`, ...). [`SessionError::is_retryable`] tells
/// a failure worth retrying (the connection was lost, a deadline passed) from a final one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The connection could not be opened or was lost. Retryable.
    ///
    /// For a publish whose request was in flight, the node may have applied it: the
    /// session never re-sends it by itself. `published` holds the event ids of the
    /// recipients whose publish had already succeeded (multi-recipient publish).
    #[error("connection error: {message}")]
    Connection {
        /// What happened.
        message: String,
        /// Event ids of a multi-recipient publish that did succeed (else empty).
        published: Vec<String>,
    },
    /// The node refused the access key (its reason).
    #[error("authentication failed: {message}")]
    Auth {
        /// The node's reason.
        message: String,
    },
    /// The node refused a publish.
    #[error("publish failed: {message}")]
    Publish {
        /// The node's `error_message`.
        message: String,
        /// Event ids of the recipients whose publish did succeed, in recipient order.
        published: Vec<String>,
    },
    /// A subscribe or unsubscribe failed.
    #[error("subscription error: {message}")]
    Subscription {
        /// The node's message, or why the session refused.
        message: String,
    },
    /// The node refused an acknowledgement.
    #[error("acknowledge failed: {message}")]
    Ack {
        /// The node's message.
        message: String,
    },
    /// The node refused a defer.
    #[error("defer failed: {message}")]
    Defer {
        /// The node's message.
        message: String,
    },
    /// The node refused a discard.
    #[error("discard failed: {message}")]
    Discard {
        /// The node's message.
        message: String,
    },
    /// The node refused a replay.
    #[error("replay failed: {message}")]
    Replay {
        /// The node's message.
        message: String,
    },
    /// The node refused to pause.
    #[error("pause failed: {message}")]
    Pause {
        /// The node's message.
        message: String,
    },
    /// The node refused to resume (continue).
    #[error("continue failed: {message}")]
    Continue {
        /// The node's message.
        message: String,
    },
    /// The input was rejected before anything was sent.
    #[error("invalid input: {0}")]
    Validation(#[from] InvalidInput),
    /// A payload could not be decrypted or parsed.
    #[error("decryption failed: {message}")]
    Decryption {
        /// What went wrong.
        message: String,
    },
    /// The operation did not complete within the request timeout. Retryable.
    #[error("operation timed out")]
    Timeout {
        /// Event ids of a multi-recipient publish that did succeed (else empty).
        published: Vec<String>,
    },
    /// The session is closed (by [`Session::close`](super::Session::close)).
    #[error("session is closed")]
    Closed,
    /// The node does not implement the RPC (and the generation is pinned, or both
    /// generations were tried).
    #[error("the node does not implement {rpc}")]
    Unimplemented {
        /// The RPC name that was refused.
        rpc: &'static str,
    },
    /// Too many operations are pending ([`SessionConfig::max_in_flight`](super::SessionConfig::max_in_flight)).
    /// Retryable once some complete.
    #[error("too many pending operations (limit {limit})")]
    Overloaded {
        /// The configured limit.
        limit: usize,
    },
    /// The node or the adapter answered something that makes no sense for the request
    /// (e.g. a reply of the wrong type).
    #[error("protocol error: {message}")]
    Protocol {
        /// What was wrong.
        message: String,
    },
}

impl SessionError {
    /// Whether retrying the operation may succeed: connection loss, timeouts and
    /// back-pressure are retryable; refusals by the node and invalid input are not.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SessionError::Connection { .. }
                | SessionError::Timeout { .. }
                | SessionError::Overloaded { .. }
        )
    }

    /// For a failed multi-recipient publish: the event ids of the recipients whose
    /// publish did succeed, in recipient order (empty for every other error).
    pub fn published_ids(&self) -> &[String] {
        match self {
            SessionError::Connection { published, .. }
            | SessionError::Publish { published, .. }
            | SessionError::Timeout { published } => published,
            _ => &[],
        }
    }

    pub(crate) fn connection(message: impl Into<String>) -> Self {
        SessionError::Connection {
            message: message.into(),
            published: Vec::new(),
        }
    }
}

/// Input the session rejected before sending anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidInput {
    /// A rule of [`crate::validate`] (event name, defer delay, recipients, payload shape).
    #[error(transparent)]
    Rule(#[from] ValidationError),
    /// A recipient is not a valid public key.
    #[error("recipient {index} is not a valid public key: {source}")]
    RecipientKey {
        /// Position of the recipient in the list given to `publish`.
        index: usize,
        /// Why it could not be parsed.
        #[source]
        source: KeyError,
    },
    /// An event id (`idem`) is empty.
    #[error("event id (idem) is empty")]
    EmptyIdem,
    /// A payload could not be serialized.
    #[error("payload could not be serialized: {0}")]
    Payload(String),
}

impl From<ValidationError> for SessionError {
    fn from(e: ValidationError) -> Self {
        SessionError::Validation(InvalidInput::Rule(e))
    }
}
