-- crossmodel-auth key store, SQLite, version 20261204000001.
--
-- Stable: other programs (an operator console, the sqlite3 shell) may read and
-- write these tables. Times are INTEGER microseconds since the Unix epoch, UTC
-- (in SQL: CAST(unixepoch('subsec') * 1000000 AS INTEGER)).

-- Accounts. A user is created, active, with its first key.
CREATE TABLE IF NOT EXISTS crossmodel_users (
    id    TEXT    NOT NULL PRIMARY KEY
                  CHECK (length(id) BETWEEN 1 AND 128),
    state TEXT    NOT NULL DEFAULT 'active'
                  CHECK (state IN ('active', 'disabled'))
);

-- API keys. Never the key itself: `digest` is SHA-256 of the 22-character secret
-- (the part between `_` and the 6-character checksum), 32 raw bytes. A deleted
-- key is a removed row; a revoked key keeps its row for audit.
CREATE TABLE IF NOT EXISTS crossmodel_keys (
    id           TEXT    NOT NULL PRIMARY KEY
                         CHECK (length(id) = 12),
    digest       BLOB    NOT NULL
                         CHECK (typeof(digest) = 'blob' AND length(digest) = 32),
    name         TEXT    NOT NULL DEFAULT '',
    state        TEXT    NOT NULL DEFAULT 'active'
                         CHECK (state IN ('active', 'disabled', 'revoked')),
    expires_at   INTEGER,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    user_id      TEXT    NOT NULL REFERENCES crossmodel_users (id),
    -- A JSON object, or the JSON text null.
    metadata     TEXT    NOT NULL DEFAULT 'null'
);

CREATE INDEX IF NOT EXISTS crossmodel_keys_user_id ON crossmodel_keys (user_id);

-- Bookkeeping: 'change_counter' grows with every change that matters to a
-- lookup (the triggers below keep it, whoever writes), so running servers
-- notice changes made by other processes by reading one row;
-- 'first_key_created_at' marks that the first key was made.
CREATE TABLE IF NOT EXISTS crossmodel_meta (
    name  TEXT    NOT NULL PRIMARY KEY,
    value INTEGER NOT NULL
);

INSERT INTO crossmodel_meta (name, value) VALUES ('change_counter', 0)
    ON CONFLICT (name) DO NOTHING;

CREATE TRIGGER IF NOT EXISTS crossmodel_keys_inserted
AFTER INSERT ON crossmodel_keys
BEGIN
    UPDATE crossmodel_meta SET value = value + 1 WHERE name = 'change_counter';
END;

-- Not `last_used_at`: recording uses must not make every server drop its cache.
CREATE TRIGGER IF NOT EXISTS crossmodel_keys_updated
AFTER UPDATE OF id, digest, name, state, expires_at, user_id, metadata ON crossmodel_keys
BEGIN
    UPDATE crossmodel_meta SET value = value + 1 WHERE name = 'change_counter';
END;

CREATE TRIGGER IF NOT EXISTS crossmodel_keys_deleted
AFTER DELETE ON crossmodel_keys
BEGIN
    UPDATE crossmodel_meta SET value = value + 1 WHERE name = 'change_counter';
END;

CREATE TRIGGER IF NOT EXISTS crossmodel_users_updated
AFTER UPDATE OF id, state ON crossmodel_users
BEGIN
    UPDATE crossmodel_meta SET value = value + 1 WHERE name = 'change_counter';
END;

CREATE TRIGGER IF NOT EXISTS crossmodel_users_deleted
AFTER DELETE ON crossmodel_users
BEGIN
    UPDATE crossmodel_meta SET value = value + 1 WHERE name = 'change_counter';
END;
