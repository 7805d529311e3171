-- Arbor's embedded schema: metadata (users, chats, branches) and messages in one SQLite file.
-- Ids are UUIDv7 in text form, so ordering by id orders by creation time.
-- No foreign keys between write-behind tables: integrity is kept by the chat actor, and one bad
-- reference must not fail a whole batch of other chats' writes.

CREATE TABLE users (
    id            TEXT PRIMARY KEY NOT NULL,
    email         TEXT NOT NULL,
    username      TEXT,
    password_hash TEXT NOT NULL,
    is_admin      INTEGER NOT NULL DEFAULT 0,
    created_at    TEXT NOT NULL
);
CREATE UNIQUE INDEX users_email ON users (email);
CREATE UNIQUE INDEX users_username ON users (lower(username)) WHERE username IS NOT NULL;

CREATE TABLE chats (
    id               TEXT PRIMARY KEY NOT NULL,
    owner_id         TEXT NOT NULL,
    title            TEXT,
    system_prompt    TEXT,
    active_branch_id TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    version          INTEGER NOT NULL
);
CREATE INDEX chats_owner ON chats (owner_id, id);

CREATE TABLE branches (
    id             TEXT PRIMARY KEY NOT NULL,
    chat_id        TEXT NOT NULL,
    name           TEXT NOT NULL,
    head_id        TEXT,
    forked_from_id TEXT,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    version        INTEGER NOT NULL
);
CREATE INDEX branches_chat ON branches (chat_id);

CREATE TABLE messages (
    id              TEXT PRIMARY KEY NOT NULL,
    chat_id         TEXT NOT NULL,
    parent_id       TEXT,
    role            TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    content         TEXT NOT NULL,
    model           TEXT,
    metadata        TEXT,
    idempotency_key TEXT,
    created_at      TEXT NOT NULL
);
CREATE INDEX messages_chat ON messages (chat_id, id);
