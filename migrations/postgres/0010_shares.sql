-- Share links: a snapshot of a branch's path or of a whole tree, found by the SHA-256 of its
-- token (the token is shown once, at creation, and never stored). Deleted with their chat.
CREATE TABLE shares (
    id         uuid PRIMARY KEY,
    token_hash bytea NOT NULL UNIQUE,
    chat_id    uuid NOT NULL,
    owner_id   uuid NOT NULL,
    scope      text NOT NULL,
    branch_id  uuid NOT NULL,
    messages   integer NOT NULL,
    snapshot   text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX shares_by_chat ON shares (chat_id, id);
