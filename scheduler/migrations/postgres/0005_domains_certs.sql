-- Maintenance mode: the router answers Heroku's maintenance page (503, H80) instead of the
-- app; its dynos keep running.
ALTER TABLE apps ADD COLUMN maintenance BIGINT NOT NULL DEFAULT 0;

-- Custom domains: names the router routes to an app besides APP.DOMAIN. A name belongs to
-- one app in the cluster (lowercase, no trailing dot).
CREATE TABLE domains (
    hostname    TEXT COLLATE "C" PRIMARY KEY,
    app_id      TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    created_at  TEXT NOT NULL
);
CREATE INDEX domains_by_app ON domains (app_id);

-- TLS certificates the routers serve, chosen by SNI (see migrations/sqlite for the columns).
CREATE TABLE certs (
    id          TEXT COLLATE "C" PRIMARY KEY,
    app_id      TEXT REFERENCES apps (id) ON DELETE CASCADE,
    source      TEXT NOT NULL CHECK (source IN ('default', 'uploaded', 'acme')),
    names       TEXT NOT NULL,
    chain_pem   TEXT,
    key_pem     TEXT,
    issuer      TEXT,
    not_before  TEXT,
    not_after   TEXT,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'active', 'failed')),
    last_error  TEXT,
    created_at  TEXT COLLATE "C" NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX certs_by_app ON certs (app_id);
