-- Core tables present in every service schema.

-- Transactional outbox: written in the same transaction as the state change, drained by the relay.
CREATE TABLE axle_outbox (
    seq        BIGSERIAL PRIMARY KEY,
    event_id   TEXT NOT NULL UNIQUE,
    payload    TEXT NOT NULL,
    created_at TEXT NOT NULL
);

-- Idempotent consumers: one row per (consumer, event) already handled.
CREATE TABLE axle_processed_events (
    consumer     TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    processed_at TEXT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);

-- Idempotency-Key: the first response to a key is stored and replayed for retries.
CREATE TABLE axle_idempotency_keys (
    key          TEXT PRIMARY KEY,
    fingerprint  TEXT NOT NULL,
    status       BIGINT,
    content_type TEXT,
    body         TEXT,
    created_at   TEXT NOT NULL
);
CREATE INDEX axle_idempotency_keys_created ON axle_idempotency_keys (created_at);
