-- Share links: a snapshot of a branch's path or of a whole tree, found by the SHA-256 of its
-- token (the token is shown once, at creation, and never stored). Deleted with their chat.
CREATE TABLE shares (
    id         TEXT PRIMARY KEY NOT NULL,
    token_hash BLOB NOT NULL UNIQUE,
    chat_id    TEXT NOT NULL,
    owner_id   TEXT NOT NULL,
    scope      TEXT NOT NULL,
    branch_id  TEXT NOT NULL,
    messages   INTEGER NOT NULL,
    snapshot   TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX shares_by_chat ON shares (chat_id, id);
