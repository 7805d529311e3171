-- Where a restore puts a branch's head if the head's message never landed: the writer commits a
-- batch's messages (message store) and branch rows (here) at once, so a crash can leave a row
-- pointing at a message that is not stored. NULL: the head was stored before the row.
ALTER TABLE branches ADD COLUMN fallback_id uuid;
