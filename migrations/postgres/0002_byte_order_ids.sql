-- Ids are opaque: compare them byte by byte. Locale collation made bulk index maintenance several
-- times slower and ordered ids differently from the service's own tie-breaking.
ALTER TABLE items ALTER COLUMN item_id TYPE TEXT COLLATE "C";
ALTER TABLE ratings ALTER COLUMN user_id TYPE TEXT COLLATE "C";
ALTER TABLE ratings ALTER COLUMN item_id TYPE TEXT COLLATE "C";
-- No query reads ratings by item; the index only slowed every write.
DROP INDEX ratings_item_id;
