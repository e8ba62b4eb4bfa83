-- Saga instances: one per (saga, business key), so a repeated trigger finds the first.
-- `step` is the next step to run (running) or to undo (compensating). A worker owns an
-- instance while `lease_until` is in the future; every save is guarded by `version`.
CREATE TABLE saga_instances (
    id TEXT PRIMARY KEY,
    saga TEXT NOT NULL,
    key TEXT NOT NULL,
    status TEXT NOT NULL,
    step BIGINT NOT NULL,
    attempt BIGINT NOT NULL,
    input TEXT NOT NULL,
    results TEXT NOT NULL,
    due_at TEXT NOT NULL,
    lease_owner TEXT,
    lease_until TEXT,
    flagged BIGINT NOT NULL,
    last_error TEXT,
    version BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    CONSTRAINT saga_instances_saga_key_key UNIQUE (saga, key)
);
-- Workers look only at unfinished instances that are due.
CREATE INDEX saga_instances_due ON saga_instances (due_at) WHERE status IN ('running', 'compensating');
CREATE INDEX saga_instances_status ON saga_instances (status, id);

-- Every call made for an instance: its timeline.
CREATE TABLE saga_attempts (
    id TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL REFERENCES saga_instances (id),
    step BIGINT NOT NULL,
    step_name TEXT NOT NULL,
    phase TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    status_code BIGINT,
    error TEXT,
    started_at TEXT NOT NULL,
    duration_ms BIGINT NOT NULL
);
CREATE INDEX saga_attempts_instance ON saga_attempts (instance_id, id);
