#!/usr/bin/env bash
# Creates .venv/ with the pinned Python packages the tests use: PyNaCl (the
# published clients' crypto) for known-answer checks. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
want="pynacl==1.6.2 ensync-sdk-ws==0.4.3"
stamp=.venv/.ensync-installed
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "== python venv: installing $want"
python3 -m venv .venv
if ! .venv/bin/pip install --quiet --disable-pip-version-check $want; then
    echo "error: could not install the Python test packages ($want) from PyPI" >&2
    exit 1
fi
echo "$want" > "$stamp"
