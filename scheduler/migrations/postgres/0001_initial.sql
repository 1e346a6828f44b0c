-- The scheduler's state, in PostgreSQL's dialect: the same tables, columns and constraints
-- as migrations/sqlite, version for version. Conventions as there, and:
--   every integer is BIGINT (the store binds 64-bit integers);
--   text the store sorts by is COLLATE "C", so it sorts by code point as in SQLite,
--   whatever the database's locale;
--   `user` is a reserved word here: always quoted.

CREATE TABLE apps (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT COLLATE "C" NOT NULL UNIQUE,
    stack       TEXT NOT NULL,
    config      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE slugs (
    id              TEXT PRIMARY KEY NOT NULL,
    app_id          TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    sha256          TEXT NOT NULL,
    size            BIGINT NOT NULL CHECK (size >= 0),
    process_types   TEXT NOT NULL,
    stack           TEXT NOT NULL,
    buildpacks      TEXT NOT NULL,
    created_at      TEXT NOT NULL
);

CREATE INDEX slugs_app ON slugs (app_id);

CREATE TABLE builds (
    id              TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    app_id          TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    source_sha256   TEXT NOT NULL,
    slug_id         TEXT REFERENCES slugs (id),
    release_version BIGINT,
    -- Where the build ran: informational, so not a foreign key to hosts.
    host_id         TEXT,
    "user"          TEXT NOT NULL,
    created_at      TEXT COLLATE "C" NOT NULL,
    updated_at      TEXT NOT NULL
);

CREATE INDEX builds_app ON builds (app_id, created_at);

-- The append-only ledger: rows are inserted, never updated.
CREATE TABLE releases (
    app_id      TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    version     BIGINT NOT NULL CHECK (version >= 1),
    slug_id     TEXT NOT NULL REFERENCES slugs (id),
    config      TEXT NOT NULL,
    description TEXT NOT NULL,
    "user"      TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    created_at  TEXT NOT NULL,
    PRIMARY KEY (app_id, version)
);

CREATE TABLE formations (
    app_id       TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    process_type TEXT COLLATE "C" NOT NULL,
    quantity     BIGINT NOT NULL CHECK (quantity >= 0),
    size         TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (app_id, process_type)
);

CREATE TABLE hosts (
    id           TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    address      TEXT NOT NULL,
    memory_bytes BIGINT NOT NULL CHECK (memory_bytes >= 0),
    dyno_slots   BIGINT NOT NULL CHECK (dyno_slots >= 0),
    stacks       TEXT NOT NULL,
    generation   BIGINT NOT NULL DEFAULT 0 CHECK (generation >= 0),
    draining     BIGINT NOT NULL DEFAULT 0 CHECK (draining IN (0, 1)),
    first_seen   TEXT NOT NULL,
    last_seen    TEXT NOT NULL
);

CREATE TABLE dynos (
    id               TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    app_id           TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    name             TEXT COLLATE "C" NOT NULL,
    process_type     TEXT NOT NULL,
    release_version  BIGINT NOT NULL,
    size             TEXT NOT NULL,
    command          TEXT NOT NULL,
    host_id          TEXT NOT NULL REFERENCES hosts (id),
    desired          TEXT NOT NULL CHECK (desired IN ('running', 'stopped')),
    state            TEXT NOT NULL,
    state_changed_at TEXT NOT NULL,
    exit_status      BIGINT,
    reason           TEXT NOT NULL,
    port             BIGINT CHECK (port BETWEEN 0 AND 65535),
    created_at       TEXT NOT NULL
);

CREATE INDEX dynos_app ON dynos (app_id, name);
CREATE INDEX dynos_host ON dynos (host_id);
