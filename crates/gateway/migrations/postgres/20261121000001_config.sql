-- The gateway's configuration as APISIX keeps it in etcd: one JSON document per key
-- (`/apisix/routes/1`), with etcd-like revisions. Every change is also a row of the history,
-- so any revision can be shown, compared and rolled back to.
CREATE TABLE gateway_config (
    key            TEXT PRIMARY KEY,
    value          TEXT NOT NULL,
    created_index  BIGINT NOT NULL,
    modified_index BIGINT NOT NULL
);
CREATE TABLE gateway_history (
    revision   BIGINT PRIMARY KEY,
    key        TEXT NOT NULL,
    -- NULL: the key was deleted at this revision.
    value      TEXT,
    changed_at TEXT NOT NULL
);
CREATE INDEX gateway_history_key ON gateway_history (key, revision);
