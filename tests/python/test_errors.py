"""Every error type that applies, as boto3 sees it, and the jobs that end Failed, Expired or
PartiallyCompleted."""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.error
import urllib.request

import pytest
from botocore.exceptions import ClientError
from conftest import (
    FAST_MODEL,
    ROLE_ARN,
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


def create_params(**overrides) -> dict:
    params = dict(
        jobName=unique("bad"),
        roleArn=ROLE_ARN,
        modelId=FAST_MODEL,
        inputDataConfig={"s3InputDataConfig": {"s3Uri": "s3://some-bucket/in/"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": "s3://some-bucket/out/"}},
        modelInvocationType="Converse",
    )
    params.update(overrides)
    return params


# (case, CreateModelInvocationJob overrides, text the message must contain)
CREATE_VALIDATION_CASES = [
    ("bad-job-name", {"jobName": "bad name!"}, "'jobName'"),
    ("job-name-too-long", {"jobName": "a" * 64}, "'jobName'"),
    ("timeout-5-hours", {"timeoutDurationInHours": 5}, "'timeoutDurationInHours'"),
    ("timeout-169-hours", {"timeoutDurationInHours": 169}, "'timeoutDurationInHours'"),
    (
        "bad-input-s3-uri",
        {"inputDataConfig": {"s3InputDataConfig": {"s3Uri": "s3://Not_A_Bucket/in/"}}},
        "'inputDataConfig.s3InputDataConfig.s3Uri'",
    ),
    (
        "bad-output-s3-uri",
        {"outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "https://example.com/out"}}},
        "'outputDataConfig.s3OutputDataConfig.s3Uri'",
    ),
    ("bad-role-arn", {"roleArn": "not-a-role"}, "'roleArn'"),
    ("bad-client-request-token", {"clientRequestToken": "bad_token!"}, "'clientRequestToken'"),
    ("bad-invocation-type", {"modelInvocationType": "Chat"}, "'modelInvocationType'"),
    ("unknown-model-id", {"modelId": "acme.no-such-model-v1:0"}, "modelId"),
]


@pytest.mark.parametrize("overrides,field", [c[1:] for c in CREATE_VALIDATION_CASES], ids=[c[0] for c in CREATE_VALIDATION_CASES])
def test_create_validation_errors_name_the_field(s3_server, overrides, field):
    params = create_params(**overrides)
    with pytest.raises(ClientError) as excinfo:
        s3_server.bedrock_raw.create_model_invocation_job(**params)
    code, status, message = client_error(excinfo)
    assert (code, status) == ("ValidationException", 400), message
    assert field in message, message
    # Nothing was created.
    listed = s3_server.bedrock.list_model_invocation_jobs(nameContains=params["jobName"][:63])
    assert listed["invocationJobSummaries"] == []


@pytest.mark.parametrize(
    "model_id",
    [
        "acme.no-such-model-v1:0",
        "us.acme.no-such-model-v1:0",
        "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5f6",
    ],
)
def test_unknown_model_id_message_names_the_model(s3_server, model_id):
    with pytest.raises(ClientError) as excinfo:
        s3_server.bedrock.create_model_invocation_job(**create_params(modelId=model_id))
    code, status, message = client_error(excinfo)
    assert (code, status) == ("ValidationException", 400)
    assert model_id in message


LIST_VALIDATION_CASES = [
    ("bad-status", {"statusEquals": "Running"}, "'statusEquals'"),
    ("status-wrong-case", {"statusEquals": "inprogress"}, "'statusEquals'"),
    ("max-results-0", {"maxResults": 0}, "'maxResults'"),
    ("max-results-1001", {"maxResults": 1001}, "'maxResults'"),
    ("bad-sort-order", {"sortOrder": "Sideways"}, "'sortOrder'"),
    ("bad-sort-by", {"sortBy": "Name"}, "'sortBy'"),
    ("bad-next-token", {"nextToken": "not-a-token"}, "'nextToken'"),
]


@pytest.mark.parametrize("params,field", [c[1:] for c in LIST_VALIDATION_CASES], ids=[c[0] for c in LIST_VALIDATION_CASES])
def test_list_validation_errors_name_the_field(s3_server, params, field):
    with pytest.raises(ClientError) as excinfo:
        s3_server.bedrock_raw.list_model_invocation_jobs(**params)
    code, status, message = client_error(excinfo)
    assert (code, status) == ("ValidationException", 400), message
    assert field in message, message


def test_bad_job_identifier_is_a_validation_error(s3_server):
    for call in (s3_server.bedrock.get_model_invocation_job, s3_server.bedrock.stop_model_invocation_job):
        with pytest.raises(ClientError) as excinfo:
            call(jobIdentifier="Not-A-Job-Id")
        code, status, message = client_error(excinfo)
        assert (code, status) == ("ValidationException", 400), message
        assert "jobIdentifier" in message


@pytest.mark.parametrize(
    "identifier",
    ["zzzzzzzzzzzz", "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/zzzzzzzzzzzz"],
    ids=["id", "arn"],
)
def test_unknown_job_is_not_found(s3_server, identifier):
    for call in (s3_server.bedrock.get_model_invocation_job, s3_server.bedrock.stop_model_invocation_job):
        with pytest.raises(ClientError) as excinfo:
            call(jobIdentifier=identifier)
        code, status, message = client_error(excinfo)
        assert (code, status) == ("ResourceNotFoundException", 404), message
        assert "zzzzzzzzzzzz" in message
        assert excinfo.value.response["ResponseMetadata"]["RequestId"]


def test_service_quota_exceeded_beyond_jobs_per_model(start_server, bucket_name):
    server = start_server("s3", {"limits": {"max_jobs_per_model": 1}})
    b = server.buckets
    b.create(bucket_name)
    body, _ = records(60)
    in_uri = b.put(bucket_name, "in/slow.jsonl", body)
    first = create_job(server.bedrock, unique("quota"), in_uri, f"s3://{bucket_name}/out/", model=SLOW_MODEL)
    with pytest.raises(ClientError) as excinfo:
        create_job(server.bedrock, unique("quota"), in_uri, f"s3://{bucket_name}/out/", model=SLOW_MODEL)
    code, status, message = client_error(excinfo)
    assert (code, status) == ("ServiceQuotaExceededException", 400), message
    assert SLOW_MODEL in message
    # The limit is per model: another model still takes a job.
    small, _ = records(3)
    other_in = b.put(bucket_name, "in2/small.jsonl", small)
    other = create_job(server.bedrock, unique("other"), other_in, f"s3://{bucket_name}/out/", model=FAST_MODEL)
    wait_for_status(server.bedrock, other, {"Completed"})
    # Once the first job has ended, the model takes a job again.
    server.bedrock.stop_model_invocation_job(jobIdentifier=first)
    wait_for_status(server.bedrock, first, {"Stopped"}, timeout=30)
    again = create_job(server.bedrock, unique("quota"), other_in, f"s3://{bucket_name}/out/", model=SLOW_MODEL)
    wait_for_status(server.bedrock, again, {"Completed"})


def test_defective_input_fails_validation_naming_file_line_and_field(s3_server, fake, bucket_name):
    b = s3_server.buckets
    b.create(bucket_name)
    in_uri = b.put(bucket_name, "in/converse-defects.jsonl", (SHARED_DATA / "converse-defects.jsonl").read_bytes())
    requests_before = fake.stats()["requests"]
    arn = create_job(s3_server.bedrock, unique("defects"), in_uri, f"s3://{bucket_name}/out/")
    job = wait_for_status(s3_server.bedrock, arn, {"Failed"})
    assert "converse-defects.jsonl:6: modelInput.messages[0].role" in job["message"], job["message"]
    # The other defects are there too, each with its line.
    for line in (2, 3, 4, 5, 7, 8, 9, 10):
        assert f"converse-defects.jsonl:{line}: " in job["message"], (line, job["message"])
    assert isinstance(job["endTime"], dt.datetime)
    # No record ran, nothing was written.
    assert fake.stats()["requests"] == requests_before
    assert b.keys(bucket_name, "out/") == []


def test_records_per_file_quota_fails_naming_quota_and_file(start_server, bucket_name):
    server = start_server("s3", {"quotas": {"records_per_input_file": 3}})
    b = server.buckets
    b.create(bucket_name)
    small, _ = records(3, "a")
    big, _ = records(4, "b")
    b.put(bucket_name, "in/small.jsonl", small)
    b.put(bucket_name, "in/big.jsonl", big)
    arn = create_job(server.bedrock, unique("recquota"), f"s3://{bucket_name}/in/", f"s3://{bucket_name}/out/")
    job = wait_for_status(server.bedrock, arn, {"Failed"})
    message = job["message"]
    assert "Records per input file" in message, message
    assert "big.jsonl" in message and "small.jsonl" not in message, message
    assert b.keys(bucket_name, "out/") == []
    # Within the quota the same server runs the job.
    ok = create_job(server.bedrock, unique("recquota"), f"s3://{bucket_name}/in/small.jsonl", f"s3://{bucket_name}/out/")
    wait_for_status(server.bedrock, ok, {"Completed"})


@pytest.mark.parametrize("mode", ["s3", "local"])
def test_missing_or_empty_input_fails_naming_the_input(module_servers, bucket_name, mode):
    server = module_servers(mode)
    b = server.buckets
    b.create(bucket_name)
    missing = f"s3://{bucket_name}/nothing-here/"
    arn = create_job(server.bedrock, unique("missing"), missing, f"s3://{bucket_name}/out/")
    job = wait_for_status(server.bedrock, arn, {"Failed"})
    assert missing in job["message"], job["message"]

    empty = b.put(bucket_name, "empty/none.jsonl", "")
    arn = create_job(server.bedrock, unique("empty"), empty, f"s3://{bucket_name}/out/")
    job = wait_for_status(server.bedrock, arn, {"Failed"})
    assert "Minimum number of records per batch inference job" in job["message"], job["message"]
    assert b.keys(bucket_name, "out/") == []


# One "hour" of timeoutDurationInHours is 0.1 s here: 24 hours = 2.4 s.
TIMEOUT_LIMITS = {"limits": {"timeout_unit_seconds": 0.1, "max_running_jobs": 1}}


def test_timeout_while_running_ends_partially_completed(start_server, bucket_name):
    server = start_server("s3", TIMEOUT_LIMITS)
    b = server.buckets
    b.create(bucket_name)
    n = 60  # about 6 s on the slow model
    body, ids = records(n)
    in_uri = b.put(bucket_name, "in/slow.jsonl", body)
    arn = create_job(
        server.bedrock, unique("timeout"), in_uri, f"s3://{bucket_name}/out/", model=SLOW_MODEL, timeoutDurationInHours=24
    )
    job_id = job_id_of(arn)
    job = wait_for_status(server.bedrock, arn, {"PartiallyCompleted"}, timeout=30)
    assert job["timeoutDurationInHours"] == 24
    expiry = job["jobExpirationTime"] - job["submitTime"]
    assert abs(expiry.total_seconds() - 2.4) < 0.5, expiry
    assert isinstance(job["endTime"], dt.datetime)
    processed = job["processedRecordCount"]
    assert job["totalRecordCount"] == n
    assert 0 < processed < n, job
    lines = parse_jsonl(b.get(bucket_name, f"out/{job_id}/slow.jsonl.out"))
    assert [x["recordId"] for x in lines] == ids[:processed]
    assert read_manifest(b, bucket_name, "out/", job_id) == expected_manifest(lines, n)


def test_job_never_started_in_time_is_expired(start_server, bucket_name):
    server = start_server("s3", TIMEOUT_LIMITS)
    b = server.buckets
    b.create(bucket_name)
    body, _ = records(120)  # about 12 s on the slow model; its timeout is 16.8 s
    blocker_in = b.put(bucket_name, "in/blocker.jsonl", body)
    blocker = create_job(
        server.bedrock, unique("blocker"), blocker_in, f"s3://{bucket_name}/out/", model=SLOW_MODEL, timeoutDurationInHours=168
    )
    wait_for_status(server.bedrock, blocker, {"InProgress"}, timeout=30, interval=0.05)

    small, _ = records(3)
    waiting_in = b.put(bucket_name, "in2/small.jsonl", small)
    waiting = create_job(server.bedrock, unique("waiting"), waiting_in, f"s3://{bucket_name}/out/", timeoutDurationInHours=24)
    statuses = []
    job = None
    while not statuses or statuses[-1] not in ("Expired", "Completed", "Failed", "Stopped", "PartiallyCompleted"):
        job = server.bedrock.get_model_invocation_job(jobIdentifier=waiting)
        if not statuses or statuses[-1] != job["status"]:
            statuses.append(job["status"])
        assert (dt.datetime.now(dt.timezone.utc) - job["submitTime"]).total_seconds() < 30, statuses
        time.sleep(0.05)
    assert statuses[-1] == "Expired", statuses
    assert "Scheduled" in statuses, statuses
    assert "InProgress" not in statuses, statuses
    assert isinstance(job["endTime"], dt.datetime)
    assert job["message"]
    assert job["processedRecordCount"] == 0
    assert b.keys(bucket_name, f"out/{job_id_of(waiting)}/") == []
    # The blocker was never disturbed.
    assert server.bedrock.get_model_invocation_job(jobIdentifier=blocker)["status"] == "InProgress"
    server.bedrock.stop_model_invocation_job(jobIdentifier=blocker)
    wait_for_status(server.bedrock, blocker, {"Stopped"}, timeout=30)
    # An expired job cannot be stopped either.
    with pytest.raises(ClientError) as excinfo:
        server.bedrock.stop_model_invocation_job(jobIdentifier=waiting)
    assert client_error(excinfo)[:2] == ("ConflictException", 400)


def test_error_responses_are_rest_json(s3_server):
    """The raw wire shape botocore parses: status, x-amzn-ErrorType, x-amzn-RequestId, body."""
    req = urllib.request.Request(f"{s3_server.url}/model-invocation-job/zzzzzzzzzzzz", method="GET")
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(req, timeout=10)
    e = excinfo.value
    assert e.code == 404
    assert e.headers["Content-Type"].startswith("application/json")
    assert e.headers["x-amzn-ErrorType"].split(":")[0] == "ResourceNotFoundException"
    assert e.headers["x-amzn-RequestId"]
    body = json.loads(e.read())
    assert body["__type"].split("#")[-1] == "ResourceNotFoundException"
    assert isinstance(body["message"], str)
