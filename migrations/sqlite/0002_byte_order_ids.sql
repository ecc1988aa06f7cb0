-- Ids are opaque: compare them byte by byte. SQLite's default BINARY collation already does; the
-- PostgreSQL tree changes its columns to COLLATE "C" in this migration.
-- No query reads ratings by item; the index only slowed every write.
DROP INDEX ratings_item_id;
