-- The input files a job validated, in order, with the size and version (ETag; for local files
-- inode, mtime and size) each had: execution and every resume read exactly these.
CREATE TABLE job_files (
    job_id   TEXT NOT NULL,
    idx      INTEGER NOT NULL,
    uri      TEXT NOT NULL,
    relative TEXT NOT NULL,
    size     INTEGER NOT NULL,
    version  TEXT,
    PRIMARY KEY (job_id, idx)
);
