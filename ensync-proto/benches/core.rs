//! Micro-benchmarks of the sans-IO core (issue 8, first slice).
//!
//! Run with `cargo bench -p ensync-proto --bench core` (or `scripts/bench.sh`, which
//! also runs the PyNaCl/libsodium counterpart and prints a comparison table).
//! Benchmark ids are flat (no `/`) so each result lands in
//! `target/criterion/<id>/new/estimates.json`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use criterion::{Criterion, criterion_group, criterion_main};
use ensync_proto::envelope;
use ensync_proto::framing::{self, FrameDecoder};
use ensync_proto::keys::{PublicKey, SecretKey};
use ensync_proto::payload_meta;
use ensync_proto::session::{
    CallId, HandlerOutcome, Input, Output, Reply, Request, Session, SessionConfig, SessionEvent,
    SubscribeOptions,
};
use ensync_proto::wire;
use ensync_proto::ws::{WsRecord, WsRequest, WsServerFrame};
use rand_chacha::ChaCha20Rng;
use rand_core::{OsRng, SeedableRng};

/// The benchmark payload: a compact JSON object of exactly 1024 bytes. Built the same
/// way as in `scripts/bench_pynacl.py` so both sides encrypt the same bytes.
fn payload_1k() -> String {
    let head = r#"{"event":"order.created","orderId":12345,"amount":99.95,"paid":true,"tags":["a","b","c"],"customer":{"name":"Ada","email":"ada@example.com"},"note":""#;
    let tail = r#""}"#;
    let pad = 1024 - head.len() - tail.len();
    let text = format!("{head}{}{tail}", "x".repeat(pad));
    assert_eq!(text.len(), 1024);
    text
}

fn recipient_keys(n: usize) -> Vec<PublicKey> {
    (0..n)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[0] = i as u8;
            seed[1] = 0xb7;
            SecretKey::from_seed(&seed).public_key().clone()
        })
        .collect()
}

fn bench_envelope(c: &mut Criterion) {
    let payload = payload_1k();
    let secret = SecretKey::from_seed(&[7u8; 32]);
    // Parsed once, as the recipient-key cache does for a repeated recipient.
    let public = PublicKey::from_base64(&secret.public_key().to_base64()).expect("own key");
    c.bench_function("envelope_encrypt_single_1k", |b| {
        b.iter(|| envelope::encrypt_single(black_box(payload.as_bytes()), &public, &mut OsRng))
    });
    let sealed = envelope::encrypt_single(payload.as_bytes(), &public, &mut OsRng);
    c.bench_function("envelope_decrypt_single_1k", |b| {
        b.iter(|| envelope::decrypt(black_box(&sealed), &secret).expect("decrypts"))
    });
    // The key-less half of decrypt (outer base64, JSON, field base64), to split the
    // decrypt time into parsing and crypto.
    c.bench_function("envelope_parse_single_1k", |b| {
        b.iter(|| envelope::Envelope::parse(black_box(&sealed)).expect("parses"))
    });
    for n in [1usize, 4, 16] {
        let keys = recipient_keys(n);
        c.bench_function(&format!("envelope_encrypt_hybrid_{n}"), |b| {
            b.iter(|| envelope::encrypt_hybrid(black_box(payload.as_bytes()), &keys, &mut OsRng))
        });
    }
}

fn bench_payload_meta(c: &mut Criterion) {
    let payload = payload_1k();
    c.bench_function("payload_metadata_1k", |b| {
        b.iter(|| payload_meta::payload_metadata(black_box(payload.as_bytes())).expect("json"))
    });
}

fn stream_event(idem: &str, sealed: &str, sender: &str) -> wire::EventStreamResponse {
    wire::EventStreamResponse {
        event_idem: idem.to_owned(),
        event_name: "bench/orders".to_owned(),
        payload: sealed.to_owned(),
        partition_block: 42,
        metadata: r#"{"source":"bench"}"#.to_owned(),
        sender: sender.to_owned(),
    }
}

fn bench_codecs(c: &mut Criterion) {
    let secret = SecretKey::from_seed(&[7u8; 32]);
    let sender = SecretKey::from_seed(&[9u8; 32]).public_key().to_base64();
    let sealed = envelope::encrypt_single(payload_1k().as_bytes(), secret.public_key(), &mut OsRng);
    let event = stream_event("evt-1", &sealed, &sender);

    c.bench_function("grpc_frame_encode_decode", |b| {
        let mut out = BytesMut::with_capacity(4096);
        let mut decoder = FrameDecoder::new();
        b.iter(|| {
            out.clear();
            framing::encode_frame(black_box(&event), &mut out).expect("encodes");
            decoder.push(&out);
            let frame = decoder.next_frame().expect("valid").expect("one frame");
            let decoded: wire::EventStreamResponse =
                framing::decode_message(frame).expect("decodes");
            decoded
        })
    });

    let request = WsRequest::Pub {
        client_id: "client-1".to_owned(),
        event_name: "bench/orders".to_owned(),
        payload: sealed.clone(),
        delivery_to: secret.public_key().to_base64(),
        metadata: r#"{"source":"bench"}"#.to_owned(),
        payload_metadata: None,
    };
    c.bench_function("ws_pub_encode_parse", |b| {
        b.iter(|| {
            let text = black_box(&request).encode();
            WsRequest::parse(&text).expect("parses")
        })
    });

    let record = WsServerFrame::Record(WsRecord::from_stream_event(
        event.clone(),
        Some(1_700_000_000_000),
    ))
    .encode();
    c.bench_function("ws_record_parse", |b| {
        b.iter(|| WsServerFrame::parse(black_box(&record)).expect("parses"))
    });
}

/// A session connected and subscribed to `bench/orders`, without IO: its calls are
/// answered directly.
/// A session connected to a scripted node, subscribed to `bench/orders`, and the call
/// id of its subscribe stream.
fn connected_session(secret: Arc<SecretKey>, now: Instant) -> (Session, CallId) {
    let client_hash = secret.public_key().to_base64();
    let config = SessionConfig::new("bench-access-key")
        .secret_key(secret)
        .rng(Box::new(ChaCha20Rng::seed_from_u64(1)));
    let mut session = Session::new(config, now);
    session.open(now);
    let mut subscribed = false;
    let mut stream = None;
    for _ in 0..64 {
        let Some(output) = session.poll_output() else {
            if subscribed || !session.is_connected() {
                break;
            }
            session
                .subscribe("bench/orders", SubscribeOptions::default(), now)
                .expect("subscribes");
            subscribed = true;
            continue;
        };
        match output {
            Output::Connect { conn, .. } => session.handle_input(Input::Connected { conn }, now),
            Output::Call(call) => match call.request {
                Request::Connect(_) => session.handle_input(
                    Input::Reply {
                        call: call.id,
                        result: Ok(Reply::Connect(wire::ConnectResponse {
                            success: true,
                            client_id: "client-1".to_owned(),
                            client_hash: client_hash.clone(),
                            ..Default::default()
                        })),
                    },
                    now,
                ),
                Request::Subscribe(_) => {
                    stream = Some(call.id);
                    session.handle_input(Input::StreamOpened { call: call.id }, now)
                }
                other => panic!("unexpected call during setup: {other:?}"),
            },
            _ => {}
        }
    }
    assert!(session.is_connected() && session.is_subscribed("bench/orders"));
    (session, stream.expect("a subscribe stream"))
}

fn bench_session(c: &mut Criterion) {
    let secret = Arc::new(SecretKey::from_seed(&[7u8; 32]));
    let sender = SecretKey::from_seed(&[9u8; 32]).public_key().to_base64();
    let sealed = envelope::encrypt_single(payload_1k().as_bytes(), secret.public_key(), &mut OsRng);
    let now = Instant::now();
    let (mut session, stream) = connected_session(secret, now);
    let mut counter: u64 = 0;
    // One event through the machine: stream item -> decrypted delivery -> handler
    // finished OK -> auto-ack call -> ack reply. Each event has a fresh id (the
    // duplicate filter would otherwise ack a redelivery silently).
    c.bench_function("session_event_cycle", |b| {
        b.iter(|| {
            counter += 1;
            let event = stream_event(&format!("evt-{counter}"), &sealed, &sender);
            session.handle_input(
                Input::StreamItem {
                    call: stream,
                    event,
                    logged_at: None,
                },
                now,
            );
            let mut token = None;
            while let Some(output) = session.poll_output() {
                if let Output::Event(SessionEvent::Delivery(d)) = output {
                    token = Some(d.token);
                }
            }
            let token = token.expect("delivered");
            session.handler_finished(token, HandlerOutcome::Ok, now);
            let mut ack = None;
            while let Some(output) = session.poll_output() {
                if let Output::Call(call) = output {
                    ack = Some(call.id);
                }
            }
            let call = ack.expect("auto-ack call");
            session.handle_input(
                Input::Reply {
                    call,
                    result: Ok(Reply::Ack(wire::AcknowledgeResponse {
                        success: true,
                        message: String::new(),
                    })),
                },
                now,
            );
            while session.poll_output().is_some() {}
        })
    });
}

/// `criterion_group!` generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(
        benches,
        bench_envelope,
        bench_payload_meta,
        bench_codecs,
        bench_session
    );
}
criterion_main!(group::benches);
