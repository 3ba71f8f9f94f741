//! Known-answer tests against PyNaCl and the published ensync-core client.
//!
//! `tests/data/envelope_kat.json` is written by `scripts/gen_envelope_kat.py` (PyNaCl,
//! plus ensync-core's own `encrypt_ed25519` / `hybrid_encrypt` / `payload_utils`). Every
//! envelope in it must decrypt with our code for each of its recipients, and nobody
//! else; our key conversions must equal PyNaCl's; our `payload_metadata` must equal
//! ensync-core's string.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ensync_proto::envelope::{Envelope, EnvelopeError, decrypt};
use ensync_proto::keys::{PublicKey, SecretKey};
use ensync_proto::payload_meta::payload_metadata;
use serde_json::Value;

fn kat() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/envelope_kat.json");
    let text = std::fs::read_to_string(path).expect("tests/data/envelope_kat.json is readable");
    serde_json::from_str(&text).expect("KAT file is JSON")
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("KAT field {k} is a string"))
}

fn keys(kat: &Value) -> Vec<(String, SecretKey)> {
    kat["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                s(k, "name").to_owned(),
                SecretKey::from_base64(s(k, "secret_key")).unwrap(),
            )
        })
        .collect()
}

#[test]
fn key_conversions_match_pynacl() {
    let kat = kat();
    let entries = kat["keys"].as_array().unwrap();
    assert!(entries.len() >= 3);
    for k in entries {
        let from_full = SecretKey::from_base64(s(k, "secret_key")).unwrap();
        let from_seed = SecretKey::from_base64(s(k, "seed")).unwrap();
        let public = PublicKey::from_base64(s(k, "public_key")).unwrap();

        assert_eq!(from_full.public_key(), &public);
        assert_eq!(from_seed.public_key(), &public);
        assert_eq!(from_seed.to_base64(), s(k, "secret_key"));
        assert_eq!(public.to_base64(), s(k, "public_key"));

        // crypto_sign_ed25519_pk_to_curve25519
        assert_eq!(
            STANDARD.encode(public.x25519_bytes()),
            s(k, "x25519_public"),
            "X25519 public of {}",
            s(k, "name")
        );
        // crypto_sign_ed25519_sk_to_curve25519
        assert_eq!(
            STANDARD.encode(from_full.__x25519_secret_bytes()),
            s(k, "x25519_secret"),
            "X25519 secret of {}",
            s(k, "name")
        );
    }
}

#[test]
fn every_kat_envelope_decrypts_for_its_recipients_only() {
    let kat = kat();
    let keys = keys(&kat);
    let outsider = SecretKey::from_seed(&[0x42; 32]);
    let envelopes = kat["envelopes"].as_array().unwrap();
    let mut kinds = std::collections::BTreeSet::new();
    for (i, e) in envelopes.iter().enumerate() {
        let kind = s(e, "kind");
        kinds.insert(kind.to_owned());
        let payload = s(e, "payload");
        let plaintext = s(e, "plaintext").as_bytes();
        let recipients: Vec<&str> = e["recipients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        assert!(!recipients.is_empty());
        for (name, key) in &keys {
            let got = decrypt(payload, key);
            if recipients.contains(&name.as_str()) {
                assert_eq!(
                    got.as_deref(),
                    Ok(plaintext),
                    "entry {i} ({kind}, {}) for {name}",
                    s(e, "source")
                );
            } else {
                assert_eq!(got, Err(EnvelopeError::Decrypt), "entry {i} for {name}");
            }
        }
        assert_eq!(decrypt(payload, &outsider), Err(EnvelopeError::Decrypt));
        assert_eq!(
            Envelope::parse(payload).unwrap().is_hybrid(),
            kind.starts_with("hybrid"),
            "entry {i}"
        );
    }
    for expected in [
        "single",
        "hybrid-go",
        "hybrid-node",
        "hybrid-python",
        "hybrid-base64-key",
    ] {
        assert!(kinds.contains(expected), "KAT has no {expected} entry");
    }
}

#[test]
fn kat_hybrid_shapes_are_what_they_claim() {
    // Guards the data itself: each dialect really uses its map-key form and field name.
    let kat = kat();
    for e in kat["envelopes"].as_array().unwrap() {
        let json: Value =
            serde_json::from_slice(&STANDARD.decode(s(e, "payload")).unwrap()).unwrap();
        let Some(entries) = json["keys"].as_object() else {
            continue;
        };
        for (id, entry) in entries {
            match s(e, "kind") {
                "hybrid-python" => {
                    assert_eq!(id.len(), 64);
                    assert!(entry.get("ciphertext").is_some());
                }
                "hybrid-node" => {
                    assert!(PublicKey::from_base64(id).is_ok());
                    assert!(entry.get("encryptedKey").is_some());
                    assert!(entry.get("ciphertext").is_none());
                }
                "hybrid-go" | "hybrid-base64-key" => {
                    assert!(PublicKey::from_base64(id).is_ok());
                    let boxed = STANDARD.decode(s(entry, "ciphertext")).unwrap();
                    let expected = if s(e, "kind") == "hybrid-go" { 48 } else { 60 };
                    assert_eq!(boxed.len(), expected, "tag + boxed key");
                }
                other => panic!("unknown hybrid kind {other}"),
            }
        }
    }
}

#[test]
fn payload_metadata_matches_ensync_core() {
    let kat = kat();
    let cases = kat["payload_metadata"].as_array().unwrap();
    assert!(
        !cases.is_empty(),
        "KAT was generated without ensync-core's payload_utils"
    );
    for case in cases {
        let plaintext = s(case, "plaintext");
        assert_eq!(
            payload_metadata(plaintext.as_bytes()).unwrap(),
            s(case, "expected"),
            "for {plaintext}"
        );
    }
}
