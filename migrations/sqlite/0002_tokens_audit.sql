-- secretd embedded store, schema 2: managed tokens, version authorship, audit log.

-- Managed tokens. Only the SHA-256 of a token is stored. scopes holds the
-- canonical scope prefixes, one per line.
CREATE TABLE tokens (
    id           TEXT    PRIMARY KEY,
    name         TEXT    NOT NULL UNIQUE,
    hash         BLOB    NOT NULL UNIQUE,
    role         TEXT    NOT NULL CHECK (role IN ('viewer', 'editor', 'admin')),
    scopes       TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    created_by   TEXT    NOT NULL,
    expires_at   INTEGER,
    last_used_at INTEGER,
    revoked_at   INTEGER
);

-- Which principal (token id or static key id) wrote each version.
ALTER TABLE versions ADD COLUMN created_by TEXT;

-- The audit log: one record per request, chained by hash. seq has no gaps;
-- hash = SHA-256(prev_hash ‖ seq ‖ fields), see src/audit.rs.
CREATE TABLE audit_log (
    seq        INTEGER PRIMARY KEY,
    time       INTEGER NOT NULL,
    request_id TEXT    NOT NULL,
    token_id   TEXT,
    token_name TEXT,
    client     TEXT,
    operation  TEXT    NOT NULL,
    path       TEXT,
    version    INTEGER,
    outcome    TEXT    NOT NULL,
    status     INTEGER NOT NULL,
    prev_hash  BLOB    NOT NULL,
    hash       BLOB    NOT NULL
);
