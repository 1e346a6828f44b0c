-- Sleep-on-idle: an app whose eco web dyno had no traffic for a while sleeps (its web and
-- worker dynos stop and show `idle`) until the next request wakes it.
ALTER TABLE apps ADD COLUMN sleeping INTEGER NOT NULL DEFAULT 0;

-- Log drains (Heroku's `drains:add`): where an app's log lines are shipped.
CREATE TABLE log_drains (
    id          TEXT PRIMARY KEY,
    app_id      TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    url         TEXT NOT NULL,
    token       TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    UNIQUE (app_id, url)
);
