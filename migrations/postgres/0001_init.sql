-- Arbor's metadata in PostgreSQL: users, chats and branches. Message content lives in the
-- message store (MongoDB, or SQLite). Ids are UUIDv7, so ordering by id orders by creation time.
-- No foreign keys between write-behind tables: integrity is kept by the chat actor, and one bad
-- reference must not fail a whole batch of other chats' writes.

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    email         text NOT NULL,
    username      text,
    password_hash text NOT NULL,
    is_admin      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL
);
CREATE UNIQUE INDEX users_email ON users (email);
CREATE UNIQUE INDEX users_username ON users (lower(username)) WHERE username IS NOT NULL;

CREATE TABLE chats (
    id               uuid PRIMARY KEY,
    owner_id         uuid NOT NULL,
    title            text,
    system_prompt    text,
    active_branch_id uuid NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    -- Bumped by every change; an upsert never replaces a newer version.
    version          bigint NOT NULL
);
CREATE INDEX chats_owner ON chats (owner_id, id DESC);

CREATE TABLE branches (
    id             uuid PRIMARY KEY,
    chat_id        uuid NOT NULL,
    name           text NOT NULL,
    head_id        uuid,
    forked_from_id uuid,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    -- The chat version that produced this row.
    version        bigint NOT NULL
);
CREATE INDEX branches_chat ON branches (chat_id);
