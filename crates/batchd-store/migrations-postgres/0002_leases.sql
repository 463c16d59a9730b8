-- Leases for instances sharing one store (SQLite's migration 12): a job's lease (who
-- validates, starts and finishes it) and the chunks its input is split into, each claimed
-- under its own lease and fencing token.
ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_until_ms BIGINT;
ALTER TABLE jobs ADD COLUMN lease_fence BIGINT NOT NULL DEFAULT 0;

CREATE TABLE chunks (
    job_id         TEXT COLLATE "C" NOT NULL,
    idx            BIGINT NOT NULL,
    file_index     BIGINT NOT NULL,
    start_offset   BIGINT NOT NULL,
    first_line     BIGINT NOT NULL,
    records        BIGINT NOT NULL,
    state          TEXT NOT NULL DEFAULT 'pending',
    owner          TEXT,
    lease_until_ms BIGINT,
    fence          BIGINT NOT NULL DEFAULT 0,
    processed      BIGINT NOT NULL DEFAULT 0,
    success        BIGINT NOT NULL DEFAULT 0,
    error          BIGINT NOT NULL DEFAULT 0,
    input_tokens   BIGINT NOT NULL DEFAULT 0,
    output_tokens  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, idx)
);

-- Each instance's last sign of life, once per backend it uses (`scope`: a model and the
-- server it calls): the live instances of one scope share that model's concurrency.
CREATE TABLE instances (
    instance_id TEXT COLLATE "C" NOT NULL,
    scope       TEXT COLLATE "C" NOT NULL,
    seen_ms     BIGINT NOT NULL,
    PRIMARY KEY (instance_id, scope)
);
