# Shared by the benchmarks: their set-up, nginx configurations, and wrk runs measured with the
# proxy's CPU. Source it from the repository's root, then call `prologue`.

# prologue TOOL...: the tools installed when missing; the optimized build (profile `dist`, as
# packages ship it) unless AXLE_BIN names a build to measure (AXLE); a scratch directory WORK,
# removed on exit with the processes in PIDS stopped; the cores: PROXY_CPU for the proxy under
# test, LOAD_CPU for wrk and the upstream (when there are 2+ cores).
prologue() {
  for tool in "$@"; do
    if ! command -v "$tool" >/dev/null; then
      apt-get update -qq && apt-get install -y -qq "$@" >/dev/null
    fi
  done
  if [ -z "${AXLE_BIN:-}" ]; then cargo build --quiet --profile dist -p axle; fi
  AXLE="${AXLE_BIN:-${CARGO_TARGET_DIR:-target}/dist/axle}"
  WORK="$(mktemp -d)"
  PIDS=()
  trap cleanup EXIT
  PROXY_CPU="" LOAD_CPU=""
  if [ "$(nproc)" -ge 2 ]; then PROXY_CPU="taskset -c 1"; LOAD_CPU="taskset -c 0"; fi
}

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}

# upstream PORT: nginx answering a small fixed body, on the load's core.
upstream() {
  nginx_conf upstream "server { listen 127.0.0.1:$1; location / { return 200 'hello from the upstream'; } }"
  $LOAD_CPU nginx -c "$WORK/upstream/nginx.conf" & PIDS+=($!)
}

# serve_axle BASE: `axle serve` with every service (the gateway's data plane on one thread, on
# the proxy's core; under WRAP, e.g. valgrind, when set), its listeners on ports from BASE up (the data plane on BASE+3, the Admin API
# on BASE+4); sets AXLE_PID, SITE and ADMIN_PORT, and waits for the issuer.
serve_axle() {
  local base=$1
  export AXLE_ADMIN_KEY=bench-key AXLE_ADMIN_PASSWORD="a benchmark passphrase"
  export AXLE__LOG__LEVEL=warn
  export AXLE__SERVICES__GATEWAY__LISTEN="127.0.0.1:$((base + 3))"
  export AXLE__SERVICES__GATEWAY__ADMIN_LISTEN="127.0.0.1:$((base + 4))"
  unset AXLE__SERVICES__GATEWAY__TLS_LISTEN
  export AXLE__SERVICES__IDENTITY__LISTEN="127.0.0.1:$((base + 11))"
  export AXLE__SERVICES__WEB__LISTEN="127.0.0.1:$((base + 12))"
  export AXLE__SERVICES__VEHICLE__LISTEN="127.0.0.1:$((base + 13))"
  export AXLE__SERVICES__MASTERDATA__LISTEN="127.0.0.1:$((base + 14))"
  export AXLE__SERVICES__MASTERDATA__VEHICLE_URL="http://127.0.0.1:$((base + 13))"
  export AXLE__SERVICES__GATEWAY__PROMETHEUS_LISTEN="127.0.0.1:$((base + 15))"
  export AXLE__SERVICES__MARKET__LISTEN="127.0.0.1:$((base + 16))"
  export AXLE__SERVICES__ORDER__LISTEN="127.0.0.1:$((base + 17))"
  export AXLE__SERVICES__FINANCE__LISTEN="127.0.0.1:$((base + 18))"
  export AXLE__SERVICES__SAGA__LISTEN="127.0.0.1:$((base + 19))"
  $PROXY_CPU ${WRAP:-} "$AXLE" serve --workers 1 --data-dir "$WORK/axle" >"$WORK/axle.log" 2>&1 & PIDS+=($!)
  AXLE_PID=$!
  SITE="http://127.0.0.1:$((base + 3))" ADMIN_PORT=$((base + 4))
  wait_for "$SITE/api/identity/jwks"
}

# instructions NAME URL [WRK ARGUMENTS…]: the instructions per request (user space, all
# threads) the process under callgrind whose command line names $AXLE spends on URL; with
# KEEP_PROFILES the profile is kept as $KEEP_PROFILES/NAME, for callgrind_annotate.
instructions() {
  local name=$1 url=$2 pid out requests
  shift 2
  pid=$(pgrep -f "valgrind.*callgrind.*$AXLE" | head -1)
  $LOAD_CPU wrk -t1 -c10 -d3s "$@" "$url" >/dev/null # warm-up
  callgrind_control -z "$pid" >/dev/null 2>&1
  requests=$($LOAD_CPU wrk -t1 -c10 -d"${DURATION}s" "$@" "$url" | awk '/requests in/ { print $1 }')
  sleep 2 # what the requests left to do (a logger's batch) is done
  callgrind_control -d "$pid" >/dev/null 2>&1
  out=$(ls -t /tmp/axle-callgrind.*."$pid".* | head -1)
  awk -v n="$requests" '/^totals:/ { printf "%.0f instructions per request (%d requests)\n", $2 / n, n }' "$out"
  if [ -n "${KEEP_PROFILES:-}" ]; then mkdir -p "$KEEP_PROFILES" && cp "$out" "$KEEP_PROFILES/$name"; fi
  rm -f /tmp/axle-callgrind.*."$pid"*
}

nginx_conf() { # $1 = name, $2 = server block, $3 = more main-context directives
  mkdir -p "$WORK/$1"
  cat > "$WORK/$1/nginx.conf" <<CONF
worker_processes 1;
daemon off;
${3:-}
pid $WORK/$1/nginx.pid;
error_log $WORK/$1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/$1;
  proxy_temp_path $WORK/$1;
  fastcgi_temp_path $WORK/$1;
  uwsgi_temp_path $WORK/$1;
  scgi_temp_path $WORK/$1;
  $2
}
CONF
}


# wait_for URL: until it answers 2xx (a minute at most).
wait_for() { for _ in $(seq 1 600); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "not answering: $1" >&2; exit 1; }

# CPU time (user and system, all threads, in clock ticks) process $1 has used.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# Prints "requests/s p99_ms cpu_us" for one wrk run of URL $2 (more wrk arguments may follow),
# cpu_us being the CPU time process $1 (the proxy) spent per request: what a request costs the
# proxy's core even when the load, not the proxy, sets the pace.
measure() {
  local pid=$1 before
  shift
  $LOAD_CPU wrk -t1 -c"$CONNECTIONS" -d2s "${@:2}" "$1" >/dev/null # warm-up
  before=$(ticks "$pid")
  $LOAD_CPU wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "${@:2}" "$1" | awk \
    -v before="$before" -v after_file="/proc/$pid/stat" -v hz="$(getconf CLK_TCK)" '
    /requests in/ { requests = $1 }
    /Requests\/sec/ { rps = $2 }
    /^ +99%/ { v = $2; if (v ~ /us$/) { sub(/us/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms/, "", v) } else if (v ~ /s$/) { sub(/s/, "", v); v *= 1000 }; p99 = v }
    END { getline stat < after_file; split(stat, f, " "); cpu = (f[14] + f[15] - before) / hz
          printf "%.0f %.2f %.1f\n", rps, p99, cpu * 1e6 / requests }'
}

# The median of a list of "requests/s p99_ms cpu_us" lines, by requests/s.
median() { sort -n | awk '{ line[NR] = $0 } END { print line[int((NR + 1) / 2)] }'; }

