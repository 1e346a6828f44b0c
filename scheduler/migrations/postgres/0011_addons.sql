-- Add-ons provisioned on the cluster (issue 21): a managed PostgreSQL or Redis run by one
-- host's agent as a long-lived service with a persistent volume.
--   kind      'postgresql' or 'redis'
--   app_id    the owning app (NULL once that app is deleted while the add-on's data is
--             being destroyed: the row stays until its host reports it gone)
--   host_id   where it runs: placed once and never moved (its volume is there)
--   port      the host port its agent took and reported (NULL until then), kept for life
--   state     'provisioning' (placed, not up yet), 'available', 'crashed' (reason says
--             why), 'destroying' (its host is told to delete the data)
CREATE TABLE addons (
    id          TEXT COLLATE "C" PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL UNIQUE,
    kind        TEXT NOT NULL CHECK (kind IN ('postgresql', 'redis')),
    plan        TEXT NOT NULL,
    app_id      TEXT REFERENCES apps (id) ON DELETE SET NULL,
    host_id     TEXT NOT NULL,
    port        BIGINT,
    "user"      TEXT NOT NULL,
    password    TEXT NOT NULL,
    database    TEXT NOT NULL,
    state       TEXT NOT NULL
                CHECK (state IN ('provisioning', 'available', 'crashed', 'destroying')),
    reason      TEXT NOT NULL DEFAULT '',
    created_at  TEXT COLLATE "C" NOT NULL
);
CREATE INDEX addons_by_host ON addons (host_id);

-- Which apps an add-on is attached to, and as what: the attachment `NAME` sets the config
-- var `NAME_URL` on its app. One name per app.
CREATE TABLE addon_attachments (
    id          TEXT COLLATE "C" PRIMARY KEY,
    addon_id    TEXT NOT NULL REFERENCES addons (id) ON DELETE CASCADE,
    app_id      TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    created_at  TEXT COLLATE "C" NOT NULL,
    UNIQUE (app_id, name)
);
CREATE INDEX addon_attachments_by_addon ON addon_attachments (addon_id);

-- Backups of PostgreSQL add-ons (`pg:backups:capture`): a `pg_dump -Fc` kept in the blob
-- store (its blob is kept from collection while the row exists).
--   number  b001, b002, … within the add-on
--   state   'completed' or 'failed' (reason says why; no blob)
CREATE TABLE addon_backups (
    id          TEXT COLLATE "C" PRIMARY KEY,
    addon_id    TEXT NOT NULL REFERENCES addons (id) ON DELETE CASCADE,
    number      BIGINT NOT NULL,
    blob_sha256 TEXT,
    size        BIGINT NOT NULL DEFAULT 0,
    state       TEXT NOT NULL CHECK (state IN ('completed', 'failed')),
    reason      TEXT NOT NULL DEFAULT '',
    created_at  TEXT COLLATE "C" NOT NULL,
    UNIQUE (addon_id, number)
);
