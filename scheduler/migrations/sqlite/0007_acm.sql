-- Automated certificates (`manifold certs:auto:enable`, Heroku's ACM): every custom domain
-- of an app with `acm` on gets a certificate from the cluster's ACME server, kept in
-- `certs` with source 'acme'.
ALTER TABLE apps ADD COLUMN acm INTEGER NOT NULL DEFAULT 0;

-- The cluster's ACME account on each directory it has used: `credentials` is the account
-- URL and its private key as the ACME client serializes them. Secret: never logged, never
-- in an API answer.
CREATE TABLE acme_accounts (
    directory   TEXT PRIMARY KEY,
    credentials TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
