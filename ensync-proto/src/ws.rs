//! The WebSocket text protocol (PROTOCOL.md section 3), both directions.
//!
//! Client requests ([`WsRequest`]) are text frames `VERB;KEY=:value;KEY=:value…` with the
//! fields of each verb in a fixed order. The node answers each request, first in first
//! out, with `+PASS:<text>`, `+REPLAY:<json>` or `-FAIL:<reason>`, pushes events as
//! `+RECORD:<json>` and may send `PING`, which the client answers with `PONG`
//! ([`WsServerFrame`]).
//!
//! # Field splitting
//!
//! The format has no escaping, so a value may only hold `;` where that cannot be mistaken
//! for the start of the next field. The rules, identical for [`WsRequest::parse`] and
//! [`WsRequest::try_encode`]:
//!
//! - fields are found by name, in any order; unknown field names are skipped;
//! - the value of the **last outstanding** field of a verb (the last one in the table
//!   when the fields come in order, e.g. `METADATA` of `PUB` or `REASON` of `DEFER`) is
//!   the rest of the frame, whatever it contains (JSON with `;` in it is fine);
//! - except that `PUB`'s `METADATA` ends where its JSON value ends when that is followed
//!   by `;PAYLOAD_METADATA=:` (the optional trailing field the Go SDK sends): the JSON
//!   is read with a JSON parser, so `;` or even `PAYLOAD_METADATA=:` inside its strings
//!   stay in it; `PAYLOAD_METADATA` is then the rest of the frame;
//! - any other value ends at the next `;KEY=:` whose `KEY` is a field name of that verb.
//!
//! So a value other than the verb's last field must not contain `;KEY=:` for a field name
//! `KEY` of the same verb. [`WsRequest::try_encode`] rejects such a request with
//! [`WsError::Unencodable`] rather than sending a frame that would be read differently;
//! [`WsRequest::encode`] never fails and writes the frame the way the published clients
//! do (plain concatenation), which parses back to the same request whenever `try_encode`
//! succeeds. [`WsRequest::parse`] only returns requests that re-encode unambiguously (a
//! reordered frame whose values could not be written back in table order is rejected as
//! [`WsError::Ambiguous`]), so `parse(encode(parse(x)?)) == parse(x)` always holds.

use std::fmt;

use serde_json::{Map, Value};

use crate::wire::EventStreamResponse;

/// A WebSocket frame that could not be read (or a request that cannot be written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WsError {
    /// An empty frame.
    #[error("empty frame")]
    Empty,
    /// A request verb this codec does not know.
    #[error("unknown request verb {0:?}")]
    UnknownVerb(String),
    /// A server frame that is none of `+PASS`, `+REPLAY`, `-FAIL`, `+RECORD`, `PING`.
    #[error("unknown server frame starting {0:?}")]
    UnknownFrame(String),
    /// A required field is absent.
    #[error("{verb} request without its {field} field")]
    MissingField {
        /// The request verb.
        verb: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// A field given twice.
    #[error("{verb} request has the {field} field twice")]
    DuplicateField {
        /// The request verb.
        verb: &'static str,
        /// The repeated field.
        field: &'static str,
    },
    /// The frame does not have the `VERB;KEY=:value…` shape.
    #[error("malformed {verb} request: {reason}")]
    Malformed {
        /// The request verb.
        verb: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A numeric field that is not an integer.
    #[error("{field} is not an integer: {value:?}")]
    BadNumber {
        /// The field (`BLOCK`, `DELAY`, `block`).
        field: &'static str,
        /// The start of the offending value.
        value: String,
    },
    /// A request whose values could not be written back in table order unambiguously.
    #[error("ambiguous {verb} request: the {field} value holds the start of another field")]
    Ambiguous {
        /// The request verb.
        verb: &'static str,
        /// The field whose value holds `;KEY=:`.
        field: &'static str,
    },
    /// A request value that would be read as the start of another field.
    #[error("cannot encode {verb} request: the {field} value contains `;KEY=:` of a field")]
    Unencodable {
        /// The request verb.
        verb: &'static str,
        /// The offending field.
        field: &'static str,
    },
    /// JSON that does not parse.
    #[error("invalid JSON in {frame} frame: {reason}")]
    BadJson {
        /// The frame kind (`+RECORD`, `+REPLAY`, `+PASS`).
        frame: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// A record whose JSON has the wrong shape.
    #[error("invalid record: {0}")]
    BadRecord(&'static str),
    /// A `+PASS` answer to `CONN` without the client id or hash.
    #[error("CONN answer without {0}")]
    BadConnPass(&'static str),
}

/// A request from a client to the node.
///
/// Field names follow the wire (generation-1 names). `Debug` hides the access key.
#[derive(Clone, PartialEq, Eq)]
pub enum WsRequest {
    /// `CONN;ACCESS_KEY=:…`: authenticate; answered by `+PASS:{clientId=…,clientHash=…}`.
    Conn {
        /// The app's access key (a secret).
        access_key: String,
    },
    /// `PUB;CLIENT_ID;EVENT_NAME;PAYLOAD;DELIVERY_TO;METADATA[;PAYLOAD_METADATA]`: publish
    /// to one recipient.
    Pub {
        /// Session id from `CONN`.
        client_id: String,
        /// Event name.
        event_name: String,
        /// Base64 payload envelope.
        payload: String,
        /// Recipient public key (base64).
        delivery_to: String,
        /// Metadata JSON text, as sent (not validated by the codec).
        metadata: String,
        /// The optional trailing `PAYLOAD_METADATA` JSON text (the Go SDK sends it; the
        /// published Node.js and Python WebSocket clients do not). When present,
        /// `metadata` must be one JSON value for the frame to be encodable.
        payload_metadata: Option<String>,
    },
    /// `SUB;CLIENT_ID;EVENT_NAME`.
    Sub {
        /// Session id.
        client_id: String,
        /// Event name.
        event_name: String,
    },
    /// `UNSUB;CLIENT_ID;EVENT_NAME`.
    Unsub {
        /// Session id.
        client_id: String,
        /// Event name.
        event_name: String,
    },
    /// `ACK;CLIENT_ID;EVENT_IDEM;BLOCK;EVENT_NAME`.
    Ack {
        /// Session id.
        client_id: String,
        /// Event id.
        event_idem: String,
        /// Partition block of the event.
        block: i64,
        /// Event name.
        event_name: String,
    },
    /// `ROLLBACK;CLIENT_ID;EVENT_IDEM;BLOCK`.
    Rollback {
        /// Session id.
        client_id: String,
        /// Event id.
        event_idem: String,
        /// Partition block of the event.
        block: i64,
    },
    /// `DEFER;CLIENT_ID;EVENT_IDEM;EVENT_NAME;DELAY;REASON`.
    Defer {
        /// Session id.
        client_id: String,
        /// Event id.
        event_idem: String,
        /// Event name.
        event_name: String,
        /// Delay before redelivery, in milliseconds.
        delay_ms: i64,
        /// Free text.
        reason: String,
    },
    /// `DISCARD;CLIENT_ID;EVENT_IDEM;EVENT_NAME;REASON`.
    Discard {
        /// Session id.
        client_id: String,
        /// Event id.
        event_idem: String,
        /// Event name.
        event_name: String,
        /// Free text.
        reason: String,
    },
    /// `PAUSE;CLIENT_ID;EVENT_NAME;REASON`.
    Pause {
        /// Session id.
        client_id: String,
        /// Event name.
        event_name: String,
        /// Free text.
        reason: String,
    },
    /// `CONTINUE;CLIENT_ID;EVENT_NAME`.
    Continue {
        /// Session id.
        client_id: String,
        /// Event name.
        event_name: String,
    },
    /// `REPLAY;CLIENT_ID;EVENT_IDEM;EVENT_NAME`: answered by `+REPLAY:<record json>`.
    Replay {
        /// Session id.
        client_id: String,
        /// Event id.
        event_idem: String,
        /// Event name.
        event_name: String,
    },
    /// `PONG`: the answer to the node's `PING`.
    Pong,
}

impl fmt::Debug for WsRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Self::Conn { .. } = self {
            return f
                .debug_struct("Conn")
                .field("access_key", &"<redacted>")
                .finish();
        }
        let (verb, values) = self.fields();
        let mut s = f.debug_struct(verb);
        for (key, value) in spec(verb).iter().zip(&values) {
            s.field(key, value);
        }
        s.finish()
    }
}

const K_ACCESS_KEY: &str = "ACCESS_KEY";
const K_CLIENT_ID: &str = "CLIENT_ID";
const K_EVENT_NAME: &str = "EVENT_NAME";
const K_PAYLOAD: &str = "PAYLOAD";
const K_DELIVERY_TO: &str = "DELIVERY_TO";
const K_METADATA: &str = "METADATA";
const K_PAYLOAD_METADATA: &str = "PAYLOAD_METADATA";
/// What follows `PUB`'s METADATA JSON when the optional field is there.
const PAYLOAD_METADATA_DELIMITER: &str = ";PAYLOAD_METADATA=:";
const K_EVENT_IDEM: &str = "EVENT_IDEM";
const K_BLOCK: &str = "BLOCK";
const K_DELAY: &str = "DELAY";
const K_REASON: &str = "REASON";

/// The verbs with fields, and their fields in wire order.
const VERBS: &[(&str, &[&str])] = &[
    ("CONN", &[K_ACCESS_KEY]),
    (
        "PUB",
        &[
            K_CLIENT_ID,
            K_EVENT_NAME,
            K_PAYLOAD,
            K_DELIVERY_TO,
            K_METADATA,
            K_PAYLOAD_METADATA,
        ],
    ),
    ("SUB", &[K_CLIENT_ID, K_EVENT_NAME]),
    ("UNSUB", &[K_CLIENT_ID, K_EVENT_NAME]),
    ("ACK", &[K_CLIENT_ID, K_EVENT_IDEM, K_BLOCK, K_EVENT_NAME]),
    ("ROLLBACK", &[K_CLIENT_ID, K_EVENT_IDEM, K_BLOCK]),
    (
        "DEFER",
        &[K_CLIENT_ID, K_EVENT_IDEM, K_EVENT_NAME, K_DELAY, K_REASON],
    ),
    (
        "DISCARD",
        &[K_CLIENT_ID, K_EVENT_IDEM, K_EVENT_NAME, K_REASON],
    ),
    ("PAUSE", &[K_CLIENT_ID, K_EVENT_NAME, K_REASON]),
    ("CONTINUE", &[K_CLIENT_ID, K_EVENT_NAME]),
    ("REPLAY", &[K_CLIENT_ID, K_EVENT_IDEM, K_EVENT_NAME]),
    ("PONG", &[]),
];

fn spec(verb: &str) -> &'static [&'static str] {
    VERBS
        .iter()
        .find(|(v, _)| *v == verb)
        .map_or(&[], |(_, keys)| keys)
}

fn lookup_verb(verb: &str) -> Option<(&'static str, &'static [&'static str])> {
    VERBS.iter().find(|(v, _)| *v == verb).copied()
}

/// Fields a request may leave out (only the trailing `PAYLOAD_METADATA` of `PUB`).
fn is_optional(key: &str) -> bool {
    key == K_PAYLOAD_METADATA
}

/// Where the JSON value at the start of `s` (after optional whitespace) ends, if `s`
/// starts with a complete JSON value.
fn json_value_end(s: &str) -> Option<usize> {
    let mut values = serde_json::Deserializer::from_str(s).into_iter::<serde::de::IgnoredAny>();
    match values.next() {
        Some(Ok(_)) => Some(values.byte_offset()),
        _ => None,
    }
}

/// Where `PUB`'s METADATA value ends in `s` when a JSON value followed by
/// `;PAYLOAD_METADATA=:` starts it.
fn metadata_end(s: &str) -> Option<usize> {
    json_value_end(s).filter(|&end| s[end..].starts_with(PAYLOAD_METADATA_DELIMITER))
}

/// Where the next `;KEY=:` with `KEY` one of `keys` starts in `s`.
fn find_delimiter(s: &str, keys: &[&str]) -> Option<usize> {
    s.match_indices(';').map(|(i, _)| i).find(|&i| {
        let after = &s[i + 1..];
        keys.iter()
            .any(|k| after.strip_prefix(k).is_some_and(|r| r.starts_with("=:")))
    })
}

/// An unknown verb for an error message: echoed only when it looks like a verb, so a
/// stray secret (e.g. an access key sent alone) never lands in a log.
fn verb_for_error(verb: &str) -> String {
    if verb.len() <= 12 && verb.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        verb.to_owned()
    } else {
        format!("<{} bytes>", verb.len())
    }
}

/// A short, printable start of untrusted text, for error messages.
fn snippet(s: &str) -> String {
    const MAX: usize = 24;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

fn parse_int(field: &'static str, value: &str) -> Result<i64, WsError> {
    value.trim().parse::<i64>().map_err(|_| WsError::BadNumber {
        field,
        value: snippet(value),
    })
}

impl WsRequest {
    /// The verb (`CONN`, `PUB`, …, `PONG`).
    #[must_use]
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Conn { .. } => "CONN",
            Self::Pub { .. } => "PUB",
            Self::Sub { .. } => "SUB",
            Self::Unsub { .. } => "UNSUB",
            Self::Ack { .. } => "ACK",
            Self::Rollback { .. } => "ROLLBACK",
            Self::Defer { .. } => "DEFER",
            Self::Discard { .. } => "DISCARD",
            Self::Pause { .. } => "PAUSE",
            Self::Continue { .. } => "CONTINUE",
            Self::Replay { .. } => "REPLAY",
            Self::Pong => "PONG",
        }
    }

    /// The verb and the field values in wire order.
    fn fields(&self) -> (&'static str, Vec<String>) {
        let values = match self {
            Self::Conn { access_key } => vec![access_key.clone()],
            Self::Pub {
                client_id,
                event_name,
                payload,
                delivery_to,
                metadata,
                payload_metadata,
            } => {
                let mut values = vec![
                    client_id.clone(),
                    event_name.clone(),
                    payload.clone(),
                    delivery_to.clone(),
                    metadata.clone(),
                ];
                values.extend(payload_metadata.clone());
                values
            }
            Self::Sub {
                client_id,
                event_name,
            }
            | Self::Unsub {
                client_id,
                event_name,
            }
            | Self::Continue {
                client_id,
                event_name,
            } => {
                vec![client_id.clone(), event_name.clone()]
            }
            Self::Ack {
                client_id,
                event_idem,
                block,
                event_name,
            } => vec![
                client_id.clone(),
                event_idem.clone(),
                block.to_string(),
                event_name.clone(),
            ],
            Self::Rollback {
                client_id,
                event_idem,
                block,
            } => {
                vec![client_id.clone(), event_idem.clone(), block.to_string()]
            }
            Self::Defer {
                client_id,
                event_idem,
                event_name,
                delay_ms,
                reason,
            } => vec![
                client_id.clone(),
                event_idem.clone(),
                event_name.clone(),
                delay_ms.to_string(),
                reason.clone(),
            ],
            Self::Discard {
                client_id,
                event_idem,
                event_name,
                reason,
            } => vec![
                client_id.clone(),
                event_idem.clone(),
                event_name.clone(),
                reason.clone(),
            ],
            Self::Pause {
                client_id,
                event_name,
                reason,
            } => {
                vec![client_id.clone(), event_name.clone(), reason.clone()]
            }
            Self::Replay {
                client_id,
                event_idem,
                event_name,
            } => {
                vec![client_id.clone(), event_idem.clone(), event_name.clone()]
            }
            Self::Pong => Vec::new(),
        };
        (self.verb(), values)
    }

    /// The first field (in wire order) whose value would be read as the start of
    /// another field, if any.
    fn unencodable_field(verb: &'static str, values: &[String]) -> Option<&'static str> {
        let keys = spec(verb);
        let last = values.len().saturating_sub(1);
        keys.iter()
            .zip(values)
            .enumerate()
            .find(|&(i, (key, v))| {
                if *key == K_METADATA {
                    // Followed by PAYLOAD_METADATA it must be exactly one JSON value; as
                    // the last field it must not look like one followed by that field.
                    // (Checked exactly as `parse` will read it: a JSON value that ends
                    // where the value does only when the delimiter follows, e.g. a
                    // number, which serde_json reads to the end of its digits.)
                    return if i < last {
                        metadata_end(&format!("{v}{PAYLOAD_METADATA_DELIMITER}")) != Some(v.len())
                    } else {
                        metadata_end(v).is_some()
                    };
                }
                i < last && find_delimiter(v, keys).is_some()
            })
            .map(|(_, (k, _))| *k)
    }

    /// The text frame, written as the published clients write it. Never fails; when a
    /// value other than the last holds `;KEY=:` of a field of the verb, the frame will be
    /// read differently: use [`try_encode`](Self::try_encode) for untrusted values.
    #[must_use]
    pub fn encode(&self) -> String {
        let (verb, values) = self.fields();
        let mut out =
            String::with_capacity(verb.len() + values.iter().map(|v| v.len() + 16).sum::<usize>());
        out.push_str(verb);
        for (key, value) in spec(verb).iter().zip(&values) {
            out.push(';');
            out.push_str(key);
            out.push_str("=:");
            out.push_str(value);
        }
        out
    }

    /// The text frame, or [`WsError::Unencodable`] when a value other than the verb's
    /// last field contains `;KEY=:` for a field `KEY` of the verb (see the module docs).
    pub fn try_encode(&self) -> Result<String, WsError> {
        let (verb, values) = self.fields();
        match Self::unencodable_field(verb, &values) {
            Some(field) => Err(WsError::Unencodable { verb, field }),
            None => Ok(self.encode()),
        }
    }

    /// Reads a request frame (the node side), leniently: fields by name in any order,
    /// unknown fields skipped, the last outstanding field taken to the end of the frame.
    pub fn parse(frame: &str) -> Result<WsRequest, WsError> {
        if frame.is_empty() {
            return Err(WsError::Empty);
        }
        if frame.trim() == "PONG" {
            return Ok(Self::Pong);
        }
        let (verb, rest) = match frame.find(';') {
            Some(i) => frame.split_at(i),
            None => (frame, ""),
        };
        let Some((verb, keys)) = lookup_verb(verb) else {
            return Err(WsError::UnknownVerb(verb_for_error(verb)));
        };
        if keys.is_empty() {
            return Err(WsError::Malformed {
                verb,
                reason: "this verb takes no fields",
            });
        }
        let values = split_fields(verb, keys, rest)?;
        let mut it = keys.iter().zip(values);
        let mut next = || -> Result<String, WsError> {
            match it.next() {
                Some((_, Some(v))) => Ok(v.to_owned()),
                Some((field, None)) => Err(WsError::MissingField { verb, field }),
                // `keys` and `values` have the same length and each arm below takes
                // exactly as many values as its verb has keys.
                None => Err(WsError::Malformed {
                    verb,
                    reason: "field table mismatch",
                }),
            }
        };
        let request = match verb {
            "CONN" => Self::Conn {
                access_key: next()?,
            },
            "PUB" => Self::Pub {
                client_id: next()?,
                event_name: next()?,
                payload: next()?,
                delivery_to: next()?,
                metadata: next()?,
                payload_metadata: match it.next() {
                    Some((_, value)) => value.map(str::to_owned),
                    None => None,
                },
            },
            "SUB" => Self::Sub {
                client_id: next()?,
                event_name: next()?,
            },
            "UNSUB" => Self::Unsub {
                client_id: next()?,
                event_name: next()?,
            },
            "ACK" => Self::Ack {
                client_id: next()?,
                event_idem: next()?,
                block: parse_int(K_BLOCK, &next()?)?,
                event_name: next()?,
            },
            "ROLLBACK" => Self::Rollback {
                client_id: next()?,
                event_idem: next()?,
                block: parse_int(K_BLOCK, &next()?)?,
            },
            "DEFER" => Self::Defer {
                client_id: next()?,
                event_idem: next()?,
                event_name: next()?,
                delay_ms: parse_int(K_DELAY, &next()?)?,
                reason: next()?,
            },
            "DISCARD" => Self::Discard {
                client_id: next()?,
                event_idem: next()?,
                event_name: next()?,
                reason: next()?,
            },
            "PAUSE" => Self::Pause {
                client_id: next()?,
                event_name: next()?,
                reason: next()?,
            },
            "CONTINUE" => Self::Continue {
                client_id: next()?,
                event_name: next()?,
            },
            "REPLAY" => Self::Replay {
                client_id: next()?,
                event_idem: next()?,
                event_name: next()?,
            },
            _ => return Err(WsError::UnknownVerb(verb_for_error(verb))),
        };
        let (verb, values) = request.fields();
        if let Some(field) = Self::unencodable_field(verb, &values) {
            return Err(WsError::Ambiguous { verb, field });
        }
        Ok(request)
    }
}

/// Splits `;KEY=:value…` (everything after the verb) into the values of `keys`.
fn split_fields<'a>(
    verb: &'static str,
    keys: &'static [&'static str],
    mut rest: &'a str,
) -> Result<Vec<Option<&'a str>>, WsError> {
    let mut values: Vec<Option<&'a str>> = vec![None; keys.len()];
    while !rest.is_empty() {
        let Some(body) = rest.strip_prefix(';') else {
            return Err(WsError::Malformed {
                verb,
                reason: "expected `;` before a field",
            });
        };
        let Some(eq) = body.find("=:") else {
            return Err(WsError::Malformed {
                verb,
                reason: "field without `=:`",
            });
        };
        let key = &body[..eq];
        if !key
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(WsError::Malformed {
                verb,
                reason: "field name is not `UPPER_CASE`",
            });
        }
        let after = &body[eq + 2..];
        let index = keys.iter().position(|k| *k == key);
        if let Some(i) = index {
            if values[i].is_some() {
                return Err(WsError::DuplicateField {
                    verb,
                    field: keys[i],
                });
            }
        }
        // Required fields still missing (this one included).
        let outstanding = keys
            .iter()
            .zip(&values)
            .filter(|(k, v)| v.is_none() && !is_optional(k))
            .count();
        let last_required = index.is_some_and(|i| !is_optional(keys[i])) && outstanding == 1;
        let all_required_done = outstanding == 0;
        let metadata_split = if key == K_METADATA {
            metadata_end(after)
        } else {
            None
        };
        let (value, next) = if let Some(end) = metadata_split {
            after.split_at(end)
        } else if last_required || (index.is_some() && all_required_done) {
            (after, "")
        } else {
            match find_delimiter(after, keys) {
                Some(p) => after.split_at(p),
                None => (after, ""),
            }
        };
        if let Some(i) = index {
            values[i] = Some(value);
        }
        rest = next;
    }
    Ok(values)
}

/// A frame from the node to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsServerFrame {
    /// `+PASS:<text>`: the request at the head of the queue succeeded.
    Pass(String),
    /// `+REPLAY:<json>`: the answer to `REPLAY`, a record (see [`WsRecord::from_value`]).
    Replay(Value),
    /// `-FAIL:<reason>`: the request at the head of the queue failed.
    Fail(String),
    /// `+RECORD:<json>`: a delivered event.
    Record(WsRecord),
    /// `PING`: answer with [`WsRequest::Pong`].
    Ping,
}

const P_PASS: &str = "+PASS";
const P_REPLAY: &str = "+REPLAY:";
const P_FAIL: &str = "-FAIL";
const P_RECORD: &str = "+RECORD:";

impl WsServerFrame {
    /// The `+PASS` answer to `CONN`: `+PASS:{clientId=<id>,clientHash=<key>}`.
    #[must_use]
    pub fn conn_pass(client_id: &str, client_hash: &str) -> Self {
        Self::Pass(format!("{{clientId={client_id},clientHash={client_hash}}}"))
    }

    /// The text frame.
    #[must_use]
    pub fn encode(&self) -> String {
        match self {
            Self::Pass(text) => format!("{P_PASS}:{text}"),
            Self::Replay(value) => format!("{P_REPLAY}{value}"),
            Self::Fail(reason) => format!("{P_FAIL}:{reason}"),
            Self::Record(record) => format!("{P_RECORD}{}", record.to_json()),
            Self::Ping => "PING".to_owned(),
        }
    }

    /// Reads a frame from the node. `+PASS` and `-FAIL` are also accepted without a
    /// colon and text; records are read leniently (see [`WsRecord::from_value`]).
    pub fn parse(frame: &str) -> Result<WsServerFrame, WsError> {
        if frame.is_empty() {
            return Err(WsError::Empty);
        }
        if frame.trim() == "PING" {
            return Ok(Self::Ping);
        }
        if let Some(json) = frame.strip_prefix(P_RECORD) {
            return WsRecord::from_json(json).map(Self::Record);
        }
        if let Some(json) = frame.strip_prefix(P_REPLAY) {
            return serde_json::from_str(json)
                .map(Self::Replay)
                .map_err(|e| WsError::BadJson {
                    frame: "+REPLAY",
                    reason: e.to_string(),
                });
        }
        if let Some(rest) = frame.strip_prefix(P_PASS) {
            if rest.is_empty() {
                return Ok(Self::Pass(String::new()));
            }
            if let Some(text) = rest.strip_prefix(':') {
                return Ok(Self::Pass(text.to_owned()));
            }
        }
        if let Some(rest) = frame.strip_prefix(P_FAIL) {
            if rest.is_empty() {
                return Ok(Self::Fail(String::new()));
            }
            if let Some(reason) = rest.strip_prefix(':') {
                return Ok(Self::Fail(reason.to_owned()));
            }
        }
        Err(WsError::UnknownFrame(snippet(frame)))
    }
}

/// Reads the answer to `CONN`: `{clientId=<id>,clientHash=<key>}` (the text of the
/// `+PASS`, with or without the `+PASS:` prefix). Also accepts a JSON object with the
/// same keys. The client id must be non-empty; the hash must be present.
pub fn parse_conn_pass(text: &str) -> Result<(String, String), WsError> {
    let text = text.strip_prefix("+PASS:").unwrap_or(text).trim();
    let mut client_id = None;
    let mut client_hash = None;
    if text.starts_with("{\"") {
        let object: Map<String, Value> =
            serde_json::from_str(text).map_err(|e| WsError::BadJson {
                frame: "+PASS",
                reason: e.to_string(),
            })?;
        client_id = object
            .get("clientId")
            .and_then(Value::as_str)
            .map(str::to_owned);
        client_hash = object
            .get("clientHash")
            .and_then(Value::as_str)
            .map(str::to_owned);
    } else {
        let inner = text
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .unwrap_or(text);
        for item in inner.split(',') {
            if let Some((key, value)) = item.split_once('=') {
                match key.trim() {
                    "clientId" => client_id = Some(value.trim().to_owned()),
                    "clientHash" => client_hash = Some(value.trim().to_owned()),
                    _ => {}
                }
            }
        }
    }
    let client_id = client_id
        .filter(|id| !id.is_empty())
        .ok_or(WsError::BadConnPass("clientId"))?;
    let client_hash = client_hash.ok_or(WsError::BadConnPass("clientHash"))?;
    Ok((client_id, client_hash))
}

/// An event delivered over WebSocket (`+RECORD:` or the answer to `REPLAY`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WsRecord {
    /// Event name (`name`).
    pub name: String,
    /// Event id (`idem`; older nodes: `id`). Empty when absent.
    pub idem: String,
    /// Partition block (`block`, a number or a numeric string). 0 when absent.
    pub block: i64,
    /// `loggedAt` in epoch milliseconds, when given as a number or numeric string.
    pub logged_at: Option<i64>,
    /// The base64 payload envelope (`payload`). Empty when absent.
    pub payload: String,
    /// `metadata` as compact JSON text (`{}` when absent). Given as an object it is
    /// serialized; given as a JSON string its content is used (re-serialized if it is
    /// JSON itself, kept verbatim otherwise).
    pub metadata: String,
    /// The publisher's public key (`sender`). Empty when absent.
    pub sender: String,
}

fn opt_string(object: &Map<String, Value>, key: &str) -> Result<Option<String>, WsError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(WsError::BadRecord(match key {
            "name" => "`name` is not a string",
            "idem" | "id" => "`idem` is not a string",
            "payload" => "`payload` is not a string",
            _ => "`sender` is not a string",
        })),
    }
}

fn json_int(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= i64::MIN as f64 && *f < i64::MAX as f64)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl WsRecord {
    /// Reads a record from its JSON text.
    pub fn from_json(text: &str) -> Result<Self, WsError> {
        let value: Value = serde_json::from_str(text).map_err(|e| WsError::BadJson {
            frame: "+RECORD",
            reason: e.to_string(),
        })?;
        Self::from_value(&value)
    }

    /// Reads a record from a JSON value, leniently: `idem` or `id`; `block` as a number
    /// or numeric string; `metadata` as an object or a JSON string; absent fields
    /// default to empty. `name` is required (events are routed by it).
    pub fn from_value(value: &Value) -> Result<Self, WsError> {
        let Value::Object(object) = value else {
            return Err(WsError::BadRecord("not a JSON object"));
        };
        let name = opt_string(object, "name")?.ok_or(WsError::BadRecord("no `name`"))?;
        let idem = match opt_string(object, "idem")? {
            Some(idem) => idem,
            None => opt_string(object, "id")?.unwrap_or_default(),
        };
        let block = match object.get("block") {
            None | Some(Value::Null) => 0,
            Some(v) => json_int(v).ok_or_else(|| WsError::BadNumber {
                field: "block",
                value: snippet(&v.to_string()),
            })?,
        };
        let logged_at = object.get("loggedAt").and_then(json_int);
        let metadata = match object.get("metadata") {
            None | Some(Value::Null) => "{}".to_owned(),
            Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
                Ok(v) => v.to_string(),
                Err(_) => s.clone(),
            },
            Some(v) => v.to_string(),
        };
        Ok(Self {
            name,
            idem,
            block,
            logged_at,
            payload: opt_string(object, "payload")?.unwrap_or_default(),
            metadata,
            sender: opt_string(object, "sender")?.unwrap_or_default(),
        })
    }

    /// The record as the JSON the node sends, with the event id under both `idem` and
    /// `id` (PROTOCOL.md section 3); `metadata` as a JSON value when it is JSON other than
    /// a string or `null`, else as a string.
    #[must_use]
    pub fn to_value(&self) -> Value {
        let metadata = match serde_json::from_str::<Value>(&self.metadata) {
            Ok(Value::String(_) | Value::Null) | Err(_) => Value::String(self.metadata.clone()),
            Ok(v) => v,
        };
        let mut object = Map::new();
        object.insert("name".into(), Value::String(self.name.clone()));
        // Both keys, same value: the npm Node.js client reads only `id`, the others `idem`.
        object.insert("idem".into(), Value::String(self.idem.clone()));
        object.insert("id".into(), Value::String(self.idem.clone()));
        object.insert("block".into(), Value::from(self.block));
        if let Some(t) = self.logged_at {
            object.insert("loggedAt".into(), Value::from(t));
        }
        object.insert("payload".into(), Value::String(self.payload.clone()));
        object.insert("metadata".into(), metadata);
        object.insert("sender".into(), Value::String(self.sender.clone()));
        Value::Object(object)
    }

    /// The record as JSON text (the body of `+RECORD:` / `+REPLAY:`).
    #[must_use]
    pub fn to_json(&self) -> String {
        self.to_value().to_string()
    }

    /// The gRPC stream item carrying the same event, so a session can handle both
    /// transports alike. `metadata` is the JSON text of [`WsRecord::metadata`].
    #[must_use]
    pub fn into_stream_event(self) -> EventStreamResponse {
        EventStreamResponse {
            event_idem: self.idem,
            event_name: self.name,
            payload: self.payload,
            partition_block: self.block,
            metadata: self.metadata,
            sender: self.sender,
        }
    }

    /// The record for a gRPC stream item (what a node sends over WebSocket).
    #[must_use]
    pub fn from_stream_event(event: EventStreamResponse, logged_at: Option<i64>) -> Self {
        Self {
            name: event.event_name,
            idem: event.event_idem,
            block: event.partition_block,
            logged_at,
            payload: event.payload,
            metadata: event.metadata,
            sender: event.sender,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn all_requests() -> Vec<(WsRequest, &'static str)> {
        let s = |x: &str| x.to_owned();
        vec![
            (
                WsRequest::Conn {
                    access_key: s("AK1"),
                },
                "CONN;ACCESS_KEY=:AK1",
            ),
            (
                WsRequest::Pub {
                    client_id: s("c1"),
                    event_name: s("orders/created"),
                    payload: s("eyJhIjoxfQ=="),
                    delivery_to: s("PUBKEY+/="),
                    metadata: s(r#"{"persist": true}"#),
                    payload_metadata: None,
                },
                r#"PUB;CLIENT_ID=:c1;EVENT_NAME=:orders/created;PAYLOAD=:eyJhIjoxfQ==;DELIVERY_TO=:PUBKEY+/=;METADATA=:{"persist": true}"#,
            ),
            (
                WsRequest::Sub {
                    client_id: s("c1"),
                    event_name: s("a/b"),
                },
                "SUB;CLIENT_ID=:c1;EVENT_NAME=:a/b",
            ),
            (
                WsRequest::Unsub {
                    client_id: s("c1"),
                    event_name: s("a/b"),
                },
                "UNSUB;CLIENT_ID=:c1;EVENT_NAME=:a/b",
            ),
            (
                WsRequest::Ack {
                    client_id: s("c1"),
                    event_idem: s("e-9"),
                    block: 42,
                    event_name: s("a/b"),
                },
                "ACK;CLIENT_ID=:c1;EVENT_IDEM=:e-9;BLOCK=:42;EVENT_NAME=:a/b",
            ),
            (
                WsRequest::Rollback {
                    client_id: s("c1"),
                    event_idem: s("e-9"),
                    block: 7,
                },
                "ROLLBACK;CLIENT_ID=:c1;EVENT_IDEM=:e-9;BLOCK=:7",
            ),
            (
                WsRequest::Defer {
                    client_id: s("c1"),
                    event_idem: s("e-9"),
                    event_name: s("a/b"),
                    delay_ms: 5000,
                    reason: s("busy; later"),
                },
                "DEFER;CLIENT_ID=:c1;EVENT_IDEM=:e-9;EVENT_NAME=:a/b;DELAY=:5000;REASON=:busy; later",
            ),
            (
                WsRequest::Discard {
                    client_id: s("c1"),
                    event_idem: s("e-9"),
                    event_name: s("a/b"),
                    reason: s(""),
                },
                "DISCARD;CLIENT_ID=:c1;EVENT_IDEM=:e-9;EVENT_NAME=:a/b;REASON=:",
            ),
            (
                WsRequest::Pause {
                    client_id: s("c1"),
                    event_name: s("a/b"),
                    reason: s("maint"),
                },
                "PAUSE;CLIENT_ID=:c1;EVENT_NAME=:a/b;REASON=:maint",
            ),
            (
                WsRequest::Continue {
                    client_id: s("c1"),
                    event_name: s("a/b"),
                },
                "CONTINUE;CLIENT_ID=:c1;EVENT_NAME=:a/b",
            ),
            (
                WsRequest::Replay {
                    client_id: s("c1"),
                    event_idem: s("e-9"),
                    event_name: s("a/b"),
                },
                "REPLAY;CLIENT_ID=:c1;EVENT_IDEM=:e-9;EVENT_NAME=:a/b",
            ),
            (WsRequest::Pong, "PONG"),
        ]
    }

    #[test]
    fn every_request_encodes_to_the_published_client_bytes_and_parses_back() {
        for (request, wire) in all_requests() {
            assert_eq!(request.encode(), wire);
            assert_eq!(request.try_encode().as_deref(), Ok(wire));
            assert_eq!(WsRequest::parse(wire), Ok(request.clone()), "{wire}");
        }
    }

    #[test]
    fn pub_metadata_with_semicolons_and_field_names_is_taken_to_the_end() {
        let frame = r#"PUB;CLIENT_ID=:c;EVENT_NAME=:e;PAYLOAD=:p;DELIVERY_TO=:d;METADATA=:{"note":"a;b;CLIENT_ID=:x","k":1}"#;
        match WsRequest::parse(frame).unwrap() {
            WsRequest::Pub {
                client_id,
                metadata,
                ..
            } => {
                assert_eq!(client_id, "c");
                assert_eq!(metadata, r#"{"note":"a;b;CLIENT_ID=:x","k":1}"#);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pub_with_trailing_payload_metadata_as_the_go_sdk_sends_it() {
        // METADATA strings holding `;`, field names and even `PAYLOAD_METADATA=:`.
        let metadata =
            r#"{"persist":true,"headers":{"note":"a;b;CLIENT_ID=:x;PAYLOAD_METADATA=:{}"}}"#;
        let payload_metadata = r#"{"byte_size":9,"skeleton":{"n":"integer","s":";X=:"}}"#;
        let frame = format!(
            "PUB;CLIENT_ID=:c;EVENT_NAME=:e;PAYLOAD=:p;DELIVERY_TO=:d;METADATA=:{metadata};PAYLOAD_METADATA=:{payload_metadata}"
        );
        let expected = WsRequest::Pub {
            client_id: "c".into(),
            event_name: "e".into(),
            payload: "p".into(),
            delivery_to: "d".into(),
            metadata: metadata.into(),
            payload_metadata: Some(payload_metadata.into()),
        };
        assert_eq!(WsRequest::parse(&frame), Ok(expected.clone()));
        assert_eq!(expected.try_encode(), Ok(frame));
        // Whitespace around the JSON value is the JSON's own.
        let spaced = "PUB;CLIENT_ID=:c;EVENT_NAME=:e;PAYLOAD=:p;DELIVERY_TO=:d;METADATA=: {\"a\":1};PAYLOAD_METADATA=:{}";
        let Ok(WsRequest::Pub {
            metadata,
            payload_metadata,
            ..
        }) = WsRequest::parse(spaced)
        else {
            panic!("{spaced}")
        };
        assert_eq!(
            (metadata.as_str(), payload_metadata.as_deref()),
            (r#" {"a":1}"#, Some("{}"))
        );
        // Without the field, METADATA is still the rest of the frame.
        let plain = "PUB;CLIENT_ID=:c;EVENT_NAME=:e;PAYLOAD=:p;DELIVERY_TO=:d;METADATA=:{\"k\":\";PAYLOAD_METADATA=:\"}";
        let Ok(WsRequest::Pub {
            metadata,
            payload_metadata,
            ..
        }) = WsRequest::parse(plain)
        else {
            panic!("{plain}")
        };
        assert_eq!(metadata, r#"{"k":";PAYLOAD_METADATA=:"}"#);
        assert_eq!(payload_metadata, None);
        // METADATA that is not JSON is kept whole (the node refuses it with a reason).
        let bad = "PUB;CLIENT_ID=:c;EVENT_NAME=:e;PAYLOAD=:p;DELIVERY_TO=:d;METADATA=:{oops;PAYLOAD_METADATA=:{}";
        let Ok(WsRequest::Pub {
            metadata,
            payload_metadata,
            ..
        }) = WsRequest::parse(bad)
        else {
            panic!("{bad}")
        };
        assert_eq!(
            (metadata.as_str(), payload_metadata),
            ("{oops;PAYLOAD_METADATA=:{}", None)
        );
    }

    #[test]
    fn pub_metadata_that_cannot_be_written_unambiguously_is_refused() {
        let mut r = WsRequest::Pub {
            client_id: "c".into(),
            event_name: "e".into(),
            payload: "p".into(),
            delivery_to: "d".into(),
            metadata: "not json".into(),
            payload_metadata: Some("{}".into()),
        };
        let unencodable = Err(WsError::Unencodable {
            verb: "PUB",
            field: "METADATA",
        });
        assert_eq!(r.try_encode(), unencodable);
        if let WsRequest::Pub {
            metadata,
            payload_metadata,
            ..
        } = &mut r
        {
            *metadata = r#"{"a":1};PAYLOAD_METADATA=:{}"#.into();
            *payload_metadata = None;
        }
        assert_eq!(r.try_encode(), unencodable);
    }

    #[test]
    fn fields_are_found_by_name_in_any_order() {
        let frame = "ACK;EVENT_NAME=:a/b;BLOCK=: 42 ;CLIENT_ID=:c1;EVENT_IDEM=:e-9";
        assert_eq!(
            WsRequest::parse(frame),
            Ok(WsRequest::Ack {
                client_id: "c1".into(),
                event_idem: "e-9".into(),
                block: 42,
                event_name: "a/b".into(),
            })
        );
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let frame = "SUB;TRACE=:xyz;CLIENT_ID=:c1;EVENT_NAME=:a/b";
        assert_eq!(
            WsRequest::parse(frame),
            Ok(WsRequest::Sub {
                client_id: "c1".into(),
                event_name: "a/b".into()
            })
        );
    }

    #[test]
    fn conn_access_key_may_hold_anything() {
        let frame = "CONN;ACCESS_KEY=:k;ey=:with;CLIENT_ID=:stuff";
        assert_eq!(
            WsRequest::parse(frame),
            Ok(WsRequest::Conn {
                access_key: "k;ey=:with;CLIENT_ID=:stuff".into()
            })
        );
    }

    #[test]
    fn bad_requests_are_errors_with_reasons() {
        assert_eq!(WsRequest::parse(""), Err(WsError::Empty));
        assert_eq!(
            WsRequest::parse("HELLO;X=:1"),
            Err(WsError::UnknownVerb("HELLO".into()))
        );
        assert_eq!(
            WsRequest::parse("sub;CLIENT_ID=:c"),
            Err(WsError::UnknownVerb("sub".into()))
        );
        assert_eq!(
            WsRequest::parse("SUB;CLIENT_ID=:c1"),
            Err(WsError::MissingField {
                verb: "SUB",
                field: "EVENT_NAME"
            })
        );
        assert_eq!(
            WsRequest::parse("CONN"),
            Err(WsError::MissingField {
                verb: "CONN",
                field: "ACCESS_KEY"
            })
        );
        assert_eq!(
            WsRequest::parse("PUB;CLIENT_ID=:c;EVENT_NAME=:e;METADATA=:{}"),
            Err(WsError::MissingField {
                verb: "PUB",
                field: "PAYLOAD"
            })
        );
        assert_eq!(
            WsRequest::parse("SUB;CLIENT_ID=:a;CLIENT_ID=:b;EVENT_NAME=:e"),
            Err(WsError::DuplicateField {
                verb: "SUB",
                field: "CLIENT_ID"
            })
        );
        assert!(matches!(
            WsRequest::parse("SUB;CLIENT_ID"),
            Err(WsError::Malformed { .. })
        ));
        assert!(matches!(
            WsRequest::parse("SUB;client_id=:c;EVENT_NAME=:e"),
            Err(WsError::Malformed { .. })
        ));
        assert!(matches!(
            WsRequest::parse("PONG;X=:1"),
            Err(WsError::Malformed { .. })
        ));
        assert_eq!(
            WsRequest::parse("ACK;CLIENT_ID=:c;EVENT_IDEM=:e;BLOCK=:None;EVENT_NAME=:n"),
            Err(WsError::BadNumber {
                field: "BLOCK",
                value: "None".into()
            })
        );
        assert!(matches!(
            WsRequest::parse("DEFER;CLIENT_ID=:c;EVENT_IDEM=:e;EVENT_NAME=:n;DELAY=:1.5;REASON=:"),
            Err(WsError::BadNumber { field: "DELAY", .. })
        ));
        // Reordered so that the value taken to the end would not re-encode in order.
        assert_eq!(
            WsRequest::parse("SUB;EVENT_NAME=:x;CLIENT_ID=:a;EVENT_NAME=:y"),
            Err(WsError::Ambiguous {
                verb: "SUB",
                field: "CLIENT_ID"
            })
        );
    }

    #[test]
    fn unknown_verb_errors_do_not_echo_long_input() {
        let secret = "s3cr3t-access-key-that-is-long-enough-to-be-truncated";
        let err = WsRequest::parse(secret).unwrap_err().to_string();
        assert!(!err.contains("s3cr3t"), "{err}");
        let err = WsRequest::parse("ABCDEFGH1234567;KEY=:x")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("ABCDEFGH"), "{err}");
    }

    #[test]
    fn try_encode_rejects_values_that_break_framing() {
        let r = WsRequest::Pub {
            client_id: "c".into(),
            event_name: "e;PAYLOAD=:evil".into(),
            payload: "p".into(),
            delivery_to: "d".into(),
            metadata: "{}".into(),
            payload_metadata: None,
        };
        assert_eq!(
            r.try_encode(),
            Err(WsError::Unencodable {
                verb: "PUB",
                field: "EVENT_NAME"
            })
        );
        // `encode` writes it anyway, and it does not read back as the same request.
        assert_ne!(WsRequest::parse(&r.encode()), Ok(r));
        // The last field may hold anything; other fields may hold `;` and unknown keys.
        let ok = WsRequest::Pause {
            client_id: "c;x".into(),
            event_name: "e;FOO=:1".into(),
            reason: ";CLIENT_ID=:z".into(),
        };
        let frame = ok.try_encode().unwrap();
        assert_eq!(WsRequest::parse(&frame), Ok(ok));
    }

    #[test]
    fn debug_hides_the_access_key() {
        let r = WsRequest::Conn {
            access_key: "TOPSECRETKEY".into(),
        };
        let dbg = format!("{r:?}");
        assert!(!dbg.contains("TOPSECRETKEY"), "{dbg}");
        let dbg = format!(
            "{:?}",
            WsRequest::Sub {
                client_id: "c9".into(),
                event_name: "n".into()
            }
        );
        assert!(dbg.contains("c9") && dbg.contains("SUB"), "{dbg}");
    }

    fn record() -> WsRecord {
        WsRecord {
            name: "orders/created".into(),
            idem: "evt-1".into(),
            block: 3,
            logged_at: Some(1_700_000_000_000),
            payload: "eyJub25jZSI6IiJ9".into(),
            metadata: r#"{"a":1}"#.into(),
            sender: "SENDERKEY=".into(),
        }
    }

    #[test]
    fn server_frames_round_trip() {
        let frames = [
            (WsServerFrame::Pass("ok".into()), "+PASS:ok"),
            (
                WsServerFrame::Fail("no such event".into()),
                "-FAIL:no such event",
            ),
            (WsServerFrame::Ping, "PING"),
            (
                WsServerFrame::Replay(json!({"name": "x"})),
                r#"+REPLAY:{"name":"x"}"#,
            ),
        ];
        for (frame, wire) in frames {
            assert_eq!(frame.encode(), wire);
            assert_eq!(WsServerFrame::parse(wire), Ok(frame));
        }
        let r = WsServerFrame::Record(record());
        let wire = r.encode();
        assert!(wire.starts_with("+RECORD:{"), "{wire}");
        assert_eq!(WsServerFrame::parse(&wire), Ok(r));
    }

    #[test]
    fn pass_and_fail_without_colon_are_accepted() {
        assert_eq!(
            WsServerFrame::parse("+PASS"),
            Ok(WsServerFrame::Pass(String::new()))
        );
        assert_eq!(
            WsServerFrame::parse("-FAIL"),
            Ok(WsServerFrame::Fail(String::new()))
        );
        assert_eq!(
            WsServerFrame::parse("+PASS:"),
            Ok(WsServerFrame::Pass(String::new()))
        );
        assert!(matches!(
            WsServerFrame::parse("+PASSED"),
            Err(WsError::UnknownFrame(_))
        ));
    }

    #[test]
    fn record_from_the_published_form() {
        let wire = r#"+RECORD:{"name":"a/b","idem":"i1","block":5,"loggedAt":1700000000123,"payload":"UEFZ","metadata":{"k":"v;w"},"sender":"S"}"#;
        let WsServerFrame::Record(r) = WsServerFrame::parse(wire).unwrap() else {
            panic!("not a record")
        };
        assert_eq!(
            r,
            WsRecord {
                name: "a/b".into(),
                idem: "i1".into(),
                block: 5,
                logged_at: Some(1_700_000_000_123),
                payload: "UEFZ".into(),
                metadata: r#"{"k":"v;w"}"#.into(),
                sender: "S".into(),
            }
        );
        let ev = r.into_stream_event();
        assert_eq!(ev.event_name, "a/b");
        assert_eq!(ev.event_idem, "i1");
        assert_eq!(ev.partition_block, 5);
        assert_eq!(ev.payload, "UEFZ");
        assert_eq!(ev.sender, "S");
        let meta: Value = serde_json::from_str(&ev.metadata).unwrap();
        assert_eq!(meta, json!({"k": "v;w"}));
    }

    #[test]
    fn record_alternative_forms() {
        let r = WsRecord::from_json(
            r#"{"name":"n","id":"old-id","block":"17","loggedAt":"12","metadata":"{\"x\": [1, 2]}"}"#,
        )
        .unwrap();
        assert_eq!(r.idem, "old-id");
        assert_eq!(r.block, 17);
        assert_eq!(r.logged_at, Some(12));
        assert_eq!(r.metadata, r#"{"x":[1,2]}"#);
        assert_eq!(r.payload, "");
        assert_eq!(r.sender, "");
        // `idem` wins over `id`; numbers are accepted as ids; float blocks that are integers.
        let r = WsRecord::from_json(r#"{"name":"n","idem":9,"id":"x","block":4.0}"#).unwrap();
        assert_eq!((r.idem.as_str(), r.block), ("9", 4));
        // Missing block and metadata.
        let r = WsRecord::from_json(r#"{"name":"n","loggedAt":"2024-01-01T00:00:00Z"}"#).unwrap();
        assert_eq!((r.block, r.metadata.as_str(), r.logged_at), (0, "{}", None));
        // Metadata as a non-JSON string is kept verbatim.
        let r = WsRecord::from_json(r#"{"name":"n","metadata":"plain"}"#).unwrap();
        assert_eq!(r.metadata, "plain");
        let again = WsRecord::from_json(&r.to_json()).unwrap();
        assert_eq!(again, r);
    }

    #[test]
    fn bad_server_frames_are_errors() {
        assert_eq!(WsServerFrame::parse(""), Err(WsError::Empty));
        assert!(matches!(
            WsServerFrame::parse("HELLO"),
            Err(WsError::UnknownFrame(_))
        ));
        assert!(matches!(
            WsServerFrame::parse("+RECORD:{not json"),
            Err(WsError::BadJson {
                frame: "+RECORD",
                ..
            })
        ));
        assert!(matches!(
            WsServerFrame::parse("+REPLAY:"),
            Err(WsError::BadJson {
                frame: "+REPLAY",
                ..
            })
        ));
        assert_eq!(
            WsServerFrame::parse("+RECORD:[1,2]"),
            Err(WsError::BadRecord("not a JSON object"))
        );
        assert_eq!(
            WsServerFrame::parse(r#"+RECORD:{"idem":"x"}"#),
            Err(WsError::BadRecord("no `name`"))
        );
        assert_eq!(
            WsServerFrame::parse(r#"+RECORD:{"name":{}}"#),
            Err(WsError::BadRecord("`name` is not a string"))
        );
        assert!(matches!(
            WsServerFrame::parse(r#"+RECORD:{"name":"n","block":"five"}"#),
            Err(WsError::BadNumber { field: "block", .. })
        ));
        assert!(matches!(
            WsServerFrame::parse(r#"+RECORD:{"name":"n","block":1.5}"#),
            Err(WsError::BadNumber { field: "block", .. })
        ));
    }

    #[test]
    fn conn_pass_parses_both_forms() {
        let frame = WsServerFrame::conn_pass("cid-1", "PUB/KEY+base64==");
        assert_eq!(
            frame.encode(),
            "+PASS:{clientId=cid-1,clientHash=PUB/KEY+base64==}"
        );
        let WsServerFrame::Pass(text) = WsServerFrame::parse(&frame.encode()).unwrap() else {
            panic!("not a pass")
        };
        let expected = Ok(("cid-1".to_owned(), "PUB/KEY+base64==".to_owned()));
        assert_eq!(parse_conn_pass(&text), expected);
        assert_eq!(parse_conn_pass(&frame.encode()), expected);
        assert_eq!(
            parse_conn_pass("{ clientHash = PUB/KEY+base64== , clientId = cid-1 }"),
            expected
        );
        assert_eq!(
            parse_conn_pass(r#"{"clientId":"cid-1","clientHash":"PUB/KEY+base64=="}"#),
            expected
        );
        assert_eq!(
            parse_conn_pass("{clientHash=x}"),
            Err(WsError::BadConnPass("clientId"))
        );
        assert_eq!(
            parse_conn_pass("{clientId=,clientHash=x}"),
            Err(WsError::BadConnPass("clientId"))
        );
        assert_eq!(
            parse_conn_pass("{clientId=a}"),
            Err(WsError::BadConnPass("clientHash"))
        );
        assert!(matches!(
            parse_conn_pass(r#"{"clientId":"#),
            Err(WsError::BadJson { .. })
        ));
    }

    #[test]
    fn record_stream_event_round_trip() {
        let ev = record().into_stream_event();
        assert_eq!(
            WsRecord::from_stream_event(ev, Some(1_700_000_000_000)),
            record()
        );
    }

    fn value_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9/{}\":, ]{0,12}",
            "[A-Z_;=:]{0,16}",
            // Values holding field delimiters of some verb.
            prop::sample::select(vec![
                ";CLIENT_ID=:",
                ";EVENT_NAME=:",
                ";METADATA=:",
                ";PAYLOAD_METADATA=:",
                ";REASON=:",
                ";BLOCK=:",
                ";X=:",
                ";",
            ])
            .prop_flat_map(
                |d| ("[a-z]{0,3}", "[a-z;]{0,3}").prop_map(move |(a, b)| format!("{a}{d}{b}"))
            ),
        ]
    }

    /// JSON objects whose strings hold delimiters, optionally followed by more text.
    fn json_strategy() -> impl Strategy<Value = String> {
        (
            prop::sample::select(vec![
                "a;b",
                ";CLIENT_ID=:x",
                ";PAYLOAD_METADATA=:{}",
                "PAYLOAD_METADATA=:",
                "",
            ]),
            prop::sample::select(vec!["", " ", ";PAYLOAD_METADATA=:{}", ";X=:1", "}"]),
        )
            .prop_map(|(inner, tail)| format!("{}{tail}", json!({ "note": inner })))
    }

    fn request_strategy() -> impl Strategy<Value = WsRequest> {
        let v = value_strategy;
        prop_oneof![
            v().prop_map(|access_key| WsRequest::Conn { access_key }),
            (
                v(),
                v(),
                v(),
                v(),
                prop_oneof![v(), json_strategy()],
                prop::option::of(prop_oneof![v(), json_strategy()])
            )
                .prop_map(
                    |(client_id, event_name, payload, delivery_to, metadata, payload_metadata)| {
                        WsRequest::Pub {
                            client_id,
                            event_name,
                            payload,
                            delivery_to,
                            metadata,
                            payload_metadata,
                        }
                    }
                ),
            (v(), v()).prop_map(|(client_id, event_name)| WsRequest::Sub {
                client_id,
                event_name
            }),
            (v(), v(), any::<i64>(), v()).prop_map(|(client_id, event_idem, block, event_name)| {
                WsRequest::Ack {
                    client_id,
                    event_idem,
                    block,
                    event_name,
                }
            }),
            (v(), v(), any::<i64>()).prop_map(|(client_id, event_idem, block)| {
                WsRequest::Rollback {
                    client_id,
                    event_idem,
                    block,
                }
            }),
            (v(), v(), v(), any::<i64>(), v()).prop_map(
                |(client_id, event_idem, event_name, delay_ms, reason)| WsRequest::Defer {
                    client_id,
                    event_idem,
                    event_name,
                    delay_ms,
                    reason,
                }
            ),
            (v(), v(), v(), v()).prop_map(|(client_id, event_idem, event_name, reason)| {
                WsRequest::Discard {
                    client_id,
                    event_idem,
                    event_name,
                    reason,
                }
            }),
            (v(), v(), v()).prop_map(|(client_id, event_name, reason)| WsRequest::Pause {
                client_id,
                event_name,
                reason
            }),
            Just(WsRequest::Pong),
        ]
    }

    proptest! {
        #[test]
        fn try_encode_then_parse_is_identity(request in request_strategy()) {
            match request.try_encode() {
                Ok(frame) => {
                    prop_assert_eq!(&frame, &request.encode());
                    prop_assert_eq!(WsRequest::parse(&frame), Ok(request));
                }
                Err(WsError::Unencodable { verb, field }) => {
                    // Only a non-final value holding `;KEY=:` of the verb is refused, or
                    // PUB's METADATA when it is not one JSON value before
                    // PAYLOAD_METADATA / looks like one followed by it when last.
                    let keys = spec(verb);
                    let (_, values) = request.fields();
                    let i = keys.iter().position(|k| *k == field).unwrap();
                    if field == K_METADATA {
                        let v = &values[i];
                        if i + 1 < values.len() {
                            prop_assert_ne!(json_value_end(v), Some(v.len()));
                        } else {
                            prop_assert!(metadata_end(v).is_some());
                        }
                    } else {
                        prop_assert!(i + 1 < values.len());
                        prop_assert!(find_delimiter(&values[i], keys).is_some());
                    }
                }
                Err(other) => prop_assert!(false, "unexpected error {other}"),
            }
        }

        #[test]
        fn random_strings_never_panic_and_parsed_requests_round_trip(s in "\\PC{0,80}|[A-Z;=:_a-z{}]{0,60}") {
            if let Ok(request) = WsRequest::parse(&s) {
                prop_assert_eq!(request.try_encode(), Ok(request.encode()));
                prop_assert_eq!(WsRequest::parse(&request.encode()), Ok(request));
            }
            if let Ok(frame) = WsServerFrame::parse(&s) {
                prop_assert!(WsServerFrame::parse(&frame.encode()).is_ok());
            }
            let _ = parse_conn_pass(&s);
        }

        #[test]
        fn random_strings_after_each_verb_never_panic(
            verb in prop::sample::select(VERBS.iter().map(|(v, _)| *v).collect::<Vec<_>>()),
            rest in "[A-Z_;=:a-z0-9 ]{0,60}",
        ) {
            let frame = format!("{verb}{rest}");
            if let Ok(request) = WsRequest::parse(&frame) {
                prop_assert_eq!(WsRequest::parse(&request.encode()), Ok(request));
            }
        }
    }
}
