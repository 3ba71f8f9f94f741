#!/usr/bin/env bash
# Micro-benchmarks of ensync-proto beside libsodium (PyNaCl): issue 8, first slice.
#
#   scripts/bench.sh            criterion with quick settings (1 s warm-up, 3 s measurement)
#   BENCH_ARGS="..." scripts/bench.sh   other criterion arguments
#
# Runs `cargo bench -p ensync-proto --bench core`, then scripts/bench_pynacl.py, and
# prints a markdown table: ours (criterion's mean point estimate, read from
# target/criterion/<id>/new/estimates.json), PyNaCl's time, and ours / PyNaCl.
# The PyNaCl envelope numbers include Python's JSON/base64 work; the `box_*` rows
# (key pair + Box + XSalsa20-Poly1305 of 1 KB, almost no Python) are libsodium's
# crypto alone, and the last column compares our whole envelope against that.
# Load averages are printed before and after: the numbers mean little on a busy machine.
set -euo pipefail
cd "$(dirname "$0")/.."

py="${ENSYNC_PYTHON:-}"
for candidate in "$py" .venv/bin/python /work/venv/bin/python; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" -c "import nacl" 2>/dev/null; then
        py="$candidate"
        break
    fi
    py=""
done
if [ -z "$py" ]; then
    echo "no Python with PyNaCl found (set ENSYNC_PYTHON or run scripts/python-env.sh)" >&2
    exit 1
fi

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(rustc -V)"
echo "== load before: $(uptime | sed 's/.*load average: //')"

# shellcheck disable=SC2086
cargo bench -p ensync-proto --bench core -- ${BENCH_ARGS:---warm-up-time 1 --measurement-time 3}

echo "== PyNaCl ($py)"
pynacl_json="$("$py" scripts/bench_pynacl.py)"
echo "$pynacl_json"

echo "== load after: $(uptime | sed 's/.*load average: //')"
echo

PYNACL_JSON="$pynacl_json" "$py" - <<'EOF'
import json
import os
import pathlib

root = pathlib.Path("target/criterion")
py = json.loads(os.environ["PYNACL_JSON"])


def ours(name):
    path = root / name / "new" / "estimates.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())["mean"]["point_estimate"]


def fmt(ns):
    if ns is None:
        return "-"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.0f} ns"


def ratio(a, b):
    return "-" if a is None or b is None else f"{a / b:.2f}"


rows = [
    ("envelope_encrypt_single_1k", "box_encrypt_1k"),
    ("envelope_decrypt_single_1k", "box_decrypt_1k"),
    ("envelope_encrypt_hybrid_1", None),
    ("envelope_encrypt_hybrid_4", None),
    ("envelope_encrypt_hybrid_16", None),
    ("payload_metadata_1k", None),
    ("grpc_frame_encode_decode", None),
    ("ws_pub_encode_parse", None),
    ("ws_record_parse", None),
    ("session_event_cycle", None),
]
print("| operation | ours (Rust) | PyNaCl envelope | ours / PyNaCl | libsodium crypto alone | ours / crypto alone |")
print("|---|---|---|---|---|---|")
for name, bare in rows:
    o = ours(name)
    p = py.get(name)
    b = py.get(bare) if bare else None
    print(f"| {name} | {fmt(o)} | {fmt(p)} | {ratio(o, p)} | {fmt(b)} | {ratio(o, b)} |")
for name in ("box_encrypt_1k_precomputed", "box_decrypt_1k_precomputed"):
    print(f"| {name} (PyNaCl only) | - | {fmt(py.get(name))} | - | - | - |")
EOF
