-- An account may have only a username (seed 002's clients register with one). Emails stay
-- unique when given: a unique index lets any number of rows have none. SQLite cannot drop a
-- NOT NULL constraint, so the table is rebuilt with the same rows and indexes.
CREATE TABLE users_new (
    id            TEXT PRIMARY KEY NOT NULL,
    email         TEXT,
    username      TEXT,
    password_hash TEXT NOT NULL,
    is_admin      INTEGER NOT NULL DEFAULT 0,
    created_at    TEXT NOT NULL
);
INSERT INTO users_new (id, email, username, password_hash, is_admin, created_at)
    SELECT id, email, username, password_hash, is_admin, created_at FROM users;
DROP TABLE users;
ALTER TABLE users_new RENAME TO users;
CREATE UNIQUE INDEX users_email ON users (email);
CREATE UNIQUE INDEX users_username ON users (lower(username)) WHERE username IS NOT NULL;
