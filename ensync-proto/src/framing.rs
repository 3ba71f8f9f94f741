//! gRPC message framing ("Length-Prefixed-Message" of the gRPC over HTTP/2 spec), for
//! adapters that speak raw HTTP/2 (`ensync-h2`) and for the node's tests.
//!
//! Every message on a gRPC stream is sent as
//!
//! ```text
//! +------------+----------------------+-----------------+
//! | flag (1 B) | length (4 B, BE u32) | message (length)|
//! +------------+----------------------+-----------------+
//! ```
//!
//! The flag is `0` (uncompressed) or `1` (compressed with the negotiated
//! `grpc-encoding`). We negotiate no compression, so [`FrameDecoder`] rejects a flag of
//! `1` ([`FrameError::Compressed`]) and any other value ([`FrameError::BadFlag`]), and
//! refuses lengths over its limit ([`FrameError::TooLarge`], 4 MiB by default like gRPC)
//! as soon as the 5-byte header is in, before any of the message is waited for.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Size of the gRPC message header: 1 flag byte and a 4-byte big-endian length.
pub const HEADER_LEN: usize = 5;
/// The default largest accepted message, 4 MiB (gRPC's default receive limit).
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 4 * 1024 * 1024;

/// What can go wrong while framing or unframing gRPC messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A message with the compressed flag set; we never negotiate compression.
    #[error("compressed gRPC message received, but no compression was negotiated")]
    Compressed,
    /// A flag byte other than 0 or 1.
    #[error("invalid gRPC message flag {0:#04x}")]
    BadFlag(u8),
    /// A message longer than the limit.
    #[error("gRPC message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced (or, when encoding, actual) length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The stream ended in the middle of a message.
    #[error("stream ended inside a gRPC message ({buffered} bytes of an incomplete message)")]
    Truncated {
        /// How many bytes of the incomplete message (header included) were buffered.
        buffered: usize,
    },
    /// The message bytes are not a valid protobuf of the expected type.
    #[error("invalid protobuf message: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Appends one framed message (header and bytes) to `out`.
///
/// Fails only for a message that does not fit the 32-bit length (4 GiB and more).
pub fn encode_frame(message: &impl prost::Message, out: &mut BytesMut) -> Result<(), FrameError> {
    let len = message.encoded_len();
    let len32 = frame_len(len)?;
    out.reserve(HEADER_LEN + len);
    out.put_u8(0);
    out.put_u32(len32);
    // `reserve` above guarantees the capacity, so this cannot fail.
    message.encode(out).map_err(|_| FrameError::TooLarge {
        len: len as u64,
        max: u64::from(u32::MAX),
    })
}

/// Appends one framed message made of already-encoded bytes to `out`.
///
/// Fails only for a message that does not fit the 32-bit length (4 GiB and more).
pub fn encode_frame_bytes(message: &[u8], out: &mut BytesMut) -> Result<(), FrameError> {
    let len32 = frame_len(message.len())?;
    out.reserve(HEADER_LEN + message.len());
    out.put_u8(0);
    out.put_u32(len32);
    out.put_slice(message);
    Ok(())
}

/// One framed message as a fresh buffer, e.g. the body of a unary gRPC request.
pub fn frame_message(message: &impl prost::Message) -> Result<Bytes, FrameError> {
    let mut out = BytesMut::new();
    encode_frame(message, &mut out)?;
    Ok(out.freeze())
}

fn frame_len(len: usize) -> Result<u32, FrameError> {
    u32::try_from(len).map_err(|_| FrameError::TooLarge {
        len: len as u64,
        max: u64::from(u32::MAX),
    })
}

/// Decodes the bytes of one unframed message (from [`FrameDecoder::next_frame`]) as `M`.
pub fn decode_message<M: prost::Message + Default>(message: impl Buf) -> Result<M, FrameError> {
    M::decode(message).map_err(FrameError::Decode)
}

/// Incremental decoder of a stream of framed gRPC messages.
///
/// Feed bytes as they arrive with [`push`](Self::push), split anywhere, then call
/// [`next_frame`](Self::next_frame) until it returns `Ok(None)`. After an error the
/// decoder stays failed: every later call returns the same error and pushed bytes are
/// dropped (a gRPC stream cannot be resynchronised after a bad header).
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_len: usize,
    buf: BytesMut,
    failed: Option<FrameError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder with the default 4 MiB limit ([`DEFAULT_MAX_MESSAGE_LEN`]).
    #[must_use]
    pub fn new() -> Self {
        Self::with_max_len(DEFAULT_MAX_MESSAGE_LEN)
    }

    /// A decoder that rejects messages longer than `max_len` bytes.
    #[must_use]
    pub fn with_max_len(max_len: usize) -> Self {
        Self {
            max_len,
            buf: BytesMut::new(),
            failed: None,
        }
    }

    /// The largest accepted message length.
    #[must_use]
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// How many bytes are buffered and not yet returned as frames.
    #[must_use]
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// Whether the decoder has failed (see [`FrameDecoder`]).
    #[must_use]
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Appends received bytes. The header of the next message is checked at once, so a
    /// bad flag or an oversized length fails the decoder before its body is buffered.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        self.buf.extend_from_slice(bytes);
        if let Err(e) = self.check_header() {
            self.fail(e);
        }
    }

    /// Returns the next complete message (without its header), `Ok(None)` when more
    /// bytes are needed, or the error that failed the decoder.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let len = match self.check_header() {
            Ok(Some(len)) => len,
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.fail(e)),
        };
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        let frame = self.buf.split_to(len).freeze();
        // Check the following header now, so an oversized next message is refused
        // before its body is buffered.
        if let Err(e) = self.check_header() {
            self.fail(e);
        }
        Ok(Some(frame))
    }

    /// Call when the stream has ended: `Ok` if it ended on a message boundary,
    /// [`FrameError::Truncated`] if part of a message is buffered, or the decoder's
    /// error. Frames still buffered must be drained with `next_frame` first; they count
    /// as truncation here.
    pub fn finish(&self) -> Result<(), FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated {
                buffered: self.buf.len(),
            })
        }
    }

    /// Validates the header at the front of the buffer; its message length if complete.
    fn check_header(&self) -> Result<Option<usize>, FrameError> {
        let Some(header) = self.buf.get(..HEADER_LEN) else {
            // Reject a bad flag even before the length is in.
            return match self.buf.first() {
                Some(&flag) => check_flag(flag).map(|()| None),
                None => Ok(None),
            };
        };
        check_flag(header[0])?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > self.max_len {
            return Err(FrameError::TooLarge {
                len: len as u64,
                max: self.max_len as u64,
            });
        }
        Ok(Some(len))
    }

    fn fail(&mut self, e: FrameError) -> FrameError {
        self.buf = BytesMut::new();
        self.failed = Some(e.clone());
        e
    }
}

fn check_flag(flag: u8) -> Result<(), FrameError> {
    match flag {
        0 => Ok(()),
        1 => Err(FrameError::Compressed),
        other => Err(FrameError::BadFlag(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;
    use proptest::prelude::*;

    fn publish(n: usize) -> wire::PublishEventRequest {
        wire::PublishEventRequest {
            client_id: format!("client-{n}"),
            event_name: "orders/created".into(),
            payload: "x".repeat(n),
            delivery_to: "key".into(),
            metadata: "{}".into(),
            payload_metadata: Some("{\"byte_size\":1}".into()),
        }
    }

    fn drain(d: &mut FrameDecoder) -> Result<Vec<Bytes>, FrameError> {
        let mut out = Vec::new();
        while let Some(f) = d.next_frame()? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn header_layout_is_flag_then_big_endian_length() {
        let mut out = BytesMut::new();
        encode_frame_bytes(&[0xAA; 300], &mut out).unwrap();
        assert_eq!(&out[..5], &[0, 0, 0, 1, 44]);
        assert_eq!(out.len(), 305);

        let msg = wire::HeartbeatRequest {
            client_id: "abc".into(),
        };
        let framed = frame_message(&msg).unwrap();
        // field 1, wire type 2 (0x0a), length 3, "abc"
        assert_eq!(&framed[..], &[0, 0, 0, 0, 5, 0x0a, 3, b'a', b'b', b'c']);
    }

    #[test]
    fn empty_message_is_a_frame_of_length_zero() {
        let framed = frame_message(&wire::HeartbeatResponse::default()).unwrap();
        assert_eq!(&framed[..], &[0, 0, 0, 0, 0]);
        let mut d = FrameDecoder::new();
        d.push(&framed);
        let frame = d.next_frame().unwrap().expect("a frame");
        assert!(frame.is_empty());
        let decoded: wire::HeartbeatResponse = decode_message(frame).unwrap();
        assert_eq!(decoded, wire::HeartbeatResponse::default());
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.finish(), Ok(()));
    }

    #[test]
    fn byte_by_byte_decoding_yields_each_message() {
        let msgs = [publish(0), publish(10), publish(1000)];
        let mut stream = BytesMut::new();
        for m in &msgs {
            encode_frame(m, &mut stream).unwrap();
        }
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for b in stream.iter() {
            d.push(&[*b]);
            got.extend(drain(&mut d).unwrap());
        }
        let decoded: Vec<wire::PublishEventRequest> = got
            .into_iter()
            .map(|f| decode_message(f).unwrap())
            .collect();
        assert_eq!(decoded, msgs);
        assert_eq!(d.finish(), Ok(()));
    }

    #[test]
    fn partial_message_waits_and_finish_reports_truncation() {
        let framed = frame_message(&publish(50)).unwrap();
        let mut d = FrameDecoder::new();
        d.push(&framed[..framed.len() - 1]);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(
            d.finish(),
            Err(FrameError::Truncated {
                buffered: framed.len() - 1
            })
        );
        d.push(&framed[framed.len() - 1..]);
        assert!(d.next_frame().unwrap().is_some());
        assert_eq!(d.finish(), Ok(()));
    }

    #[test]
    fn compressed_flag_is_rejected_and_decoder_stays_failed() {
        let mut d = FrameDecoder::new();
        d.push(&[1]);
        assert!(d.is_failed(), "flag is checked as soon as it arrives");
        assert_eq!(d.next_frame(), Err(FrameError::Compressed));
        // Later valid input does not revive it.
        d.push(&frame_message(&publish(1)).unwrap());
        assert_eq!(d.next_frame(), Err(FrameError::Compressed));
        assert_eq!(d.finish(), Err(FrameError::Compressed));
        assert_eq!(d.buffered_len(), 0);
    }

    #[test]
    fn other_flags_are_bad() {
        for flag in [2u8, 0x80, 0xff] {
            let mut d = FrameDecoder::new();
            d.push(&[flag, 0, 0, 0, 0]);
            assert_eq!(d.next_frame(), Err(FrameError::BadFlag(flag)));
        }
    }

    #[test]
    fn oversized_length_is_rejected_from_the_header_alone() {
        let mut d = FrameDecoder::with_max_len(16);
        d.push(&[0, 0, 0, 0, 16]);
        d.push(&[7; 16]);
        assert_eq!(d.next_frame().unwrap().map(|b| b.len()), Some(16));
        d.push(&[0, 0, 0, 0, 17]);
        assert!(d.is_failed(), "refused before any of the body arrived");
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        );

        let mut d = FrameDecoder::new();
        d.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge {
                len: u64::from(u32::MAX),
                max: 4 * 1024 * 1024
            })
        );
    }

    #[test]
    fn oversized_next_header_after_a_good_frame_in_one_push() {
        let mut d = FrameDecoder::with_max_len(4);
        d.push(&[0, 0, 0, 0, 1, 9, 0, 0, 0, 0, 5, 1, 2, 3, 4, 5]);
        assert_eq!(d.next_frame().unwrap().as_deref(), Some(&[9u8][..]));
        assert_eq!(d.next_frame(), Err(FrameError::TooLarge { len: 5, max: 4 }));
    }

    #[test]
    fn decode_message_maps_prost_errors() {
        // Field 1, wire type 2, length 10, but only 1 byte follows.
        let r: Result<wire::HeartbeatRequest, _> = decode_message(&[0x0a, 10, b'a'][..]);
        assert!(matches!(r, Err(FrameError::Decode(_))), "{r:?}");
    }

    proptest! {
        #[test]
        fn any_split_decodes_to_the_same_frames(
            bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8),
            cuts in prop::collection::vec(0usize..4000, 0..20),
        ) {
            let mut stream = BytesMut::new();
            for b in &bodies {
                encode_frame_bytes(b, &mut stream).unwrap();
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.sort_unstable();
            let mut d = FrameDecoder::new();
            let mut got = Vec::new();
            let mut prev = 0;
            for c in cuts.into_iter().chain([stream.len()]) {
                d.push(&stream[prev..c]);
                prev = c;
                got.extend(drain(&mut d).unwrap());
            }
            let got: Vec<Vec<u8>> = got.into_iter().map(|b| b.to_vec()).collect();
            prop_assert_eq!(got, bodies);
            prop_assert_eq!(d.finish(), Ok(()));
        }

        #[test]
        fn messages_round_trip_through_frames(n in prop::collection::vec(0usize..200, 1..5), chunk in 1usize..64) {
            let msgs: Vec<_> = n.into_iter().map(publish).collect();
            let mut stream = BytesMut::new();
            for m in &msgs {
                encode_frame(m, &mut stream).unwrap();
            }
            let mut d = FrameDecoder::new();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                d.push(piece);
                for f in drain(&mut d).unwrap() {
                    got.push(decode_message::<wire::PublishEventRequest>(f).unwrap());
                }
            }
            prop_assert_eq!(got, msgs);
        }

        #[test]
        fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..2000), chunk in 1usize..50, max in 0usize..1000) {
            let mut d = FrameDecoder::with_max_len(max);
            for piece in data.chunks(chunk) {
                d.push(piece);
                loop {
                    match d.next_frame() {
                        Ok(Some(f)) => {
                            prop_assert!(f.len() <= max);
                            let _ = decode_message::<wire::EventStreamResponse>(f);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            // Once failed, always failed with the same error.
                            prop_assert_eq!(d.next_frame(), Err(e));
                            break;
                        }
                    }
                }
            }
            let _ = d.finish();
        }
    }
}
