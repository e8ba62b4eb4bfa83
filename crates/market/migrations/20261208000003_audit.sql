-- The audit trail: who changed what, when (see axle_core::audit).
CREATE TABLE audit (
    id     TEXT PRIMARY KEY,
    at     TEXT NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_target ON audit (target, id);
