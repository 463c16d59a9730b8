-- Who created each job ('api': `batchd serve`; 'run': `batchd run`, the jobs stored without a
-- role ARN so far), and its inputs as a JSON array of URIs instead of one "\n"-joined string.
ALTER TABLE jobs ADD COLUMN origin TEXT NOT NULL DEFAULT 'api';
UPDATE jobs SET origin = 'run' WHERE role_arn IS NULL;
ALTER TABLE jobs ADD COLUMN inputs TEXT NOT NULL DEFAULT '[]';
UPDATE jobs SET inputs = (
    WITH RECURSIVE split(item, rest, n) AS (
        SELECT NULL, jobs.input_uri || char(10), 0
        UNION ALL
        SELECT substr(rest, 1, instr(rest, char(10)) - 1),
               substr(rest, instr(rest, char(10)) + 1), n + 1
        FROM split WHERE rest <> ''
    )
    SELECT json_group_array(item) FROM (SELECT item FROM split WHERE n > 0 AND item <> '' ORDER BY n)
);
CREATE INDEX jobs_by_origin_status ON jobs (origin, status);
