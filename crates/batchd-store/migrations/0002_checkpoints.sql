-- Record-granular checkpoints of running jobs (see batchd_core::Checkpoint).
ALTER TABLE jobs ADD COLUMN ckpt_file INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN ckpt_records INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN ckpt_position INTEGER NOT NULL DEFAULT 0;
