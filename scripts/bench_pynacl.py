#!/usr/bin/env python3
"""The libsodium (PyNaCl) counterpart of ensync-proto's envelope benchmarks.

Times, on the same 1024-byte JSON payload as ensync-proto/benches/core.rs:
- envelope_encrypt_single_1k: what ensync-core's encrypt_ed25519 does (fresh ephemeral
  key pair, Box, random nonce, base64 fields, JSON, outer base64), with the recipient's
  Ed25519 -> X25519 conversion done once (the recipient-key cache's case);
- envelope_decrypt_single_1k: outer base64, JSON, base64 fields, Box, decrypt, UTF-8;
- envelope_encrypt_hybrid_{1,4,16}: one SecretBox of the payload under a random key,
  that key boxed per recipient, the PROTOCOL.md hybrid JSON, outer base64;
- box_encrypt_1k / box_decrypt_1k: the libsodium work of one single envelope alone
  (key pair + Box (X25519 + HSalsa20) + XSalsa20-Poly1305 of 1 KB), minimal Python;
- box_encrypt_1k_precomputed / box_decrypt_1k_precomputed: `Box.encrypt`/`decrypt` of
  1 KB with the shared key already computed (XSalsa20-Poly1305 only).

Prints one JSON object: {"<name>": ns per op, ...} plus "_meta". Each number is the
median of 5 repeats of a timeit loop sized by `Timer.autorange` (>= 0.2 s per repeat).
"""

import base64
import json
import statistics
import sys
import timeit

import nacl
import nacl.secret
import nacl.utils
from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519
from nacl.public import Box, PrivateKey, PublicKey
from nacl.signing import SigningKey


def payload_1k() -> bytes:
    """The same 1024-byte compact JSON object as benches/core.rs."""
    head = (
        '{"event":"order.created","orderId":12345,"amount":99.95,"paid":true,'
        '"tags":["a","b","c"],"customer":{"name":"Ada","email":"ada@example.com"},"note":"'
    )
    tail = '"}'
    text = head + "x" * (1024 - len(head) - len(tail)) + tail
    data = text.encode()
    assert len(data) == 1024
    json.loads(data)
    return data


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def recipient(seed_byte0: int, seed_byte1: int = 0xB7):
    """An Ed25519 key pair from a seed; returns (ed25519 pk b64, x25519 PublicKey, signing key)."""
    seed = bytes([seed_byte0, seed_byte1]) + bytes(30)
    sk = SigningKey(seed)
    pk = bytes(sk.verify_key)
    return b64(pk), PublicKey(crypto_sign_ed25519_pk_to_curve25519(pk)), sk


def box_to(message: bytes, x_pub: PublicKey) -> dict:
    eph = PrivateKey.generate()
    box = Box(eph, x_pub)
    nonce = nacl.utils.random(Box.NONCE_SIZE)
    ct = box.encrypt(message, nonce).ciphertext
    return {"nonce": b64(nonce), "ciphertext": b64(ct), "ephemeralPublicKey": b64(bytes(eph.public_key))}


def encrypt_single(message: bytes, x_pub: PublicKey) -> str:
    return b64(json.dumps(box_to(message, x_pub)).encode())


def decrypt_single(payload: str, x_priv: PrivateKey) -> str:
    env = json.loads(base64.b64decode(payload))
    box = Box(x_priv, PublicKey(base64.b64decode(env["ephemeralPublicKey"])))
    plain = box.decrypt(base64.b64decode(env["ciphertext"]), base64.b64decode(env["nonce"]))
    return plain.decode("utf-8")


def encrypt_hybrid(message: bytes, recipients: list) -> str:
    key = nacl.utils.random(nacl.secret.SecretBox.KEY_SIZE)
    nonce = nacl.utils.random(nacl.secret.SecretBox.NONCE_SIZE)
    sealed = nacl.secret.SecretBox(key).encrypt(message, nonce).ciphertext
    keys = {}
    for pk_b64, x_pub in recipients:
        entry = box_to(key, x_pub)
        entry["encryptedKey"] = entry["ciphertext"]
        keys[pk_b64] = entry
    env = {"type": "hybrid", "payload": {"nonce": b64(nonce), "ciphertext": b64(sealed)}, "keys": keys}
    return b64(json.dumps(env).encode())


def time_ns(fn) -> float:
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    runs = timer.repeat(repeat=5, number=number)
    return statistics.median(runs) / number * 1e9


def main() -> None:
    message = payload_1k()
    _, x_pub, sk = recipient(7, 0)
    x_priv = PrivateKey(sk.to_curve25519_private_key().encode())
    sealed = encrypt_single(message, x_pub)
    assert decrypt_single(sealed, x_priv).encode() == message

    eph = PrivateKey.generate()
    nonce = nacl.utils.random(Box.NONCE_SIZE)
    pre_enc = Box(eph, x_pub)
    boxed = pre_enc.encrypt(message, nonce).ciphertext
    pre_dec = Box(x_priv, eph.public_key)

    def bare_encrypt():
        e = PrivateKey.generate()
        return Box(e, x_pub).encrypt(message, nacl.utils.random(Box.NONCE_SIZE))

    def bare_decrypt():
        return Box(x_priv, eph.public_key).decrypt(boxed, nonce)

    benches = {
        "envelope_encrypt_single_1k": lambda: encrypt_single(message, x_pub),
        "envelope_decrypt_single_1k": lambda: decrypt_single(sealed, x_priv),
    }
    for n in (1, 4, 16):
        recips = [recipient(i)[:2] for i in range(n)]
        benches[f"envelope_encrypt_hybrid_{n}"] = lambda r=recips: encrypt_hybrid(message, r)
    benches["box_encrypt_1k"] = bare_encrypt
    benches["box_decrypt_1k"] = bare_decrypt
    benches["box_encrypt_1k_precomputed"] = lambda: pre_enc.encrypt(message, nonce)
    benches["box_decrypt_1k_precomputed"] = lambda: pre_dec.decrypt(boxed, nonce)

    results = {name: round(time_ns(fn), 1) for name, fn in benches.items()}
    results["_meta"] = {
        "python": sys.version.split()[0],
        "pynacl": nacl.__version__,
        "libsodium": nacl.bindings.sodium_version_string().decode()
        if hasattr(nacl.bindings, "sodium_version_string")
        else "bundled",
        "unit": "ns/op (median of 5 timeit repeats)",
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
