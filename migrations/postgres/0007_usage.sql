-- Token accounting: the usage a provider reported for each reply, once per generation (a
-- retried reply is one generation).
CREATE TABLE usage (
    generation_id     uuid PRIMARY KEY,
    user_id           uuid NOT NULL,
    chat_id           uuid NOT NULL,
    model             text NOT NULL,
    prompt_tokens     bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    created_at        timestamptz NOT NULL
);
CREATE INDEX usage_by_user ON usage (user_id, created_at);
