-- Full-text search: each message's content with its chat and owner, written by the
-- write-behind writer in the batch's own transaction, and an FTS5 index over it kept by
-- triggers (external content: the text is stored once here). `owner` is the owner's id as one
-- token (`u` and 32 hex digits) that queries require, so one user's search reads only their
-- postings. Porter stemming, as PostgreSQL's `english` configuration.
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
-- What is stored already.
INSERT INTO search_docs (message_id, chat_id, owner, content)
    SELECT m.id, m.chat_id, 'u' || replace(c.owner_id, '-', ''), m.content
    FROM messages m LEFT JOIN chats c ON c.id = m.chat_id
    ORDER BY m.id;
