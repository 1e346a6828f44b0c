-- Pipelines (see migrations/sqlite for the columns).
CREATE TABLE pipelines (
    id              TEXT COLLATE "C" PRIMARY KEY,
    name            TEXT COLLATE "C" NOT NULL UNIQUE,
    review_config   TEXT NOT NULL,
    created_at      TEXT COLLATE "C" NOT NULL
);

CREATE TABLE pipeline_couplings (
    id          TEXT COLLATE "C" PRIMARY KEY,
    pipeline_id TEXT NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    app_id      TEXT NOT NULL UNIQUE REFERENCES apps (id) ON DELETE CASCADE,
    stage       TEXT NOT NULL
                CHECK (stage IN ('review', 'development', 'staging', 'production')),
    created_at  TEXT COLLATE "C" NOT NULL
);
CREATE INDEX pipeline_couplings_by_pipeline ON pipeline_couplings (pipeline_id);

CREATE TABLE review_apps (
    app_id      TEXT COLLATE "C" PRIMARY KEY REFERENCES apps (id) ON DELETE CASCADE,
    pipeline_id TEXT NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    branch      TEXT NOT NULL,
    expires_at  TEXT COLLATE "C",
    created_at  TEXT COLLATE "C" NOT NULL
);
