#!/usr/bin/env python3
"""Writes ensync-proto/tests/data/envelope_kat.json: known-answer data for the payload
envelopes (PROTOCOL.md section 2), made with PyNaCl and the published ensync-core code.

Run:  /work/venv/bin/python scripts/gen_envelope_kat.py

Everything is deterministic: keys come from fixed seeds, and every random value
(nonces, ephemeral keys, message keys) is drawn from a SHA-256 counter DRBG that
replaces nacl.utils.random and PrivateKey.generate while this script runs, so the
output is byte-identical on every run.

Contents:
- keys: fixed Ed25519 key pairs with the X25519 forms PyNaCl computes
  (crypto_sign_ed25519_pk_to_curve25519 / crypto_sign_ed25519_sk_to_curve25519);
- envelopes: base64 payloads with the plaintext each recipient must recover:
  single envelopes (written by ensync-core's encrypt_ed25519 when available, and
  by PyNaCl directly), and hybrid envelopes in the Go shape (base64 map key,
  `ciphertext`, raw 32-byte key boxed), the Node shape (`encryptedKey`), the
  Python ensync-core shape (hex map key, `ciphertext`, raw key; from its own
  hybrid_encrypt when available), and the shape whose boxed key is 44 base64 chars;
- payload_metadata: plaintexts with the metadata string ensync-core's
  payload_utils gives for them (byte_size = length of the plaintext bytes).

ensync-core is imported if installed, else from ENSYNC_CORE_SRC (default: the
unpacked reference copy /work/ref/ensync-core__0.1.2/src); without it the
ensync-core-made entries and the metadata section are left out.
"""
import base64
import hashlib
import json
import os
import sys

import nacl.public
import nacl.secret
import nacl.signing
import nacl.utils
from nacl.public import Box, PrivateKey

OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..", "ensync-proto", "tests", "data", "envelope_kat.json",
)


class Drbg:
    """SHA-256 in counter mode: a reproducible stand-in for the system RNG."""

    def __init__(self, label):
        self.key = hashlib.sha256(label.encode()).digest()
        self.counter = 0

    def random(self, size):
        out = b""
        while len(out) < size:
            out += hashlib.sha256(self.key + self.counter.to_bytes(8, "big")).digest()
            self.counter += 1
        return out[:size]


DRBG = Drbg("ensync envelope kat v1")
nacl.utils.random = DRBG.random
PrivateKey.generate = classmethod(lambda cls: cls(DRBG.random(32)))

try:
    import ensync_core  # noqa: F401
except ImportError:
    sys.path.insert(0, os.environ.get("ENSYNC_CORE_SRC", "/work/ref/ensync-core__0.1.2/src"))
try:
    from ensync_core import ecc_crypto, payload_utils
except ImportError:
    ecc_crypto = None
    payload_utils = None
    print("note: ensync-core not found; writing PyNaCl-only entries", file=sys.stderr)


def b64(data):
    return base64.b64encode(data).decode()


def outer(envelope):
    """The `payload` field text: base64 of the JSON, as the published clients send it."""
    return b64(json.dumps(envelope).encode())


# -- keys ---------------------------------------------------------------------

KEYS = []
for i in range(3):
    seed = hashlib.sha256(f"ensync kat key {i}".encode()).digest()
    sk = nacl.signing.SigningKey(seed)
    vk = sk.verify_key
    KEYS.append({
        "name": f"key{i}",
        "seed": b64(seed),
        "secret_key": b64(seed + bytes(vk)),
        "public_key": b64(bytes(vk)),
        "x25519_public": b64(bytes(vk.to_curve25519_public_key())),
        "x25519_secret": b64(bytes(sk.to_curve25519_private_key())),
        "_sk": sk,
        "_vk": vk,
    })

PLAINTEXTS = [
    b'{"hello":"world"}',
    b"{}",
    json.dumps({"text": "h\u00e9llo \u2603 \U0001F600", "n": 12345678901, "ok": True}).encode(),
    json.dumps({"blob": "x" * 3000, "list": list(range(50))}).encode(),
]


def box_for(recipient, plaintext):
    """A crypto_box from a fresh ephemeral key to an Ed25519 recipient, as a dict."""
    eph = PrivateKey.generate()
    box = Box(eph, recipient["_vk"].to_curve25519_public_key())
    nonce = nacl.utils.random(Box.NONCE_SIZE)
    return {
        "nonce": b64(nonce),
        "ciphertext": b64(box.encrypt(plaintext, nonce).ciphertext),
        "ephemeralPublicKey": b64(bytes(eph.public_key)),
    }


def hybrid(plaintext, recipients, map_key, field, boxed_form):
    message_key = nacl.utils.random(nacl.secret.SecretBox.KEY_SIZE)
    nonce = nacl.utils.random(nacl.secret.SecretBox.NONCE_SIZE)
    sealed = nacl.secret.SecretBox(message_key).encrypt(plaintext, nonce).ciphertext
    keys = {}
    for r in recipients:
        boxed = message_key if boxed_form == "raw" else b64(message_key).encode()
        entry = box_for(r, boxed)
        if field != "ciphertext":
            entry[field] = entry.pop("ciphertext")
        mk = bytes(r["_vk"]).hex() if map_key == "hex" else r["public_key"]
        keys[mk] = entry
    return {"type": "hybrid", "payload": {"nonce": b64(nonce), "ciphertext": b64(sealed)}, "keys": keys}


ENVELOPES = []


def add(kind, source, payload, plaintext, recipients):
    ENVELOPES.append({
        "kind": kind,
        "source": source,
        "payload": payload,
        "plaintext": plaintext.decode(),
        "recipients": [r["name"] for r in recipients],
    })


for i, pt in enumerate(PLAINTEXTS):
    r = KEYS[i % len(KEYS)]
    add("single", "pynacl", outer(box_for(r, pt)), pt, [r])
    if ecc_crypto is not None:
        add("single", "ensync-core encrypt_ed25519",
            outer(ecc_crypto.encrypt_ed25519(pt, r["public_key"])), pt, [r])

SHAPES = [
    ("hybrid-go", "base64", "ciphertext", "raw"),
    ("hybrid-node", "base64", "encryptedKey", "raw"),
    ("hybrid-python", "hex", "ciphertext", "raw"),
    ("hybrid-base64-key", "base64", "ciphertext", "base64"),
]
for kind, map_key, field, boxed_form in SHAPES:
    for pt in PLAINTEXTS[:3]:
        add(kind, "pynacl", outer(hybrid(pt, KEYS, map_key, field, boxed_form)), pt, KEYS)

if ecc_crypto is not None:
    # Exactly what ensync-sdk's publish sends for several recipients.
    for pt in PLAINTEXTS[:2]:
        enc = ecc_crypto.hybrid_encrypt(pt, [bytes(k["_vk"]) for k in KEYS])
        msg = {"type": "hybrid", "payload": enc["encryptedPayload"], "keys": enc["encryptedKeys"]}
        add("hybrid-python", "ensync-core hybrid_encrypt", outer(msg), pt, KEYS)

# Self-check with PyNaCl: every entry opens for every listed recipient.
for e in ENVELOPES:
    env = json.loads(base64.b64decode(e["payload"]))
    for name in e["recipients"]:
        k = next(k for k in KEYS if k["name"] == name)
        priv = k["_sk"].to_curve25519_private_key()

        def open_box(entry):
            ct = entry.get("ciphertext") or entry.get("encryptedKey")
            return Box(priv, nacl.public.PublicKey(base64.b64decode(entry["ephemeralPublicKey"]))).decrypt(
                base64.b64decode(ct), base64.b64decode(entry["nonce"]))

        if env.get("type") == "hybrid":
            ids = [k["public_key"], bytes(k["_vk"]).hex()]
            entry = next(v for kk, v in env["keys"].items() if kk in ids)
            mk = open_box(entry)
            if len(mk) != 32:
                mk = base64.b64decode(mk)
            got = nacl.secret.SecretBox(mk).decrypt(
                base64.b64decode(env["payload"]["ciphertext"]), base64.b64decode(env["payload"]["nonce"]))
        else:
            got = open_box(env)
        assert got.decode() == e["plaintext"], e["kind"]

# -- payload_metadata -----------------------------------------------------------

METADATA = []
if payload_utils is not None:
    texts = [
        '{"s":"x","i":1,"i_min":-2147483648,"i_max":2147483647,"l":2147483648,"l_neg":-2147483649,'
        '"u64":18446744073709551615,"huge":123456789012345678901234567890,'
        '"d":1.5,"d_int":2.0,"d_exp":1e5,"t":true,"f":false,"o":{"a":1},"a":[1,2],"n":null}',
        '{"z":1,"a":"s","z":0.5}',
        '{"caf\\u00e9 \\"q\\"":1,"\\ud83d\\ude00":"e","tab\\t":null}',
        '{"caf\u00e9":"\u2603"}',
        "[1,2,3]",
        '"just a string"',
        "{}",
        ' { "spaced" : [ ] } ',
    ]
    for text in texts:
        pt = text.encode()
        obj = json.loads(pt)
        skeleton = payload_utils.get_payload_skeleton(obj) if isinstance(obj, dict) else {}
        METADATA.append({
            "plaintext": text,
            "expected": json.dumps({"byte_size": len(pt), "skeleton": skeleton}),
        })

data = {
    "comment": "Generated by scripts/gen_envelope_kat.py with PyNaCl "
               + nacl.__version__ + "; do not edit by hand.",
    "keys": [{k: v for k, v in key.items() if not k.startswith("_")} for key in KEYS],
    "envelopes": ENVELOPES,
    "payload_metadata": METADATA,
}
os.makedirs(os.path.dirname(OUT), exist_ok=True)
with open(OUT, "w") as f:
    json.dump(data, f, indent=1, ensure_ascii=False)
    f.write("\n")
print(f"wrote {os.path.normpath(OUT)}: {len(KEYS)} keys, {len(ENVELOPES)} envelopes, "
      f"{len(METADATA)} metadata cases")
