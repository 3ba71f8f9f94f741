//! Fuzz entry point: envelopes, keys and `payload_metadata`.
//!
//! One input is used several ways, so a corpus of envelope JSON, outer base64 text
//! and raw key bytes all reach the parsers:
//! - as the outer `payload` text, decrypted with a fixed key;
//! - as the inner envelope JSON (base64-encoded first), decrypted with the fixed key;
//! - split into a 32- or 64-byte secret key and the rest, the rest decrypted with it;
//! - as public/secret key base64 text and bytes;
//! - as plaintext JSON for `payload_metadata`;
//! - as a plaintext that must survive an encrypt/decrypt round trip (single and hybrid).

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};

use crate::envelope::{Envelope, decrypt, encrypt_hybrid, encrypt_single};
use crate::keys::{PublicKey, SecretKey};
use crate::payload_meta::payload_metadata;

/// The seed of the fixed key the fuzz inputs are decrypted with (corpus envelopes are
/// made for it).
pub const FUZZ_KEY_SEED: [u8; 32] = [7; 32];

/// A deterministic RNG (SHA-256 in counter mode) so runs replay exactly.
struct CounterRng(u64);

impl RngCore for CounterRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(32) {
            self.0 += 1;
            let block = Sha256::digest(self.0.to_le_bytes());
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for CounterRng {}

/// Feeds arbitrary bytes to the envelope code under test; must never panic.
pub fn run(data: &[u8]) {
    static KEYS: OnceLock<(SecretKey, SecretKey)> = OnceLock::new();
    let (key, other) = KEYS.get_or_init(|| {
        (
            SecretKey::from_seed(&FUZZ_KEY_SEED),
            SecretKey::from_seed(&[8; 32]),
        )
    });
    let text = String::from_utf8_lossy(data);

    // Outer payload text and inner envelope JSON.
    let _ = decrypt(&text, key);
    let inner = STANDARD.encode(data);
    if let Ok(envelope) = Envelope::parse(&inner) {
        let _ = envelope.recipient_ids().count();
        let _ = envelope.open(key);
    }

    // Keys from text and bytes.
    let _ = PublicKey::from_base64(&text);
    let _ = SecretKey::from_base64(&text);
    if let Some(head) = data.get(..32).and_then(|h| <&[u8; 32]>::try_from(h).ok()) {
        if let Ok(pk) = PublicKey::from_bytes(head) {
            assert_eq!(PublicKey::from_base64(&pk.to_base64()).as_ref(), Ok(&pk));
        }
    }
    for len in [32usize, 64] {
        if let (Some(secret), Some(rest)) = (data.get(..len), data.get(len..)) {
            // Only derive a key (costly) when the rest is an envelope.
            if let Ok(envelope) = Envelope::parse(&STANDARD.encode(rest)) {
                if let Ok(secret) = SecretKey::from_bytes(secret) {
                    let _ = envelope.open(&secret);
                }
            }
        }
    }

    // payload_metadata never panics; for JSON input it is JSON that counts the bytes.
    if let Ok(meta) = payload_metadata(data) {
        let value: serde_json::Value =
            serde_json::from_str(&meta).expect("payload_metadata writes JSON");
        assert_eq!(value["byte_size"].as_u64(), Some(data.len() as u64));
    }

    // Round trips: what we write, we read back.
    // (On one input in 16: each costs several X25519 operations.)
    if data.len() <= 4096 && data.len() % 16 == 0 {
        let mut rng = CounterRng(data.len() as u64);
        let single = encrypt_single(data, key.public_key(), &mut rng);
        assert_eq!(decrypt(&single, key).as_deref(), Ok(data));
        let recipients = [other.public_key().clone(), key.public_key().clone()];
        let hybrid = encrypt_hybrid(data, &recipients, &mut rng);
        assert_eq!(decrypt(&hybrid, key).as_deref(), Ok(data));
        assert_eq!(decrypt(&hybrid, other).as_deref(), Ok(data));
    }
}
