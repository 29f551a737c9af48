-- Values every process on this database shares. `token_key` signs consistency tokens when no key
-- is configured (256 random bits, hex).
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO settings (name, value) VALUES ('token_key', lower(hex(randomblob(32))));
