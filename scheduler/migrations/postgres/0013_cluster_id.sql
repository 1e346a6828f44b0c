-- The cluster's id, made with its database: agents count leaders' terms within one cluster,
-- so a scheduler on a new database (a fresh all-in-one node, a restored or replaced
-- database) is not taken for a deposed leader of the one before.
CREATE TABLE cluster_identity (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    id  TEXT NOT NULL
);
INSERT INTO cluster_identity (one, id) VALUES (1, replace(gen_random_uuid()::text, '-', ''));
