-- The buildpacks an app builds with (`manifold buildpacks:set`, Heroku's buildpack
-- installations), in order. None: the BUILDPACK_URL config var or detection decides.
-- Each is a built-in's name or a git URL, checked by the API before it is stored.
CREATE TABLE app_buildpacks (
    app_id  TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    ordinal INTEGER NOT NULL,
    url     TEXT NOT NULL,
    PRIMARY KEY (app_id, ordinal)
);
