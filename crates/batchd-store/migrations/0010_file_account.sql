-- The account each file belongs to: its uploader's, or the account of the batch that
-- published it. A caller finds, lists, reads and deletes only its own account's files.
ALTER TABLE files ADD COLUMN account_id TEXT NOT NULL DEFAULT '000000000000';
CREATE INDEX files_by_account ON files (account_id, created_at, id);
