#!/usr/bin/env bash
# Router benchmark: wrk against a trivial backend (a) directly, (b) through Debian's nginx as
# a reverse proxy with a keep-alive upstream, (c) through the Manifold router; then (d) nginx
# and (e) the router terminating TLS (HTTP/1.1, ECDSA P-256, session cache and tickets on);
# prints requests/s and p99 latency of each and the ratios.
#
#   bench/router.sh                 # wrk -t2 -c50 -d10s --latency
#   DURATION=30s CONNS=100 bench/router.sh
#
# Needs: wrk, nginx (apt-get install -y wrk nginx-light).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
THREADS=${THREADS:-2}
BACKEND_PORT=${BACKEND_PORT:-18080}
ROUTER_PORT=${ROUTER_PORT:-18081}
NGINX_PORT=${NGINX_PORT:-18082}
ROUTER_TLS_PORT=${ROUTER_TLS_PORT:-18443}
NGINX_TLS_PORT=${NGINX_TLS_PORT:-18444}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/manifold/target}

for tool in wrk nginx; do
    command -v "$tool" >/dev/null || { echo "bench/router.sh: $tool missing (apt-get install -y wrk nginx-light)" >&2; exit 1; }
done

cargo build --quiet --release -p manifold-router --example hello --example router-bench
bin=$CARGO_TARGET_DIR/release/examples

tmp=$(mktemp -d)
pids=()
cleanup() {
    if [ -f "$tmp/nginx.pid" ]; then kill "$(cat "$tmp/nginx.pid")" 2>/dev/null || true; fi
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "bench/router.sh: nothing listens on port $1" >&2
    exit 1
}

"$bin/hello" "127.0.0.1:$BACKEND_PORT" &
pids+=($!)
# One certificate for both TLS proxies: wrk names bench.localhost (SNI, from the Host header).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=bench.localhost -addext subjectAltName=DNS:bench.localhost \
    -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
"$bin/router-bench" "127.0.0.1:$ROUTER_PORT" "127.0.0.1:$BACKEND_PORT" \
    "127.0.0.1:$ROUTER_TLS_PORT" "$tmp/cert.pem" "$tmp/key.pem" &
pids+=($!)
router_pid=$!

mkdir -p "$tmp/logs"
cat >"$tmp/nginx.conf" <<NGINX
worker_processes auto;
pid $tmp/nginx.pid;
error_log $tmp/logs/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $tmp/body;
    proxy_temp_path $tmp/proxy;
    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 128;
    }
    ssl_certificate $tmp/cert.pem;
    ssl_certificate_key $tmp/key.pem;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        listen 127.0.0.1:$NGINX_TLS_PORT ssl;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }
}
NGINX
nginx -p "$tmp" -c "$tmp/nginx.conf"

wait_port "$BACKEND_PORT"
wait_port "$ROUTER_PORT"
wait_port "$NGINX_PORT"
wait_port "$ROUTER_TLS_PORT"
wait_port "$NGINX_TLS_PORT"

# wrk prints latencies as 812.00us, 1.20ms or 1.02s: to milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
        else { printf "%s", v }
    }'
}

# CPU time (ns) the given processes have used, all threads: on a shared machine the CPU
# spent per request is steadier than requests/s.
cpu_ns() {
    local total=0 pid f
    for pid in "$@"; do
        for f in /proc/"$pid"/task/*/schedstat; do
            total=$((total + $(cut -d' ' -f1 "$f")))
        done
    done
    echo "$total"
}

declare -A rps p99 cpu
run() {
    local name=$1 port=$2 scheme=http
    shift 2
    case $name in *-tls) scheme=https ;; esac
    local before after requests errors
    before=$(cpu_ns "$@")
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -H "Host: bench.localhost" \
        "$scheme://127.0.0.1:$port/" >"$tmp/$name.txt"
    after=$(cpu_ns "$@")
    requests=$(awk '/requests in/ { print $1 }' "$tmp/$name.txt")
    rps[$name]=$(awk '/^Requests\/sec:/ { print $2 }' "$tmp/$name.txt")
    p99[$name]=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$tmp/$name.txt")")
    errors=$(grep -E 'Non-2xx|Socket errors' "$tmp/$name.txt" || true)
    cpu[$name]=$(awk -v c=$((after - before)) -v n="$requests" 'BEGIN { printf "%.1f", c / n / 1000 }')
    printf '%-10s %12s req/s   p99 %8s ms   %5s us CPU/request   %s\n' "$name" \
        "${rps[$name]}" "${p99[$name]}" "${cpu[$name]}" "$errors"
}

echo "wrk -t$THREADS -c$CONNS -d$DURATION --latency; $(nproc) cores; backend: examples/hello.rs"
nginx_pids=$(cat "$tmp/nginx.pid") && nginx_pids="$nginx_pids $(pgrep -P "$nginx_pids" | tr '\n' ' ')"
run direct "$BACKEND_PORT" "${pids[0]}"
# shellcheck disable=SC2086
run nginx "$NGINX_PORT" $nginx_pids
run router "$ROUTER_PORT" "$router_pid"
# shellcheck disable=SC2086
run nginx-tls "$NGINX_TLS_PORT" $nginx_pids
run router-tls "$ROUTER_TLS_PORT" "$router_pid"

echo "(CPU/request: of the backend for direct, of the proxy alone for nginx and router)"
awk -v cn="${cpu[nginx]}" -v cr="${cpu[router]}" -v d="${rps[direct]}" -v n="${rps[nginx]}" -v r="${rps[router]}" \
    -v pd="${p99[direct]}" -v pn="${p99[nginx]}" -v pr="${p99[router]}" 'BEGIN {
    printf "router/nginx throughput: %.2f   router/direct: %.2f   nginx/direct: %.2f\n", r / n, r / d, n / d
    printf "p99 added over direct: router %+.3f ms   nginx %+.3f ms\n", pr - pd, pn - pd
    printf "proxy CPU per request, router/nginx: %.2f\n", cr / cn
}'
awk -v n="${rps[nginx-tls]}" -v r="${rps[router-tls]}" -v pn="${p99[nginx-tls]}" -v pr="${p99[router-tls]}" \
    -v cn="${cpu[nginx-tls]}" -v cr="${cpu[router-tls]}" 'BEGIN {
    printf "TLS: router/nginx throughput: %.2f   p99 router %.3f ms, nginx %.3f ms   CPU per request router/nginx: %.2f\n", r / n, pr, pn, cr / cn
}'
