-- The leader's lease (schedulers in HA): at most one row. `holder` (a replica's name,
-- serving its API at `address`) leads in `term` until `expires_at_ms`, milliseconds since
-- the epoch by the database's clock. Terms only grow: resigning expires the row, taking an
-- expired lease starts term + 1, and every write of a fenced leader checks its term here.
CREATE TABLE leader_lease (
    id            BIGINT PRIMARY KEY CHECK (id = 1),
    holder        TEXT NOT NULL,
    address       TEXT NOT NULL,
    term          BIGINT NOT NULL CHECK (term >= 1),
    expires_at_ms BIGINT NOT NULL
);
