//! Ed25519 application keys and their X25519 (encryption) forms.
//!
//! Every app has an Ed25519 key pair (PROTOCOL.md section 2). The public key (32 bytes,
//! standard base64, 44 characters) is the app's identity (`client_hash`, a publish
//! recipient, an event's `sender`). Payload encryption uses the X25519 forms of the keys:
//!
//! - public: the Edwards point decompressed and mapped to its Montgomery u-coordinate;
//! - secret: the first 32 bytes of SHA-512 of the 32-byte seed, clamped (RFC 7748).
//!
//! Both are computed once, when a key is parsed. A [`RecipientCache`] keeps parsed
//! recipient keys so repeated publishes to one recipient skip the conversion.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::clamp_integer;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha512};
use zeroize::{Zeroize, Zeroizing};

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
    ///
    /// Also returned for points of small order and points outside the prime-order
    /// subgroup: no real Ed25519 key is one, libsodium (so PyNaCl) refuses to convert
    /// them, and encrypting to a small-order key would give a predictable shared secret.
    #[error("public key is not a valid Ed25519 point")]
    NotOnCurve,
    /// A 64-byte secret key whose second half is not the public key of its seed.
    #[error("secret key's public half does not match its seed")]
    Mismatch,
}

/// Decodes standard base64 (with its `=` padding) after trimming surrounding whitespace.
fn decode_b64(text: &str) -> Result<Vec<u8>, KeyError> {
    STANDARD.decode(text.trim()).map_err(|_| KeyError::Base64)
}

/// An app's Ed25519 public key (its identity, `client_hash`), with its X25519 form
/// computed once at parse time.
///
/// Equality and hashing are those of the 32 Ed25519 bytes (the other fields are
/// derived from them).
#[derive(Clone)]
pub struct PublicKey {
    ed25519: [u8; 32],
    x25519: [u8; 32],
    /// The decompressed Edwards point, kept so encryption multiplies it directly
    /// (the vectorised Edwards scalar multiplication) with no Montgomery-to-Edwards
    /// conversion.
    edwards: EdwardsPoint,
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.ed25519 == other.ed25519
    }
}

impl Eq for PublicKey {}

impl std::hash::Hash for PublicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.ed25519.hash(state);
    }
}

impl PublicKey {
    /// Parses a standard-base64 32-byte Ed25519 public key.
    ///
    /// Surrounding whitespace is ignored. Errors: [`KeyError::Base64`],
    /// [`KeyError::Length`], [`KeyError::NotOnCurve`].
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = decode_b64(text)?;
        let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| KeyError::Length {
            expected: "32",
            got: bytes.len(),
        })?;
        Self::from_bytes(&bytes)
    }

    /// Builds a public key from its 32 Ed25519 bytes.
    ///
    /// Rejects ([`KeyError::NotOnCurve`]) encodings that do not decompress to a point,
    /// points of small order and points outside the prime-order subgroup.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        let point = CompressedEdwardsY(*bytes)
            .decompress()
            .ok_or(KeyError::NotOnCurve)?;
        if point.is_small_order() || !point.is_torsion_free() {
            return Err(KeyError::NotOnCurve);
        }
        Ok(Self {
            ed25519: *bytes,
            x25519: point.to_montgomery().to_bytes(),
            edwards: point,
        })
    }

    /// The 32 Ed25519 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.ed25519
    }

    /// The X25519 (Montgomery u) form used for encryption.
    pub fn x25519_bytes(&self) -> &[u8; 32] {
        &self.x25519
    }

    /// The Edwards point of the key (prime order, checked at parse); its Montgomery
    /// u-coordinate is [`Self::x25519_bytes`].
    pub(crate) fn edwards_point(&self) -> &EdwardsPoint {
        &self.edwards
    }

    /// Standard base64 of the 32 Ed25519 bytes (44 characters).
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.ed25519)
    }

    /// Lowercase hex of the 32 Ed25519 bytes (64 characters), the map key the Python
    /// ensync-core client writes in hybrid envelopes.
    pub fn to_hex(&self) -> String {
        hex::encode(self.ed25519)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_base64(s)
    }
}

/// An app's Ed25519 secret key. Zeroized on drop; `Debug` never shows it.
///
/// Holds the 32-byte seed and the derived X25519 secret (both zeroized on drop, clones
/// included) and the public key. Cheap to share behind an `Arc`; `Clone` copies the
/// secret into another zeroizing holder.
#[derive(Clone)]
pub struct SecretKey {
    seed: Zeroizing<[u8; 32]>,
    x25519: Zeroizing<[u8; 32]>,
    public: PublicKey,
}

impl SecretKey {
    /// Generates a fresh key pair.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        Self::from_seed(&seed)
    }

    /// Parses a standard-base64 secret key: 64 bytes (seed || public key) or a 32-byte seed.
    ///
    /// A 32-byte secret is always taken as the Ed25519 seed (as the Go and Node clients
    /// do). For 64 bytes the public half must be the public key of the seed
    /// ([`KeyError::Mismatch`] otherwise).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = Zeroizing::new(decode_b64(text)?);
        Self::from_bytes(&bytes)
    }

    /// Builds a secret key from raw bytes: 64 bytes (seed || public key) or a 32-byte seed.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        match bytes.len() {
            32 | 64 => {
                let mut seed = Zeroizing::new([0u8; 32]);
                seed.copy_from_slice(&bytes[..32]);
                let key = Self::from_seed(&seed);
                if bytes.len() == 64 && bytes[32..] != key.public.ed25519[..] {
                    return Err(KeyError::Mismatch);
                }
                Ok(key)
            }
            got => Err(KeyError::Length {
                expected: "32 or 64",
                got,
            }),
        }
    }

    /// Builds a secret key from its 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let mut digest = Sha512::digest(seed);
        let mut x25519 = Zeroizing::new([0u8; 32]);
        x25519.copy_from_slice(&digest[..32]);
        digest.as_mut_slice().zeroize();
        *x25519 = clamp_integer(*x25519);

        // The Ed25519 public key is (clamped SHA-512(seed)[..32]) times the base point
        // (RFC 8032 section 5.1.5), and its Montgomery form is the X25519 public key of
        // the same scalar.
        let edwards = EdwardsPoint::mul_base_clamped(*x25519);
        Self {
            seed: Zeroizing::new(*seed),
            x25519,
            public: PublicKey {
                ed25519: edwards.compress().to_bytes(),
                x25519: edwards.to_montgomery().to_bytes(),
                edwards,
            },
        }
    }

    /// The matching public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Standard base64 of the 64-byte form (seed || public key).
    pub fn to_base64(&self) -> String {
        let mut full = Zeroizing::new([0u8; 64]);
        full[..32].copy_from_slice(self.seed.as_ref());
        full[32..].copy_from_slice(&self.public.ed25519);
        STANDARD.encode(full.as_ref())
    }

    /// The clamped X25519 secret scalar (SHA-512(seed)[..32], clamped). Key material.
    pub(crate) fn x25519_secret(&self) -> &[u8; 32] {
        &self.x25519
    }

    /// The X25519 secret scalar bytes, for known-answer tests against other
    /// implementations. Key material: handle with care.
    #[cfg(feature = "__fuzz")]
    #[doc(hidden)]
    pub fn __x25519_secret_bytes(&self) -> [u8; 32] {
        *self.x25519
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("public", &format_args!("{}", self.public.to_base64()))
            .finish_non_exhaustive()
    }
}

impl FromStr for SecretKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_base64(s)
    }
}

/// The default number of entries of a [`RecipientCache`].
pub const RECIPIENT_CACHE_CAPACITY: usize = 1024;

/// A bounded cache from a recipient's base64 public key text to the parsed
/// [`PublicKey`], so repeated publishes to one recipient skip the point decompression
/// and conversion. When full, the oldest entry is evicted (first in, first out).
/// Parse failures are not cached.
#[derive(Debug, Clone)]
pub struct RecipientCache {
    capacity: usize,
    map: HashMap<String, PublicKey>,
    order: VecDeque<String>,
}

impl Default for RecipientCache {
    fn default() -> Self {
        Self::new(RECIPIENT_CACHE_CAPACITY)
    }
}

impl RecipientCache {
    /// An empty cache holding at most `capacity` keys (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The parsed key for `b64`, from the cache or parsed (and cached) now.
    pub fn get_or_parse(&mut self, b64: &str) -> Result<PublicKey, KeyError> {
        if let Some(key) = self.map.get(b64) {
            return Ok(key.clone());
        }
        let key = PublicKey::from_base64(b64)?;
        if self.map.len() >= self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.map.remove(&oldest);
            }
        }
        self.map.insert(b64.to_owned(), key.clone());
        self.order.push_back(b64.to_owned());
        Ok(key)
    }

    /// The number of cached keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether `b64` is cached.
    pub fn contains(&self, b64: &str) -> bool {
        self.map.contains_key(b64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::MontgomeryPoint;
    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};

    fn rng() -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(7)
    }

    #[test]
    fn public_key_base64_round_trip() {
        let sk = SecretKey::generate(&mut rng());
        let pk = sk.public_key();
        let text = pk.to_base64();
        assert_eq!(text.len(), 44);
        let parsed = PublicKey::from_base64(&text).unwrap();
        assert_eq!(&parsed, pk);
        assert_eq!(parsed.x25519_bytes(), pk.x25519_bytes());
        assert_eq!(text.parse::<PublicKey>().unwrap(), parsed);
        assert_eq!(parsed.to_string(), text);
        assert_eq!(format!("{parsed:?}"), format!("PublicKey({text})"));
        assert_eq!(parsed.to_hex(), hex::encode(parsed.as_bytes()));
    }

    #[test]
    fn public_key_x25519_matches_secret_scalar_times_base() {
        // The X25519 public of the converted secret must equal the converted public key.
        for i in 0..8u64 {
            let sk = SecretKey::generate(&mut ChaCha20Rng::seed_from_u64(i));
            let from_secret = MontgomeryPoint::mul_base_clamped(*sk.x25519_secret());
            // Parsed from the Ed25519 bytes: decompress + birational map.
            let parsed = PublicKey::from_bytes(sk.public_key().as_bytes()).unwrap();
            assert_eq!(from_secret.to_bytes(), *parsed.x25519_bytes());
        }
    }

    #[test]
    fn derived_forms_agree_with_ed25519_dalek_and_each_other() {
        for i in 0..16u64 {
            let mut seed = [0u8; 32];
            ChaCha20Rng::seed_from_u64(100 + i).fill_bytes(&mut seed);
            let sk = SecretKey::from_seed(&seed);
            let pk = sk.public_key();
            let dalek = ed25519_dalek::SigningKey::from_bytes(&seed);
            assert_eq!(pk.as_bytes(), dalek.verifying_key().as_bytes());
            assert_eq!(pk.edwards_point().compress().to_bytes(), *pk.as_bytes());
            assert_eq!(
                pk.edwards_point().to_montgomery().to_bytes(),
                *pk.x25519_bytes()
            );
            // A parsed key carries the same point and compares equal.
            let parsed = PublicKey::from_bytes(pk.as_bytes()).unwrap();
            assert_eq!(parsed.edwards_point(), pk.edwards_point());
            assert_eq!(&parsed, pk);
        }
        // Equality and hashing follow the Ed25519 bytes.
        let a = SecretKey::from_seed(&[1u8; 32]).public_key().clone();
        let b = SecretKey::from_seed(&[2u8; 32]).public_key().clone();
        assert_ne!(a, b);
        let set: std::collections::HashSet<PublicKey> = [a.clone(), b, a].into_iter().collect();
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn public_key_errors() {
        assert_eq!(PublicKey::from_base64("not base64!"), Err(KeyError::Base64));
        assert_eq!(
            PublicKey::from_base64(&STANDARD.encode([1u8; 31])),
            Err(KeyError::Length {
                expected: "32",
                got: 31
            })
        );
        assert_eq!(
            PublicKey::from_base64(&STANDARD.encode([1u8; 33])),
            Err(KeyError::Length {
                expected: "32",
                got: 33
            })
        );
        // y = 2 is not the y-coordinate of any Edwards25519 point.
        let mut not_on_curve = [0u8; 32];
        not_on_curve[0] = 2;
        assert_eq!(
            PublicKey::from_bytes(&not_on_curve),
            Err(KeyError::NotOnCurve)
        );
        // The identity (y = 1) is a point, but of small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(PublicKey::from_bytes(&identity), Err(KeyError::NotOnCurve));
        // A prime-order point plus a torsion point is not in the prime-order subgroup.
        let sk = SecretKey::generate(&mut rng());
        let p = CompressedEdwardsY(*sk.public_key().as_bytes())
            .decompress()
            .unwrap();
        let torsion = CompressedEdwardsY(identity_minus()).decompress().unwrap();
        let mixed = (p + torsion).compress().to_bytes();
        assert_eq!(PublicKey::from_bytes(&mixed), Err(KeyError::NotOnCurve));
    }

    /// The point (0, -1), of order 2.
    fn identity_minus() -> [u8; 32] {
        // y = p - 1 = 2^255 - 20, little endian.
        let mut y = [0xffu8; 32];
        y[0] = 0xec;
        y[31] = 0x7f;
        y
    }

    #[test]
    fn secret_key_forms() {
        let sk = SecretKey::from_seed(&[9u8; 32]);
        let full = sk.to_base64();
        assert_eq!(full.len(), 88);
        let again = SecretKey::from_base64(&full).unwrap();
        assert_eq!(again.public_key(), sk.public_key());
        assert_eq!(again.x25519_secret(), sk.x25519_secret());
        // A 32-byte secret is the seed.
        let seed_only = SecretKey::from_base64(&STANDARD.encode([9u8; 32])).unwrap();
        assert_eq!(seed_only.public_key(), sk.public_key());
        // The public half agrees with ed25519-dalek's derivation.
        let dalek = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
        assert_eq!(sk.public_key().as_bytes(), dalek.verifying_key().as_bytes());
        assert_eq!(
            SecretKey::from_bytes(&[0u8; 65]).unwrap_err(),
            KeyError::Length {
                expected: "32 or 64",
                got: 65
            }
        );
        assert_eq!("%%%".parse::<SecretKey>().unwrap_err(), KeyError::Base64);
    }

    #[test]
    fn secret_key_mismatch() {
        let a = SecretKey::from_seed(&[1u8; 32]);
        let b = SecretKey::from_seed(&[2u8; 32]);
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&[1u8; 32]);
        bytes[32..].copy_from_slice(b.public_key().as_bytes());
        assert_eq!(
            SecretKey::from_base64(&STANDARD.encode(bytes)).unwrap_err(),
            KeyError::Mismatch
        );
        bytes[32..].copy_from_slice(a.public_key().as_bytes());
        assert!(SecretKey::from_bytes(&bytes).is_ok());
    }

    #[test]
    fn secret_key_debug_hides_secret() {
        let sk = SecretKey::from_seed(&[3u8; 32]);
        let debug = format!("{sk:?}");
        assert_eq!(
            debug,
            format!("SecretKey {{ public: {}, .. }}", sk.public_key())
        );
        assert!(!debug.contains(&sk.to_base64()[..40]));
        assert!(!debug.contains(&STANDARD.encode([3u8; 32])[..40]));
    }

    #[test]
    fn x25519_secret_is_clamped_sha512_of_seed() {
        let sk = SecretKey::from_seed(&[5u8; 32]);
        let x = sk.x25519_secret();
        assert_eq!(x[0] & 7, 0);
        assert_eq!(x[31] & 0x80, 0);
        assert_eq!(x[31] & 0x40, 0x40);
        let digest = Sha512::digest([5u8; 32]);
        assert_eq!(x[1..31], digest[1..31]);
    }

    #[test]
    fn recipient_cache_bounded_fifo() {
        let keys: Vec<String> = (0..5u64)
            .map(|i| {
                SecretKey::generate(&mut ChaCha20Rng::seed_from_u64(i))
                    .public_key()
                    .to_base64()
            })
            .collect();
        let mut cache = RecipientCache::new(3);
        assert!(cache.is_empty());
        for k in &keys[..3] {
            assert_eq!(cache.get_or_parse(k).unwrap().to_base64(), *k);
        }
        assert_eq!(cache.len(), 3);
        // A hit does not grow the cache.
        cache.get_or_parse(&keys[1]).unwrap();
        assert_eq!(cache.len(), 3);
        cache.get_or_parse(&keys[3]).unwrap();
        assert_eq!(cache.len(), 3);
        assert!(!cache.contains(&keys[0]), "oldest entry evicted");
        assert!(cache.contains(&keys[3]));
        // Errors are returned and not cached.
        assert_eq!(cache.get_or_parse("???"), Err(KeyError::Base64));
        assert!(!cache.contains("???"));
        assert_eq!(cache.len(), 3);
        assert_eq!(RecipientCache::default().capacity, RECIPIENT_CACHE_CAPACITY);
    }

    proptest::proptest! {
        #[test]
        fn public_key_parse_never_panics(text in ".*") {
            let _ = PublicKey::from_base64(&text);
            let _ = SecretKey::from_base64(&text);
        }

        #[test]
        fn public_key_bytes_never_panic(bytes in proptest::array::uniform32(proptest::num::u8::ANY)) {
            if let Ok(pk) = PublicKey::from_bytes(&bytes) {
                proptest::prop_assert_eq!(PublicKey::from_base64(&pk.to_base64()).unwrap(), pk);
            }
        }
    }
}
