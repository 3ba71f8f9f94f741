#!/usr/bin/env bash
# Installs the published Node.js EnSync client the interop tests use
# (tests/tests/interop_node.rs): ensync-client-sdk 0.0.18 from npm, with `npm ci`
# from the committed tests/interop/package.json + package-lock.json, into
# tests/interop/node_modules/ (git-ignored).
#
# Idempotent: reinstalls only when the lockfile changed (a stamp file keeps its hash)
# or the package is missing. Without npm it prints a note and exits 0, except under
# CI (the CI variable set), where it fails. `--quiet` prints nothing unless it fails.
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

dir=tests/interop
if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
    if [ -n "${CI:-}" ]; then
        echo "error: node and npm are required under CI for the Node.js interop tests" >&2
        exit 1
    fi
    echo "note: node/npm not found: the Node.js interop tests will be skipped"
    exit 0
fi

stamp="$dir/node_modules/.ensync-installed"
want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
    && [ -f "$dir/node_modules/ensync-client-sdk/package.json" ]; then
    say "== node packages $dir: up to date"
    exit 0
fi
say "== node packages $dir: npm ci (ensync-client-sdk 0.0.18)"
if ! (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null); then
    echo "error: npm ci in $dir failed (is the npm registry reachable?)" >&2
    exit 1
fi
echo "$want" > "$stamp"
