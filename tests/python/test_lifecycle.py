"""Stop, idempotency and name conflicts through boto3 (moto S3 mode)."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import urllib.parse
import urllib.request

import pytest
from botocore.exceptions import ClientError
from conftest import (
    SHARED_DATA,
    SLOW_MODEL,
    client_error,
    create_job,
    expected_manifest,
    job_id_of,
    parse_jsonl,
    read_manifest,
    records,
    unique,
    wait_for_status,
)


def test_stop_in_progress_job_keeps_finished_records(s3_server, bucket_name):
    b = s3_server.buckets
    b.create(bucket_name)
    n = 60
    body, ids = records(n)
    in_uri = b.put(bucket_name, "in/slow.jsonl", body)
    arn = create_job(s3_server.bedrock, unique("stop"), in_uri, f"s3://{bucket_name}/out/", model=SLOW_MODEL)
    job_id = job_id_of(arn)
    wait_for_status(s3_server.bedrock, arn, {"InProgress"}, timeout=30, interval=0.05)
    # Let a few records finish.
    time.sleep(1.0)
    response = s3_server.bedrock.stop_model_invocation_job(jobIdentifier=arn)
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    seen = s3_server.bedrock.get_model_invocation_job(jobIdentifier=arn)["status"]
    assert seen in ("Stopping", "Stopped"), seen
    job = wait_for_status(s3_server.bedrock, arn, {"Stopped"}, timeout=30)
    assert isinstance(job["endTime"], dt.datetime)
    assert job["totalRecordCount"] == n
    processed = job["processedRecordCount"]
    assert 0 < processed < n, job
    assert job["successRecordCount"] + job["errorRecordCount"] == processed

    lines = parse_jsonl(b.get(bucket_name, f"out/{job_id}/slow.jsonl.out"))
    assert len(lines) == processed
    assert [x["recordId"] for x in lines] == ids[:processed]
    manifest = read_manifest(b, bucket_name, "out/", job_id)
    assert manifest == expected_manifest(lines, n)
    assert manifest["processedRecordCount"] < manifest["totalRecordCount"]

    # Stopping it again: it has ended.
    with pytest.raises(ClientError) as excinfo:
        s3_server.bedrock.stop_model_invocation_job(jobIdentifier=arn)
    code, status, _ = client_error(excinfo)
    assert (code, status) == ("ConflictException", 400)


def test_stop_completed_job_is_a_conflict(s3_server, bucket_name):
    b = s3_server.buckets
    b.create(bucket_name)
    in_uri = b.put(bucket_name, "in/basic.jsonl", (SHARED_DATA / "converse-basic.jsonl").read_bytes())
    arn = create_job(s3_server.bedrock, unique("done"), in_uri, f"s3://{bucket_name}/out/")
    wait_for_status(s3_server.bedrock, arn, {"Completed"})
    with pytest.raises(ClientError) as excinfo:
        s3_server.bedrock.stop_model_invocation_job(jobIdentifier=job_id_of(arn))
    code, status, message = client_error(excinfo)
    assert (code, status) == ("ConflictException", 400)
    assert message
    assert s3_server.bedrock.get_model_invocation_job(jobIdentifier=arn)["status"] == "Completed"


def test_same_client_request_token_gives_the_same_job(s3_server, bucket_name):
    b = s3_server.buckets
    b.create(bucket_name)
    in_uri = b.put(bucket_name, "in/basic.jsonl", (SHARED_DATA / "converse-basic.jsonl").read_bytes())
    name = unique("idem")
    token = unique("token")
    first = create_job(s3_server.bedrock, name, in_uri, f"s3://{bucket_name}/out/", clientRequestToken=token)
    second = create_job(s3_server.bedrock, name, in_uri, f"s3://{bucket_name}/out/", clientRequestToken=token)
    assert first == second
    wait_for_status(s3_server.bedrock, first, {"Completed"})
    # Even after the job ended, the token still answers with that job.
    third = create_job(s3_server.bedrock, name, in_uri, f"s3://{bucket_name}/out/", clientRequestToken=token)
    assert third == first
    jobs = s3_server.bedrock.list_model_invocation_jobs(nameContains=name)["invocationJobSummaries"]
    assert [j["jobArn"] for j in jobs] == [first]
    assert jobs[0]["clientRequestToken"] == token
    # One job's output, not three (its result analysis sits beside its folder).
    assert b.keys(bucket_name, "out/") == [
        f"out/{job_id_of(first)}.analysis.json",
        f"out/{job_id_of(first)}/basic.jsonl.out",
        f"out/{job_id_of(first)}/manifest.json.out",
    ]


def test_duplicate_job_name_while_the_first_runs_is_a_conflict(s3_server, bucket_name):
    b = s3_server.buckets
    b.create(bucket_name)
    body, _ = records(60)
    in_uri = b.put(bucket_name, "in/slow.jsonl", body)
    name = unique("dup")
    arn = create_job(s3_server.bedrock, name, in_uri, f"s3://{bucket_name}/out/", model=SLOW_MODEL)
    wait_for_status(s3_server.bedrock, arn, {"InProgress"}, timeout=30, interval=0.05)
    with pytest.raises(ClientError) as excinfo:
        create_job(s3_server.bedrock, name, in_uri, f"s3://{bucket_name}/out2/", model=SLOW_MODEL)
    code, status, message = client_error(excinfo)
    assert (code, status) == ("ConflictException", 400)
    assert "name" in message.lower()
    jobs = s3_server.bedrock.list_model_invocation_jobs(nameContains=name)["invocationJobSummaries"]
    assert [j["jobArn"] for j in jobs] == [arn]

    s3_server.bedrock.stop_model_invocation_job(jobIdentifier=arn)
    wait_for_status(s3_server.bedrock, arn, {"Stopped"}, timeout=30)
    # Once the first job has ended, the name is free again.
    small, _ = records(2)
    in2 = b.put(bucket_name, "in2/small.jsonl", small)
    again = create_job(s3_server.bedrock, name, in2, f"s3://{bucket_name}/out2/")
    assert again != arn
    wait_for_status(s3_server.bedrock, again, {"Completed"})


def test_stop_a_job_that_has_not_started(start_server, bucket_name):
    """A Scheduled job (waiting for a running slot) stops at once: Stopped, nothing ran, and
    the manifest says so."""
    server = start_server("s3", {"limits": {"max_running_jobs": 1}})
    b = server.buckets
    b.create(bucket_name)
    body, _ = records(60)
    blocker_in = b.put(bucket_name, "in/blocker.jsonl", body)
    blocker = create_job(server.bedrock, unique("blocker"), blocker_in, f"s3://{bucket_name}/out/", model=SLOW_MODEL)
    wait_for_status(server.bedrock, blocker, {"InProgress"}, timeout=30, interval=0.05)
    small, _ = records(4)
    waiting_in = b.put(bucket_name, "in2/small.jsonl", small)
    waiting = create_job(server.bedrock, unique("waiting"), waiting_in, f"s3://{bucket_name}/out/")
    wait_for_status(server.bedrock, waiting, {"Scheduled"}, timeout=30, interval=0.05)

    server.bedrock.stop_model_invocation_job(jobIdentifier=waiting)
    job = wait_for_status(server.bedrock, waiting, {"Stopped"}, timeout=30)
    assert job["processedRecordCount"] == 0
    assert isinstance(job["endTime"], dt.datetime)
    manifest = read_manifest(b, bucket_name, "out/", job_id_of(waiting))
    assert manifest["processedRecordCount"] == 0
    assert manifest["totalRecordCount"] == 4
    assert b.keys(bucket_name, f"out/{job_id_of(waiting)}/") == [f"out/{job_id_of(waiting)}/manifest.json.out"]

    server.bedrock.stop_model_invocation_job(jobIdentifier=blocker)
    wait_for_status(server.bedrock, blocker, {"Stopped"}, timeout=30)


def test_wire_format_of_get_and_create(s3_server, bucket_name):
    """What the SDKs parse, checked on the wire: JSON bodies, ISO-8601 UTC timestamps ending
    in Z, no null members."""
    b = s3_server.buckets
    b.create(bucket_name)
    in_uri = b.put(bucket_name, "in/basic.jsonl", (SHARED_DATA / "converse-basic.jsonl").read_bytes())
    body = json.dumps(
        {
            "jobName": unique("wire"),
            "roleArn": "arn:aws:iam::123456789012:role/R",
            "modelId": "anthropic.claude-3-haiku-20240307-v1:0",
            "inputDataConfig": {"s3InputDataConfig": {"s3Uri": in_uri}},
            "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": f"s3://{bucket_name}/out/"}},
            "modelInvocationType": "Converse",
        }
    ).encode()
    req = urllib.request.Request(
        f"{s3_server.url}/model-invocation-job", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/json")
        arn = json.load(r)["jobArn"]
    wait_for_status(s3_server.bedrock, arn, {"Completed"})
    quoted = urllib.parse.quote(arn, safe="")
    with urllib.request.urlopen(f"{s3_server.url}/model-invocation-job/{quoted}", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("application/json")
        job = json.load(r)
    iso = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
    for key in ("submitTime", "lastModifiedTime", "endTime", "jobExpirationTime"):
        assert iso.match(job[key]), (key, job[key])
    assert None not in job.values()
    assert job["status"] == "Completed"
