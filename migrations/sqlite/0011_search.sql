-- Full-text search, FTS5 with porter stemming (as PostgreSQL's `english`). Each indexed row
-- carries its chat's owner as one token (`u` and 32 hex digits) that queries require, so one
-- user's search reads only their postings.
--
-- When this file also holds the messages (the embedded default), the index is over the
-- `messages` table itself (external content, kept by triggers): a message's text is stored once
-- and indexed in the transaction that stores it. `messages.owner` is written with each batch.
ALTER TABLE messages ADD COLUMN owner TEXT;
UPDATE messages SET owner = (SELECT 'u' || replace(owner_id, '-', '') FROM chats
                             WHERE chats.id = messages.chat_id);
CREATE VIRTUAL TABLE message_fts USING fts5(
    content, owner, content = 'messages', content_rowid = 'rowid',
    tokenize = 'porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO message_fts (rowid, content, owner) VALUES (new.rowid, new.content, new.owner);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO message_fts (message_fts, rowid, content, owner)
        VALUES ('delete', old.rowid, old.content, old.owner);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF content, owner ON messages BEGIN
    INSERT INTO message_fts (message_fts, rowid, content, owner)
        VALUES ('delete', old.rowid, old.content, old.owner);
    INSERT INTO message_fts (rowid, content, owner) VALUES (new.rowid, new.content, new.owner);
END;
INSERT INTO message_fts (message_fts) VALUES ('rebuild');

-- When the messages live elsewhere (MongoDB), the batch's index rows come here, written by the
-- write-behind writer in the metadata's own transaction.
CREATE TABLE search_docs (
    rowid      INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL UNIQUE,
    chat_id    TEXT NOT NULL,
    owner      TEXT,
    content    TEXT NOT NULL
);
CREATE INDEX search_docs_chat ON search_docs (chat_id);
CREATE VIRTUAL TABLE search_fts USING fts5(
    content, owner, content = 'search_docs', content_rowid = 'rowid',
    tokenize = 'porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER search_docs_insert AFTER INSERT ON search_docs BEGIN
    INSERT INTO search_fts (rowid, content, owner) VALUES (new.rowid, new.content, new.owner);
END;
CREATE TRIGGER search_docs_delete AFTER DELETE ON search_docs BEGIN
    INSERT INTO search_fts (search_fts, rowid, content, owner)
        VALUES ('delete', old.rowid, old.content, old.owner);
END;
CREATE TRIGGER search_docs_update AFTER UPDATE ON search_docs BEGIN
    INSERT INTO search_fts (search_fts, rowid, content, owner)
        VALUES ('delete', old.rowid, old.content, old.owner);
    INSERT INTO search_fts (rowid, content, owner) VALUES (new.rowid, new.content, new.owner);
END;
