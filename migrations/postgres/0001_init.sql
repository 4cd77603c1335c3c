-- secretd PostgreSQL store, schema 1. Never edit once shipped; add 0002_*.sql.
-- Mirrors migrations/sqlite/0001_init.sql; see there for what each table holds.

CREATE TABLE secrets (
    id           BIGSERIAL PRIMARY KEY,
    path         TEXT      NOT NULL UNIQUE,
    last_version BIGINT    NOT NULL CHECK (last_version >= 1),
    created_at   BIGINT    NOT NULL,
    updated_at   BIGINT    NOT NULL
);

CREATE TABLE versions (
    id         BIGSERIAL PRIMARY KEY,
    secret_id  BIGINT    NOT NULL REFERENCES secrets (id),
    version    BIGINT    NOT NULL CHECK (version >= 1),
    envelope   BYTEA,
    created_at BIGINT    NOT NULL,
    deleted_at BIGINT,
    UNIQUE (secret_id, version),
    CHECK ((envelope IS NULL) = (deleted_at IS NOT NULL))
);

CREATE TABLE data_keys (
    generation BIGINT PRIMARY KEY CHECK (generation >= 1),
    wrapped    BYTEA  NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE settings (
    name  TEXT  PRIMARY KEY,
    value BYTEA NOT NULL
);
