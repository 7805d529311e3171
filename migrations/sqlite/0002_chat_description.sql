-- A chat's description (a "room" description in the seed 004 dialect; also on Arbor's own API).
ALTER TABLE chats ADD COLUMN description TEXT;
