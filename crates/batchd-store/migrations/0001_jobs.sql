-- Jobs, their status, counters and timestamps (milliseconds since the Unix epoch, UTC).
CREATE TABLE jobs (
    job_id               TEXT PRIMARY KEY NOT NULL,
    job_arn              TEXT NOT NULL,
    job_name             TEXT NOT NULL,
    model_id             TEXT NOT NULL,
    role_arn             TEXT,
    client_request_token TEXT,
    invocation_type      TEXT NOT NULL,
    input_uri            TEXT NOT NULL,
    output_uri           TEXT NOT NULL,
    status               TEXT NOT NULL,
    message              TEXT,
    timeout_hours        INTEGER,
    submit_time_ms       INTEGER NOT NULL,
    last_modified_ms     INTEGER NOT NULL,
    end_time_ms          INTEGER,
    job_expiration_ms    INTEGER,
    total_records        INTEGER NOT NULL DEFAULT 0,
    processed_records    INTEGER NOT NULL DEFAULT 0,
    success_records      INTEGER NOT NULL DEFAULT 0,
    error_records        INTEGER NOT NULL DEFAULT 0,
    input_tokens         INTEGER NOT NULL DEFAULT 0,
    output_tokens        INTEGER NOT NULL DEFAULT 0,
    -- The create request as received, for the fields only the API echoes (vpcConfig, tags).
    request_json         TEXT
);
CREATE INDEX jobs_by_submit_time ON jobs (submit_time_ms);
CREATE INDEX jobs_by_status ON jobs (status);
CREATE UNIQUE INDEX jobs_by_token ON jobs (client_request_token) WHERE client_request_token IS NOT NULL;
