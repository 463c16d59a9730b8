-- The job store's schema on Postgres: SQLite's after its migration 11, in Postgres types
-- (times are BIGINT milliseconds since the Unix epoch, UTC; files' times Unix seconds). Keys
-- compare byte by byte (COLLATE "C") so pages come in the order SQLite gives them.
CREATE TABLE jobs (
    job_id                TEXT COLLATE "C" PRIMARY KEY,
    job_arn               TEXT NOT NULL,
    job_name              TEXT NOT NULL,
    model_id              TEXT NOT NULL,
    role_arn              TEXT,
    client_request_token  TEXT,
    invocation_type       TEXT NOT NULL,
    -- Not read: SQLite keeps it for older binaries, and the store writes both the same way.
    input_uri             TEXT NOT NULL,
    output_uri            TEXT NOT NULL,
    status                TEXT NOT NULL,
    message               TEXT,
    timeout_hours         BIGINT,
    submit_time_ms        BIGINT NOT NULL,
    last_modified_ms      BIGINT NOT NULL,
    end_time_ms           BIGINT,
    job_expiration_ms     BIGINT,
    total_records         BIGINT NOT NULL DEFAULT 0,
    processed_records     BIGINT NOT NULL DEFAULT 0,
    success_records       BIGINT NOT NULL DEFAULT 0,
    error_records         BIGINT NOT NULL DEFAULT 0,
    input_tokens          BIGINT NOT NULL DEFAULT 0,
    output_tokens         BIGINT NOT NULL DEFAULT 0,
    request_json          TEXT,
    ckpt_file             BIGINT NOT NULL DEFAULT 0,
    ckpt_records          BIGINT NOT NULL DEFAULT 0,
    ckpt_position         BIGINT NOT NULL DEFAULT 0,
    ckpt_timings_position BIGINT NOT NULL DEFAULT 0,
    origin                TEXT NOT NULL DEFAULT 'api',
    inputs                TEXT NOT NULL DEFAULT '[]',
    dialect               TEXT NOT NULL DEFAULT 'bedrock',
    dialect_options       TEXT,
    account_id            TEXT NOT NULL DEFAULT '000000000000',
    in_progress_ms        BIGINT,
    finalizing_ms         BIGINT,
    stopping_ms           BIGINT
);
CREATE INDEX jobs_by_submit_time ON jobs (submit_time_ms);
CREATE INDEX jobs_by_status ON jobs (status);
CREATE INDEX jobs_by_origin_status ON jobs (origin, status);
CREATE INDEX jobs_by_origin_dialect ON jobs (origin, dialect, submit_time_ms);
CREATE UNIQUE INDEX jobs_by_account_token ON jobs (account_id, client_request_token)
    WHERE client_request_token IS NOT NULL;
CREATE INDEX jobs_by_account ON jobs (account_id, origin, dialect, submit_time_ms);

CREATE TABLE job_files (
    job_id   TEXT COLLATE "C" NOT NULL,
    idx      BIGINT NOT NULL,
    uri      TEXT NOT NULL,
    relative TEXT NOT NULL,
    size     BIGINT NOT NULL,
    version  TEXT,
    PRIMARY KEY (job_id, idx)
);

CREATE TABLE files (
    id         TEXT COLLATE "C" PRIMARY KEY,
    bytes      BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    filename   TEXT NOT NULL,
    purpose    TEXT NOT NULL,
    uri        TEXT NOT NULL,
    account_id TEXT NOT NULL DEFAULT '000000000000'
);
CREATE INDEX files_by_created ON files (created_at, id);
CREATE INDEX files_by_account ON files (account_id, created_at, id);

CREATE TABLE job_tags (
    job_id    TEXT COLLATE "C" NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    tag_key   TEXT COLLATE "C" NOT NULL,
    tag_value TEXT NOT NULL,
    PRIMARY KEY (job_id, tag_key)
);
