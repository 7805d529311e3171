-- Token quotas: each user's tokens per UTC day, kept with each usage record (a quota sums at
-- most a month of these rows), and the users whose quota an admin set.
CREATE TABLE usage_daily (
    user_id TEXT NOT NULL,
    day     TEXT NOT NULL,
    replies INTEGER NOT NULL,
    tokens  INTEGER NOT NULL,
    PRIMARY KEY (user_id, day)
) WITHOUT ROWID;
INSERT INTO usage_daily (user_id, day, replies, tokens)
    SELECT user_id, substr(created_at, 1, 10), COUNT(*), SUM(prompt_tokens + completion_tokens)
    FROM usage GROUP BY 1, 2;
-- A row overrides the configured default; `tokens` NULL is no quota at all.
CREATE TABLE quotas (
    user_id TEXT PRIMARY KEY NOT NULL,
    tokens  INTEGER
);
