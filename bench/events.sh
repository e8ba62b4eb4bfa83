#!/usr/bin/env bash
# Events benchmark: outbox -> RabbitMQ -> idempotent consumer, against the raw broker.
# Usage: bench/events.sh [EVENTS] [LAG_RATE]   (defaults 50000 and 2000/s)
# Needs RabbitMQ on 127.0.0.1:5672 (guest/guest) or AXLE_BENCH_AMQP_URL.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rabbitmqctl -q status >/dev/null 2>&1; then
  rabbitmq-server -detached
  rabbitmqctl -q await_startup
fi
cargo run --quiet --profile dist -p axle-core --example events_bench -- "${1:-50000}" "${2:-2000}"
