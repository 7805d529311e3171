-- Token accounting: the usage a provider reported for each reply, once per generation (a
-- retried reply is one generation). Times are RFC 3339 UTC text, which sorts as time.
CREATE TABLE usage (
    generation_id     TEXT PRIMARY KEY NOT NULL,
    user_id           TEXT NOT NULL,
    chat_id           TEXT NOT NULL,
    model             TEXT NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created_at        TEXT NOT NULL
);
CREATE INDEX usage_by_user ON usage (user_id, created_at);
