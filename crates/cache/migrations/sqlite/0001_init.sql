-- The embedded default's schema: the same tables as PostgreSQL's, in SQLite's types.
CREATE TABLE posts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    author_id   TEXT    NOT NULL,
    title       TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    tags        TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    views       INTEGER NOT NULL DEFAULT 0,
    deleted     INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL
);
CREATE INDEX posts_live_id ON posts (id DESC) WHERE deleted = 0;
CREATE INDEX posts_live_author_id ON posts (author_id, id DESC) WHERE deleted = 0;

CREATE TABLE post_tags (
    tag     TEXT    NOT NULL,
    post_id INTEGER NOT NULL REFERENCES posts (id),
    PRIMARY KEY (tag, post_id)
) WITHOUT ROWID;
CREATE INDEX post_tags_post_id ON post_tags (post_id);

CREATE TABLE outbox (
    position     INTEGER PRIMARY KEY AUTOINCREMENT,
    post_id      INTEGER NOT NULL,
    kind         TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    payload      TEXT,
    created_at   TEXT    NOT NULL,
    published_at TEXT
);
CREATE INDEX outbox_unpublished ON outbox (position) WHERE published_at IS NULL;
