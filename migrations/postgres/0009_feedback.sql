-- Feedback on assistant messages: one row per rated message, written by its chat's actor
-- through the write-behind writer, loaded with the chat.
CREATE TABLE feedback (
    message_id uuid PRIMARY KEY,
    chat_id    uuid NOT NULL,
    user_id    uuid NOT NULL,
    model      text,
    rating     text NOT NULL,
    tags       jsonb NOT NULL,
    comment    text,
    updated_at timestamptz NOT NULL
);
CREATE INDEX feedback_by_chat ON feedback (chat_id);
