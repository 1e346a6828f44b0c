-- The scheduler's state. Conventions:
--   ids and uuids are TEXT (hyphenated uuids, dyno and host ids as given);
--   timestamps are TEXT, RFC 3339 in UTC, so they read well and sort as time;
--   maps and lists are JSON TEXT;
--   every row of an app hangs off apps(id) with ON DELETE CASCADE, so deleting the app
--   deletes its builds, slugs, releases, formation and dynos in the same statement.

CREATE TABLE apps (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL UNIQUE,
    stack       TEXT NOT NULL,
    config      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE slugs (
    id              TEXT PRIMARY KEY NOT NULL,
    app_id          TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    sha256          TEXT NOT NULL,
    size            INTEGER NOT NULL CHECK (size >= 0),
    process_types   TEXT NOT NULL,
    stack           TEXT NOT NULL,
    buildpacks      TEXT NOT NULL,
    created_at      TEXT NOT NULL
);

CREATE INDEX slugs_app ON slugs (app_id);

CREATE TABLE builds (
    id              TEXT PRIMARY KEY NOT NULL,
    app_id          TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    source_sha256   TEXT NOT NULL,
    slug_id         TEXT REFERENCES slugs (id),
    release_version INTEGER,
    -- Where the build ran: informational, so not a foreign key to hosts.
    host_id         TEXT,
    user            TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);

CREATE INDEX builds_app ON builds (app_id, created_at);

-- The append-only ledger: rows are inserted, never updated.
CREATE TABLE releases (
    app_id      TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    version     INTEGER NOT NULL CHECK (version >= 1),
    slug_id     TEXT NOT NULL REFERENCES slugs (id),
    config      TEXT NOT NULL,
    description TEXT NOT NULL,
    user        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    created_at  TEXT NOT NULL,
    PRIMARY KEY (app_id, version)
);

CREATE TABLE formations (
    app_id       TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    process_type TEXT NOT NULL,
    quantity     INTEGER NOT NULL CHECK (quantity >= 0),
    size         TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (app_id, process_type)
);

CREATE TABLE hosts (
    id           TEXT PRIMARY KEY NOT NULL,
    address      TEXT NOT NULL,
    memory_bytes INTEGER NOT NULL CHECK (memory_bytes >= 0),
    dyno_slots   INTEGER NOT NULL CHECK (dyno_slots >= 0),
    stacks       TEXT NOT NULL,
    generation   INTEGER NOT NULL DEFAULT 0 CHECK (generation >= 0),
    draining     INTEGER NOT NULL DEFAULT 0 CHECK (draining IN (0, 1)),
    first_seen   TEXT NOT NULL,
    last_seen    TEXT NOT NULL
);

CREATE TABLE dynos (
    id               TEXT PRIMARY KEY NOT NULL,
    app_id           TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    name             TEXT NOT NULL,
    process_type     TEXT NOT NULL,
    release_version  INTEGER NOT NULL,
    size             TEXT NOT NULL,
    command          TEXT NOT NULL,
    host_id          TEXT NOT NULL REFERENCES hosts (id),
    desired          TEXT NOT NULL CHECK (desired IN ('running', 'stopped')),
    state            TEXT NOT NULL,
    state_changed_at TEXT NOT NULL,
    exit_status      INTEGER,
    reason           TEXT NOT NULL,
    port             INTEGER CHECK (port BETWEEN 0 AND 65535),
    created_at       TEXT NOT NULL
);

CREATE INDEX dynos_app ON dynos (app_id, name);
CREATE INDEX dynos_host ON dynos (host_id);
