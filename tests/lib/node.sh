# shellcheck shell=bash
# What the suites on an all-in-one node share (tests/conformance/run, tests/flow/run): the
# node (scheduler + agent in one process on a scratch state dir), waiting for an app's web
# dyno, and fetching a page through the router. Sourced after `set -euo pipefail`; the suite
# sets `bin` (the binaries) before calling `start_node`.

step() { printf '\n==> %s\n' "$*"; }
# fail MESSAGE: the node's last log lines (when a node runs), the message, and exit 1.
fail() {
    if [ -n "${node:-}" ] && [ -f "${state:-}/node.log" ]; then
        echo "--- the node's log, last 80 lines ---" >&2
        tail -n 80 "$state/node.log" >&2
    fi
    echo "${SUITE:-suite}: $*" >&2
    exit 1
}
# shellcheck disable=SC2154 # bin: set by the suite before it sources this
manifold() { "$bin/manifold" "$@"; }

# start_node STATE LISTEN ROUTER ROUTER_TLS: starts the node in the background (its pid in
# `node`, its log in STATE/node.log) and waits until its host is ready. Exports the CLI's
# MANIFOLD_API and token file, and sets `ca`, the node's CA for the router's certificates.
start_node() {
    local state=$1 listen=$2 router=$3 router_tls=$4
    export MANIFOLD_API="http://$listen" MANIFOLD_API_TOKEN_FILE="$state/api-token"
    step "an all-in-one node (API $listen, router http $router, https $router_tls, state $state)"
    setsid "$bin/manifold-scheduler" --listen "$listen" --router-listen "$router" \
        --router-tls-listen "$router_tls" --state-dir "$state" --with-agent \
        --agent-arg=--buildpacks-dir="$PWD/buildpacks" >"$state/node.log" 2>&1 &
    node=$!
    for _ in $(seq 1 300); do
        manifold hosts 2>/dev/null | grep -q ready && break
        kill -0 "$node" 2>/dev/null || { cat "$state/node.log"; fail "the node exited"; }
        sleep 0.2
    done
    manifold hosts | grep -q ready || { cat "$state/node.log"; fail "no host became ready"; }
    ca="$state/ca/ca.pem"
}

# stop_node: stops the node started by start_node, if any.
stop_node() {
    if [ -n "${node:-}" ]; then
        kill -TERM "$node" 2>/dev/null || true
        wait "$node" 2>/dev/null || true
        node=""
    fi
}

# wait_no_dynos: waits (30 s at most) until the host runs no dyno.
wait_no_dynos() {
    for _ in $(seq 1 150); do
        [ -z "$(ls /var/lib/manifold/dynos 2>/dev/null)" ] && return 0
        sleep 0.2
    done
}

# Waits until APP's web dyno is up.
wait_up() {
    local app=$1
    for _ in $(seq 1 600); do
        manifold ps -a "$app" --json | python3 -c '
import json, sys
d = [x for x in json.load(sys.stdin) if x["type"] == "web"]
sys.exit(0 if d and all(x["state"] == "up" for x in d) else 1)' && return 0
        sleep 0.2
    done
    manifold ps -a "$app"
    manifold logs -n 50 -a "$app" || true
    fail "$app: its web dyno did not come up"
}

# Fetches URL over HTTPS with the node's CA and checks the body holds WANT. Retries a moment
# (the route table reaches the router just after the dyno is up).
expect() {
    local url=$1 want=$2 body=""
    shift 2
    for _ in $(seq 1 50); do
        body=$(curl -sS --cacert "$ca" "$@" "$url" 2>&1) && [[ "$body" == *"$want"* ]] && {
            printf '%s -> %s\n' "$url" "$(head -c 200 <<<"$body" | tr '\n' ' ')"
            return 0
        }
        sleep 0.2
    done
    fail "$url: wanted '$want', got: $body"
}
