-- The tags a post had before the change (JSON array): other pods invalidate the feeds it left.
ALTER TABLE outbox ADD COLUMN previous_tags TEXT;
