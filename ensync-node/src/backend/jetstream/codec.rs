//! How events map onto JetStream: subjects, consumer names, the stored record and the
//! event ids that carry the stream sequence.
//!
//! - subject of a queue: `<stream>.<recipient key as 64 hex digits>.<escaped name>`:
//!   the event name is one token, every byte but `A-Z a-z 0-9 - _ /` written `%HH`
//!   (so `.`, `*`, `>` and `%` itself never reach the subject);
//! - durable consumer of a queue: `q` + 32 hex digits of SHA-256 of its subject (the
//!   same on every node, valid whatever the name holds);
//! - event id: 16 hex digits of the stream sequence, then a 16-hex-digit tag stored in
//!   the record (32 lowercase hex, the shape of the node's own ids);
//! - record: the store's record format (a version byte, here the tag, the publish time,
//!   then length-prefixed strings).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest as _, Sha256};

use crate::store::{NewEvent, StoredEvent};

/// The subject of queue (`recipient`, `name`) in stream `stream`; `None` when the
/// recipient is not the base64 of a 32-byte key.
pub(crate) fn subject(stream: &str, recipient: &str, name: &str) -> Option<String> {
    let key = STANDARD.decode(recipient).ok()?;
    if key.len() != 32 {
        return None;
    }
    let mut s = String::with_capacity(stream.len() + 66 + name.len() * 3);
    s.push_str(stream);
    s.push('.');
    s.push_str(&hex::encode(key));
    s.push('.');
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/') {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    Some(s)
}

/// The queue (recipient key as standard base64, event name) of a subject made by
/// [`subject`] for `stream`; `None` for any other subject.
pub(crate) fn parse_subject(stream: &str, subject: &str) -> Option<(String, String)> {
    let rest = subject.strip_prefix(stream)?.strip_prefix('.')?;
    let (key, escaped) = rest.split_once('.')?;
    if key.len() != 64 || escaped.contains('.') {
        return None;
    }
    let key = hex::decode(key).ok()?;
    let mut name = Vec::with_capacity(escaped.len());
    let mut bytes = escaped.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = (bytes.next()? as char).to_digit(16)?;
            let lo = (bytes.next()? as char).to_digit(16)?;
            name.push((hi * 16 + lo) as u8);
        } else {
            name.push(b);
        }
    }
    Some((STANDARD.encode(key), String::from_utf8(name).ok()?))
}

/// The durable consumer name of the queue with this subject.
pub(crate) fn consumer_name(subject: &str) -> String {
    let digest = Sha256::digest(subject.as_bytes());
    format!("q{}", hex::encode(&digest[..16]))
}

/// The tag of an event: from its proposed id, so a retried publish (same id, deduplicated
/// by `Nats-Msg-Id`) gets the same full id.
pub(crate) fn tag_of(id: &str) -> u64 {
    let digest = Sha256::digest(id.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

/// The event id of stream sequence `seq` with `tag`.
pub(crate) fn event_id(seq: u64, tag: u64) -> String {
    format!("{seq:016x}{tag:016x}")
}

/// (sequence, tag) of an id made by [`event_id`]; `None` for any other text.
pub(crate) fn parse_id(id: &str) -> Option<(u64, u64)> {
    if id.len() != 32 || !id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let seq = u64::from_str_radix(&id[..16], 16).ok()?;
    let tag = u64::from_str_radix(&id[16..], 16).ok()?;
    (seq > 0).then_some((seq, tag))
}

/// The record stored as the message body: the store's record format
/// ([`crate::store::encode_record`]) with the id's tag as its header.
pub(crate) fn encode(ev: &NewEvent, tag: u64) -> Vec<u8> {
    crate::store::encode_record(ev, tag)
}

/// Decodes a record stored at stream sequence `seq`: the event (its id made from `seq`
/// and the stored tag) at block `seq`, and the tag.
pub(crate) fn decode(seq: u64, bytes: &[u8]) -> Result<(StoredEvent, u64), &'static str> {
    let (tag, mut event) = crate::store::decode_record(String::new(), bytes, true)?;
    event.id = event_id(seq, tag);
    Ok((StoredEvent { event, block: seq }, tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_subjects_are_no_queue() {
        let k = hex::encode([7u8; 32]);
        for s in [
            "OTHER.x.y".to_owned(),
            format!("ENSYNC.{k}"),
            format!("ENSYNC.{k}.a.b"),
            format!("ENSYNC.{}.a", &k[..62]),
            format!("ENSYNC.{k}.a%2"),
            format!("ENSYNC.{k}.a%ZZ"),
            format!("ENSYNC.{k}.%FF"),
            format!("ENSYNCX.{k}.a"),
        ] {
            assert_eq!(parse_subject("ENSYNC", &s), None, "{s}");
        }
    }

    fn key() -> String {
        crate::keys::generate().public_key
    }

    #[test]
    fn subjects_keep_every_name_apart_and_in_one_token() {
        let k = key();
        let names = [
            "a", "a.b", "a*", "a>", ">", "*", "a%2E", "a/b", "a/b.c", "é", "x-y_z", "%", "a.b.c.>",
            "$SYS",
        ];
        let subjects: Vec<String> = names
            .iter()
            .map(|n| subject("ENSYNC", &k, n).unwrap())
            .collect();
        for (n, s) in names.iter().zip(&subjects) {
            assert_eq!(
                parse_subject("ENSYNC", s),
                Some((k.clone(), (*n).to_owned())),
                "{s}"
            );
            let tokens: Vec<&str> = s.split('.').collect();
            assert_eq!(tokens.len(), 3, "{n:?} -> {s}");
            assert_eq!(tokens[0], "ENSYNC");
            assert_eq!(tokens[1].len(), 64);
            assert!(
                !tokens[2].contains(['*', '>', ' ']) && !tokens[2].is_empty(),
                "{n:?} -> {s}"
            );
        }
        let unique: std::collections::HashSet<_> = subjects.iter().collect();
        assert_eq!(unique.len(), names.len(), "{subjects:?}");
        assert_eq!(
            subject("S", &k, "a.b").unwrap().rsplit('.').next(),
            Some("a%2Eb")
        );
        // Keys with '+', '/' and '=' in their base64 are hex in the subject.
        assert!(subject("S", "not base64!", "a").is_none());
        assert!(subject("S", "AAAA", "a").is_none());
        // Consumer names: the same for the same queue, different otherwise, valid.
        let c: Vec<String> = subjects.iter().map(|s| consumer_name(s)).collect();
        assert_eq!(c[0], consumer_name(&subjects[0]));
        assert_eq!(
            c.iter().collect::<std::collections::HashSet<_>>().len(),
            c.len()
        );
        assert!(
            c.iter()
                .all(|n| n.len() == 33 && n.bytes().all(|b| b.is_ascii_alphanumeric()))
        );
    }

    #[test]
    fn ids_carry_the_sequence() {
        let tag = tag_of("0123456789abcdef0123456789abcdef");
        assert_eq!(tag, tag_of("0123456789abcdef0123456789abcdef"));
        let id = event_id(42, tag);
        assert_eq!(id.len(), 32);
        assert!(
            id.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(parse_id(&id), Some((42, tag)));
        assert_eq!(parse_id(&event_id(u64::MAX, 0)), Some((u64::MAX, 0)));
        for bad in [
            "",
            "00000000000000000000000000000000",
            "ABCDEF0000000000000000000000000a",
            "zz",
            &id[..31],
        ] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn records_round_trip_and_damage_is_an_error() {
        let ev = NewEvent {
            id: "x".into(),
            recipient: key(),
            name: "a.b/*".into(),
            sender: key(),
            payload: "cGF5bG9hZA==".into(),
            metadata: "{\"k\":\"v\\n\"}".into(),
            payload_metadata: Some("{\"byte_size\":7}".into()),
            published_ms: 1_700_000_000_123,
        };
        for pm in [ev.payload_metadata.clone(), None] {
            let ev = NewEvent {
                payload_metadata: pm,
                ..ev.clone()
            };
            let bytes = encode(&ev, 7);
            let (stored, tag) = decode(9, &bytes).unwrap();
            assert_eq!(tag, 7);
            assert_eq!(stored.block, 9);
            assert_eq!(
                stored.event,
                NewEvent {
                    id: event_id(9, 7),
                    ..ev.clone()
                }
            );
            for cut in 0..bytes.len() {
                assert!(decode(9, &bytes[..cut]).is_err(), "cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(decode(9, &longer).is_err());
            let mut other = bytes.clone();
            other[0] = 2;
            assert!(decode(9, &other).is_err());
        }
    }
}
