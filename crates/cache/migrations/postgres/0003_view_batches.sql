-- View batches flushed from Redis, by id: a batch re-flushed after its flusher died is skipped.
CREATE TABLE view_batches (
    id TEXT PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL
);
