-- The whole vehicle as JSON (the published view); the other columns index it for queries.
ALTER TABLE vehicles ADD COLUMN seller_org TEXT;
ALTER TABLE vehicles ADD COLUMN doc TEXT;
UPDATE vehicles SET doc = json_build_object(
    'id', id, 'vin', vin, 'make', make, 'model', model, 'year', year, 'mileage_km', mileage_km,
    'photos', json_build_array(), 'state', state, 'version', version,
    'created_at', created_at, 'updated_at', updated_at)::text
WHERE doc IS NULL;
CREATE INDEX vehicles_state ON vehicles (state, id);
CREATE INDEX vehicles_seller ON vehicles (seller_org, id);

-- Inventory pools: `used` counts deductions, so a deduction is one guarded UPDATE.
CREATE TABLE pools (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    capacity   BIGINT NOT NULL,
    used       BIGINT NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    CONSTRAINT pools_name_key UNIQUE (name)
);
CREATE TABLE pool_deductions (
    pool_id    TEXT NOT NULL REFERENCES pools (id),
    vehicle_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (pool_id, vehicle_id)
);
