-- API products, their versions (with the OpenAPI document each is published with) and plans.
-- Each row keeps the whole record as JSON (`doc`) beside the columns queries use; `version`
-- guards concurrent changes.
CREATE TABLE products (
    id         TEXT PRIMARY KEY,
    slug       TEXT NOT NULL,
    doc        TEXT NOT NULL,
    version    BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    CONSTRAINT products_slug_key UNIQUE (slug)
);

CREATE TABLE api_versions (
    id         TEXT PRIMARY KEY,
    product_id TEXT NOT NULL REFERENCES products (id),
    number     TEXT NOT NULL,
    status     TEXT NOT NULL,
    doc        TEXT NOT NULL,
    document   TEXT NOT NULL,
    version    BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    CONSTRAINT api_versions_number_key UNIQUE (product_id, number)
);

CREATE TABLE plans (
    id         TEXT PRIMARY KEY,
    product_id TEXT NOT NULL REFERENCES products (id),
    name       TEXT NOT NULL,
    doc        TEXT NOT NULL,
    version    BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    CONSTRAINT plans_name_key UNIQUE (product_id, name)
);
