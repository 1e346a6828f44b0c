-- The newest bundle (`git bundle create --all`) of each app's git repository, a blob in the
-- blob store, written after every accepted push: repositories live on the leader's disk,
-- and a replica that leads without one restores it from here (scheduler/src/git/bundle.rs).
CREATE TABLE git_bundles (
    app_id     TEXT PRIMARY KEY NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    sha256     TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
