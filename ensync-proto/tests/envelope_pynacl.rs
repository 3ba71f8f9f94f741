//! Our envelopes, read by PyNaCl the way the published clients read them.
//!
//! Python comes from env `ENSYNC_PYTHON`, else `<workspace>/.venv/bin/python`
//! (`scripts/python-env.sh` makes it). Without a Python that has PyNaCl the test fails
//! when env `CI` is set and is skipped (with a note on stderr) otherwise.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ensync_proto::envelope::{encrypt_hybrid, encrypt_single};
use ensync_proto::keys::{PublicKey, SecretKey};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde_json::{Value, json};

/// Reads cases from stdin and decrypts each with PyNaCl alone:
/// - single: as ensync-core's decrypt_ed25519 (64-byte secret -> X25519, Box.decrypt);
/// - hybrid: the entry keyed by the recipient's base64 public key, wrapped key read from
///   `ciphertext` (Go) and from `encryptedKey` (Node), which must be the same text; the
///   raw 32-byte message key opens the SecretBox payload.
///
/// Prints one base64 plaintext per case, as a JSON list.
const READER: &str = r#"
import base64, json, sys
import nacl.bindings, nacl.secret
from nacl.public import Box, PrivateKey, PublicKey

def open_box(entry, field, priv):
    box = Box(priv, PublicKey(base64.b64decode(entry["ephemeralPublicKey"])))
    return box.decrypt(base64.b64decode(entry[field]), base64.b64decode(entry["nonce"]))

out = []
for case in json.load(sys.stdin):
    sk = base64.b64decode(case["secret_key"])
    assert len(sk) == 64
    priv = PrivateKey(nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(sk))
    env = json.loads(base64.b64decode(case["payload"]).decode("utf-8"))
    if env.get("type") == "hybrid":
        entry = env["keys"][case["public_key"]]
        assert entry["ciphertext"] == entry["encryptedKey"]
        keys = [open_box(entry, f, priv) for f in ("ciphertext", "encryptedKey")]
        assert keys[0] == keys[1] and len(keys[0]) == 32
        p = env["payload"]
        plain = nacl.secret.SecretBox(keys[0]).decrypt(
            base64.b64decode(p["ciphertext"]), base64.b64decode(p["nonce"]))
    else:
        assert sorted(env) == ["ciphertext", "ephemeralPublicKey", "nonce"]
        plain = open_box(env, "ciphertext", priv)
    out.append(base64.b64encode(plain).decode())
print(json.dumps(out))
"#;

/// A Python interpreter that can import nacl, or `None`.
fn python_with_nacl() -> Option<PathBuf> {
    let python = std::env::var_os("ENSYNC_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    let ok = Command::new(&python)
        .args(["-c", "import nacl.public, nacl.secret, nacl.bindings"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(python)
}

#[test]
fn pynacl_reads_our_single_and_hybrid_envelopes() {
    let Some(python) = python_with_nacl() else {
        let msg = "no Python with PyNaCl (set ENSYNC_PYTHON or run scripts/python-env.sh)";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}; CI requires this interop test");
        }
        eprintln!("SKIPPED envelope_pynacl: {msg}");
        return;
    };

    let mut rng = ChaCha20Rng::seed_from_u64(2024);
    let keys: Vec<SecretKey> = (0..3).map(|_| SecretKey::generate(&mut rng)).collect();
    let publics: Vec<PublicKey> = keys.iter().map(|k| k.public_key().clone()).collect();
    let plaintexts: Vec<Vec<u8>> = vec![
        b"{\"hello\":\"world\"}".to_vec(),
        Vec::new(),
        "{\"text\":\"h\u{e9}llo \u{2603}\"}".as_bytes().to_vec(),
        serde_json::to_vec(&json!({"blob": "y".repeat(10_000)})).unwrap(),
    ];

    let mut cases = Vec::new();
    let mut expected = Vec::new();
    for (i, plaintext) in plaintexts.iter().enumerate() {
        let key = &keys[i % keys.len()];
        cases.push(json!({
            "secret_key": key.to_base64(),
            "public_key": key.public_key().to_base64(),
            "payload": encrypt_single(plaintext, key.public_key(), &mut rng),
        }));
        expected.push(STANDARD.encode(plaintext));

        let hybrid = encrypt_hybrid(plaintext, &publics, &mut rng);
        for key in &keys {
            cases.push(json!({
                "secret_key": key.to_base64(),
                "public_key": key.public_key().to_base64(),
                "payload": hybrid,
            }));
            expected.push(STANDARD.encode(plaintext));
        }
    }

    let mut child = Command::new(&python)
        .args(["-c", READER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(&cases).unwrap())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "PyNaCl could not read our envelopes:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got: Value = serde_json::from_slice(&output.stdout).expect("python printed JSON");
    assert_eq!(got, json!(expected));
}
