-- crossmodel-auth key store, PostgreSQL, version 20261204000001.
--
-- Stable: other programs (an operator console, psql) may read and write these
-- tables. Every change that matters to a lookup is announced on the channel
-- `crossmodel_auth` by the triggers below, whoever writes, so that every server
-- drops it from its cache. Payloads: 'key:<id>', 'user:<id>', 'all'.

-- Accounts. A user is created, active, with its first key.
CREATE TABLE crossmodel_users (
    id    text NOT NULL PRIMARY KEY
               CHECK (length(id) BETWEEN 1 AND 128),
    state text NOT NULL DEFAULT 'active'
               CHECK (state IN ('active', 'disabled'))
);

-- API keys. Never the key itself: `digest` is SHA-256 of the 22-character secret
-- (the part between `_` and the 6-character checksum), 32 raw bytes. A deleted
-- key is a removed row; a revoked key keeps its row for audit.
CREATE TABLE crossmodel_keys (
    id           text        NOT NULL PRIMARY KEY
                             CHECK (id ~ '^[0-9A-Za-z]{12}$'),
    digest       bytea       NOT NULL
                             CHECK (octet_length(digest) = 32),
    name         text        NOT NULL DEFAULT '',
    state        text        NOT NULL DEFAULT 'active'
                             CHECK (state IN ('active', 'disabled', 'revoked')),
    expires_at   timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    user_id      text        NOT NULL REFERENCES crossmodel_users (id),
    -- A JSON object, or JSON null.
    metadata     jsonb       NOT NULL DEFAULT 'null'
);

CREATE INDEX crossmodel_keys_user_id ON crossmodel_keys (user_id);

-- Bookkeeping: 'first_key_created_at' marks that the first key was made.
CREATE TABLE crossmodel_meta (
    name  text   NOT NULL PRIMARY KEY,
    value bigint NOT NULL
);

CREATE FUNCTION crossmodel_keys_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('crossmodel_auth', 'key:' || OLD.id);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM pg_notify('crossmodel_auth', 'key:' || NEW.id);
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION crossmodel_users_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('crossmodel_auth', 'user:' || OLD.id);
    IF TG_OP = 'UPDATE' THEN
        PERFORM pg_notify('crossmodel_auth', 'user:' || NEW.id);
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION crossmodel_notify_all() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('crossmodel_auth', 'all');
    RETURN NULL;
END
$$;

-- Not `last_used_at`: recording uses must not make every server drop its cache.
CREATE TRIGGER crossmodel_keys_changed
AFTER INSERT OR DELETE OR UPDATE OF id, digest, name, state, expires_at, user_id, metadata
ON crossmodel_keys
FOR EACH ROW EXECUTE FUNCTION crossmodel_keys_notify();

CREATE TRIGGER crossmodel_users_changed
AFTER DELETE OR UPDATE OF id, state
ON crossmodel_users
FOR EACH ROW EXECUTE FUNCTION crossmodel_users_notify();

CREATE TRIGGER crossmodel_keys_truncated
AFTER TRUNCATE ON crossmodel_keys
FOR EACH STATEMENT EXECUTE FUNCTION crossmodel_notify_all();

CREATE TRIGGER crossmodel_users_truncated
AFTER TRUNCATE ON crossmodel_users
FOR EACH STATEMENT EXECUTE FUNCTION crossmodel_notify_all();
