-- Ratings, items, trained model versions and training runs. Times are Unix milliseconds.
CREATE TABLE items (
    item_id    TEXT PRIMARY KEY,
    title      TEXT,
    metadata   TEXT,
    created_at BIGINT NOT NULL
);

CREATE TABLE ratings (
    user_id    TEXT NOT NULL,
    item_id    TEXT NOT NULL,
    rating     REAL NOT NULL,
    updated_at BIGINT NOT NULL,
    -- How many times the rating was replaced; 0 for a new rating.
    revision   BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, item_id)
);
CREATE INDEX ratings_item_id ON ratings (item_id);

CREATE TABLE models (
    version      INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at   BIGINT NOT NULL,
    params       TEXT NOT NULL,
    metrics      TEXT NOT NULL,
    blob         BLOB NOT NULL,
    -- The active model is the one activated last.
    activated_at BIGINT
);

CREATE TABLE training_runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    status        TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    started_at    BIGINT,
    finished_at   BIGINT,
    params        TEXT NOT NULL,
    progress      TEXT NOT NULL,
    error         TEXT,
    model_version BIGINT
);
