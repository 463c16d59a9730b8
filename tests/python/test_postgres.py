"""`batchd serve` with its jobs in PostgreSQL (BATCHD_DATABASE_URL): boto3 runs a job, and a
server started on another data dir with the same database still finds and lists it. The
database server is scripts/pg.sh's (BATCHD_TEST_PG_URL, set by scripts/test.sh)."""

from __future__ import annotations

import pytest
from conftest import create_job, fresh_pg_database, job_id_of, parse_jsonl, records, unique, wait_for_status


def test_jobs_live_in_postgres_across_servers_and_data_dirs(start_server, tmp_path):
    url = fresh_pg_database()
    first = start_server(mode="local", env={"BATCHD_DATABASE_URL": url})
    b = first.buckets
    b.create("pg-jobs")
    body, ids = records(5)
    in_uri = b.put("pg-jobs", "in/a.jsonl", body)
    arn = create_job(first.bedrock, unique("pg"), in_uri, "s3://pg-jobs/out/")
    job = wait_for_status(first.bedrock, arn, {"Completed"}, timeout=60)
    assert job["successRecordCount"] == 5, job
    lines = parse_jsonl(b.get("pg-jobs", f"out/{job_id_of(arn)}/a.jsonl.out"))
    assert [x["recordId"] for x in lines] == ids
    # The job is in Postgres, not in the data dir's SQLite file.
    assert not (first.data_dir / "batchd.sqlite").exists()
    first.stop()

    second = start_server(mode="local", env={"BATCHD_DATABASE_URL": url})
    assert second.data_dir != first.data_dir
    again = second.bedrock.get_model_invocation_job(jobIdentifier=arn)
    assert (again["status"], again["successRecordCount"]) == ("Completed", 5)
    listed = second.bedrock.list_model_invocation_jobs()["invocationJobSummaries"]
    assert [j["jobArn"] for j in listed] == [arn]


def test_a_database_url_that_is_not_postgres_is_refused_without_its_password(start_server):
    with pytest.raises(AssertionError) as excinfo:
        start_server(mode="local", env={"BATCHD_DATABASE_URL": "mysql://u:hunter2@127.0.0.1/db"})
    message = str(excinfo.value)
    assert "mysql://u:***@127.0.0.1/db is not a postgres:// URL" in message, message
    assert "hunter2" not in message
