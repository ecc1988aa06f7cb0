-- A counter per user that moves whenever any of the user's ratings is inserted, replaced or
-- deleted, by whatever writes them. The service reads it (one indexed row) to tell whether a
-- ranking it computed earlier still matches the user's ratings, instead of reading them all.
CREATE TABLE user_revisions (
    user_id  TEXT COLLATE "C" PRIMARY KEY,
    revision BIGINT NOT NULL
);

INSERT INTO user_revisions (user_id, revision)
SELECT user_id, 1 FROM ratings GROUP BY user_id;

CREATE FUNCTION bump_user_revisions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Users in id order, so that concurrent writers lock their rows in the same order.
    INSERT INTO user_revisions (user_id, revision)
    SELECT DISTINCT user_id, 1 FROM changed ORDER BY user_id
    ON CONFLICT (user_id) DO UPDATE SET revision = user_revisions.revision + 1;
    RETURN NULL;
END
$$;

CREATE FUNCTION bump_all_user_revisions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE user_revisions SET revision = revision + 1;
    RETURN NULL;
END
$$;

-- Statement-level, over the transition table: a bulk import bumps each user once.
CREATE TRIGGER ratings_inserted AFTER INSERT ON ratings
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION bump_user_revisions();
CREATE TRIGGER ratings_updated AFTER UPDATE ON ratings
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION bump_user_revisions();
CREATE TRIGGER ratings_deleted AFTER DELETE ON ratings
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION bump_user_revisions();
CREATE TRIGGER ratings_truncated AFTER TRUNCATE ON ratings
    FOR EACH STATEMENT EXECUTE FUNCTION bump_all_user_revisions();
