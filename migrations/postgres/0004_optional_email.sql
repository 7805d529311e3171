-- An account may have only a username (seed 002's clients register with one). Emails stay
-- unique when given: a unique index lets any number of rows have none.
ALTER TABLE users ALTER COLUMN email DROP NOT NULL;
