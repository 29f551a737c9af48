-- Posts: the truth. Soft delete keeps the row so that its version keeps growing across a delete.
CREATE TABLE posts (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    author_id   TEXT        NOT NULL,
    title       TEXT        NOT NULL,
    body        TEXT        NOT NULL,
    tags        TEXT        NOT NULL, -- JSON array, in the order given
    version     BIGINT      NOT NULL,
    views       BIGINT      NOT NULL DEFAULT 0,
    deleted     BOOLEAN     NOT NULL DEFAULT FALSE,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);
-- Feeds are keyset scans, newest first: the global feed, by author, by tag.
CREATE INDEX posts_live_id ON posts (id DESC) WHERE NOT deleted;
CREATE INDEX posts_live_author_id ON posts (author_id, id DESC) WHERE NOT deleted;

CREATE TABLE post_tags (
    tag     TEXT   NOT NULL,
    post_id BIGINT NOT NULL REFERENCES posts (id),
    PRIMARY KEY (tag, post_id)
);
CREATE INDEX post_tags_post_id ON post_tags (post_id);

-- The outbox: one row per committed change, written in the change's transaction. Its position
-- orders events; a relay publishes rows whose published_at is NULL.
CREATE TABLE outbox (
    position     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    post_id      BIGINT      NOT NULL,
    kind         TEXT        NOT NULL,
    version      BIGINT      NOT NULL,
    payload      TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    published_at TIMESTAMPTZ
);
CREATE INDEX outbox_unpublished ON outbox (position) WHERE published_at IS NULL;
