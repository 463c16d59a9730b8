-- Which API each job belongs to ('bedrock' or 'batch-job'), and the batch-job API's own
-- options (batch sizes, formats, timeout, prompt template, retry policy) as a JSON object.
ALTER TABLE jobs ADD COLUMN dialect TEXT NOT NULL DEFAULT 'bedrock';
ALTER TABLE jobs ADD COLUMN dialect_options TEXT;
CREATE INDEX jobs_by_origin_dialect ON jobs (origin, dialect, submit_time_ms);
