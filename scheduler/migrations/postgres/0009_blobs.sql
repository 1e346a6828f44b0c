-- Blobs (slugs, sources) in the database every scheduler replica shares: see
-- scheduler/src/blobs/postgres.rs for why in chunks and why the `blobs` row is written last.

-- One number per upload: its chunks are written before its digest is known.
CREATE SEQUENCE blob_uploads;

CREATE TABLE blob_chunks (
    upload BIGINT NOT NULL,
    seq INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (upload, seq)
);
-- Out of line and not compressed again: slugs and sources are gzip already.
ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

-- A blob exists when (and only while) its row does; `upload` names its chunks.
CREATE TABLE blobs (
    sha256 TEXT PRIMARY KEY,
    upload BIGINT NOT NULL,
    size BIGINT NOT NULL,
    stored_at_ms BIGINT NOT NULL
);
