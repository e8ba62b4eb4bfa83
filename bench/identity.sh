#!/usr/bin/env bash
# Identity benchmark: what checking a bearer token costs the gateway, and how fast tokens are
# issued. One `axle serve` (every service; the gateway's data plane on 1 thread) in front of
# an nginx upstream; the same wrk drives
#   - a plain route and the same route with `openid-connect` (bearer_only, use_jwks, Axle's
#     own issuer): the proxy's CPU per request, and the ratio — the verification's share;
#   - the token endpoint with client credentials (each answer a newly signed RS256 JWT).
# Usage: [AXLE_BIN=...] bench/identity.sh [SECONDS] [CONNECTIONS] [ROUNDS]   (defaults 10, 50, 3)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
CONNECTIONS="${2:-50}"
ROUNDS="${3:-3}"
UPSTREAM_PORT=18281
# shellcheck source=bench/lib.sh
source bench/lib.sh
prologue nginx wrk
upstream "$UPSTREAM_PORT"
serve_axle 18280
AXLE_PORT=18283
wait_for "http://127.0.0.1:$UPSTREAM_PORT/"
ISSUER="$SITE/api/identity"
TOKEN=$("$AXLE" token --data-dir "$WORK/axle")
admin_put() { curl -fsS -o /dev/null -X PUT -H 'X-API-KEY: bench-key' "http://127.0.0.1:$ADMIN_PORT/apisix/admin/$1" -d "$2"; }
admin_put routes/plain "{\"uri\": \"/plain/*\", \"upstream\": {\"nodes\": {\"127.0.0.1:$UPSTREAM_PORT\": 1}}}"
admin_put routes/oidc "{\"uri\": \"/oidc/*\", \"upstream\": {\"nodes\": {\"127.0.0.1:$UPSTREAM_PORT\": 1}},
  \"plugins\": {\"openid-connect\": {\"client_id\": \"bench\", \"bearer_only\": true, \"use_jwks\": true,
    \"discovery\": \"$ISSUER/.well-known/openid-configuration\"}}}"
# The same check, passing nothing on (no X-Access-Token, no X-Userinfo): the check alone.
admin_put routes/lean "{\"uri\": \"/lean/*\", \"upstream\": {\"nodes\": {\"127.0.0.1:$UPSTREAM_PORT\": 1}},
  \"plugins\": {\"openid-connect\": {\"client_id\": \"bench\", \"bearer_only\": true, \"use_jwks\": true,
    \"set_access_token_header\": false, \"set_userinfo_header\": false,
    \"discovery\": \"$ISSUER/.well-known/openid-configuration\"}}}"
wait_for "http://127.0.0.1:$AXLE_PORT/plain/"
for _ in $(seq 1 600); do curl -fsS -o /dev/null -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$AXLE_PORT/oidc/" && break; sleep 0.1; done
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$AXLE_PORT/oidc/")" = 401 ] \
  || { echo "the openid-connect route lets a request without a token through" >&2; exit 1; }

plain_runs="" oidc_runs="" lean_runs=""
for _ in $(seq 1 "$ROUNDS"); do
  # The same request on both routes (the token header too): the difference is the check.
  plain_runs+="$(measure "$AXLE_PID" "http://127.0.0.1:$AXLE_PORT/plain/" -H "Authorization: Bearer $TOKEN")"$'\n'
  oidc_runs+="$(measure "$AXLE_PID" "http://127.0.0.1:$AXLE_PORT/oidc/" -H "Authorization: Bearer $TOKEN")"$'\n'
  lean_runs+="$(measure "$AXLE_PID" "http://127.0.0.1:$AXLE_PORT/lean/" -H "Authorization: Bearer $TOKEN")"$'\n'
done
read -r plain_rps plain_p99 plain_cpu < <(printf '%s' "$plain_runs" | median)
read -r oidc_rps oidc_p99 oidc_cpu < <(printf '%s' "$oidc_runs" | median)
read -r lean_rps lean_p99 lean_cpu < <(printf '%s' "$lean_runs" | median)

# Token issuance: client credentials, as the command line's client (every answer signed anew).
SECRET=$(cat "$WORK/axle/identity/cli_secret")
cat > "$WORK/token.lua" <<LUA
wrk.method = "POST"
wrk.body = "grant_type=client_credentials"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic $(printf 'axle-cli:%s' "$SECRET" | base64 -w0)"
LUA
curl -fsS -o /dev/null -X POST -H "Authorization: Basic $(printf 'axle-cli:%s' "$SECRET" | base64 -w0)" \
  -d grant_type=client_credentials "$ISSUER/token"
read -r token_rps token_p99 token_cpu < <(measure "$AXLE_PID" "$ISSUER/token" -s "$WORK/token.lua")

echo "identity benchmark: wrk -t1 -c$CONNECTIONS -d${DURATION}s, median of $ROUNDS alternating rounds, $(nproc) cores, axle pinned: ${PROXY_CPU:-no}"
row() { printf "  %-44s %10s req/s   p99 %7s ms   axle CPU %7s us/request\n" "$@"; }
row "gateway, plain route (same request)" "$plain_rps" "$plain_p99" "$plain_cpu"
row "gateway, openid-connect (bearer, JWKS)" "$oidc_rps" "$oidc_p99" "$oidc_cpu"
row "  the same, passing no headers on" "$lean_rps" "$lean_p99" "$lean_cpu"
row "token endpoint, client credentials" "$token_rps" "$token_p99" "$token_cpu"
awk -v p="$plain_cpu" -v o="$oidc_cpu" -v l="$lean_cpu" 'BEGIN {
  printf "  token verification adds %.1f %% to a proxied request'"'"'s CPU cost", (l / p - 1) * 100
  printf " (%.1f %% with X-Access-Token and X-Userinfo passed on)\n", (o / p - 1) * 100 }'
