#!/usr/bin/env bash
# Every benchmark of issue 8 in one run, with a report:
#
#   scripts/bench.sh            everything (about 5.5 minutes on 2 cores after the release
#                               build; about 8.5 minutes from a fresh clone, build included)
#   scripts/bench.sh --quick    a smoke run of every part (about 1.5 minutes after the build)
#   scripts/bench.sh --compare BASE_REF [--quick]
#                               the same run for the commit BASE_REF (built in a git worktree
#                               under target/bench/, sharing this target directory so only
#                               the workspace's own crates are built twice) and for the work
#                               tree, each part run for both back to back, every number
#                               printed as `now (base, ratio)` in one table
#   BENCH_ARGS="..." scripts/bench.sh   other criterion arguments for the micro-benchmarks
#
# Parts, in order (each prints the load average before it: the numbers mean little on a
# busy machine):
#   1. micro: `cargo bench -p ensync-proto --bench core` (criterion, 1 s warm-up, 3 s
#      measurement) and scripts/bench_pynacl.py (the same operations through
#      PyNaCl/libsodium), printed as one table with the ratios;
#   2. e2e: `ensync-bench e2e`: the tokio, h2, blocking and WebSocket clients and the
#      published Python client (ensync-sdk 0.4.4) against one node, same run;
#   3. node: `ensync-bench node`: durable publishes/s (group commit vs one commit per
#      event) and the node's peak RSS with 1 000 000 queued 1 KB events;
#   4. jetstream: `ensync-bench jetstream`: on a 3-server NATS cluster on loopback,
#      durable publishes/s and conc64-1k end to end beside the embedded store, and the
#      stall when the NATS server leading the stream is SIGKILLed (work tree only).
# The whole report is also written to target/bench/report.md (JSON of parts 2 and 3 in
# target/bench/*.json). Python comes from scripts/python-env.sh (.venv, pinned).
#
# Micro table: ours is criterion's median point estimate (the median, as for PyNaCl's timeit repeats: a busy machine inflates means) from
# target/criterion/<id>/new/estimates.json. The PyNaCl envelope numbers include Python's
# JSON/base64 work; the `box_*` rows (key pair + Box + XSalsa20-Poly1305 of 1 KB, almost
# no Python) are libsodium's crypto alone, and the last column compares our whole
# envelope against that.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

quick=0
base_ref=""
usage() { echo "usage: $0 [--quick] [--compare BASE_REF]" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --compare)
            [ $# -ge 2 ] || usage
            base_ref="$2"
            shift
            ;;
        *) usage ;;
    esac
    shift
done
if [ -n "$base_ref" ]; then
    base_rev=$(git rev-parse --verify --quiet "$base_ref^{commit}") \
        || { echo "--compare: $base_ref is not a commit here" >&2; exit 2; }
fi

out=target/bench
mkdir -p "$out"
report="$out/report.md"
# The terminal keeps the progress lines (fd 3); the report gets the results.
exec 3>&2
exec > >(tee "$report") 2>&1

load() { sed 's/.*load average: //' <<<"$(uptime)"; }
started=$(date +%s)

bash scripts/python-env.sh --quiet
py=.venv/bin/python

echo "# ensync benchmarks, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/ {print $2}') GiB"
echo "- $(rustc -V); $("$py" -c 'import sys, nacl, importlib.metadata as m; print("Python", sys.version.split()[0], "PyNaCl", nacl.__version__, "ensync-sdk", m.version("ensync-sdk"))')"
echo "- git: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with local changes)')"
echo

base_bin=""
if [ -n "$base_ref" ]; then
    echo "- base: $base_ref ($(git rev-parse --short "$base_rev")): every number below is \`now (base, now/base)\`"
    echo
    base_dir="$PWD/$out/base-src"
    echo "== building the base $base_ref in $base_dir (release)" >&3
    git worktree remove --force "$base_dir" 2>/dev/null || rm -rf "$base_dir"
    git worktree prune
    git worktree add --detach --quiet "$base_dir" "$base_rev"
    # One target directory: dependencies are built once; the base's own crates have other
    # paths, so they get their own artifacts. Only the final binary would collide: copied.
    (cd "$base_dir" && CARGO_TARGET_DIR="$root/target" cargo build --release --locked -p ensync-bench 2>&3)
    base_bin="$out/base-ensync-bench"
    cp target/release/ensync-bench "$base_bin"
fi

echo "== building (release)"
cargo build --release --locked -p ensync-bench 2>&3
cargo bench --locked -p ensync-proto --bench core --no-run 2>&3

echo
echo "## 1. Micro-benchmarks (load before: $(load))"
echo
if [ "$quick" = 1 ]; then
    default_args="--warm-up-time 0.2 --measurement-time 0.5"
else
    default_args="--warm-up-time 1 --measurement-time 3"
fi
if [ -n "$base_ref" ]; then
    # The base's numbers go to criterion's `base` baseline, the work tree's to `new`.
    # shellcheck disable=SC2086
    (cd "$base_dir" && CARGO_TARGET_DIR="$root/target" cargo bench --locked -p ensync-proto --bench core -- \
        ${BENCH_ARGS:-$default_args} --save-baseline base) >"$out/criterion-base.log" 2>&1 \
        || { cat "$out/criterion-base.log"; exit 1; }
fi
# shellcheck disable=SC2086
cargo bench --locked -p ensync-proto --bench core -- ${BENCH_ARGS:-$default_args} >"$out/criterion.log" 2>&1 \
    || { cat "$out/criterion.log"; exit 1; }
pynacl_json="$("$py" scripts/bench_pynacl.py)"
echo "$pynacl_json" >"$out/pynacl.json"

PYNACL_JSON="$pynacl_json" BASE_REF="$base_ref" "$py" - <<'EOF'
import json
import os
import pathlib

root = pathlib.Path("target/criterion")
py = json.loads(os.environ["PYNACL_JSON"])


def ours(name, which="new"):
    path = root / name / which / "estimates.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())["median"]["point_estimate"]


compare = bool(os.environ.get("BASE_REF"))


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
    mine = fmt(o)
    if compare:
        base = ours(name, "base")
        mine = f"{fmt(o)} (base {fmt(base)}, {ratio(o, base)})"
    print(f"| {name} | {mine} | {fmt(p)} | {ratio(o, p)} | {fmt(b)} | {ratio(o, b)} |")
for name in ("box_encrypt_1k_precomputed", "box_decrypt_1k_precomputed"):
    print(f"| {name} (PyNaCl only) | - | {fmt(py.get(name))} | - | - | - |")
EOF

echo
echo "## 2. End to end (load before: $(load))"
echo
e2e_args=(--json "$out/e2e.json" --python "$py")
node_args=(--json "$out/node.json")
if [ "$quick" = 1 ]; then
    e2e_args+=(--quick)
    node_args+=(--quick)
fi
if [ -n "$base_bin" ]; then
    # The base without the Python client (the work tree's run keeps it), right before.
    "$base_bin" e2e --json "$out/e2e-base.json" --adapters tokio,h2,blocking,ws \
        $([ "$quick" = 1 ] && echo --quick) >/dev/null 2> >(tee "$out/e2e-base.log" >&3) \
        || { echo "base ensync-bench e2e failed (see $out/e2e-base.log)"; exit 1; }
    target/release/ensync-bench e2e "${e2e_args[@]}" >/dev/null 2> >(tee "$out/e2e.log" >&3) \
        || { echo "ensync-bench e2e failed (see $out/e2e.log)"; exit 1; }
    "$py" scripts/bench_compare.py "$out/e2e.json" "$out/e2e-base.json"
else
    target/release/ensync-bench e2e "${e2e_args[@]}" 2> >(tee "$out/e2e.log" >&3) || { echo "ensync-bench e2e failed (see $out/e2e.log)"; exit 1; }
fi

echo
echo "## 3. The node (load before: $(load))"
echo
if [ -n "$base_bin" ]; then
    "$base_bin" node --json "$out/node-base.json" $([ "$quick" = 1 ] && echo --quick) \
        >/dev/null 2> >(tee "$out/node-base.log" >&3) \
        || { echo "base ensync-bench node failed (see $out/node-base.log)"; exit 1; }
    target/release/ensync-bench node "${node_args[@]}" >/dev/null 2> >(tee "$out/node.log" >&3) \
        || { echo "ensync-bench node failed (see $out/node.log)"; exit 1; }
    "$py" scripts/bench_compare.py "$out/node.json" "$out/node-base.json"
    git worktree remove --force "$base_dir" 2>/dev/null || true
else
    target/release/ensync-bench node "${node_args[@]}" 2> >(tee "$out/node.log" >&3) || { echo "ensync-bench node failed (see $out/node.log)"; exit 1; }
fi

echo
echo "## 4. The JetStream backend beside the embedded one (load before: $(load))"
echo
# Needs nats-server (scripts/python-env.sh installs it into .venv); the work tree only,
# also with --compare (a base from before the JetStream bench has no such part).
js_args=(--json "$out/jetstream.json" --nats-server "${ENSYNC_NATS_SERVER:-$root/.venv/bin/nats-server}")
if [ "$quick" = 1 ]; then
    js_args+=(--quick)
fi
target/release/ensync-bench jetstream "${js_args[@]}" 2> >(tee "$out/jetstream.log" >&3) \
    || { echo "ensync-bench jetstream failed (see $out/jetstream.log)"; exit 1; }

echo
echo "Load after: $(load). Whole run: $(( $(date +%s) - started )) s (progress logs in $out/*.log)."
