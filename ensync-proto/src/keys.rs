//! Ed25519 application keys and their X25519 (encryption) forms.
//!
//! SKELETON: signatures are fixed; bodies are being written.

use rand_core::CryptoRngCore;

/// Why a key could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The text is not standard base64.
    #[error("key is not valid base64")]
    Base64,
    /// The decoded key has the wrong length.
    #[error("key has {got} bytes, expected {expected}")]
    Length {
        /// Accepted length(s), as text (e.g. "32" or "32 or 64").
        expected: &'static str,
        /// The decoded length.
        got: usize,
    },
    /// The public key is not a valid Edwards point.
    #[error("public key is not a valid Ed25519 point")]
    NotOnCurve,
    /// A 64-byte secret key whose second half is not the public key of its seed.
    #[error("secret key's public half does not match its seed")]
    Mismatch,
}

/// An app's Ed25519 public key (its identity, `client_hash`), with its X25519 form
/// computed once at parse time.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey {
    ed25519: [u8; 32],
    x25519: [u8; 32],
}

impl PublicKey {
    /// Parses a standard-base64 32-byte Ed25519 public key.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let _ = text;
        todo!()
    }
    /// Builds a public key from its 32 Ed25519 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        let _ = bytes;
        todo!()
    }
    /// The 32 Ed25519 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.ed25519
    }
    /// The X25519 (Montgomery u) form used for encryption.
    pub fn x25519_bytes(&self) -> &[u8; 32] {
        &self.x25519
    }
    /// Standard base64 of the 32 Ed25519 bytes (44 characters).
    pub fn to_base64(&self) -> String {
        todo!()
    }
}

/// An app's Ed25519 secret key. Zeroized on drop; `Debug` never shows it.
pub struct SecretKey {
    _private: (),
}

impl SecretKey {
    /// Generates a fresh key pair.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let _ = rng;
        todo!()
    }
    /// Parses a standard-base64 secret key: 64 bytes (seed || public key) or a 32-byte seed.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let _ = text;
        todo!()
    }
    /// Builds a secret key from its 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let _ = seed;
        todo!()
    }
    /// The matching public key.
    pub fn public_key(&self) -> &PublicKey {
        todo!()
    }
    /// Standard base64 of the 64-byte form (seed || public key).
    pub fn to_base64(&self) -> String {
        todo!()
    }
}
