-- Files of the OpenAI Files API: uploaded batch inputs and published batch outputs. The
-- content is the object at `uri`; times are Unix seconds.
CREATE TABLE files (
    id         TEXT PRIMARY KEY,
    bytes      INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    filename   TEXT NOT NULL,
    purpose    TEXT NOT NULL,
    uri        TEXT NOT NULL
);
CREATE INDEX files_by_created ON files (created_at, id);
