-- Pipelines (Heroku Flow): apps grouped by stage, so that what ran in staging is promoted
-- to production without a rebuild.
--   review_config  JSON object: the config vars every review app of the pipeline starts with
CREATE TABLE pipelines (
    id              TEXT PRIMARY KEY NOT NULL,
    name            TEXT NOT NULL UNIQUE,
    review_config   TEXT NOT NULL,
    created_at      TEXT NOT NULL
);

-- An app's place in a pipeline: an app is in one pipeline at most (app_id is unique), and
-- leaves it when either is deleted.
CREATE TABLE pipeline_couplings (
    id          TEXT PRIMARY KEY NOT NULL,
    pipeline_id TEXT NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    app_id      TEXT NOT NULL UNIQUE REFERENCES apps (id) ON DELETE CASCADE,
    stage       TEXT NOT NULL
                CHECK (stage IN ('review', 'development', 'staging', 'production')),
    created_at  TEXT NOT NULL
);
CREATE INDEX pipeline_couplings_by_pipeline ON pipeline_couplings (pipeline_id);

-- Review apps: temporary apps made from a branch, coupled at stage review (their coupling
-- and this row go with the app). expires_at: when the leader destroys it (NULL: never).
CREATE TABLE review_apps (
    app_id      TEXT PRIMARY KEY NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    pipeline_id TEXT NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    branch      TEXT NOT NULL,
    expires_at  TEXT,
    created_at  TEXT NOT NULL
);
