-- Leases for instances sharing one store: a job's lease (who validates, starts and finishes
-- it) and the chunks its input is split into, each claimed under its own lease and fencing
-- token. Unused on one machine with SQLite, kept so both stores have one schema.
ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_until_ms INTEGER;
ALTER TABLE jobs ADD COLUMN lease_fence INTEGER NOT NULL DEFAULT 0;

CREATE TABLE chunks (
    job_id         TEXT NOT NULL,
    idx            INTEGER NOT NULL,
    file_index     INTEGER NOT NULL,
    start_offset   INTEGER NOT NULL,
    first_line     INTEGER NOT NULL,
    records        INTEGER NOT NULL,
    state          TEXT NOT NULL DEFAULT 'pending',
    owner          TEXT,
    lease_until_ms INTEGER,
    fence          INTEGER NOT NULL DEFAULT 0,
    processed      INTEGER NOT NULL DEFAULT 0,
    success        INTEGER NOT NULL DEFAULT 0,
    error          INTEGER NOT NULL DEFAULT 0,
    input_tokens   INTEGER NOT NULL DEFAULT 0,
    output_tokens  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, idx)
);

-- Each instance's last sign of life, once per backend it uses (`scope`: a model and the
-- server it calls): the live instances of one scope share that model's concurrency.
CREATE TABLE instances (
    instance_id TEXT NOT NULL,
    scope       TEXT NOT NULL,
    seen_ms     INTEGER NOT NULL,
    PRIMARY KEY (instance_id, scope)
);
