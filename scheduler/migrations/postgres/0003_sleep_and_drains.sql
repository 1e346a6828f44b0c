-- Sleep-on-idle: an app whose eco web dyno had no traffic for a while sleeps (its web and
-- worker dynos stop and show `idle`) until the next request wakes it.
ALTER TABLE apps ADD COLUMN sleeping BIGINT NOT NULL DEFAULT 0;

-- Per-app timeouts in seconds (NULL: the defaults, 60 s to boot, 30 s from SIGTERM to SIGKILL).
ALTER TABLE apps ADD COLUMN boot_timeout BIGINT;
ALTER TABLE apps ADD COLUMN stop_timeout BIGINT;

-- Log drains (Heroku's `drains:add`): where an app's log lines are shipped.
CREATE TABLE log_drains (
    id          TEXT COLLATE "C" PRIMARY KEY,
    app_id      TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    url         TEXT NOT NULL,
    token       TEXT NOT NULL,
    created_at  TEXT COLLATE "C" NOT NULL,
    UNIQUE (app_id, url)
);
