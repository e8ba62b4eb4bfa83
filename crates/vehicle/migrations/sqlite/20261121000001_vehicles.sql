CREATE TABLE vehicles (
    id         TEXT PRIMARY KEY,
    vin        TEXT NOT NULL,
    make       TEXT NOT NULL,
    model      TEXT NOT NULL,
    year       INTEGER NOT NULL,
    mileage_km INTEGER NOT NULL,
    state      TEXT NOT NULL,
    version    INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    CONSTRAINT vehicles_vin_key UNIQUE (vin)
);
