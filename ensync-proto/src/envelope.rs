//! End-to-end payload envelopes (PROTOCOL.md section 2).
//!
//! A publish's `payload` field is standard base64 of a JSON envelope. Two shapes exist:
//!
//! - **single**: `{"nonce","ciphertext","ephemeralPublicKey"}`, a NaCl `crypto_box`
//!   (X25519, HSalsa20, XSalsa20-Poly1305, tag prepended) from a fresh ephemeral key pair
//!   to the recipient's X25519 key;
//! - **hybrid**: `{"type":"hybrid","payload":{"nonce","ciphertext"},"keys":{<id>: <wrapped key>}}`,
//!   a NaCl `secretbox` of the plaintext under a random message key, that key wrapped per
//!   recipient by a `crypto_box` as in the single envelope.
//!
//! We write one strict form of each ([`encrypt_single`], [`encrypt_hybrid`]) and read every
//! dialect the published clients write ([`decrypt`], [`Envelope`]).

use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use crypto_secretbox::aead::AeadInPlace;
use crypto_secretbox::aead::generic_array::GenericArray;
use crypto_secretbox::{Kdf, KeyInit, XSalsa20Poly1305};
use curve25519_dalek::{EdwardsPoint, MontgomeryPoint};
use rand_core::CryptoRngCore;
use serde_json::Value;
use zeroize::{Zeroize, Zeroizing};

use crate::keys::{PublicKey, SecretKey};

/// Nonce length of `crypto_box` and `secretbox`.
const NONCE_LEN: usize = 24;
/// Poly1305 tag length, prepended to every ciphertext.
const TAG_LEN: usize = 16;
/// Length of keys: X25519 keys and the hybrid message key.
const KEY_LEN: usize = 32;

/// The most key entries of one hybrid envelope that [`decrypt`] tries (each try costs
/// one X25519 operation), so a hostile envelope with a huge `keys` map cannot make a
/// subscriber spin. The entry keyed by our own public key is always tried first.
pub const MAX_HYBRID_ATTEMPTS: usize = 4096;

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

/// Standard-alphabet base64 that accepts text with or without `=` padding and
/// non-zero trailing bits, as the published (Python, Go, Node) decoders do.
const LENIENT_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Decodes base64 leniently, ignoring ASCII whitespace anywhere (line breaks included).
///
/// Whitespace is not in the alphabet, so text that has any fails the first decode; only
/// then is it stripped and decoded again (the common, compact case reads the text once).
fn lenient_b64(text: &str) -> Option<Vec<u8>> {
    if let Ok(bytes) = LENIENT_B64.decode(text) {
        return Some(bytes);
    }
    if !text.bytes().any(|b| b.is_ascii_whitespace()) {
        return None;
    }
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    LENIENT_B64.decode(compact).ok()
}

// ---------------------------------------------------------------------------
// Primitives: crypto_box and secretbox, NaCl layout (tag || ciphertext).
// ---------------------------------------------------------------------------

/// The Montgomery u-coordinate of an Edwards point (a shared secret), wiping the point.
fn shared_u(point: EdwardsPoint) -> Zeroizing<[u8; KEY_LEN]> {
    let point = Zeroizing::new(point);
    let u = Zeroizing::new(point.to_montgomery());
    Zeroizing::new(u.to_bytes())
}

/// X25519 (RFC 7748) of the u-coordinate `their` and the secret `our` (clamped here),
/// byte for byte what the Montgomery ladder (and libsodium) computes.
///
/// With the vectorised backend, a `their` on the curve is multiplied in Edwards form
/// ([`x25519_edwards`]); points on the twist (and every point without that backend) take
/// the ladder. Both paths are constant-time in the secret; which one runs depends only
/// on the public `their` and the CPU.
fn x25519(their: &[u8; KEY_LEN], our: &[u8; KEY_LEN]) -> Zeroizing<[u8; KEY_LEN]> {
    let their = MontgomeryPoint(*their);
    if vector_backend() {
        if let Some(shared) = x25519_edwards(&their, our) {
            return shared;
        }
    }
    x25519_ladder(&their, our)
}

/// X25519 to a parsed recipient key: its Edwards point is kept from parsing, so the
/// Edwards path needs no conversion at all.
fn x25519_to(recipient: &PublicKey, our: &[u8; KEY_LEN]) -> Zeroizing<[u8; KEY_LEN]> {
    if vector_backend() {
        shared_u(recipient.edwards_point().mul_clamped(*our))
    } else {
        x25519_ladder(&MontgomeryPoint(*recipient.x25519_bytes()), our)
    }
}

/// Whether curve25519-dalek multiplies Edwards points on its vectorised backend: it
/// picks AVX2 at run time on x86-64 CPUs that have it. There the Edwards path (lift,
/// multiply, map back: two extra field exponentiations) beats its serial ladder by
/// about a quarter; on the serial backend it is about a fifth slower than the ladder.
fn vector_backend() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// X25519 through the Edwards form: the u-coordinate of `k·P` depends on `P` only
/// through its u-coordinate, so `their` is lifted to an Edwards point (either sign
/// does), multiplied there, and mapped back. `None` when `their` is not on the curve
/// (a twist point, or u = -1), which has no Edwards form.
fn x25519_edwards(
    their: &MontgomeryPoint,
    our: &[u8; KEY_LEN],
) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    let point = their.to_edwards(0)?;
    Some(shared_u(point.mul_clamped(*our)))
}

/// X25519 by the Montgomery ladder.
fn x25519_ladder(their: &MontgomeryPoint, our: &[u8; KEY_LEN]) -> Zeroizing<[u8; KEY_LEN]> {
    let shared = Zeroizing::new(their.mul_clamped(*our));
    Zeroizing::new(shared.to_bytes())
}

/// The `crypto_box` cipher between `their` X25519 public key and `our` X25519 secret:
/// XSalsa20-Poly1305 keyed by HSalsa20(X25519(our, their), 0). `None` when the shared
/// secret is all zeros (a small-order public key), which libsodium refuses too.
fn box_cipher(their: &[u8; KEY_LEN], our: &[u8; KEY_LEN]) -> Option<XSalsa20Poly1305> {
    box_cipher_from_shared(&x25519(their, our))
}

/// The `crypto_box` cipher of an X25519 shared secret; `None` when it is all zeros.
fn box_cipher_from_shared(shared: &[u8; KEY_LEN]) -> Option<XSalsa20Poly1305> {
    if shared.iter().all(|&b| b == 0) {
        return None;
    }
    let mut key = XSalsa20Poly1305::kdf(GenericArray::from_slice(shared), &GenericArray::default());
    let cipher = XSalsa20Poly1305::new(&key);
    key.as_mut_slice().zeroize();
    Some(cipher)
}

/// Seals `plaintext`: returns tag || ciphertext.
fn seal(cipher: &XSalsa20Poly1305, nonce: &[u8; NONCE_LEN], plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(TAG_LEN + plaintext.len());
    out.extend_from_slice(&[0u8; TAG_LEN]);
    out.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_in_place_detached(GenericArray::from_slice(nonce), b"", &mut out[TAG_LEN..])
        // Only non-empty associated data is refused; we pass none.
        .expect("XSalsa20Poly1305 accepts empty associated data");
    out[..TAG_LEN].copy_from_slice(&tag);
    out
}

/// Opens tag || ciphertext; `None` if it is too short or does not authenticate.
fn open(cipher: &XSalsa20Poly1305, nonce: &[u8; NONCE_LEN], boxed: &[u8]) -> Option<Vec<u8>> {
    if boxed.len() < TAG_LEN {
        return None;
    }
    let (tag, ciphertext) = boxed.split_at(TAG_LEN);
    let mut buffer = ciphertext.to_vec();
    cipher
        .decrypt_in_place_detached(
            GenericArray::from_slice(nonce),
            b"",
            &mut buffer,
            GenericArray::from_slice(tag),
        )
        .ok()?;
    Some(buffer)
}

/// A `crypto_box` from a fresh ephemeral key pair to `recipient`: (nonce, tag||ct,
/// ephemeral public key), each as standard base64.
fn box_to(
    plaintext: &[u8],
    recipient: &PublicKey,
    rng: &mut impl CryptoRngCore,
) -> (String, String, String) {
    loop {
        let mut ephemeral = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(ephemeral.as_mut());
        let ephemeral_public = MontgomeryPoint::mul_base_clamped(*ephemeral).to_bytes();
        let shared = x25519_to(recipient, &ephemeral);
        // Recipients are prime-order points (checked at parse), so the shared secret is
        // never zero; the loop only guards the invariant.
        let Some(cipher) = box_cipher_from_shared(&shared) else {
            continue;
        };
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let boxed = seal(&cipher, &nonce, plaintext);
        return (
            STANDARD.encode(nonce),
            STANDARD.encode(boxed),
            STANDARD.encode(ephemeral_public),
        );
    }
}

// ---------------------------------------------------------------------------
// Writers.
// ---------------------------------------------------------------------------

/// Encrypts `plaintext` for one recipient: the single-recipient envelope, as the
/// outer base64 text that goes in `payload`.
///
/// Every published client reads this form. The JSON is
/// `{"nonce":…,"ciphertext":…,"ephemeralPublicKey":…}` (standard base64 values).
pub fn encrypt_single(
    plaintext: &[u8],
    recipient: &PublicKey,
    rng: &mut impl CryptoRngCore,
) -> String {
    let (nonce, ciphertext, ephemeral) = box_to(plaintext, recipient, rng);
    // Base64 text needs no JSON escaping, so the envelope is written directly.
    let json = format!(
        r#"{{"nonce":"{nonce}","ciphertext":"{ciphertext}","ephemeralPublicKey":"{ephemeral}"}}"#
    );
    STANDARD.encode(json)
}

/// Encrypts `plaintext` once for many recipients: the hybrid envelope as PROTOCOL.md
/// section 2 prescribes, as outer base64 text.
///
/// The plaintext is sealed once with `secretbox` under a fresh random 32-byte message
/// key; the raw key is boxed for each recipient (fresh ephemeral key pair and nonce per
/// recipient), and the one wrapped key is written under both `ciphertext` and
/// `encryptedKey` so Go-style and Node-style readers find it. Entries are keyed by the
/// recipient's base64 public key; a recipient listed twice gets one entry. With no
/// recipients the envelope has an empty `keys` map and nobody can read it.
///
/// Readers: the Go and Node clients and ours. The published Python client cannot read
/// any raw-key hybrid envelope (not even its own); use [`encrypt_single`] for it.
pub fn encrypt_hybrid(
    plaintext: &[u8],
    recipients: &[PublicKey],
    rng: &mut impl CryptoRngCore,
) -> String {
    let mut message_key = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill_bytes(message_key.as_mut());
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let cipher = XSalsa20Poly1305::new(GenericArray::from_slice(message_key.as_ref()));
    let sealed = seal(&cipher, &nonce, plaintext);

    let mut json = format!(
        r#"{{"type":"hybrid","payload":{{"nonce":"{}","ciphertext":"{}"}},"keys":{{"#,
        STANDARD.encode(nonce),
        STANDARD.encode(sealed)
    );
    let mut seen: Vec<&PublicKey> = Vec::with_capacity(recipients.len());
    for recipient in recipients {
        if seen.contains(&recipient) {
            continue;
        }
        let (k_nonce, k_ct, k_eph) = box_to(message_key.as_ref(), recipient, rng);
        if !seen.is_empty() {
            json.push(',');
        }
        seen.push(recipient);
        json.push_str(&format!(
            r#""{}":{{"nonce":"{k_nonce}","ciphertext":"{k_ct}","encryptedKey":"{k_ct}","ephemeralPublicKey":"{k_eph}"}}"#,
            recipient.to_base64()
        ));
    }
    json.push_str("}}");
    STANDARD.encode(json)
}

// ---------------------------------------------------------------------------
// Reader.
// ---------------------------------------------------------------------------

/// One parsed `crypto_box`: nonce, tag || ciphertext, the sender's X25519 public key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SealedBox {
    nonce: [u8; NONCE_LEN],
    boxed: Vec<u8>,
    ephemeral: [u8; KEY_LEN],
}

impl SealedBox {
    fn open(&self, key: &SecretKey) -> Option<Vec<u8>> {
        let cipher = box_cipher(&self.ephemeral, key.x25519_secret())?;
        open(&cipher, &self.nonce, &self.boxed)
    }
}

/// One entry of a hybrid envelope's `keys` map.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyEntry {
    id: String,
    /// The boxes to try: one, or two when `ciphertext` and `encryptedKey` differ.
    /// `Err` holds why the entry is unusable.
    boxes: Result<Vec<SealedBox>, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Inner {
    Single(SealedBox),
    Hybrid {
        nonce: [u8; NONCE_LEN],
        ciphertext: Vec<u8>,
        keys: Vec<KeyEntry>,
    },
}

/// A parsed payload envelope of any dialect (the typed layer under [`decrypt`]).
///
/// Parsing checks the shape (base64, JSON, field types and lengths) without any key;
/// [`Envelope::open`] then decrypts with one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    inner: Inner,
}

fn field<'a>(obj: &'a serde_json::Map<String, Value>, name: &str) -> Result<&'a str, String> {
    match obj.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("field `{name}` is not a string")),
        None => Err(format!("field `{name}` is missing")),
    }
}

fn b64_field(obj: &serde_json::Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    lenient_b64(field(obj, name)?).ok_or_else(|| format!("field `{name}` is not valid base64"))
}

fn fixed<const N: usize>(bytes: Vec<u8>, name: &str) -> Result<[u8; N], String> {
    let len = bytes.len();
    bytes
        .try_into()
        .map_err(|_| format!("field `{name}` has {len} bytes, expected {N}"))
}

fn ciphertext_field(obj: &serde_json::Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let bytes = b64_field(obj, name)?;
    if bytes.len() < TAG_LEN {
        return Err(format!(
            "field `{name}` has {} bytes, shorter than the {TAG_LEN}-byte tag",
            bytes.len()
        ));
    }
    Ok(bytes)
}

fn as_object<'a>(
    value: &'a Value,
    what: &str,
) -> Result<&'a serde_json::Map<String, Value>, String> {
    value
        .as_object()
        .ok_or_else(|| format!("{what} is not a JSON object"))
}

fn parse_single(obj: &serde_json::Map<String, Value>) -> Result<SealedBox, String> {
    Ok(SealedBox {
        nonce: fixed(b64_field(obj, "nonce")?, "nonce")?,
        boxed: ciphertext_field(obj, "ciphertext")?,
        ephemeral: fixed(b64_field(obj, "ephemeralPublicKey")?, "ephemeralPublicKey")?,
    })
}

fn parse_key_entry(value: &Value) -> Result<Vec<SealedBox>, String> {
    let obj = as_object(value, "key entry")?;
    let nonce = fixed(b64_field(obj, "nonce")?, "nonce")?;
    let ephemeral = fixed(b64_field(obj, "ephemeralPublicKey")?, "ephemeralPublicKey")?;
    let mut boxes: Vec<SealedBox> = Vec::with_capacity(2);
    let mut first_error = None;
    for name in ["ciphertext", "encryptedKey"] {
        if !obj.contains_key(name) {
            continue;
        }
        match ciphertext_field(obj, name) {
            Ok(boxed) => {
                if !boxes.iter().any(|b| b.boxed == boxed) {
                    boxes.push(SealedBox {
                        nonce,
                        boxed,
                        ephemeral,
                    });
                }
            }
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    if boxes.is_empty() {
        return Err(first_error
            .unwrap_or_else(|| "key entry has neither `ciphertext` nor `encryptedKey`".into()));
    }
    Ok(boxes)
}

impl Envelope {
    /// Parses the outer base64 text of a `payload` (or a replay's `event_data`).
    ///
    /// Accepts the single envelope and every hybrid dialect of PROTOCOL.md section 2:
    /// any map key, the wrapped key under `ciphertext` or `encryptedKey`. An object
    /// with `"type":"hybrid"` (or, lacking `type`, with `payload` and `keys`) is hybrid;
    /// anything else must be a single envelope. Key entries that are malformed are kept
    /// as unusable rather than failing the whole envelope.
    pub fn parse(payload: &str) -> Result<Self, EnvelopeError> {
        let decoded = lenient_b64(payload).ok_or(EnvelopeError::Base64)?;
        let value: Value = serde_json::from_slice(&decoded)
            .map_err(|e| EnvelopeError::Format(format!("not JSON: {e}")))?;
        let obj = as_object(&value, "envelope").map_err(EnvelopeError::Format)?;
        let hybrid = match obj.get("type") {
            Some(Value::String(t)) if t == "hybrid" => true,
            Some(_) => false,
            None => obj.contains_key("keys") && obj.contains_key("payload"),
        };
        let inner = if hybrid {
            Self::parse_hybrid(obj).map_err(EnvelopeError::Format)?
        } else {
            Inner::Single(parse_single(obj).map_err(EnvelopeError::Format)?)
        };
        Ok(Self { inner })
    }

    fn parse_hybrid(obj: &serde_json::Map<String, Value>) -> Result<Inner, String> {
        let payload = as_object(
            obj.get("payload").ok_or("field `payload` is missing")?,
            "field `payload`",
        )?;
        let nonce = fixed(b64_field(payload, "nonce")?, "nonce")?;
        let ciphertext = ciphertext_field(payload, "ciphertext")?;
        let keys = as_object(
            obj.get("keys").ok_or("field `keys` is missing")?,
            "field `keys`",
        )?;
        let keys = keys
            .iter()
            .map(|(id, entry)| KeyEntry {
                id: id.clone(),
                boxes: parse_key_entry(entry),
            })
            .collect();
        Ok(Inner::Hybrid {
            nonce,
            ciphertext,
            keys,
        })
    }

    /// Whether this is a hybrid (multi-recipient) envelope.
    pub fn is_hybrid(&self) -> bool {
        matches!(self.inner, Inner::Hybrid { .. })
    }

    /// The map keys (recipient ids, in whatever form the writer used) of a hybrid
    /// envelope; empty for a single envelope.
    pub fn recipient_ids(&self) -> impl Iterator<Item = &str> {
        let keys: &[KeyEntry] = match &self.inner {
            Inner::Single(_) => &[],
            Inner::Hybrid { keys, .. } => keys,
        };
        keys.iter().map(|k| k.id.as_str())
    }

    /// Decrypts with `key`.
    ///
    /// For a hybrid envelope, the entries whose map key is our public key (base64, or
    /// hex in either case) are tried first, then every other entry (at most
    /// [`MAX_HYBRID_ATTEMPTS`] in all). The boxed message key may be 32 raw bytes or
    /// 44 characters of base64 of them. Returns [`EnvelopeError::Decrypt`] when no
    /// usable entry opens, [`EnvelopeError::Format`] when no entry is usable at all.
    pub fn open(&self, key: &SecretKey) -> Result<Vec<u8>, EnvelopeError> {
        match &self.inner {
            Inner::Single(sealed) => sealed.open(key).ok_or(EnvelopeError::Decrypt),
            Inner::Hybrid {
                nonce,
                ciphertext,
                keys,
            } => open_hybrid(nonce, ciphertext, keys, key),
        }
    }
}

/// Reads a boxed message key: 32 raw bytes, or base64 text of 32 bytes (Python's form).
fn message_key_from(opened: Vec<u8>) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    let opened = Zeroizing::new(opened);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if opened.len() == KEY_LEN {
        key.copy_from_slice(&opened);
        return Some(key);
    }
    let text = std::str::from_utf8(&opened).ok()?;
    let decoded = Zeroizing::new(lenient_b64(text)?);
    if decoded.len() != KEY_LEN {
        return None;
    }
    key.copy_from_slice(&decoded);
    Some(key)
}

fn open_hybrid(
    nonce: &[u8; NONCE_LEN],
    ciphertext: &[u8],
    keys: &[KeyEntry],
    key: &SecretKey,
) -> Result<Vec<u8>, EnvelopeError> {
    if keys.is_empty() {
        return Err(EnvelopeError::Format(
            "hybrid envelope has no key entries".into(),
        ));
    }
    let ours_b64 = key.public_key().to_base64();
    let ours_hex = key.public_key().to_hex();
    let is_ours = |id: &str| id == ours_b64 || id.eq_ignore_ascii_case(&ours_hex);
    let ordered = keys
        .iter()
        .filter(|k| is_ours(&k.id))
        .chain(keys.iter().filter(|k| !is_ours(&k.id)));

    let mut attempts = 0usize;
    let mut first_format_error: Option<&str> = None;
    for entry in ordered {
        let boxes = match &entry.boxes {
            Ok(boxes) => boxes,
            Err(e) => {
                first_format_error.get_or_insert(e);
                continue;
            }
        };
        for sealed in boxes {
            if attempts >= MAX_HYBRID_ATTEMPTS {
                return Err(EnvelopeError::Decrypt);
            }
            attempts += 1;
            let Some(message_key) = sealed.open(key).and_then(message_key_from) else {
                continue;
            };
            let cipher = XSalsa20Poly1305::new(GenericArray::from_slice(message_key.as_ref()));
            if let Some(plaintext) = open(&cipher, nonce, ciphertext) {
                return Ok(plaintext);
            }
        }
    }
    match (attempts, first_format_error) {
        (0, Some(e)) => Err(EnvelopeError::Format(format!("no usable key entry: {e}"))),
        _ => Err(EnvelopeError::Decrypt),
    }
}

/// Decrypts any envelope variant (single, or any hybrid dialect) from its outer base64 text.
///
/// Shorthand for [`Envelope::parse`] then [`Envelope::open`]. Never panics: bad input
/// gives [`EnvelopeError::Base64`] (outer text), [`EnvelopeError::Format`] (not an
/// envelope: bad JSON, missing fields, wrong lengths) or [`EnvelopeError::Decrypt`]
/// (wrong key or tampered data).
pub fn decrypt(payload: &str, key: &SecretKey) -> Result<Vec<u8>, EnvelopeError> {
    Envelope::parse(payload)?.open(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    fn key(seed: u8) -> SecretKey {
        SecretKey::from_seed(&[seed; 32])
    }

    fn json_of(payload: &str) -> Value {
        serde_json::from_slice(&STANDARD.decode(payload).unwrap()).unwrap()
    }

    fn encode(value: &Value) -> String {
        STANDARD.encode(serde_json::to_vec(value).unwrap())
    }

    /// How a hand-built hybrid envelope names and fills its key entries.
    #[derive(Clone, Copy)]
    enum Dialect {
        /// Go: base64 map key, `ciphertext`, raw key boxed.
        Go,
        /// Node: base64 map key, `encryptedKey`, raw key boxed.
        Node,
        /// Python ensync-core: hex map key, `ciphertext`, raw key boxed.
        PythonHex,
        /// Hex map key in upper case.
        UpperHex,
        /// Base64 map key, `ciphertext`, boxed key is base64 text (44 chars).
        Base64Boxed,
        /// Map keys unrelated to the recipients.
        OpaqueIds,
    }

    /// Builds a hybrid envelope in `dialect` with this module's primitives.
    fn hybrid_in(dialect: Dialect, plaintext: &[u8], recipients: &[&PublicKey]) -> String {
        let mut r = rng(99);
        let mut message_key = [0u8; KEY_LEN];
        r.fill_bytes(&mut message_key);
        let mut nonce = [0u8; NONCE_LEN];
        r.fill_bytes(&mut nonce);
        let sealed = seal(
            &XSalsa20Poly1305::new(GenericArray::from_slice(&message_key)),
            &nonce,
            plaintext,
        );
        let mut keys = serde_json::Map::new();
        for (i, recipient) in recipients.iter().enumerate() {
            let boxed_plain = match dialect {
                Dialect::Base64Boxed => STANDARD.encode(message_key).into_bytes(),
                _ => message_key.to_vec(),
            };
            let (n, ct, eph) = box_to(&boxed_plain, recipient, &mut r);
            let id = match dialect {
                Dialect::PythonHex => recipient.to_hex(),
                Dialect::UpperHex => recipient.to_hex().to_uppercase(),
                Dialect::OpaqueIds => format!("recipient-{i}"),
                _ => recipient.to_base64(),
            };
            let field = match dialect {
                Dialect::Node => "encryptedKey",
                _ => "ciphertext",
            };
            keys.insert(
                id,
                serde_json::json!({"nonce": n, field: ct, "ephemeralPublicKey": eph}),
            );
        }
        encode(&serde_json::json!({
            "type": "hybrid",
            "payload": {"nonce": STANDARD.encode(nonce), "ciphertext": STANDARD.encode(sealed)},
            "keys": keys,
        }))
    }

    /// A random secret scalar (unclamped bytes: X25519 clamps them).
    fn random_scalar(r: &mut ChaCha20Rng) -> [u8; KEY_LEN] {
        let mut k = [0u8; KEY_LEN];
        r.fill_bytes(&mut k);
        k
    }

    /// The ladder's answer, the reference for the Edwards path.
    fn ladder(u: &[u8; KEY_LEN], k: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
        MontgomeryPoint(*u).mul_clamped(*k).to_bytes()
    }

    #[test]
    fn x25519_edwards_path_equals_ladder_on_curve_points() {
        use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
        let mut r = rng(11);
        for i in 0..64 {
            // Prime-order points and points with every torsion component mixed in.
            let p =
                ED25519_BASEPOINT_POINT.mul_clamped(random_scalar(&mut r)) + EIGHT_TORSION[i % 8];
            let u = p.to_montgomery().to_bytes();
            let k = random_scalar(&mut r);
            let ours = x25519_edwards(&MontgomeryPoint(u), &k).expect("on the curve");
            assert_eq!(*ours, ladder(&u, &k), "point {i}");
            assert_eq!(*x25519(&u, &k), *ours);
            assert_ne!(*ours, [0u8; KEY_LEN]);
        }
    }

    #[test]
    fn x25519_random_bytes_both_paths_equal_ladder() {
        let mut r = rng(12);
        let (mut curve, mut twist) = (0, 0);
        for _ in 0..96 {
            // Any 32 bytes: about half are curve points, half twist points; the top
            // bit is set at random and must be ignored as the ladder ignores it.
            let u = random_scalar(&mut r);
            let k = random_scalar(&mut r);
            match x25519_edwards(&MontgomeryPoint(u), &k) {
                Some(shared) => {
                    curve += 1;
                    assert_eq!(*shared, ladder(&u, &k), "u = {}", hex::encode(u));
                }
                None => twist += 1,
            }
            assert_eq!(*x25519(&u, &k), ladder(&u, &k), "u = {}", hex::encode(u));
        }
        assert!(curve > 10 && twist > 10, "curve {curve}, twist {twist}");
    }

    #[test]
    fn x25519_non_canonical_and_twist_edge_cases() {
        let mut r = rng(13);
        // p - 1 (u = -1, on the twist: no Edwards form) and the encodings of u + p
        // (and with the top bit set) for every u < 19, all readable by the ladder.
        let p_minus_1 = {
            let mut b = [0xffu8; KEY_LEN];
            b[0] = 0xec;
            b[31] = 0x7f;
            b
        };
        assert!(x25519_edwards(&MontgomeryPoint(p_minus_1), &[1u8; KEY_LEN]).is_none());
        let mut cases = vec![p_minus_1];
        for small in 0u8..19 {
            let mut canonical = [0u8; KEY_LEN];
            canonical[0] = small;
            let mut plus_p = p_minus_1;
            plus_p[0] = 0xed + small;
            let mut top_bit = canonical;
            top_bit[31] |= 0x80;
            cases.extend([canonical, plus_p, top_bit]);
        }
        for u in cases {
            let k = random_scalar(&mut r);
            let expected = ladder(&u, &k);
            if let Some(shared) = x25519_edwards(&MontgomeryPoint(u), &k) {
                assert_eq!(*shared, expected, "u = {}", hex::encode(u));
            }
            assert_eq!(*x25519(&u, &k), expected, "u = {}", hex::encode(u));
        }
    }

    #[test]
    fn small_order_points_give_zero_and_are_refused() {
        use curve25519_dalek::constants::EIGHT_TORSION;
        let mut r = rng(14);
        let mut small_order: Vec<[u8; KEY_LEN]> = EIGHT_TORSION
            .iter()
            .map(|t| t.to_montgomery().to_bytes())
            .collect();
        // Their twins with the (ignored) top bit set.
        for u in small_order.clone() {
            let mut top = u;
            top[31] |= 0x80;
            small_order.push(top);
        }
        for u in &small_order {
            let k = random_scalar(&mut r);
            let edwards = x25519_edwards(&MontgomeryPoint(*u), &k).expect("on the curve");
            assert_eq!(*edwards, [0u8; KEY_LEN], "u = {}", hex::encode(u));
            assert_eq!(*x25519(u, &k), [0u8; KEY_LEN], "u = {}", hex::encode(u));
            assert_eq!(ladder(u, &k), [0u8; KEY_LEN]);
            assert!(box_cipher(u, &k).is_none());
        }
        // An envelope whose ephemeral key has small order does not open.
        let sk = key(1);
        let payload = encrypt_single(b"x", sk.public_key(), &mut rng(1));
        let mut json = json_of(&payload);
        json["ephemeralPublicKey"] = Value::String(STANDARD.encode(small_order[2]));
        assert_eq!(decrypt(&encode(&json), &sk), Err(EnvelopeError::Decrypt));
    }

    #[test]
    fn encrypt_side_edwards_point_equals_ladder_on_x25519_bytes() {
        let mut r = rng(15);
        for i in 0..16u8 {
            let recipient = key(i).public_key().clone();
            let e = random_scalar(&mut r);
            let edwards = shared_u(recipient.edwards_point().mul_clamped(e));
            assert_eq!(*edwards, ladder(recipient.x25519_bytes(), &e));
            assert_eq!(*x25519_to(&recipient, &e), *edwards);
            assert_eq!(*x25519(recipient.x25519_bytes(), &e), *edwards);
        }
    }

    #[test]
    fn lenient_base64_forms() {
        let data: Vec<u8> = (0u8..40).collect();
        let text = STANDARD.encode(&data);
        assert_eq!(lenient_b64(&text).unwrap(), data);
        assert_eq!(lenient_b64(text.trim_end_matches('=')).unwrap(), data);
        let spaced = format!(" {}\r\n{}\t{} \n", &text[..10], &text[10..30], &text[30..]);
        assert_eq!(lenient_b64(&spaced).unwrap(), data);
        assert_eq!(lenient_b64("ab$d"), None);
        assert_eq!(lenient_b64("ab $d"), None);
        assert_eq!(lenient_b64("").unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn single_round_trip() {
        let sk = key(1);
        for len in [0usize, 1, 15, 16, 17, 1000] {
            let plaintext: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let payload = encrypt_single(&plaintext, sk.public_key(), &mut rng(len as u64));
            assert_eq!(decrypt(&payload, &sk).unwrap(), plaintext);
            let env = Envelope::parse(&payload).unwrap();
            assert!(!env.is_hybrid());
            assert_eq!(env.recipient_ids().count(), 0);
        }
    }

    #[test]
    fn single_shape() {
        let sk = key(1);
        let payload = encrypt_single(b"{\"a\":1}", sk.public_key(), &mut rng(1));
        let json = json_of(&payload);
        let obj = json.as_object().unwrap();
        let mut names: Vec<&str> = obj.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["ciphertext", "ephemeralPublicKey", "nonce"]);
        let b = |k: &str| STANDARD.decode(obj[k].as_str().unwrap()).unwrap();
        assert_eq!(b("nonce").len(), 24);
        assert_eq!(b("ephemeralPublicKey").len(), 32);
        assert_eq!(b("ciphertext").len(), 16 + 7);
        // Fresh ephemeral key and nonce per message.
        let mut r = rng(2);
        let a = json_of(&encrypt_single(b"x", sk.public_key(), &mut r));
        let c = json_of(&encrypt_single(b"x", sk.public_key(), &mut r));
        assert_ne!(a["ephemeralPublicKey"], c["ephemeralPublicKey"]);
        assert_ne!(a["nonce"], c["nonce"]);
    }

    #[test]
    fn single_wrong_key() {
        let payload = encrypt_single(b"secret", key(1).public_key(), &mut rng(1));
        assert_eq!(decrypt(&payload, &key(2)), Err(EnvelopeError::Decrypt));
    }

    #[test]
    fn single_tampered() {
        let sk = key(1);
        let payload = encrypt_single(b"hello world", sk.public_key(), &mut rng(1));
        let original = json_of(&payload);
        for field in ["nonce", "ciphertext", "ephemeralPublicKey"] {
            for byte in [0usize, 5, 20] {
                let mut json = original.clone();
                let mut bytes = STANDARD.decode(json[field].as_str().unwrap()).unwrap();
                bytes[byte] ^= 0x01;
                json[field] = Value::String(STANDARD.encode(bytes));
                assert_eq!(
                    decrypt(&encode(&json), &sk),
                    Err(EnvelopeError::Decrypt),
                    "{field}[{byte}]"
                );
            }
        }
    }

    #[test]
    fn hybrid_round_trip_and_shape() {
        let keys: Vec<SecretKey> = (1..=3).map(key).collect();
        let publics: Vec<PublicKey> = keys.iter().map(|k| k.public_key().clone()).collect();
        let payload = encrypt_hybrid(b"{\"n\":42}", &publics, &mut rng(5));
        for sk in &keys {
            assert_eq!(decrypt(&payload, sk).unwrap(), b"{\"n\":42}");
        }
        assert_eq!(decrypt(&payload, &key(9)), Err(EnvelopeError::Decrypt));

        let json = json_of(&payload);
        assert_eq!(json["type"], "hybrid");
        let entries = json["keys"].as_object().unwrap();
        assert_eq!(entries.len(), 3);
        for pk in &publics {
            let entry = &entries[&pk.to_base64()];
            assert_eq!(entry["ciphertext"], entry["encryptedKey"]);
            // 32-byte raw key + 16-byte tag.
            let boxed = STANDARD
                .decode(entry["ciphertext"].as_str().unwrap())
                .unwrap();
            assert_eq!(boxed.len(), 48);
            assert_eq!(
                STANDARD
                    .decode(entry["ephemeralPublicKey"].as_str().unwrap())
                    .unwrap()
                    .len(),
                32
            );
        }
        // Each recipient gets its own ephemeral key.
        let ephemerals: std::collections::HashSet<&Value> =
            entries.values().map(|e| &e["ephemeralPublicKey"]).collect();
        assert_eq!(ephemerals.len(), 3);
        let env = Envelope::parse(&payload).unwrap();
        assert!(env.is_hybrid());
        let mut ids: Vec<&str> = env.recipient_ids().collect();
        ids.sort_unstable();
        let mut expected: Vec<String> = publics.iter().map(PublicKey::to_base64).collect();
        expected.sort_unstable();
        assert_eq!(ids, expected);
    }

    #[test]
    fn hybrid_duplicate_and_no_recipients() {
        let sk = key(1);
        let pk = sk.public_key().clone();
        let payload = encrypt_hybrid(b"dup", &[pk.clone(), pk], &mut rng(1));
        assert_eq!(json_of(&payload)["keys"].as_object().unwrap().len(), 1);
        assert_eq!(decrypt(&payload, &sk).unwrap(), b"dup");

        let nobody = encrypt_hybrid(b"lost", &[], &mut rng(1));
        assert!(matches!(
            decrypt(&nobody, &sk),
            Err(EnvelopeError::Format(_))
        ));
    }

    #[test]
    fn hybrid_dialects_decrypt() {
        let a = key(1);
        let b = key(2);
        for dialect in [
            Dialect::Go,
            Dialect::Node,
            Dialect::PythonHex,
            Dialect::UpperHex,
            Dialect::Base64Boxed,
            Dialect::OpaqueIds,
        ] {
            let payload = hybrid_in(dialect, b"{\"x\":true}", &[a.public_key(), b.public_key()]);
            assert_eq!(decrypt(&payload, &a).unwrap(), b"{\"x\":true}");
            assert_eq!(decrypt(&payload, &b).unwrap(), b"{\"x\":true}");
            assert_eq!(decrypt(&payload, &key(3)), Err(EnvelopeError::Decrypt));
        }
    }

    #[test]
    fn hybrid_tampered() {
        let sk = key(1);
        let payload = encrypt_hybrid(b"payload", &[sk.public_key().clone()], &mut rng(1));
        let original = json_of(&payload);
        let id = sk.public_key().to_base64();

        let mut json = original.clone();
        let mut ct = STANDARD
            .decode(json["payload"]["ciphertext"].as_str().unwrap())
            .unwrap();
        ct[17] ^= 0x80;
        json["payload"]["ciphertext"] = Value::String(STANDARD.encode(ct));
        assert_eq!(decrypt(&encode(&json), &sk), Err(EnvelopeError::Decrypt));

        // Both copies of the wrapped key tampered.
        let mut json = original.clone();
        let mut wrapped = STANDARD
            .decode(json["keys"][&id]["ciphertext"].as_str().unwrap())
            .unwrap();
        wrapped[3] ^= 0x01;
        let wrapped = Value::String(STANDARD.encode(wrapped));
        json["keys"][&id]["ciphertext"] = wrapped.clone();
        json["keys"][&id]["encryptedKey"] = wrapped;
        assert_eq!(decrypt(&encode(&json), &sk), Err(EnvelopeError::Decrypt));

        // Only one copy tampered: the other still opens.
        let mut json = original;
        json["keys"][&id]["ciphertext"] = Value::String(STANDARD.encode([0u8; 48]));
        assert_eq!(decrypt(&encode(&json), &sk).unwrap(), b"payload");
    }

    #[test]
    fn hybrid_tries_own_entry_first_and_caps_attempts() {
        let sk = key(1);
        let real = json_of(&encrypt_hybrid(
            b"found",
            &[sk.public_key().clone()],
            &mut rng(1),
        ));
        let real_entry = real["keys"][&sk.public_key().to_base64()].clone();
        let mut junk = serde_json::Map::new();
        let mut r = rng(3);
        for i in 0..MAX_HYBRID_ATTEMPTS {
            let mut bytes = [0u8; 24 + 48 + 32];
            r.fill_bytes(&mut bytes);
            // `0…` ids sort before any other; serde_json keeps maps sorted.
            junk.insert(
                format!("0{i:05}"),
                serde_json::json!({
                    "nonce": STANDARD.encode(&bytes[..24]),
                    "ciphertext": STANDARD.encode(&bytes[24..72]),
                    "ephemeralPublicKey": STANDARD.encode(&bytes[72..]),
                }),
            );
        }
        let with_id = |id: String| {
            let mut keys = junk.clone();
            keys.insert(id, real_entry.clone());
            let mut json = real.clone();
            json["keys"] = Value::Object(keys);
            encode(&json)
        };
        // Matched by our base64 key: tried first although it sorts last.
        assert_eq!(
            decrypt(&with_id(sk.public_key().to_base64()), &sk).unwrap(),
            b"found"
        );
        assert_eq!(
            decrypt(&with_id(sk.public_key().to_hex()), &sk).unwrap(),
            b"found"
        );
        // Unmatched id behind MAX_HYBRID_ATTEMPTS junk entries: never reached.
        assert_eq!(
            decrypt(&with_id("~unknown".into()), &sk),
            Err(EnvelopeError::Decrypt)
        );
    }

    #[test]
    fn malformed_inputs_give_clear_errors() {
        let sk = key(1);
        let format = |r: Result<Vec<u8>, EnvelopeError>| matches!(r, Err(EnvelopeError::Format(_)));
        assert_eq!(decrypt("***", &sk), Err(EnvelopeError::Base64));
        assert_eq!(decrypt("QUJD\u{e9}", &sk), Err(EnvelopeError::Base64));
        assert!(format(decrypt("", &sk)), "empty");
        assert!(format(decrypt(&STANDARD.encode("not json"), &sk)));
        assert!(format(decrypt(&STANDARD.encode("[1,2]"), &sk)));
        assert!(format(decrypt(&STANDARD.encode("{}"), &sk)));

        let good = json_of(&encrypt_single(b"hi", sk.public_key(), &mut rng(1)));
        let with = |f: &dyn Fn(&mut Value)| {
            let mut json = good.clone();
            f(&mut json);
            decrypt(&encode(&json), &sk)
        };
        assert!(format(with(
            &|j| j["nonce"] = Value::String(STANDARD.encode([0u8; 23]))
        )));
        assert!(format(with(&|j| j["nonce"] = Value::from(5))));
        assert!(format(with(&|j| j["nonce"] = Value::String("%%".into()))));
        assert!(format(with(
            &|j| j["ephemeralPublicKey"] = Value::String(STANDARD.encode([0u8; 31]))
        )));
        assert!(format(with(
            &|j| j["ciphertext"] = Value::String(STANDARD.encode([0u8; 15]))
        )));
        assert!(format(with(&|j| {
            j.as_object_mut().unwrap().remove("ciphertext");
        })));
        // A small-order ephemeral key gives an all-zero shared secret: refused.
        assert_eq!(
            with(&|j| j["ephemeralPublicKey"] = Value::String(STANDARD.encode([0u8; 32]))),
            Err(EnvelopeError::Decrypt)
        );

        let hybrid = json_of(&encrypt_hybrid(
            b"hi",
            &[sk.public_key().clone()],
            &mut rng(1),
        ));
        let with_h = |f: &dyn Fn(&mut Value)| {
            let mut json = hybrid.clone();
            f(&mut json);
            decrypt(&encode(&json), &sk)
        };
        assert!(format(with_h(&|j| j["payload"] = Value::from("x"))));
        assert!(format(with_h(
            &|j| j["keys"] = Value::from(Vec::<u8>::new())
        )));
        assert!(format(with_h(&|j| j["keys"] = serde_json::json!({}))));
        assert!(format(with_h(
            &|j| j["keys"] = serde_json::json!({"a": 1, "b": {"nonce": "x"}})
        )));
        assert!(format(with_h(&|j| {
            j.as_object_mut().unwrap().remove("payload");
        })));
        // Without `type`, `payload` + `keys` still mean hybrid.
        assert_eq!(
            with_h(&|j| {
                j.as_object_mut().unwrap().remove("type");
            })
            .unwrap(),
            b"hi"
        );
    }

    #[test]
    fn lenient_outer_base64() {
        let sk = key(1);
        let payload = encrypt_single(b"lenient", sk.public_key(), &mut rng(1));
        let unpadded = payload.trim_end_matches('=');
        assert_eq!(decrypt(unpadded, &sk).unwrap(), b"lenient");
        let wrapped: String = payload
            .as_bytes()
            .chunks(76)
            .map(|c| format!("{}\r\n", std::str::from_utf8(c).unwrap()))
            .collect();
        assert_eq!(decrypt(&wrapped, &sk).unwrap(), b"lenient");
    }

    proptest::proptest! {
        #[test]
        fn decrypt_never_panics_on_text(text in ".*") {
            let _ = decrypt(&text, &key(1));
        }

        #[test]
        fn decrypt_never_panics_on_encoded_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = decrypt(&STANDARD.encode(&bytes), &key(1));
        }

        #[test]
        fn decrypt_never_panics_on_mutated_envelopes(
            hybrid in proptest::bool::ANY,
            pos in 0usize..400,
            byte in proptest::num::u8::ANY,
            cut in 0usize..400,
        ) {
            let sk = key(1);
            let payload = if hybrid {
                encrypt_hybrid(b"{\"a\":1}", &[sk.public_key().clone(), key(2).public_key().clone()], &mut rng(1))
            } else {
                encrypt_single(b"{\"a\":1}", sk.public_key(), &mut rng(1))
            };
            let mut json = STANDARD.decode(&payload).unwrap();
            let len = json.len();
            json[pos % len] = byte;
            json.truncate(len - cut % len);
            let result = decrypt(&STANDARD.encode(&json), &sk);
            // Whatever survives a mutation must decrypt to the original, or fail.
            if let Ok(plaintext) = result {
                proptest::prop_assert_eq!(plaintext, b"{\"a\":1}".to_vec());
            }
        }
    }
}
