-- Tags of jobs (TagResource, UntagResource, ListTagsForResource), one row per key. A Bedrock
-- create request's `tags` are the job's first tags: copied here from the stored request, for
-- the jobs created before this migration as for every new one.
CREATE TABLE job_tags (
    job_id    TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    tag_key   TEXT NOT NULL,
    tag_value TEXT NOT NULL,
    PRIMARY KEY (job_id, tag_key)
);
INSERT OR REPLACE INTO job_tags (job_id, tag_key, tag_value)
    SELECT jobs.job_id, json_extract(t.value, '$.key'), json_extract(t.value, '$.value')
    FROM jobs, json_each(
        CASE WHEN json_valid(jobs.request_json) THEN jobs.request_json ELSE '{}' END, '$.tags') AS t
    WHERE jobs.dialect = 'bedrock'
        AND json_type(t.value, '$.key') = 'text' AND json_type(t.value, '$.value') = 'text';
