-- A counter per user that moves whenever any of the user's ratings is inserted, replaced or
-- deleted, by whatever writes them. The service reads it (one indexed row) to tell whether a
-- ranking it computed earlier still matches the user's ratings, instead of reading them all.
CREATE TABLE user_revisions (
    user_id  TEXT PRIMARY KEY,
    revision BIGINT NOT NULL
);

INSERT INTO user_revisions (user_id, revision)
SELECT user_id, 1 FROM ratings GROUP BY user_id;

CREATE TRIGGER ratings_inserted AFTER INSERT ON ratings BEGIN
    INSERT INTO user_revisions (user_id, revision) VALUES (NEW.user_id, 1)
    ON CONFLICT (user_id) DO UPDATE SET revision = revision + 1;
END;
CREATE TRIGGER ratings_updated AFTER UPDATE ON ratings BEGIN
    INSERT INTO user_revisions (user_id, revision) VALUES (NEW.user_id, 1)
    ON CONFLICT (user_id) DO UPDATE SET revision = revision + 1;
END;
CREATE TRIGGER ratings_deleted AFTER DELETE ON ratings BEGIN
    INSERT INTO user_revisions (user_id, revision) VALUES (OLD.user_id, 1)
    ON CONFLICT (user_id) DO UPDATE SET revision = revision + 1;
END;
