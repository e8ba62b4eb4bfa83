-- Orders: the columns lists filter on, and the whole order (lines, history) as JSON in `doc`.
CREATE TABLE orders (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    buyer_org TEXT NOT NULL,
    seller_org TEXT NOT NULL,
    source_kind TEXT NOT NULL,
    source_ref TEXT NOT NULL,
    payment_deadline TEXT,
    version BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX orders_overdue ON orders (status, payment_deadline);
CREATE INDEX orders_buyer ON orders (buyer_org, id);
