-- The model catalog, synced from the upstream catalog service and served from here.
CREATE TABLE catalog_models (
    code       TEXT PRIMARY KEY,
    make       TEXT NOT NULL,
    doc        TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX catalog_models_make ON catalog_models (make, code);

-- One row: how far the sync got and how the last attempt went.
CREATE TABLE catalog_sync (
    id           INTEGER PRIMARY KEY,
    cursor       TEXT,
    last_success TEXT,
    last_attempt TEXT,
    last_error   TEXT
);
INSERT INTO catalog_sync (id) VALUES (1);
