-- Realtime topics filter by author, deletes included (whose payload is null).
ALTER TABLE outbox ADD COLUMN author_id TEXT NOT NULL DEFAULT '';
