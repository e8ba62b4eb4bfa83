-- Organisations: dealer companies and the group's own units.
CREATE TABLE organisations (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    status          TEXT NOT NULL,
    deposit_account TEXT,
    version         BIGINT NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    CONSTRAINT organisations_name_key UNIQUE (name)
);

-- Users: Argon2id password hashes (PHC strings), roles as a JSON array, lockout state.
CREATE TABLE users (
    id              TEXT PRIMARY KEY,
    username        TEXT NOT NULL,
    email           TEXT,
    display_name    TEXT NOT NULL,
    org_id          TEXT REFERENCES organisations (id),
    roles           TEXT NOT NULL,
    status          TEXT NOT NULL,
    password_hash   TEXT NOT NULL,
    failed_attempts BIGINT NOT NULL DEFAULT 0,
    locked_until    TEXT,
    version         BIGINT NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    CONSTRAINT users_username_key UNIQUE (username)
);

-- OAuth clients. A public client has no secret; a confidential one a SHA-256 of its secret
-- (secrets are 256-bit random, so a fast hash is enough).
CREATE TABLE clients (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    secret_hash   TEXT,
    doc           TEXT NOT NULL,
    version       BIGINT NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);

-- Signing keys. The private key never leaves this table except to sign; `retires_at` is when
-- a rotated-out key stops being published (after the last token it signed has expired).
CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    private_der TEXT NOT NULL,
    public_jwk  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    retired_at  TEXT,
    retires_at  TEXT
);

-- Single sign-on sessions (the identity cookie holds the secret whose hash is `secret_hash`).
CREATE TABLE sessions (
    id           TEXT PRIMARY KEY,
    secret_hash  TEXT NOT NULL,
    user_id      TEXT NOT NULL REFERENCES users (id),
    user_agent   TEXT,
    created_at   TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    ended_at     TEXT,
    CONSTRAINT sessions_secret_key UNIQUE (secret_hash)
);
CREATE INDEX sessions_user ON sessions (user_id, created_at);

-- Authorization codes, single use, kept hashed.
CREATE TABLE auth_codes (
    code_hash      TEXT PRIMARY KEY,
    client_id      TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    session_id     TEXT NOT NULL,
    redirect_uri   TEXT NOT NULL,
    scope          TEXT NOT NULL,
    nonce          TEXT,
    code_challenge TEXT,
    auth_time      TEXT NOT NULL,
    expires_at     TEXT NOT NULL,
    used_at        TEXT
);

-- Refresh tokens, kept hashed; each use replaces one with the next of its family, and a
-- used one presented again revokes the whole family.
CREATE TABLE refresh_tokens (
    token_hash  TEXT PRIMARY KEY,
    family_id   TEXT NOT NULL,
    client_id   TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    session_id  TEXT,
    scope       TEXT NOT NULL,
    auth_time   TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    used_at     TEXT,
    revoked_at  TEXT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

-- Access tokens revoked before they expire (RFC 7009), by their `jti`.
CREATE TABLE revoked_tokens (
    jti        TEXT PRIMARY KEY,
    expires_at TEXT NOT NULL
);

-- Consents a user gave a third-party client, by scope.
CREATE TABLE consents (
    user_id    TEXT NOT NULL,
    client_id  TEXT NOT NULL,
    scope      TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (user_id, client_id)
);

-- One-time password reset links, kept hashed.
CREATE TABLE password_resets (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id),
    expires_at TEXT NOT NULL,
    used_at    TEXT
);

-- The audit trail: who changed what, when.
CREATE TABLE audit (
    id        TEXT PRIMARY KEY,
    at        TEXT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    detail    TEXT NOT NULL
);

-- Secrets the service makes for itself on first start (the CSRF key), shared by its instances.
CREATE TABLE secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
