#!/usr/bin/env bash
# Settlement benchmark, scaled out: one `axle serve` (every service, on both cores, its
# databases in PostgreSQL schemas, its events through RabbitMQ); LOTS listed vehicles made through the vehicle API; then
#   - the reference: the settlement's four calls (mark sold, create order, deduct inventory,
#     raise receivable) made directly by the client, CONCURRENCY lots at a time;
#   - the saga: LOTS settlements started at /settlements, CONCURRENCY at a time, and run by the
#     orchestrator to their end (persisted before and after every call, with its outbox);
# printing both rates, their ratio, and each step's latency as the orchestrator measured it.
# Usage: [AXLE_BIN=...] [POSTGRES_URL=...] [AMQP_URL=...] bench/saga.sh [LOTS] [CONCURRENCY]   (defaults 5000, 64)
set -euo pipefail
cd "$(dirname "$0")/.."
LOTS="${1:-5000}"
CONCURRENCY="${2:-64}"
POSTGRES_URL="${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"   # AMQP_URL= for the embedded bus
# shellcheck source=bench/lib.sh
source bench/lib.sh
prologue
cargo build --quiet --profile dist -p axle-saga --example settle_bench
DRIVER="${CARGO_TARGET_DIR:-target}/dist/examples/settle_bench"
PROXY_CPU="" # the whole machine: the orchestrator, three participants and PostgreSQL
drop_schemas() {
  export PGOPTIONS="-c client_min_messages=warning"
  psql "$POSTGRES_URL" -qAt -c "SELECT 'DROP SCHEMA \"' || schema_name || '\" CASCADE;' FROM information_schema.schemata WHERE schema_name LIKE 'bench_saga_%'" \
    | psql "$POSTGRES_URL" -q >/dev/null
}
drop_schemas
trap 'cleanup; drop_schemas' EXIT
export AXLE__DATABASE__URL="$POSTGRES_URL" AXLE__DATABASE__SCHEMA_PREFIX=bench_saga_ AXLE__DATABASE__MAX_CONNECTIONS=10
if [ -n "$AMQP_URL" ]; then
  # Scaled out: events through RabbitMQ, on an exchange of this run (its queues expire after).
  export AXLE__EVENTS__AMQP_URL="$AMQP_URL" AXLE__EVENTS__EXCHANGE="bench.saga.$$" AXLE__EVENTS__QUEUE_EXPIRES_SECS=60
fi
serve_axle 18480
wait_for "http://127.0.0.1:18499/healthz"
TOKEN=$("$AXLE" token --data-dir "$WORK/axle")
echo "$("$AXLE" version 2>/dev/null | head -1), $(nproc) cores, PostgreSQL $(psql "$POSTGRES_URL" -qAt -c "SHOW server_version" | cut -d" " -f1), events: $([ -n "$AMQP_URL" ] && echo RabbitMQ || echo embedded), $LOTS lots, $CONCURRENCY at a time"
"$DRIVER" http://127.0.0.1:18493 http://127.0.0.1:18497 http://127.0.0.1:18498 http://127.0.0.1:18499 "$TOKEN" "$LOTS" "$CONCURRENCY"
