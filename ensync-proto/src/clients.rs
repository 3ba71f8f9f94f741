//! What each published EnSync client reads, and how to tell them apart (PROTOCOL.md
//! sections 1 and 4). One definition, shared by the node (which answers each client in
//! the form it reads) and by our SDK (which reads every form any node sends).
//!
//! # Telling clients apart
//!
//! Every published gRPC client sends its stack's `user-agent` header:
//! `grpc-python/…` (`ensync-sdk`), `grpc-go/…` (the Go SDK), `grpc-node-js/…` (the
//! Node.js gRPC SDK). [`ClientKind::from_user_agent`] looks for those product tokens
//! anywhere in the header (an application may put its own token first).
//!
//! # Replay answers
//!
//! `ReplayResponse.event_data` (`message_data`) is read in two incompatible ways
//! ([`ReplayForm`]): `ensync-sdk` (Python) decrypts it as the bare payload envelope; the
//! Go SDK (`protojson.Unmarshal` into `MessageStreamResponse`, unknown keys are an error)
//! and the Node.js gRPC SDK (`JSON.parse`, then handled like a streamed message) read the
//! JSON form of a stream message. The node's rule ([`ClientKind::replay_form`]): the bare
//! envelope for `grpc-python`, the stream-message form for everyone else.
//! [`encode_replay`] writes either; [`decode_replay`] reads every form any node may send.
//!
//! # Which stream carries an event
//!
//! The Python clients hand an event to the handlers of the stream it came on, so they need
//! each event on the stream opened for its name; the Node.js gRPC SDK reads only the
//! first stream it opened ([`Delivery`], [`ClientKind::delivery`]).

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::wire::EventStreamResponse;

/// A published client family, as told by the gRPC `user-agent` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClientKind {
    /// `grpc-python/…`: `ensync-sdk` (both RPC generations).
    Python,
    /// `grpc-go/…`: the Go SDK.
    Go,
    /// `grpc-node-js/…` (or the older native `grpc-node/…`): the Node.js gRPC SDK.
    NodeJs,
    /// Anything else (our own clients: `tonic/…`, `ensync-h2/…`), or no header.
    Other,
}

/// The form of a replay answer's `event_data` (`message_data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReplayForm {
    /// The bare base64 payload envelope (the text of a streamed `payload`).
    Envelope,
    /// The JSON form of a stream message with proto field names, exactly the six keys of
    /// `MessageStreamResponse`: `message_idem`, `message_name`, `payload` (the envelope),
    /// `partition_block` (a number), `metadata` (JSON text, as a string) and `sender`.
    StreamMessage,
}

/// Which of a session's subscribe streams carries an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Delivery {
    /// Each event on the stream opened for its name.
    PerStream,
    /// Every event of the session on the first stream it opened that is still open.
    FirstStream,
}

impl ClientKind {
    /// The client family of a gRPC `user-agent` header value (`None`: no header).
    ///
    /// Product tokens (`name/version`, separated by spaces) are matched by name, so
    /// `"my-app/2 grpc-python/1.85.3 grpc-c/50.0.0 (linux; chttp2)"` is [`ClientKind::Python`].
    #[must_use]
    pub fn from_user_agent(user_agent: Option<&str>) -> Self {
        let Some(ua) = user_agent else {
            return Self::Other;
        };
        for token in ua.split_ascii_whitespace() {
            let product = token.split('/').next().unwrap_or_default();
            match product.to_ascii_lowercase().as_str() {
                "grpc-python" | "grpc-python-asyncio" => return Self::Python,
                "grpc-go" => return Self::Go,
                "grpc-node-js" | "grpc-node" => return Self::NodeJs,
                _ => {}
            }
        }
        Self::Other
    }

    /// The replay form this client reads: [`ReplayForm::Envelope`] for the Python
    /// clients, [`ReplayForm::StreamMessage`] for every other client (the Go and Node.js
    /// SDKs need it; our own SDK reads both).
    #[must_use]
    pub fn replay_form(self) -> ReplayForm {
        match self {
            Self::Python => ReplayForm::Envelope,
            Self::Go | Self::NodeJs | Self::Other => ReplayForm::StreamMessage,
        }
    }

    /// The delivery this client needs: [`Delivery::FirstStream`] for the Node.js gRPC SDK
    /// (it reads only its first stream), [`Delivery::PerStream`] for every other client
    /// (the Python clients need it; the Go SDK and ours route by the event's own name and
    /// work with either).
    #[must_use]
    pub fn delivery(self) -> Delivery {
        match self {
            Self::NodeJs => Delivery::FirstStream,
            Self::Python | Self::Go | Self::Other => Delivery::PerStream,
        }
    }

    /// A short lowercase name for logs and reports (`python`, `go`, `nodejs`, `other`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Python => "python",
            Self::Go => "go",
            Self::NodeJs => "nodejs",
            Self::Other => "other",
        }
    }
}

/// The `event_data` of a replay answer for `event`, in `form`.
#[must_use]
pub fn encode_replay(form: ReplayForm, event: &EventStreamResponse) -> String {
    match form {
        ReplayForm::Envelope => event.payload.clone(),
        ReplayForm::StreamMessage => {
            let mut object = Map::new();
            object.insert(
                "message_idem".into(),
                Value::String(event.event_idem.clone()),
            );
            object.insert(
                "message_name".into(),
                Value::String(event.event_name.clone()),
            );
            object.insert("payload".into(), Value::String(event.payload.clone()));
            object.insert("partition_block".into(), Value::from(event.partition_block));
            object.insert("metadata".into(), Value::String(event.metadata.clone()));
            object.insert("sender".into(), Value::String(event.sender.clone()));
            Value::Object(object).to_string()
        }
    }
}

/// A replay answer that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayDecodeError {
    /// `event_data` is empty.
    #[error("the replay answer carries no event")]
    Empty,
    /// JSON that does not parse, or is not an object.
    #[error("the replay answer is not a JSON object: {0}")]
    BadJson(String),
    /// A JSON object without a `payload`.
    #[error("the replay answer has no `payload`")]
    NoPayload,
    /// A field of the wrong type.
    #[error("the replay answer's `{0}` has the wrong type")]
    BadField(&'static str),
}

/// A replayed event as read from any node's answer. Only `payload` is always there; a
/// bare-envelope answer carries nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ReplayedEvent {
    /// The base64 payload envelope.
    pub payload: String,
    /// The event id, when the answer carries it.
    pub idem: Option<String>,
    /// The event name, when the answer carries it.
    pub name: Option<String>,
    /// The partition block, when the answer carries it.
    pub block: Option<i64>,
    /// The metadata as JSON text, when the answer carries it.
    pub metadata: Option<String>,
    /// The publisher's public key, when the answer carries it.
    pub sender: Option<String>,
}

/// The first of `keys` present (and not `null`) in `object`.
fn first<'a>(object: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    keys.iter()
        .filter_map(|k| object.get(*k))
        .find(|v| !v.is_null())
}

fn text(
    object: &Map<String, Value>,
    keys: &[&str],
    field: &'static str,
) -> Result<Option<String>, ReplayDecodeError> {
    match first(object, keys) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(ReplayDecodeError::BadField(field)),
    }
}

/// Reads a replay answer's `event_data` in any form an EnSync node may send: the bare
/// base64 envelope; the JSON form of a stream message with proto field names
/// (`message_idem`, `partition_block`, …, or the generation-1 `event_*` names) or
/// lowerCamelCase JSON names (`messageIdem`, `partitionBlock`, as protobuf's JSON
/// printers write them), `partition_block` as a number or a numeric string, `metadata`
/// as JSON text or as an object; or the envelope's own JSON object (not base64-encoded).
pub fn decode_replay(event_data: &str) -> Result<ReplayedEvent, ReplayDecodeError> {
    let data = event_data.trim();
    if data.is_empty() {
        return Err(ReplayDecodeError::Empty);
    }
    if !data.starts_with('{') {
        // Base64 text never starts with `{`: the bare envelope.
        return Ok(ReplayedEvent {
            payload: data.to_owned(),
            ..ReplayedEvent::default()
        });
    }
    let value: Value =
        serde_json::from_str(data).map_err(|e| ReplayDecodeError::BadJson(e.to_string()))?;
    let Value::Object(object) = value else {
        return Err(ReplayDecodeError::BadJson("not an object".into()));
    };
    let Some(payload) = object.get("payload").filter(|v| !v.is_null()) else {
        if object.contains_key("ciphertext") {
            // The envelope JSON itself, not wrapped in base64.
            return Ok(ReplayedEvent {
                payload: base64::engine::general_purpose::STANDARD.encode(data),
                ..ReplayedEvent::default()
            });
        }
        return Err(ReplayDecodeError::NoPayload);
    };
    let payload = match payload {
        Value::String(s) => s.clone(),
        // A hybrid envelope's inner `payload` is an object: this is an envelope, not a
        // stream message.
        Value::Object(_) if object.contains_key("keys") => {
            base64::engine::general_purpose::STANDARD.encode(data)
        }
        _ => return Err(ReplayDecodeError::BadField("payload")),
    };
    let block = match first(&object, &["partition_block", "partitionBlock", "block"]) {
        None => None,
        Some(Value::Number(n)) => Some(
            n.as_i64()
                .ok_or(ReplayDecodeError::BadField("partition_block"))?,
        ),
        Some(Value::String(s)) => Some(
            s.trim()
                .parse::<i64>()
                .map_err(|_| ReplayDecodeError::BadField("partition_block"))?,
        ),
        Some(_) => return Err(ReplayDecodeError::BadField("partition_block")),
    };
    let metadata = match object.get("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v @ Value::Object(_)) => Some(v.to_string()),
        Some(_) => return Err(ReplayDecodeError::BadField("metadata")),
    };
    Ok(ReplayedEvent {
        payload,
        idem: text(
            &object,
            &[
                "message_idem",
                "messageIdem",
                "event_idem",
                "eventIdem",
                "idem",
                "id",
            ],
            "message_idem",
        )?,
        name: text(
            &object,
            &[
                "message_name",
                "messageName",
                "event_name",
                "eventName",
                "name",
            ],
            "message_name",
        )?,
        block,
        metadata,
        sender: text(&object, &["sender"], "sender")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> EventStreamResponse {
        EventStreamResponse {
            event_idem: "0123abcd".into(),
            event_name: "orders/created".into(),
            payload: "eyJub25jZSI6IngifQ==".into(),
            partition_block: 7,
            metadata: r#"{"persist":true,"headers":{}}"#.into(),
            sender: "U0VOREVS".into(),
        }
    }

    #[test]
    fn user_agents_of_the_published_clients() {
        let cases = [
            (
                "grpc-python/1.85.3 grpc-c/50.0.0 (linux; chttp2)",
                ClientKind::Python,
            ),
            (
                "my-app/2.0 grpc-python/1.60.0 grpc-c/37.0.0 (osx; chttp2)",
                ClientKind::Python,
            ),
            (
                "grpc-python-asyncio/1.85.3 grpc-c/50.0.0 (linux; chttp2)",
                ClientKind::Python,
            ),
            ("grpc-go/1.67.1", ClientKind::Go),
            ("grpc-node-js/1.14.1", ClientKind::NodeJs),
            ("tonic/0.14.2", ClientKind::Other),
            ("ensync-h2/0.1.0", ClientKind::Other),
            ("", ClientKind::Other),
            ("python-requests/2.0", ClientKind::Other),
        ];
        for (ua, kind) in cases {
            assert_eq!(ClientKind::from_user_agent(Some(ua)), kind, "{ua}");
        }
        assert_eq!(ClientKind::from_user_agent(None), ClientKind::Other);
    }

    #[test]
    fn rules_per_client() {
        assert_eq!(ClientKind::Python.replay_form(), ReplayForm::Envelope);
        for k in [ClientKind::Go, ClientKind::NodeJs, ClientKind::Other] {
            assert_eq!(k.replay_form(), ReplayForm::StreamMessage, "{k:?}");
        }
        assert_eq!(ClientKind::NodeJs.delivery(), Delivery::FirstStream);
        for k in [ClientKind::Python, ClientKind::Go, ClientKind::Other] {
            assert_eq!(k.delivery(), Delivery::PerStream, "{k:?}");
        }
    }

    #[test]
    fn stream_message_form_has_exactly_the_six_proto_keys() {
        let text = encode_replay(ReplayForm::StreamMessage, &event());
        let value: Value = serde_json::from_str(&text).unwrap();
        let object = value.as_object().unwrap();
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "message_idem",
                "message_name",
                "metadata",
                "partition_block",
                "payload",
                "sender"
            ]
        );
        assert_eq!(object["partition_block"], json!(7));
        assert_eq!(
            object["metadata"],
            json!(r#"{"persist":true,"headers":{}}"#)
        );
        assert_eq!(
            encode_replay(ReplayForm::Envelope, &event()),
            event().payload
        );
    }

    #[test]
    fn both_encoded_forms_decode_back() {
        let ev = event();
        let bare = decode_replay(&encode_replay(ReplayForm::Envelope, &ev)).unwrap();
        assert_eq!(bare.payload, ev.payload);
        assert_eq!((bare.idem, bare.block), (None, None));
        let full = decode_replay(&encode_replay(ReplayForm::StreamMessage, &ev)).unwrap();
        assert_eq!(
            full,
            ReplayedEvent {
                payload: ev.payload.clone(),
                idem: Some(ev.event_idem.clone()),
                name: Some(ev.event_name.clone()),
                block: Some(7),
                metadata: Some(ev.metadata.clone()),
                sender: Some(ev.sender.clone()),
            }
        );
    }

    #[test]
    fn lower_camel_case_with_string_block_as_a_java_node_prints_it() {
        let text = json!({
            "messageIdem": "i1",
            "messageName": "a/b",
            "payload": "UEFZ",
            "partitionBlock": "42",
            "metadata": "{}",
            "sender": "S",
        })
        .to_string();
        let r = decode_replay(&text).unwrap();
        assert_eq!(r.payload, "UEFZ");
        assert_eq!(r.idem.as_deref(), Some("i1"));
        assert_eq!(r.name.as_deref(), Some("a/b"));
        assert_eq!(r.block, Some(42));
        assert_eq!(r.metadata.as_deref(), Some("{}"));
    }

    #[test]
    fn generation_one_names_object_metadata_and_padding() {
        let text = format!(
            "  {}\n",
            json!({"event_idem": "i2", "event_name": "n", "payload": "UA==", "partition_block": 3, "metadata": {"k": 1}})
        );
        let r = decode_replay(&text).unwrap();
        assert_eq!((r.idem.as_deref(), r.block), (Some("i2"), Some(3)));
        assert_eq!(r.metadata.as_deref(), Some(r#"{"k":1}"#));
        assert_eq!(r.sender, None);
    }

    #[test]
    fn an_unwrapped_envelope_json_is_base64_encoded() {
        let env = r#"{"nonce":"a","ciphertext":"b","ephemeralPublicKey":"c"}"#;
        let r = decode_replay(env).unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(&r.payload)
                .unwrap(),
            env.as_bytes()
        );
        let hybrid = r#"{"type":"hybrid","payload":{"nonce":"a","ciphertext":"b"},"keys":{}}"#;
        let r = decode_replay(hybrid).unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(&r.payload)
                .unwrap(),
            hybrid.as_bytes()
        );
    }

    #[test]
    fn bad_answers_are_errors() {
        assert_eq!(decode_replay(" "), Err(ReplayDecodeError::Empty));
        assert!(matches!(
            decode_replay("{oops"),
            Err(ReplayDecodeError::BadJson(_))
        ));
        assert_eq!(
            decode_replay(r#"{"message_idem":"x"}"#),
            Err(ReplayDecodeError::NoPayload)
        );
        assert_eq!(
            decode_replay(r#"{"payload":5}"#),
            Err(ReplayDecodeError::BadField("payload"))
        );
        assert_eq!(
            decode_replay(r#"{"payload":"p","partition_block":"five"}"#),
            Err(ReplayDecodeError::BadField("partition_block"))
        );
        assert_eq!(
            decode_replay(r#"{"payload":"p","partitionBlock":1.5}"#),
            Err(ReplayDecodeError::BadField("partition_block"))
        );
        assert_eq!(
            decode_replay(r#"{"payload":"p","metadata":[1]}"#),
            Err(ReplayDecodeError::BadField("metadata"))
        );
    }
}
