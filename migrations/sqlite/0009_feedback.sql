-- Feedback on assistant messages: one row per rated message, written by its chat's actor
-- through the write-behind writer, loaded with the chat. `tags` is a JSON array of strings.
CREATE TABLE feedback (
    message_id TEXT PRIMARY KEY NOT NULL,
    chat_id    TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    model      TEXT,
    rating     TEXT NOT NULL,
    tags       TEXT NOT NULL,
    comment    TEXT,
    updated_at TEXT NOT NULL
);
CREATE INDEX feedback_by_chat ON feedback (chat_id);
