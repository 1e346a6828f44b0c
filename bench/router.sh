#!/usr/bin/env bash
# Router benchmark: wrk against Debian's nginx as a reverse proxy (keep-alive upstream) and
# against the Manifold router, both in front of the same trivial backend, over plain HTTP
# and over TLS (HTTP/1.1, ECDSA P-256, session cache and tickets on); optionally the backend
# directly. Each target is measured on a quiet machine and on a busy one (a CPU hog runs
# during each measurement, the same for every target), in several rounds whose order
# alternates (nginx first in odd rounds, the router first in even ones), so that the noise
# of a shared machine falls on both alike; it prints every run, then per load the median
# requests/s, p50 and p99 of each target and the router/nginx ratios side by side.
#
#   bench/router.sh                          # 3 rounds, quiet and busy, wrk -t2 -c50 -d10s
#   ROUNDS=5 LOADS=busy bench/router.sh      # busy runs only
#   BUSY="taskset -c 0 stress-ng --cpu 1 --quiet" bench/router.sh   # the hog pinned to CPU 0
#   TARGETS="direct nginx router" DURATION=30s CONNS=100 bench/router.sh
#   PLACEMENT=shared bench/router.sh         # see below
#   BASE=/tmp/router-bench-main bench/router.sh   # also another router-bench build ("base",
#                                                 # "base-tls"), e.g. main's, measured alike
#
# Placement: Linux with sched_autogroup (most desktop and server kernels, /proc/sys/kernel/
# sched_autogroup_enabled = 1) shares the CPU between sessions first, then between the
# threads of a session. nginx daemonizes, so it runs in a session of its own; the router
# must too, or on a busy machine it shares one session's CPU with wrk and the backend while
# nginx gets a whole session's (a busy-run artefact of up to 0.9x nginx and p99 20x nginx's,
# BENCHMARKS.md). PLACEMENT=own (the default) starts the router with setsid; PLACEMENT=shared
# runs both in this script's session (nginx with `daemon off`).
#
# Needs: wrk, nginx, stress-ng, openssl (apt-get install -y wrk nginx-light stress-ng).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
LOADS=${LOADS:-quiet busy}
targets_given=${TARGETS:-}
TARGETS=${TARGETS:-nginx router nginx-tls router-tls}
BUSY=${BUSY:-stress-ng --cpu 1 --quiet}
PLACEMENT=${PLACEMENT:-own}
BACKEND_PORT=${BACKEND_PORT:-18080}
ROUTER_PORT=${ROUTER_PORT:-18081}
NGINX_PORT=${NGINX_PORT:-18082}
ROUTER_TLS_PORT=${ROUTER_TLS_PORT:-18443}
NGINX_TLS_PORT=${NGINX_TLS_PORT:-18444}
BASE=${BASE:-}
BASE_PORT=${BASE_PORT:-18083}
BASE_TLS_PORT=${BASE_TLS_PORT:-18445}
if [ -n "$BASE" ] && [ -z "$targets_given" ]; then
    TARGETS="nginx base router nginx-tls base-tls router-tls"
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/manifold/target}

need=(wrk nginx openssl)
case " $LOADS " in *" busy "*) need+=("$(awk '{ for (i = 1; i <= NF; i++) if ($i !~ /^-/ && $i != "taskset" && $i !~ /^[0-9,-]+$/) { print $i; exit } }' <<<"$BUSY")") ;; esac
for tool in "${need[@]}"; do
    command -v "$tool" >/dev/null || {
        echo "bench/router.sh: $tool missing (apt-get install -y wrk nginx-light stress-ng)" >&2
        exit 1
    }
done

cargo build --quiet --release -p manifold-router --example hello --example router-bench
bin=$CARGO_TARGET_DIR/release/examples

tmp=$(mktemp -d)
pids=()
hog=
cleanup() {
    if [ -n "$hog" ]; then kill -- -"$hog" 2>/dev/null || true; fi
    if [ -f "$tmp/nginx.pid" ]; then kill "$(cat "$tmp/nginx.pid")" 2>/dev/null || true; fi
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
trap "exit 130" INT TERM

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
backend_pid=$!
# One certificate for both TLS proxies: wrk names bench.localhost (SNI, from the Host header).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=bench.localhost -addext subjectAltName=DNS:bench.localhost \
    -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
case $PLACEMENT in
    own) session=setsid daemon=on ;;
    shared) session='' daemon=off ;;
    *) echo "bench/router.sh: PLACEMENT is own or shared, not $PLACEMENT" >&2; exit 1 ;;
esac
# Not a process group leader (no job control here), so setsid makes the session without
# forking: $! is the router's pid.
$session "$bin/router-bench" "127.0.0.1:$ROUTER_PORT" "127.0.0.1:$BACKEND_PORT" \
    "127.0.0.1:$ROUTER_TLS_PORT" "$tmp/cert.pem" "$tmp/key.pem" &
pids+=($!)
router_pid=$!
base_pid=
ports="$BACKEND_PORT $ROUTER_PORT $NGINX_PORT $ROUTER_TLS_PORT $NGINX_TLS_PORT"
if [ -n "$BASE" ]; then
    $session "$BASE" "127.0.0.1:$BASE_PORT" "127.0.0.1:$BACKEND_PORT" \
        "127.0.0.1:$BASE_TLS_PORT" "$tmp/cert.pem" "$tmp/key.pem" &
    pids+=($!)
    base_pid=$!
    ports="$ports $BASE_PORT $BASE_TLS_PORT"
fi

mkdir -p "$tmp/logs"
cat >"$tmp/nginx.conf" <<NGINX
worker_processes auto;
daemon $daemon;
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
if [ "$daemon" = on ]; then
    nginx -p "$tmp" -c "$tmp/nginx.conf"
else
    nginx -p "$tmp" -c "$tmp/nginx.conf" &
fi

for port in $ports; do
    wait_port "$port"
done
for _ in $(seq 100); do [ -s "$tmp/nginx.pid" ] && break; sleep 0.1; done
nginx_pids=$(cat "$tmp/nginx.pid") && nginx_pids="$nginx_pids $(pgrep -P "$nginx_pids" | tr '\n' ' ')"

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

# One line per run: load target round req/s p50 p99 cpu-us/request loadavg errors.
results=$tmp/results
: >"$results"
run() {
    local load=$1 target=$2 round=$3 port scheme=http procs
    case $target in
        direct) port=$BACKEND_PORT procs=$backend_pid ;;
        nginx) port=$NGINX_PORT procs=$nginx_pids ;;
        router) port=$ROUTER_PORT procs=$router_pid ;;
        nginx-tls) port=$NGINX_TLS_PORT procs=$nginx_pids scheme=https ;;
        router-tls) port=$ROUTER_TLS_PORT procs=$router_pid scheme=https ;;
        base) port=$BASE_PORT procs=$base_pid ;;
        base-tls) port=$BASE_TLS_PORT procs=$base_pid scheme=https ;;
        *) echo "bench/router.sh: unknown target $target" >&2; exit 1 ;;
    esac
    if [ "$load" = busy ]; then
        # Its own process group, so every process it forks ends with it.
        # shellcheck disable=SC2086
        setsid $BUSY >>"$tmp/busy.log" 2>&1 &
        hog=$!
        sleep 0.5
    fi
    local before after requests errors out=$tmp/$load-$target-$round.txt
    # shellcheck disable=SC2086
    before=$(cpu_ns $procs)
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -H "Host: bench.localhost" \
        "$scheme://127.0.0.1:$port/" >"$out"
    # shellcheck disable=SC2086
    after=$(cpu_ns $procs)
    if [ -n "$hog" ]; then
        kill -- -"$hog" 2>/dev/null || true
        wait "$hog" 2>/dev/null || true
        hog=
    fi
    requests=$(awk '/requests in/ { print $1 }' "$out")
    errors=$(grep -E 'Non-2xx|Socket errors' "$out" | tr -s ' \n' ' ' || true)
    printf '%s %s %s %s %s %s %s %s %s\n' "$load" "$target" "$round" \
        "$(awk '/^Requests\/sec:/ { print $2 }' "$out")" \
        "$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")" \
        "$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")" \
        "$(awk -v c=$((after - before)) -v n="$requests" 'BEGIN { printf "%.1f", c / n / 1000 }')" \
        "$(cut -d' ' -f1 /proc/loadavg)" "${errors:--}" | tee -a "$results"
}

echo "wrk -t$THREADS -c$CONNS -d$DURATION --latency; $(nproc) cores; $ROUNDS rounds; busy = $BUSY"
autogroup() { cut -d' ' -f1 "/proc/$1/autogroup" 2>/dev/null || echo none; }
echo "placement $PLACEMENT: autogroup of router $(autogroup "$router_pid")," \
    "nginx $(autogroup "$(cat "$tmp/nginx.pid")"), wrk and backend $(autogroup $$)"
echo "load target round req/s p50-ms p99-ms proxy-cpu-us/req loadavg errors"
for round in $(seq "$ROUNDS"); do
    for load in $LOADS; do
        order=$TARGETS
        # Even rounds run the targets in reverse order.
        if [ $((round % 2)) -eq 0 ]; then order=$(tr ' ' '\n' <<<"$TARGETS" | tac | tr '\n' ' '); fi
        for target in $order; do run "$load" "$target" "$round"; done
    done
done

echo
echo "Medians over $ROUNDS rounds (CPU/request: of the proxy alone; of the backend for direct)"
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
declare -A med
printf '%-6s %-11s %10s %9s %9s %8s %8s\n' load target req/s p50-ms p99-ms cpu-us loadavg
for load in $LOADS; do
    for target in $TARGETS; do
        for col in 4 5 6 7 8; do
            med[$load,$target,$col]=$(awk -v l="$load" -v t="$target" -v c="$col" '$1 == l && $2 == t { print $c }' "$results" | median)
        done
        printf '%-6s %-11s %10s %9s %9s %8s %8s\n' "$load" "$target" "${med[$load,$target,4]}" \
            "${med[$load,$target,5]}" "${med[$load,$target,6]}" "${med[$load,$target,7]}" "${med[$load,$target,8]}"
    done
done
echo
for load in $LOADS; do
    for pair in "nginx router" "nginx-tls router-tls" "nginx base" "nginx-tls base-tls" "base router" "base-tls router-tls"; do
        read -r n r <<<"$pair"
        case " $TARGETS " in *" $n "*) ;; *) continue ;; esac
        case " $TARGETS " in *" $r "*) ;; *) continue ;; esac
        awk -v load="$load" -v r="$r" -v nr="${med[$load,$n,4]}" -v rr="${med[$load,$r,4]}" \
            -v n50="${med[$load,$n,5]}" -v r50="${med[$load,$r,5]}" \
            -v n99="${med[$load,$n,6]}" -v r99="${med[$load,$r,6]}" -v n="$n" 'BEGIN {
            printf "%-5s %-10s / %-9s req/s %.2f   p50 %.3f vs %.3f ms   p99 %.3f vs %.3f ms\n", load, r, n, rr / nr, r50, n50, r99, n99
        }'
    done
done
