-- A model version's bytes in chunks, as on PostgreSQL (which caps one value at 1 GB); SQLite's
-- own cap on a value is 1 GB by default too. Versions stored before move over as one chunk each.
CREATE TABLE model_chunks (
    version INTEGER NOT NULL REFERENCES models (version) ON DELETE CASCADE,
    seq     INTEGER NOT NULL,
    data    BLOB NOT NULL,
    PRIMARY KEY (version, seq)
);
ALTER TABLE models ADD COLUMN size_bytes BIGINT NOT NULL DEFAULT 0;
INSERT INTO model_chunks (version, seq, data) SELECT version, 0, blob FROM models;
UPDATE models SET size_bytes = length(blob);
ALTER TABLE models DROP COLUMN blob;
