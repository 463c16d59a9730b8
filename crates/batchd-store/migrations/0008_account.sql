-- The account each job belongs to: its creator's, which its ARN carries. Jobs from before
-- accounts take the account of their ARN. A client request token is unique per account, as
-- on Bedrock (another account's token is not this caller's business).
ALTER TABLE jobs ADD COLUMN account_id TEXT NOT NULL DEFAULT '000000000000';
UPDATE jobs SET account_id = substr(job_arn, instr(job_arn, ':model-invocation-job/') - 12, 12)
    WHERE instr(job_arn, ':model-invocation-job/') > 12;
DROP INDEX jobs_by_token;
CREATE UNIQUE INDEX jobs_by_account_token ON jobs (account_id, client_request_token)
    WHERE client_request_token IS NOT NULL;
CREATE INDEX jobs_by_account ON jobs (account_id, origin, dialect, submit_time_ms);
