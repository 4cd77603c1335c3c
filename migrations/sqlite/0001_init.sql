-- secretd embedded store, schema 1. Never edit once shipped; add 0002_*.sql.

-- One row per secret path. last_version only grows: versions are never reused,
-- also after every version was deleted.
CREATE TABLE secrets (
    id           INTEGER PRIMARY KEY,
    path         TEXT    NOT NULL UNIQUE,
    last_version INTEGER NOT NULL CHECK (last_version >= 1),
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);

-- One row per version. envelope is the sealed value (crypto.rs); a deleted
-- version keeps its row as a tombstone with envelope NULL and deleted_at set.
CREATE TABLE versions (
    id         INTEGER PRIMARY KEY,
    secret_id  INTEGER NOT NULL REFERENCES secrets (id),
    version    INTEGER NOT NULL CHECK (version >= 1),
    envelope   BLOB,
    created_at INTEGER NOT NULL,
    deleted_at INTEGER,
    UNIQUE (secret_id, version),
    CHECK ((envelope IS NULL) = (deleted_at IS NOT NULL))
);

-- Data keys wrapped by the master key, one per generation.
CREATE TABLE data_keys (
    generation INTEGER PRIMARY KEY CHECK (generation >= 1),
    wrapped    BLOB    NOT NULL,
    created_at INTEGER NOT NULL
);

-- Small named settings, e.g. the SHA-256 of a generated API key.
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
