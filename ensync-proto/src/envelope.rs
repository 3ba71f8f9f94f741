//! End-to-end payload envelopes (PROTOCOL.md section 2).
//!
//! SKELETON: signatures are fixed; bodies are being written.

use crate::keys::{PublicKey, SecretKey};
use rand_core::CryptoRngCore;

/// Why a payload could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The outer payload is not standard base64.
    #[error("payload is not valid base64")]
    Base64,
    /// The decoded payload is not a JSON envelope of a known shape.
    #[error("payload is not a valid envelope: {0}")]
    Format(String),
    /// No box in the envelope opens with this key (wrong key or tampered data).
    #[error("payload could not be decrypted with this key")]
    Decrypt,
}

/// Encrypts `plaintext` for one recipient: the single-recipient envelope, as the
/// outer base64 text that goes in `payload`.
pub fn encrypt_single(
    plaintext: &[u8],
    recipient: &PublicKey,
    rng: &mut impl CryptoRngCore,
) -> String {
    let _ = (plaintext, recipient, rng);
    todo!()
}

/// Encrypts `plaintext` once for many recipients: the hybrid envelope as PROTOCOL.md
/// section 2 prescribes, as outer base64 text.
pub fn encrypt_hybrid(
    plaintext: &[u8],
    recipients: &[PublicKey],
    rng: &mut impl CryptoRngCore,
) -> String {
    let _ = (plaintext, recipients, rng);
    todo!()
}

/// Decrypts any envelope variant (single, or any hybrid dialect) from its outer base64 text.
pub fn decrypt(payload: &str, key: &SecretKey) -> Result<Vec<u8>, EnvelopeError> {
    let _ = (payload, key);
    todo!()
}
