-- One-off dynos (`manifold run`, the release phase): config vars added for this dyno only
-- (JSON map), and for an attached one-off its terminal and the secret of its attach URL
-- (JSON `{"tty", "cols", "rows", "secret"}`, NULL for every other dyno).
ALTER TABLE dynos ADD COLUMN env TEXT NOT NULL DEFAULT '{}';
ALTER TABLE dynos ADD COLUMN attach TEXT;
