-- Applications (each a gateway consumer), their API keys (kept as SHA-256, never the key) and
-- their subscriptions to products' plans.
CREATE TABLE applications (
    id         TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    doc        TEXT NOT NULL,
    version    BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX applications_owner ON applications (owner, id);

-- `expires_at` is when the key stops working (rotation, revocation); `removed` says the
-- gateway no longer holds it.
CREATE TABLE api_keys (
    id             TEXT PRIMARY KEY,
    application_id TEXT NOT NULL REFERENCES applications (id),
    hash           TEXT NOT NULL,
    expires_at     TEXT,
    removed        BIGINT NOT NULL DEFAULT 0,
    doc            TEXT NOT NULL,
    version        BIGINT NOT NULL,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    CONSTRAINT api_keys_hash_key UNIQUE (hash)
);
CREATE INDEX api_keys_application ON api_keys (application_id, id);

CREATE TABLE subscriptions (
    id             TEXT PRIMARY KEY,
    application_id TEXT NOT NULL REFERENCES applications (id),
    product_id     TEXT NOT NULL REFERENCES products (id),
    plan_id        TEXT NOT NULL REFERENCES plans (id),
    status         TEXT NOT NULL,
    doc            TEXT NOT NULL,
    version        BIGINT NOT NULL,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);
-- One live subscription per application and product.
CREATE UNIQUE INDEX subscriptions_live_key ON subscriptions (application_id, product_id)
    WHERE status IN ('requested', 'approved', 'suspended');
CREATE INDEX subscriptions_status ON subscriptions (status, id);
CREATE INDEX subscriptions_product ON subscriptions (product_id, id);
