//! Fuzz entry point: gRPC message framing ([`crate::framing`]).
//!
//! Input layout: byte 0 picks the decoder limit (`(b as usize) * 16`, so tiny limits
//! are exercised too), byte 1 seeds the chunk sizes; the rest is the byte stream, fed to
//! a [`FrameDecoder`] in chunks whose sizes are read from the stream itself. Every
//! frame is decoded as several wire message types, and re-framing it must give back
//! the same bytes.

use bytes::BytesMut;

use crate::framing::{FrameDecoder, FrameError, decode_message, encode_frame_bytes};
use crate::wire;

/// Feeds arbitrary bytes to a [`FrameDecoder`]; must never panic.
pub fn run(data: &[u8]) {
    let [limit, seed, stream @ ..] = data else {
        return;
    };
    let max_len = usize::from(*limit) * 16;
    let mut decoder = FrameDecoder::with_max_len(max_len);
    let mut pos = 0;
    let mut step = usize::from(*seed);
    let mut frames = Vec::new();
    let mut failed: Option<FrameError> = None;
    while pos < stream.len() {
        // Chunk sizes 1..=17 derived from the data, so splits land everywhere.
        step = (step.wrapping_mul(31) ^ usize::from(stream[pos])) % 17 + 1;
        let end = (pos + step).min(stream.len());
        decoder.push(&stream[pos..end]);
        pos = end;
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= max_len, "frame over the limit");
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(e) => {
                    // A failed decoder stays failed with the same error.
                    if let Some(first) = &failed {
                        assert_eq!(first, &e);
                    }
                    assert_eq!(decoder.next_frame().as_ref(), Err(&e));
                    failed = Some(e);
                    break;
                }
            }
        }
    }
    let _ = decoder.finish();

    // Everything returned before a failure is a prefix of the stream, re-framed exactly.
    let mut reframed = BytesMut::new();
    for frame in &frames {
        encode_frame_bytes(frame, &mut reframed).expect("small frame");
        let _ = decode_message::<wire::EventStreamResponse>(frame.clone());
        let _ = decode_message::<wire::PublishEventRequest>(frame.clone());
        let _ = decode_message::<wire::ConnectResponse>(frame.clone());
        let _ = decode_message::<wire::DeferRequest>(frame.clone());
    }
    assert_eq!(
        &stream[..reframed.len()],
        &reframed[..],
        "frames are not a prefix of the input"
    );
}
