#!/usr/bin/env bash
# API market benchmark. One `axle serve` (every service; the gateway's data plane on 1 thread)
# in front of an nginx upstream, a product published through the market's API, an application
# subscribed with a key. The same wrk drives
#   - the market's route as the market writes it (key-auth, consumer-restriction,
#     proxy-rewrite, usage-counter posting the counts to the market each second), a copy of
#     it without usage-counter, and one posting to nginx instead (the gateway's share of
#     metering alone: the market, in the same process, stores what it is sent): the proxy's
#     CPU per request and throughput;
# then, for ROUNDS new applications each, the time from the approval call to the first
# request the gateway accepts, and from the revocation call to the first it refuses.
# Usage: [AXLE_BIN=...] bench/market.sh [SECONDS] [CONNECTIONS] [ROUNDS]   (defaults 10, 50, 3)
#        [AXLE_BIN=...] COUNT_INSTRUCTIONS=1 [KEEP_PROFILES=DIR] bench/market.sh [SECONDS]
# The second form runs Axle under valgrind's callgrind and prints the instructions each route
# costs per request (all threads: the logger's sender and the market's counting included).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
CONNECTIONS="${2:-50}"
ROUNDS="${3:-3}"
UPSTREAM_PORT=18381
# shellcheck source=bench/lib.sh
source bench/lib.sh
prologue nginx wrk ${COUNT_INSTRUCTIONS:+valgrind}
if [ -n "${COUNT_INSTRUCTIONS:-}" ]; then
  WRAP="valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$(mktemp -u /tmp/axle-callgrind.XXXX).%p"
fi
upstream "$UPSTREAM_PORT"
serve_axle 18380
wait_for "http://127.0.0.1:$UPSTREAM_PORT/"
wait_for "$SITE/api/market/healthz"
TOKEN=$("$AXLE" token --data-dir "$WORK/axle")
# market METHOD PATH [BODY]: the market's answer, as the administrator (publisher too).
market() { curl -fsS -X "$1" -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' "$SITE/api/market$2" ${3:+-d "$3"}; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

PRODUCT=$(market POST /products '{"slug": "bench", "title": "Bench", "owner_team": "bench"}' | field '["id"]')
DOCUMENT='{"openapi": "3.0.3", "info": {"title": "Bench", "version": "1.0.0"}, "paths": {"/hello": {"get": {"responses": {"200": {"description": "hello"}}}}}}'
VERSION=$(market POST "/products/$PRODUCT/versions" "{\"number\": \"1.0.0\", \"document\": $DOCUMENT,
  \"backend\": {\"url\": \"http://127.0.0.1:$UPSTREAM_PORT\"}}" | field '["id"]')
market POST "/versions/$VERSION/publish" >/dev/null
OPEN=$(market POST "/products/$PRODUCT/plans" '{"name": "Open", "approval": "auto"}' | field '["id"]')
MANUAL=$(market POST "/products/$PRODUCT/plans" '{"name": "Manual", "approval": "manual"}' | field '["id"]')
APP=$(market POST /applications '{"name": "load"}' | field '["id"]')
KEY=$(market POST "/applications/$APP/keys" | field '["key"]')
market POST "/applications/$APP/subscriptions" "{\"plan_id\": \"$OPEN\"}" >/dev/null

# The market's route, copied under /unmetered without its usage-counter, and under /elsewhere
# posting to nginx.
ROUTE_ID="market-$(echo "$PRODUCT" | tr -d -)-v1"
copy() { # $1 = path prefix, $2 = the usage-counter's uri (none: no usage-counter)
  curl -fsS -H 'X-API-KEY: bench-key' "http://127.0.0.1:$ADMIN_PORT/apisix/admin/routes/$ROUTE_ID" \
    | python3 -c "
import json, sys
route = json.load(sys.stdin)['value']
for field in ('id', 'create_time', 'update_time'):
    route.pop(field, None)
if '$2':
    route['plugins']['usage-counter']['uri'] = '$2'
else:
    route['plugins'].pop('usage-counter')
print(json.dumps(route).replace('/market/bench/v1', '/$1/bench/v1'))" > "$WORK/$1.json"
  curl -fsS -o /dev/null -X PUT -H 'X-API-KEY: bench-key' \
    "http://127.0.0.1:$ADMIN_PORT/apisix/admin/routes/bench-$1" -d @"$WORK/$1.json"
}
copy unmetered ""
copy elsewhere "http://127.0.0.1:$UPSTREAM_PORT/logs"
METERED="$SITE/market/bench/v1/hello" UNMETERED="$SITE/unmetered/bench/v1/hello" ELSEWHERE="$SITE/elsewhere/bench/v1/hello"
for url in "$METERED" "$UNMETERED" "$ELSEWHERE"; do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "apikey: $KEY" "$url")" = 200 ] || { echo "$url refuses the key" >&2; exit 1; }
done

if [ -n "${COUNT_INSTRUCTIONS:-}" ]; then
  callgrind_control -i on "$(pgrep -f "valgrind.*callgrind.*$AXLE" | head -1)" >/dev/null 2>&1
  echo "under callgrind, wrk -t1 -c10 -d${DURATION}s per route"
  echo "  not metered:                  $(instructions unmetered "$UNMETERED" -H "apikey: $KEY")"
  echo "  metered, reported to nginx:   $(instructions elsewhere "$ELSEWHERE" -H "apikey: $KEY")"
  echo "  metered, reported to market:  $(instructions metered "$METERED" -H "apikey: $KEY")"
  exit 0
fi

metered_runs="" unmetered_runs="" elsewhere_runs=""
for _ in $(seq 1 "$ROUNDS"); do
  unmetered_runs+="$(measure "$AXLE_PID" "$UNMETERED" -H "apikey: $KEY")"$'\n'
  elsewhere_runs+="$(measure "$AXLE_PID" "$ELSEWHERE" -H "apikey: $KEY")"$'\n'
  metered_runs+="$(measure "$AXLE_PID" "$METERED" -H "apikey: $KEY")"$'\n'
done
read -r unmetered_rps unmetered_p99 unmetered_cpu < <(printf '%s' "$unmetered_runs" | median)
read -r elsewhere_rps elsewhere_p99 elsewhere_cpu < <(printf '%s' "$elsewhere_runs" | median)
read -r metered_rps metered_p99 metered_cpu < <(printf '%s' "$metered_runs" | median)
sleep 3 # the last counts reach the market
REPORTED=$(market GET "/applications/$APP/usage?minutes=60" | field '["requests"]')
DROPPED=$(market GET "/products/$PRODUCT/usage?minutes=60" | field '["dropped"]')

# Until URL answers STATUS with KEY: milliseconds since $1 (epoch ms).
first() { # $1 = start ms, $2 = key, $3 = status
  for _ in $(seq 1 5000); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' -H "apikey: $2" "$METERED")" = "$3" ]; then
      echo $(( $(date +%s%3N) - $1 )); return 0
    fi
  done
  echo "never answered $3" >&2; exit 1
}
approvals="" revocations=""
for i in $(seq 1 "$ROUNDS"); do
  app=$(market POST /applications "{\"name\": \"latency $i\"}" | field '["id"]')
  key=$(market POST "/applications/$app/keys" | field '["key"]')
  sub=$(market POST "/applications/$app/subscriptions" "{\"plan_id\": \"$MANUAL\"}" | field '["id"]')
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "apikey: $key" "$METERED")" = 403 ] || { echo "a waiting subscription passes" >&2; exit 1; }
  start=$(date +%s%3N); market POST "/subscriptions/$sub/approve" >/dev/null
  approvals+="$(first "$start" "$key" 200) "
  start=$(date +%s%3N); market POST "/subscriptions/$sub/revoke" '{"reason": "benchmark"}' >/dev/null
  revocations+="$(first "$start" "$key" 403) "
done

echo "market benchmark: wrk -t1 -c$CONNECTIONS -d${DURATION}s, median of $ROUNDS alternating rounds, $(nproc) cores, axle pinned: ${PROXY_CPU:-no}"
row() { printf "  %-44s %10s req/s   p99 %7s ms   axle CPU %7s us/request\n" "$@"; }
row "market route, not metered" "$unmetered_rps" "$unmetered_p99" "$unmetered_cpu"
row "market route, metered, reported to nginx" "$elsewhere_rps" "$elsewhere_p99" "$elsewhere_cpu"
row "market route, metered, reported to the market" "$metered_rps" "$metered_p99" "$metered_cpu"
awk -v u="$unmetered_cpu" -v e="$elsewhere_cpu" -v m="$metered_cpu" -v ur="$unmetered_rps" -v er="$elsewhere_rps" 'BEGIN {
  printf "  the gateway'"'"'s metering costs %.1f %% of a request'"'"'s CPU (%.1f %% of the throughput);", (e / u - 1) * 100, (1 - er / ur) * 100
  printf " with the market counting in the same process %.1f %%\n", (m / u - 1) * 100 }'
echo "  usage reported for the load's application: $REPORTED requests, $DROPPED dropped"
echo "  approval → first accepted request (ms): $approvals"
echo "  revocation → first refused request (ms): $revocations"
