#!/usr/bin/env bash
# Gateway benchmark: the same upstream reached directly, through nginx (proxy_pass, 1 worker)
# and through Axle's gateway (1 data-plane thread) — as a plain proxy, and with key-auth +
# limit-count + prometheus on the route — driven by the same wrk on loopback.
# Usage: [AXLE_BIN=...] bench/gateway.sh [SECONDS] [CONNECTIONS] [ROUNDS]   (defaults 10, 50 and 3)
#        [AXLE_BIN=...] COUNT_INSTRUCTIONS=1 [KEEP_PROFILES=DIR] bench/gateway.sh [SECONDS]
# The second form runs Axle and the reference nginx under valgrind's callgrind and prints the
# instructions (user space, all threads) each spends per request: steady where throughput swings
# with the machine, for comparing two builds, and Axle with nginx. KEEP_PROFILES keeps each
# measurement's callgrind profile in DIR (nginx, plain, plugins), for callgrind_annotate.
# nginx and Axle are measured in alternating rounds and each reported by its median round, so
# a slow spell of a shared machine does not land on one of them only.
# Core 0 runs wrk and the upstream, core 1 the proxy under test (when there are 2+ cores).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
CONNECTIONS="${2:-50}"
ROUNDS="${3:-3}"
UPSTREAM_PORT=18081 NGINX_PORT=18082 AXLE_PORT=18083 AXLE_TLS_PORT=18443 ADMIN_PORT=18183 METRICS_PORT=18191

WRAP=""
if [ -n "${COUNT_INSTRUCTIONS:-}" ]; then
  WRAP="valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$(mktemp -u /tmp/axle-callgrind.XXXX).%p"
fi
# AXLE_BIN=path/to/axle measures that build instead (to compare two builds).
# shellcheck source=bench/lib.sh
source bench/lib.sh
prologue nginx wrk ${COUNT_INSTRUCTIONS:+valgrind}
upstream "$UPSTREAM_PORT"

# The reference proxy: nginx proxy_pass with an upstream keepalive pool.
nginx_conf proxy "upstream backend { server 127.0.0.1:$UPSTREAM_PORT; keepalive 320; }
  server { listen 127.0.0.1:$NGINX_PORT;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection '';
                 proxy_set_header Host \$host; proxy_set_header X-Real-IP \$remote_addr;
                 proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } }" \
  "${WRAP:+master_process off;}" # under callgrind, the worker is the process itself
$PROXY_CPU $WRAP nginx -c "$WORK/proxy/nginx.conf" 2>"$WORK/proxy/stderr.log" & PIDS+=($!)
NGINX_PID=$!

# Axle's gateway alone, one data-plane thread, a route to the same upstream.
AXLE_ADMIN_KEY=bench-key \
AXLE__LOG__LEVEL=warn \
AXLE__SERVICES__GATEWAY__LISTEN="127.0.0.1:$AXLE_PORT" \
AXLE__SERVICES__GATEWAY__TLS_LISTEN="127.0.0.1:$AXLE_TLS_PORT" \
AXLE__SERVICES__GATEWAY__ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT" \
AXLE__SERVICES__GATEWAY__PROMETHEUS_LISTEN="127.0.0.1:$METRICS_PORT" \
  $PROXY_CPU $WRAP "$AXLE" serve --only gateway --workers 1 --data-dir "$WORK/axle" >"$WORK/axle.log" 2>&1 & PIDS+=($!)
AXLE_PID=$!

wait_for "http://127.0.0.1:$UPSTREAM_PORT/"
wait_for "http://127.0.0.1:$NGINX_PORT/"
for _ in $(seq 1 600); do curl -fsS -o /dev/null -H 'X-API-KEY: bench-key' "http://127.0.0.1:$ADMIN_PORT/apisix/admin/routes" 2>/dev/null && break; sleep 0.1; done
admin_put() { curl -fsS -o /dev/null -X PUT -H 'X-API-KEY: bench-key' "http://127.0.0.1:$ADMIN_PORT/apisix/admin/$1" -d "$2"; }
admin_put routes/bench "{\"uri\": \"/*\", \"upstream\": {\"type\": \"roundrobin\", \"nodes\": {\"127.0.0.1:$UPSTREAM_PORT\": 1}}}"
# The API-market route: a consumer's key, a rate limit that is counted but never reached, and
# Prometheus metrics.
admin_put consumers '{"username": "bench", "plugins": {"key-auth": {"key": "bench-consumer-key"}}}'
admin_put routes/plugins "{\"uri\": \"/plugins/*\", \"upstream\": {\"nodes\": {\"127.0.0.1:$UPSTREAM_PORT\": 1}},
  \"plugins\": {\"key-auth\": {}, \"prometheus\": {},
    \"limit-count\": {\"count\": 1000000000, \"time_window\": 60, \"key_type\": \"var\", \"key\": \"consumer_name\"}}}"
wait_for "http://127.0.0.1:$AXLE_PORT/"
for _ in $(seq 1 600); do curl -fsS -o /dev/null -H 'apikey: bench-consumer-key' "http://127.0.0.1:$AXLE_PORT/plugins/" && break; sleep 0.1; done

# Prints the instructions per request of URL $3 (more wrk arguments may follow) of the process
# under callgrind whose command line matches $2; $1 names the measurement.
instructions() {
  local name=$1 pid out requests
  pid=$(pgrep -f "valgrind.*callgrind.*$2" | head -1)
  shift 2
  $LOAD_CPU wrk -t1 -c10 -d3s "${@:2}" "$1" >/dev/null # warm-up
  callgrind_control -z "$pid" >/dev/null 2>&1
  requests=$($LOAD_CPU wrk -t1 -c10 -d"${DURATION}s" "${@:2}" "$1" | awk '/requests in/ { print $1 }')
  callgrind_control -d "$pid" >/dev/null 2>&1
  out=$(ls -t /tmp/axle-callgrind.*."$pid".* | head -1)
  awk -v n="$requests" '/^totals:/ { printf "%.0f instructions per request (%d requests)\n", $2 / n, n }' "$out"
  if [ -n "${KEEP_PROFILES:-}" ]; then mkdir -p "$KEEP_PROFILES" && cp "$out" "$KEEP_PROFILES/$name"; fi
  rm -f /tmp/axle-callgrind.*."$pid"*
}
if [ -n "${COUNT_INSTRUCTIONS:-}" ]; then
  for under in "$AXLE" "$WORK/proxy/nginx.conf"; do
    callgrind_control -i on "$(pgrep -f "valgrind.*callgrind.*$under" | head -1)" >/dev/null 2>&1
  done
  echo "under callgrind, wrk -t1 -c10 -d${DURATION}s per route"
  echo "  nginx proxy_pass:    $(instructions nginx "$WORK/proxy/nginx.conf" "http://127.0.0.1:$NGINX_PORT/")"
  echo "  axle plain route:    $(instructions plain "$AXLE" "http://127.0.0.1:$AXLE_PORT/")"
  echo "  axle plugin route:   $(instructions plugins "$AXLE" "http://127.0.0.1:$AXLE_PORT/plugins/" -H 'apikey: bench-consumer-key')"
  exit 0
fi

# nginx's worker is the master's child.
NGINX_WORKER=$(pgrep -P "$NGINX_PID" | head -1)
read -r direct_rps direct_p99 _ < <(measure "${PIDS[0]}" "http://127.0.0.1:$UPSTREAM_PORT/")
nginx_runs="" axle_runs="" plugins_runs=""
for _ in $(seq 1 "$ROUNDS"); do
  nginx_runs+="$(measure "$NGINX_WORKER" "http://127.0.0.1:$NGINX_PORT/")"$'\n'
  axle_runs+="$(measure "$AXLE_PID" "http://127.0.0.1:$AXLE_PORT/")"$'\n'
  plugins_runs+="$(measure "$AXLE_PID" "http://127.0.0.1:$AXLE_PORT/plugins/" -H 'apikey: bench-consumer-key')"$'\n'
done
read -r nginx_rps nginx_p99 nginx_cpu < <(printf '%s' "$nginx_runs" | median)
read -r axle_rps axle_p99 axle_cpu < <(printf '%s' "$axle_runs" | median)
read -r plugins_rps plugins_p99 plugins_cpu < <(printf '%s' "$plugins_runs" | median)
echo "rounds (req/s p99 cpu_us): nginx [$(printf '%s' "$nginx_runs" | tr '\n' ';')] axle [$(printf '%s' "$axle_runs" | tr '\n' ';')] plugins [$(printf '%s' "$plugins_runs" | tr '\n' ';')]"
# Every plugin request was counted and authenticated: the exporter must say so.
curl -fsS "http://127.0.0.1:$METRICS_PORT/apisix/prometheus/metrics" | grep '^apisix_http_status{' \
  | grep 'route="plugins"' | grep -q 'consumer="bench"' \
  || { echo "the plugin route's requests are missing from the metrics" >&2; exit 1; }

echo "gateway benchmark: wrk -t1 -c$CONNECTIONS -d${DURATION}s, median of $ROUNDS alternating rounds, $(nproc) cores, proxy pinned: ${PROXY_CPU:-no}"
printf "  %-34s %10s req/s   p99 %7s ms\n" "direct to the upstream" "$direct_rps" "$direct_p99"
row() { printf "  %-34s %10s req/s   p99 %7s ms   proxy CPU %6s us/request\n" "$@"; }
row "nginx proxy_pass (1 worker)" "$nginx_rps" "$nginx_p99" "$nginx_cpu"
row "axle gateway (1 worker thread)" "$axle_rps" "$axle_p99" "$axle_cpu"
row "axle + key-auth, limit-count, prom." "$plugins_rps" "$plugins_p99" "$plugins_cpu"
# Throughput, and requests per second of the proxy's CPU (the inverse of its CPU per request).
awk -v a="$axle_rps" -v p="$plugins_rps" -v n="$nginx_rps" -v ac="$axle_cpu" -v pc="$plugins_cpu" -v nc="$nginx_cpu" 'BEGIN {
  printf "  ratio axle / nginx                 %10.2f   per CPU second %6.2f\n", a / n, nc / ac
  printf "  ratio axle with plugins / nginx    %10.2f   per CPU second %6.2f\n", p / n, nc / pc }'
