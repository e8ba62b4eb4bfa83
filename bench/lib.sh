# Shared by the benchmarks: nginx configurations, and wrk runs measured with the proxy's CPU.
# Source after setting WORK (a scratch directory), CONNECTIONS, DURATION and LOAD_CPU.

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

