-- Where the side file of per-record processing times (InvokeModel jobs) stands at the
-- checkpoint, like ckpt_position for the output file.
ALTER TABLE jobs ADD COLUMN ckpt_timings_position INTEGER NOT NULL DEFAULT 0;
