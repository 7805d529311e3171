-- Full-text search: each message's content with its chat and owner, written by the
-- write-behind writer in the same statement or transaction as the batch's metadata, with its
-- `english` tsvector and a GIN index. Messages stored in MongoDB before this migration are
-- indexed by `arbor reindex`.
CREATE TABLE search_docs (
    message_id uuid PRIMARY KEY,
    chat_id    uuid NOT NULL,
    owner_id   uuid,
    content    text NOT NULL,
    tsv        tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED
);
CREATE INDEX search_docs_chat ON search_docs (chat_id);
CREATE INDEX search_docs_owner ON search_docs (owner_id);
CREATE INDEX search_docs_tsv ON search_docs USING gin (tsv);
