//! Validation shared by every client and the node: event names, defer delays,
//! metadata. Clients reject bad input before anything is sent; the node applies the
//! same rules to what it receives.

use std::time::Duration;

/// The longest accepted event name, in bytes.
pub const MAX_EVENT_NAME_LEN: usize = 256;
/// The shortest accepted defer delay (PROTOCOL.md: 1 s).
pub const MIN_DEFER_DELAY: Duration = Duration::from_millis(1_000);
/// The longest accepted defer delay (PROTOCOL.md: 24 h).
pub const MAX_DEFER_DELAY: Duration = Duration::from_millis(86_400_000);

/// Input rejected before it is sent (client) or stored (node).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// The event name is empty.
    #[error("event name is empty")]
    EmptyEventName,
    /// The event name is longer than [`MAX_EVENT_NAME_LEN`] bytes.
    #[error("event name is {0} bytes long; the limit is {MAX_EVENT_NAME_LEN}")]
    EventNameTooLong(usize),
    /// The event name holds a character that is not allowed (whitespace, control, `;`).
    #[error("event name contains the character {0:?}, which is not allowed")]
    EventNameChar(char),
    /// The event name has an empty segment (`a//b`, a leading or trailing `/`).
    #[error("event name {0:?} has an empty segment")]
    EventNameSegment(String),
    /// A defer delay outside 1 s ..= 24 h.
    #[error("defer delay of {0} ms is outside 1000 ..= 86400000 ms")]
    DeferDelay(i64),
    /// A publish with no recipients.
    #[error("publish needs at least one recipient")]
    NoRecipients,
    /// A payload that is not a JSON object.
    #[error("payload must be a JSON object")]
    PayloadNotObject,
    /// Metadata that is not a JSON object.
    #[error("metadata must be a JSON object")]
    MetadataNotObject,
}

/// Checks an event name: 1 to [`MAX_EVENT_NAME_LEN`] bytes, no whitespace, control
/// characters or `;` (the WebSocket field separator), no empty `/`-separated segment.
/// Hierarchical names such as `company/service/event-type` are the convention.
pub fn event_name(name: &str) -> Result<(), ValidationError> {
    if name.is_empty() {
        return Err(ValidationError::EmptyEventName);
    }
    if name.len() > MAX_EVENT_NAME_LEN {
        return Err(ValidationError::EventNameTooLong(name.len()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == ';')
    {
        return Err(ValidationError::EventNameChar(c));
    }
    if name.split('/').any(str::is_empty) {
        return Err(ValidationError::EventNameSegment(name.to_owned()));
    }
    Ok(())
}

/// The `partition_block` an acknowledgement names, if it names one. 0 means "not given":
/// it is what an absent protobuf field decodes to, and what published clients send when
/// they do not have the block. Any other value must be the event's block (blocks start
/// at 1, so a negative one never matches).
pub fn given_partition_block(block: i64) -> Option<i64> {
    (block != 0).then_some(block)
}

/// Checks a defer delay in milliseconds (1000 ..= 86 400 000).
pub fn defer_delay_ms(ms: i64) -> Result<(), ValidationError> {
    let min = MIN_DEFER_DELAY.as_millis() as i64;
    let max = MAX_DEFER_DELAY.as_millis() as i64;
    if (min..=max).contains(&ms) {
        Ok(())
    } else {
        Err(ValidationError::DeferDelay(ms))
    }
}

/// Checks a defer delay given as a [`Duration`] and returns it in milliseconds.
pub fn defer_delay(delay: Duration) -> Result<i64, ValidationError> {
    let ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    defer_delay_ms(ms).map(|()| ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_hierarchical_names() {
        assert_eq!(event_name("orders/status/updated"), Ok(()));
        assert_eq!(event_name("ping"), Ok(()));
        assert_eq!(event_name("a-b_c.d:e/*"), Ok(()));
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(event_name(""), Err(ValidationError::EmptyEventName));
        assert_eq!(event_name("a b"), Err(ValidationError::EventNameChar(' ')));
        assert_eq!(event_name("a;b"), Err(ValidationError::EventNameChar(';')));
        assert_eq!(
            event_name("a\nb"),
            Err(ValidationError::EventNameChar('\n'))
        );
        assert!(matches!(
            event_name("/a"),
            Err(ValidationError::EventNameSegment(_))
        ));
        assert!(matches!(
            event_name("a//b"),
            Err(ValidationError::EventNameSegment(_))
        ));
        assert!(matches!(
            event_name("a/"),
            Err(ValidationError::EventNameSegment(_))
        ));
        let long = "x".repeat(MAX_EVENT_NAME_LEN + 1);
        assert_eq!(
            event_name(&long),
            Err(ValidationError::EventNameTooLong(257))
        );
        assert_eq!(event_name(&long[1..]), Ok(()));
    }

    #[test]
    fn defer_delay_bounds() {
        assert_eq!(defer_delay_ms(999), Err(ValidationError::DeferDelay(999)));
        assert_eq!(defer_delay_ms(1000), Ok(()));
        assert_eq!(defer_delay_ms(86_400_000), Ok(()));
        assert_eq!(
            defer_delay_ms(86_400_001),
            Err(ValidationError::DeferDelay(86_400_001))
        );
        assert_eq!(defer_delay_ms(-5), Err(ValidationError::DeferDelay(-5)));
        assert_eq!(defer_delay(Duration::from_secs(5)), Ok(5000));
        assert!(defer_delay(Duration::from_secs(u64::MAX)).is_err());
    }
}
