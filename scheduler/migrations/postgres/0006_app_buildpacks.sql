-- The buildpacks an app builds with (`manifold buildpacks:set`), in order.
CREATE TABLE app_buildpacks (
    app_id  TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    ordinal BIGINT NOT NULL,
    url     TEXT NOT NULL,
    PRIMARY KEY (app_id, ordinal)
);
