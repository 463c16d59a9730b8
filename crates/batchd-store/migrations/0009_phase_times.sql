-- When a job first entered the phases the OpenAI Batch object reports (in_progress_at,
-- finalizing_at, cancelling_at); null until it does. Set once: a resumed job keeps its first.
ALTER TABLE jobs ADD COLUMN in_progress_ms INTEGER;
ALTER TABLE jobs ADD COLUMN finalizing_ms INTEGER;
ALTER TABLE jobs ADD COLUMN stopping_ms INTEGER;
