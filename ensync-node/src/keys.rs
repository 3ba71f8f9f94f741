//! Key helpers of the node: public-key parsing and key-pair generation (both through
//! `ensync_proto::keys`, so the node accepts exactly the keys the clients can use).

use ensync_proto::keys::{PublicKey, SecretKey};
use zeroize::Zeroizing;

/// Parses a standard-base64 Ed25519 public key into its 32 bytes; rejects keys that are
/// not valid points of the prime-order subgroup (no client could encrypt to them).
pub fn parse_public_key(text: &str) -> Result<[u8; 32], String> {
    PublicKey::from_base64(text)
        .map(|k| *k.as_bytes())
        .map_err(|e| format!("not a valid Ed25519 public key: {e}"))
}

/// A fresh Ed25519 key pair in the published clients' text forms.
pub struct KeyPair {
    /// Standard base64 of the 32-byte public key.
    pub public_key: String,
    /// Standard base64 of the 64-byte secret key (seed || public key). Zeroized on drop.
    pub secret_key: Zeroizing<String>,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public_key", &self.public_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

/// Generates a key pair from the OS random source.
pub fn generate() -> KeyPair {
    let secret = SecretKey::generate(&mut rand_core::OsRng);
    KeyPair {
        public_key: secret.public_key().to_base64(),
        secret_key: Zeroizing::new(secret.to_base64()),
    }
}

/// A fresh access key: 128 random bits as 32 hex characters (what the admin API and
/// `ensync keygen --app` hand out).
pub fn random_access_key() -> String {
    crate::service::random_id()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse() {
        let kp = generate();
        assert_eq!(kp.public_key.len(), 44);
        assert_eq!(kp.secret_key.len(), 88);
        assert!(parse_public_key(&kp.public_key).is_ok());
        let sk = SecretKey::from_base64(&kp.secret_key).unwrap();
        assert_eq!(sk.public_key().to_base64(), kp.public_key);
        assert!(!format!("{kp:?}").contains(kp.secret_key.as_str()));
        // The all-zero key is a small-order point: refused.
        assert!(parse_public_key("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").is_err());
        assert!(parse_public_key("not base64").is_err());
    }
}
