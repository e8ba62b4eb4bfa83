-- Which process claimed a key: a restarted process releases its own unfinished claims at once
-- (instead of their being held until they are presumed abandoned).
ALTER TABLE axle_idempotency_keys ADD COLUMN claimed_by TEXT;
