#!/usr/bin/env bash
# The admin walkthrough with the published EnSync CLI (Go), on loopback: a node with only
# admin_listen/admin_key and one bootstrap app; the Go CLI creates an access key, our
# `ensync` publishes with it within its permissions (delivered to the bootstrap app) and
# outside them (refused), the Go CLI deletes it, the next connect is refused, and
# /metrics is read before and after. Prints each step and checks its outcome.
#
#   bash scripts/ensync-go-cli.sh PATH_TO_CLI_CHECKOUT    # once: target/ensync-go-cli/ensync-go
#   bash scripts/ensync-go-cli-session.sh                 # ENSYNC_BIN, GO_CLI, *_PORT to override
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
ENSYNC_BIN=${ENSYNC_BIN:-$root/target/debug/ensync}
GO_CLI=${GO_CLI:-$root/target/ensync-go-cli/ensync-go}
GRPC_PORT=${GRPC_PORT:-25051}
ADMIN_PORT=${ADMIN_PORT:-28080}
for b in "$ENSYNC_BIN" "$GO_CLI"; do
  [[ -x "$b" ]] || { echo "missing $b (cargo build -p ensync-cli; scripts/ensync-go-cli.sh)" >&2; exit 2; }
done

dir=$(mktemp -d)
node_pid=
sub_pid=
cleanup() {
  [[ -n "$sub_pid" ]] && kill "$sub_pid" 2>/dev/null || true
  [[ -n "$node_pid" ]] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

passed=0 failed=0
check() { # check DESCRIPTION COMMAND...: the command must succeed
  if "${@:2}"; then passed=$((passed + 1)); echo "ok: $1"; else failed=$((failed + 1)); echo "FAILED: $1"; fi
}
step() { printf '\n$ %s\n' "$*"; }
metric() { # metric REGEX FILE: the sample's value, "-" while the series does not exist
  local v
  v=$(grep -E "^$1 " "$2" | awk '{print $2}' | head -1)
  echo "${v:--}"
}

admin_key=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
"$ENSYNC_BIN" keygen --app bootstrap >"$dir/boot.toml" 2>"$dir/boot.env"
boot_key=$(grep ENSYNC_APP_KEY "$dir/boot.env" | cut -d"'" -f2)
boot_secret=$(grep ENSYNC_SECRET_KEY "$dir/boot.env" | cut -d"'" -f2)
boot_pub=$(grep ENSYNC_PUBLIC_KEY "$dir/boot.env" | cut -d"'" -f2)
{
  echo "admin_listen = \"127.0.0.1:$ADMIN_PORT\""
  echo "admin_key = \"$admin_key\""
  echo
  sed 's|^receive = \[\]|receive = ["orders/*"]|' "$dir/boot.toml"
} >"$dir/node.toml"
echo "# node.toml (admin_key elided):"
sed 's/^admin_key = .*/admin_key = "..."/' "$dir/node.toml"

url=grpc://127.0.0.1:$GRPC_PORT
base=http://127.0.0.1:$ADMIN_PORT
"$ENSYNC_BIN" node --config "$dir/node.toml" --grpc-listen "127.0.0.1:$GRPC_PORT" \
  --data-dir "$dir/data" >"$dir/node.log" 2>&1 &
node_pid=$!
for _ in $(seq 50); do
  curl -fs "$base/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
check "node ready" curl -fs -o /dev/null "$base/readyz"

export ENSYNC_BASE_URL=$base/api/v1/ensync ENSYNC_CONFIG_DIR=$dir/go-cli-config
go_cli() { "$GO_CLI" access-key --access-key "$admin_key" "$@"; }

curl -fs "$base/metrics" >"$dir/before"

step ensync-go access-key --access-key '$ADMIN_KEY' create --name billing \
  --permissions "'"'{"send":["orders/*"],"receive":["billing/*"]}'"'"
go_cli create --name billing --permissions '{"send":["orders/*"],"receive":["billing/*"]}' \
  >"$dir/created.json"
sed 's/"private_key": ".*"/"private_key": "..."/' "$dir/created.json"
id=$(sed -n 's/^  "id": "\(.*\)",$/\1/p' "$dir/created.json")
key=$(sed -n 's/^  "accessKey": "\(.*\)",$/\1/p' "$dir/created.json")
secret=$(sed -n 's/^ *"private_key": "\(.*\)"$/\1/p' "$dir/created.json")
check "the Go CLI created the key" test -n "$id" -a -n "$key" -a -n "$secret"
curl -fs "$base/metrics" >"$dir/created"

step ensync-go access-key --access-key '$ADMIN_KEY' list --name billing
go_cli list --name billing >"$dir/list.json"
check "the Go CLI lists it" grep -q "\"key\": \"$key\"" "$dir/list.json"

"$ENSYNC_BIN" subscribe --url "$url" --app-key "$boot_key" --secret-key "$boot_secret" \
  --event orders/created --count 1 --timeout 20 >"$dir/sub.out" 2>"$dir/sub.err" &
sub_pid=$!
for _ in $(seq 50); do grep -q subscribed "$dir/sub.err" 2>/dev/null && break; sleep 0.2; done

step ensync publish --url "$url" --app-key '$KEY' --secret-key '$PRIVATE_KEY' \
  --event orders/created --to '$BOOTSTRAP_PUBLIC_KEY' "'"'{"order_id":"A-17"}'"'"
check "publish within its permissions" \
  "$ENSYNC_BIN" publish --url "$url" --app-key "$key" --secret-key "$secret" \
  --event orders/created --to "$boot_pub" '{"order_id":"A-17"}'
check "the bootstrap app got it" wait "$sub_pid"
sub_pid=
cat "$dir/sub.out"
check "with billing as the sender" grep -q "\"sender\":\"$(grep -o '"public_key": "[^"]*"' \
  "$dir/created.json" | cut -d'"' -f4)\"" "$dir/sub.out"

step ensync publish ... --event payments/refunded ...
if "$ENSYNC_BIN" publish --url "$url" --app-key "$key" --secret-key "$secret" \
  --event payments/refunded --to "$boot_pub" '{"order_id":"A-17"}' 2>"$dir/refused.err"; then
  check "publish outside its permissions is refused" false
else
  cat "$dir/refused.err"
  check "publish outside its permissions is refused" grep -q 'may not publish' "$dir/refused.err"
fi

curl -fs "$base/metrics" >"$dir/mid"

step ensync-go access-key --access-key '$ADMIN_KEY' delete "$id"
check "the Go CLI deletes it" go_cli delete "$id"

step ensync publish ... "(the deleted key)"
if "$ENSYNC_BIN" publish --url "$url" --app-key "$key" --secret-key "$secret" \
  --event orders/created --to "$boot_pub" '{"order_id":"A-18"}' 2>"$dir/gone.err"; then
  check "connect with the deleted key is refused" false
else
  cat "$dir/gone.err"
  check "connect with the deleted key is refused" grep -q 'invalid access key' "$dir/gone.err"
fi

curl -fs "$base/metrics" >"$dir/after"
printf '\n%-72s %8s %8s %8s\n' "/metrics" before mid after
for m in ensync_apps ensync_connects_total ensync_publishes_total ensync_deliveries_total ensync_acks_total \
  'ensync_refused_requests_total{op="publish",reason="forbidden"}' \
  'ensync_refused_requests_total{op="connect",reason="invalid_access_key"}' \
  ensync_sessions ensync_store_commits; do
  re=$(printf '%s' "$m" | sed 's/[{}]/\\&/g')
  printf '%-72s %8s %8s %8s\n' "$m" "$(metric "$re" "$dir/before")" "$(metric "$re" "$dir/mid")" \
    "$(metric "$re" "$dir/after")"
done
check "ensync_apps 1 -> 2 -> 1" test "$(metric ensync_apps "$dir/before")/$(metric ensync_apps \
  "$dir/created")/$(metric ensync_apps "$dir/after")" = 1/2/1
check "publishes 0 -> 1" test "$(metric ensync_publishes_total "$dir/after")" = 1
check "one forbidden publish counted" \
  test "$(metric 'ensync_refused_requests_total\{op="publish",reason="forbidden"\}' "$dir/after")" = 1
check "one refused connect counted" \
  test "$(metric 'ensync_refused_requests_total\{op="connect",reason="invalid_access_key"\}' "$dir/after")" = 1

echo
echo "$passed passed, $failed failed"
((failed == 0))
