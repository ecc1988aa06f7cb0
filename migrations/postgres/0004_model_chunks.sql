-- A model version's bytes in chunks: PostgreSQL caps one value at 1 GB, and the item-based RBM of
-- a Netflix-sized data set alone is larger. Versions stored before move over as one chunk each.
CREATE TABLE model_chunks (
    version BIGINT NOT NULL REFERENCES models (version) ON DELETE CASCADE,
    seq     INTEGER NOT NULL,
    data    BYTEA NOT NULL,
    PRIMARY KEY (version, seq)
);
ALTER TABLE models ADD COLUMN size_bytes BIGINT NOT NULL DEFAULT 0;
INSERT INTO model_chunks (version, seq, data) SELECT version, 0, blob FROM models;
UPDATE models SET size_bytes = length(blob);
ALTER TABLE models DROP COLUMN blob;
