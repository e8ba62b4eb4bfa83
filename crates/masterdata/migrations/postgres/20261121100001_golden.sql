-- Golden vehicle records: the latest known state of every vehicle, with the provenance of each
-- attribute (doc, JSON); the other columns index it for queries.
CREATE TABLE golden_vehicles (
    id         TEXT PRIMARY KEY,
    vin        TEXT NOT NULL,
    state      TEXT NOT NULL,
    make       TEXT NOT NULL,
    seller_org TEXT,
    version    BIGINT NOT NULL,
    doc        TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX golden_vehicles_vin ON golden_vehicles (vin);
CREATE INDEX golden_vehicles_state ON golden_vehicles (state, id);
CREATE INDEX golden_vehicles_make ON golden_vehicles (make, id);
CREATE INDEX golden_vehicles_seller ON golden_vehicles (seller_org, id);

-- Every event received, once: the timeline of each vehicle and the log replay rebuilds from.
CREATE TABLE timeline (
    event_id   TEXT PRIMARY KEY,
    vehicle_id TEXT NOT NULL,
    version    BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    time       TEXT NOT NULL,
    actor      TEXT NOT NULL,
    source     TEXT NOT NULL,
    data       TEXT NOT NULL
);
CREATE INDEX timeline_vehicle ON timeline (vehicle_id, version);
