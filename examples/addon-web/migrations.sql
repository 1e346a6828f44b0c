-- Run by the release phase on every release: idempotent, as Heroku's advice for release
-- phase migrations has it.
SET client_min_messages = warning;
CREATE TABLE IF NOT EXISTS notes (
    id serial PRIMARY KEY,
    body text NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
);
