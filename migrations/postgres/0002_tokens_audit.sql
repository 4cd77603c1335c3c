-- secretd PostgreSQL store, schema 2. Mirrors migrations/sqlite/0002_tokens_audit.sql.

-- Paths compare and sort bytewise, as on SQLite (listing order, prefix ranges).
ALTER TABLE secrets ALTER COLUMN path TYPE TEXT COLLATE "C";

CREATE TABLE tokens (
    id           TEXT   PRIMARY KEY,
    name         TEXT   NOT NULL UNIQUE,
    hash         BYTEA  NOT NULL UNIQUE,
    role         TEXT   NOT NULL CHECK (role IN ('viewer', 'editor', 'admin')),
    scopes       TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    created_by   TEXT   NOT NULL,
    expires_at   BIGINT,
    last_used_at BIGINT,
    revoked_at   BIGINT
);

ALTER TABLE versions ADD COLUMN created_by TEXT;

CREATE TABLE audit_log (
    seq        BIGINT PRIMARY KEY,
    time       BIGINT NOT NULL,
    request_id TEXT   NOT NULL,
    token_id   TEXT,
    token_name TEXT,
    client     TEXT,
    operation  TEXT   NOT NULL,
    path       TEXT,
    version    BIGINT,
    outcome    TEXT   NOT NULL,
    status     INTEGER NOT NULL,
    prev_hash  BYTEA  NOT NULL,
    hash       BYTEA  NOT NULL
);
