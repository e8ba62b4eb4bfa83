CREATE TABLE vehicles (
    id         TEXT PRIMARY KEY,
    vin        TEXT NOT NULL,
    make       TEXT NOT NULL,
    model      TEXT NOT NULL,
    year       BIGINT NOT NULL,
    mileage_km BIGINT NOT NULL,
    state      TEXT NOT NULL,
    version    BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    CONSTRAINT vehicles_vin_key UNIQUE (vin)
);
