-- Automated certificates (`manifold certs:auto:enable`, Heroku's ACM).
ALTER TABLE apps ADD COLUMN acm BIGINT NOT NULL DEFAULT 0;

-- The cluster's ACME account on each directory it has used. Secret: never logged, never
-- in an API answer.
CREATE TABLE acme_accounts (
    directory   TEXT PRIMARY KEY,
    credentials TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
