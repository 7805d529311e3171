-- Token quotas: each user's tokens per UTC day, kept with each usage record (a quota sums at
-- most a month of these rows), and the users whose quota an admin set.
CREATE TABLE usage_daily (
    user_id uuid NOT NULL,
    day     date NOT NULL,
    replies bigint NOT NULL,
    tokens  bigint NOT NULL,
    PRIMARY KEY (user_id, day)
);
INSERT INTO usage_daily (user_id, day, replies, tokens)
    SELECT user_id, (created_at AT TIME ZONE 'UTC')::date, COUNT(*),
           SUM(prompt_tokens + completion_tokens)
    FROM usage GROUP BY 1, 2;
-- A row overrides the configured default; `tokens` NULL is no quota at all.
CREATE TABLE quotas (
    user_id uuid PRIMARY KEY,
    tokens  bigint
);
